"""Ray: each run a task with one CPU, on a cluster at `--address` or a local instance started
for the sweep. Tasks only train and return the record; the driver claims and saves."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

from normbench import spec as specs
from normbench.errors import NormbenchError
from normbench.executors.driver import model_path, train_task
from normbench.executors.engine import Engine, Options


def preflight() -> None:
    """What can be checked before Ray starts: it is installed, and RAY_TMPDIR is usable."""
    if importlib.util.find_spec("ray") is None:
        raise NormbenchError("--executor ray needs Ray: pip install 'normbench[ray]'")
    tmp = os.environ.get("RAY_TMPDIR")
    if tmp and not (Path(tmp).is_dir() and os.access(tmp, os.W_OK)):
        raise NormbenchError(f"--executor ray: RAY_TMPDIR={tmp} is not a writable directory")


def _token_here() -> str:
    """Whether this process has a Ray token to offer, in words."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the token in RAY_AUTH_TOKEN was refused"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if Path(path).is_file():
        return f"the token in {path} was refused"
    return "no token is set here"


def connection_error(address: str | None, exc: BaseException, reachable: bool = False) -> NormbenchError:
    """What to tell the user when Ray does not start or connect, in one line. `reachable`: the
    cluster's port answered before Ray's client gave up (so it refused this client)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    where = address or "a new local instance"
    auth = type(exc).__name__ == "AuthenticationError"  # ray.exceptions, Ray >= 2.5x
    words = any(word in text.lower() for word in ("token", "unauthenticated", "authentication"))
    if auth or words or (reachable and isinstance(exc, ConnectionError)):
        return NormbenchError(
            f"--executor ray: the Ray cluster at {where} refused this client ({first}); it "
            "likely requires token authentication (Ray >= 2.5x starts clusters with it on): set "
            "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or a file named by "
            f"RAY_AUTH_TOKEN_PATH or at ~/.ray/auth_token) in this shell; {_token_here()}")
    tmp = os.environ.get("RAY_TMPDIR")
    if tmp and isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
        return NormbenchError(f"--executor ray: cannot start Ray: RAY_TMPDIR={tmp} is not usable "
                              f"({exc.strerror or first})")
    return NormbenchError(f"--executor ray: cannot reach Ray at {where}: {first}")


@contextlib.contextmanager
def _stderr_into(lines: list[str]):
    """Ray's C++ client writes each failed attempt to file descriptor 2 (a refused token: a
    warning a second for 20 s): while connecting, fd 2 goes to a temporary file, whose lines
    are handed back to the caller and not shown."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += sink.read().decode(errors="replace").splitlines()


def _task(spec_dict: dict, smoke: bool, model: str | None = None,
          spec_hash: str | None = None) -> str:
    from normbench import train

    train.configure_threads(1)  # Ray places one task per CPU it was given
    # a saved model goes to the results directory's file system (a shared one on a cluster)
    return train_task(spec_dict, smoke, None, model, spec_hash)


class RayEngine(Engine):
    name = "ray"
    title = "sweep (ray)"

    def __init__(self, options: Options):
        super().__init__(options)
        preflight()
        self.started_here = False
        self.task = None

    def start(self):
        import ray

        address = self.options.address
        self.started_here = not ray.is_initialized()
        reachable = False
        if self.started_here and address and address != "auto" and not address.startswith("ray://"):
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
                reachable = True
            except (OSError, ValueError) as exc:  # Ray itself would wait minutes, then exit
                raise NormbenchError(f"--executor ray: cannot reach Ray at {address}: "
                                     f"{getattr(exc, 'strerror', None) or exc}") from None
        if self.started_here:
            said = []
            try:
                with _stderr_into(said):
                    ray.init(address=address, include_dashboard=False, log_to_driver=False,
                             ignore_reinit_error=True, logging_level=logging.WARNING,
                             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
            except (Exception, SystemExit) as exc:  # Ray raises many kinds, and sometimes exits
                self.started_here = False
                error = connection_error(address, exc, reachable)
                detail = next((line.split("] ", 1)[-1].split(": ", 1)[-1] for line in reversed(said)
                               if "Unauthenticated" in line or "Error" in line), None)
                raise (NormbenchError(f"{error} (Ray said: {detail[:200]})") if detail else error
                       ) from None
        self.task = ray.remote(num_cpus=1)(_task)
        self.window = max(1, int(ray.available_resources().get("CPU", 1)))

    def submit(self, item):
        model = model_path(self.options.results_dir, item)
        return self.task.remote(specs.to_dict(item.spec), self.options.smoke,
                                None if model is None else str(model), item.spec_hash)

    def collect(self, handles, timeout):
        import ray

        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            try:
                out.append((ref, ray.get(ref)))
            except Exception as exc:  # a task's failure arrives here as RayTaskError
                out.append((ref, exc))
        return out

    def describe_failure(self, exc):
        return str(exc).strip().splitlines()[-1][:300]  # RayTaskError's last line: the cause

    def cancel(self, handles):
        import ray

        for ref in handles:
            ray.cancel(ref, force=True)

    def close(self):
        if self.started_here:
            import ray

            ray.shutdown()
