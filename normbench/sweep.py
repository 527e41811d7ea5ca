"""Run many specs: skip finished runs, claim the rest with locks, and train them in this process,
in a pool of local worker processes or as Ray tasks. This process (the driver) claims each run
when it starts, saves what comes back through the one atomic writer, and releases the claim;
workers and Ray tasks only train and return a record."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from normbench import provenance, spec as specs, store, tables
from normbench.errors import NormbenchError
from normbench.store import RunRecord

WORKER_MEMORY = 600 << 20  # a TensorFlow worker's resident memory with the data (measured ~440 MiB)


@dataclass(frozen=True)
class Planned:
    spec: specs.Spec
    run_id: str
    done: bool  # a finished (or diverged) record already exists
    fallback: bool = False  # ... but it trained on other data than the spec asked for
    spec_file: str | None = None  # where the spec came from (provenance), if a file


@dataclass
class Outcome:
    ran: list[RunRecord] = field(default_factory=list)
    skipped: int = 0  # found finished when claimed (another process finished it meanwhile)
    busy: list[str] = field(default_factory=list)  # claimed by another process
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run_id, error)
    not_started: int = 0  # left when interrupted
    interrupted: bool = False
    tracking_errors: list[tuple[str, str]] = field(default_factory=list)  # (run_id, error)


def plan(runs: list[specs.Spec], smoke: bool, results_dir: Path, *,
         retry_fallback: bool = False, hashes: list[str] | None = None,
         spec_files: list[str | None] | None = None) -> list[Planned]:
    """One entry per run, in grid order, and whether it is done. With `retry_fallback`, a run
    that trained on fallback data (mnist-10k for an offline mnist) counts as not done.
    `hashes` (each run's spec_hash, when the caller has them) saves computing them again;
    `spec_files` (each run's spec file) goes into the records' provenance."""
    out, seen = [], set()
    for i, spec in enumerate(runs):
        rid = store.run_id(spec.name, hashes[i] if hashes else specs.spec_hash(spec), smoke)
        if rid in seen:
            continue
        seen.add(rid)
        record = store.finished(results_dir, rid)
        fallback = record is not None and record.dataset.fallback
        out.append(Planned(spec, rid, record is not None and not (retry_fallback and fallback),
                           fallback, spec_files[i] if spec_files else None))
    return out


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _stale(record: RunRecord | None, force: bool, since: str, retry_fallback: bool) -> bool:
    """Whether a run must (re)run: no record, --force and the record predates this sweep, or
    --retry-fallback and it trained on fallback data."""
    return (record is None or (force and record.started < since)
            or (retry_fallback and record.dataset.fallback))


def stop_on_sigterm() -> None:
    """Let SIGTERM stop a sweep as Ctrl-C does: finished runs kept, nothing half-written."""
    def handler(signum, frame):  # noqa: ARG001 - signal's signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def sigterm_stops():
    """Within the block, SIGTERM stops a sweep as Ctrl-C does; the previous handler comes back
    after. Only on the main thread: `signal.signal` raises elsewhere (a web app's or a worker
    thread's call to normbench.run), where the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM back for the duration (main thread, POSIX); they are delivered
    when the block ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass
class Driver:
    """Claims, saves and counts for every executor."""

    results_dir: Path
    force: bool
    since: str
    retry_fallback: bool
    trackers: tuple = ()  # track.MLflow / track.TensorBoard: log each saved run (driver only)
    outcome: Outcome = field(default_factory=Outcome)

    def claim(self, item: Planned):
        """The run's lock if this process should run it now, else None (counted)."""
        lock = store.claim(self.results_dir, item.run_id)
        if lock is None:
            self.outcome.busy.append(item.run_id)
            return None
        if not _stale(store.finished(self.results_dir, item.run_id), self.force, self.since,
                      self.retry_fallback):
            lock.release()
            self.outcome.skipped += 1
            return None
        return lock

    def unaccounted(self, planned: int) -> int:
        """Runs of the plan that were neither saved, skipped, busy nor failed: not run."""
        o = self.outcome
        return planned - len(o.ran) - o.skipped - len(o.busy) - len(o.failed)

    def fill(self, queue: list[Planned], running: dict, window: int, submit) -> int:
        """Claim runs from the end of `queue` and `submit` them until `window` are in flight
        (claims are taken as each run is handed out); returns how many were passed over."""
        passed = 0
        while queue and len(running) < window:
            item = queue.pop()
            lock = self.claim(item)
            if lock is None:
                passed += 1
                continue
            running[submit(item)] = (item, lock)
        return passed

    def save(self, item: Planned, record: RunRecord) -> None:
        """Save, add the summary row and count the run, as one step that Ctrl-C or SIGTERM
        cannot split (a signal arriving meanwhile is handled right after)."""
        record = record.model_copy(update={
            "provenance": store.Provenance(**provenance.of(item.spec_file))})
        files = None
        if record.saved_model:
            files = {record.saved_model: store.model_staging(self.results_dir, item.run_id)}
        with _signals_held():
            folder = store.save(record, specs.to_yaml(item.spec), self.results_dir, files)
            tables.append_summary(self.results_dir, record)
            self.outcome.ran.append(record)
        for tracker in self.trackers:  # the record is safe on disk: a tracker's failure is noted
            try:
                tracker.log(record, folder)
            except Exception as exc:  # a tracking store down, a full disk: the run stays done
                self.outcome.tracking_errors.append((item.run_id, _first_line(exc)))


def _status_path(results_dir: Path, rid: str) -> Path:
    return results_dir / "runs" / ".claims" / f"{rid}.status"


def run_in_process(todo: list[Planned], results_dir: Path, *, smoke: bool, force: bool,
                   since: str, quiet: bool = False, retry_fallback: bool = False,
                   announce: Callable[[int, Planned], None] | None = None,
                   trackers: tuple = ()) -> Outcome:
    """Claim and run each planned run here, one after another."""
    from normbench import train  # imports TensorFlow

    driver = Driver(results_dir, force, since, retry_fallback, tuple(trackers))
    try:
        for i, item in enumerate(todo):
            lock = driver.claim(item)
            if lock is None:
                continue
            status = _status_path(results_dir, item.run_id)
            try:
                if announce:
                    announce(i, item)
                try:
                    record = train.run_one(item.spec, smoke=smoke, quiet=quiet, status_path=status,
                                           model_path=_model_path(results_dir, item))
                except NormbenchError:
                    raise
                except Exception as exc:  # one broken run must not stop the sweep
                    driver.outcome.failed.append((item.run_id, _first_line(exc)))
                    continue
                driver.save(item, record)
            finally:
                status.unlink(missing_ok=True)
                lock.release()
    except KeyboardInterrupt:
        driver.outcome.interrupted = True
        driver.outcome.not_started = driver.unaccounted(len(todo))
    return driver.outcome


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


# ---------------------------------------------------------------------------------------------
# A pool of local worker processes (concurrent.futures, spawned: no TensorFlow state is forked)


def pin_worker(worker: int, jobs: int) -> int:
    """Pin worker `worker` of `jobs` to its own share of this process's cores; returns how many
    it got. Unpinned, two TensorFlow processes on 2 cores slowed each other down 1.5x (idle
    pool threads spin on the other's core); pinned, 1.03x (normbench bench workers)."""
    if not hasattr(os, "sched_getaffinity"):
        return max(1, (os.cpu_count() or 1) // jobs)
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // jobs)
    if 1 < jobs <= len(cores):
        os.sched_setaffinity(0, cores[worker * share:(worker + 1) * share])
    return share


def _die_with_parent(parent: int) -> None:
    """Make the kernel kill this worker when the driver dies (kill -9 included), so orphans
    never go on with a sweep nobody saves."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the driver died before prctl took effect
        os._exit(1)


def _init_worker(parent: int, counter, jobs: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops workers; Ctrl-C reaches all
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    cores = pin_worker(index % jobs, jobs)  # before TensorFlow starts its thread pools
    from normbench import train

    train.configure_threads(cores)


def _model_path(results_dir: Path, item: Planned) -> Path | None:
    """Where the trainer writes the model when the spec asks for one (train.save_model)."""
    return store.model_staging(results_dir, item.run_id) if item.spec.train.save_model else None


def train_task(spec_dict: dict, smoke: bool, status_path: str | None = None,
               model_path: str | None = None) -> str:
    """Train one run in a worker process or Ray task; the record comes back as JSON (the model,
    when asked for, as a file at `model_path`)."""
    from normbench import train

    spec = specs.Spec.model_validate(spec_dict)
    record = train.run_one(spec, smoke=smoke, quiet=True,
                           status_path=Path(status_path) if status_path else None,
                           model_path=Path(model_path) if model_path else None)
    return record.model_dump_json()


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_count(jobs: int, runs: int) -> tuple[int, str | None]:
    """How many workers to start: at most `jobs`, the number of runs, and what memory allows;
    with the reason when fewer than asked."""
    n, why = min(jobs, runs), None
    if n < jobs:
        why = f"{runs} run(s) to do"
    memory = available_memory()
    if memory is not None and memory // WORKER_MEMORY < n:
        n = max(1, memory // WORKER_MEMORY)
        why = f"{memory >> 20} MiB of memory available, ~{WORKER_MEMORY >> 20} MiB per worker"
    return n, why


def run_pool(todo: list[Planned], results_dir: Path, *, smoke: bool, force: bool, since: str,
             jobs: int, retry_fallback: bool = False,
             progress: Callable[[int, list[str]], None] | None = None,
             trackers: tuple = ()) -> Outcome:
    """Run `todo` in a pool of `jobs` spawned worker processes; at most `jobs` runs are claimed
    at a time, each when it is handed to a worker."""
    driver = Driver(results_dir, force, since, retry_fallback, tuple(trackers))
    ctx = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                  initargs=(os.getpid(), ctx.Value("i", 0), jobs))
    running: dict[cf.Future, tuple[Planned, object]] = {}
    queue = list(reversed(todo))
    done = 0
    try:
        def submit(item: Planned) -> cf.Future:
            status = _status_path(results_dir, item.run_id)
            model = _model_path(results_dir, item)
            return pool.submit(train_task, specs.to_dict(item.spec), smoke, str(status),
                               None if model is None else str(model))

        while queue or running:
            done += driver.fill(queue, running, jobs, submit)
            if progress:
                progress(done, [_status_line(results_dir, item) for item, _ in running.values()])
            if not running:
                continue
            finished, _ = cf.wait(running, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                item, lock = running.pop(future)
                try:
                    record = RunRecord.model_validate_json(future.result())
                    driver.save(item, record)
                except NormbenchError:
                    raise
                except cf.process.BrokenProcessPool as exc:
                    driver.outcome.failed.append((item.run_id, f"its worker process died ({exc})"))
                    queue.clear()  # no pool left to run the rest: they stay to do
                except Exception as exc:  # the run failed in its worker
                    driver.outcome.failed.append((item.run_id, _first_line(exc)))
                finally:
                    _status_path(results_dir, item.run_id).unlink(missing_ok=True)
                    lock.release()
                    done += 1
        if progress:
            progress(done, [])
    except KeyboardInterrupt:
        driver.outcome.interrupted = True
        driver.outcome.not_started = driver.unaccounted(len(todo))
    finally:
        _stop(pool)
        for future, (item, lock) in running.items():
            _status_path(results_dir, item.run_id).unlink(missing_ok=True)
            lock.release()
    return driver.outcome


def _status_line(results_dir: Path, item: Planned) -> str:
    """What a worker is doing ('epoch 2/3'), from the status file it keeps for its run."""
    try:
        return f"{item.run_id}: {_status_path(results_dir, item.run_id).read_text()}"
    except OSError:
        return f"{item.run_id}: starting"


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """Shut the pool down now: queued work is cancelled and running workers are killed (they
    write nothing into the results directory, so killing them loses only unsaved training)."""
    processes = list(getattr(pool, "_processes", {}).values())  # concurrent.futures keeps them here
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# Ray: the driver claims each run when it submits it and saves what comes back; tasks only train.


def _ray_error(address: str | None, exc: BaseException) -> NormbenchError:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    where = address or "a new local instance"
    auth = type(exc).__name__ == "AuthenticationError"  # ray.exceptions, Ray >= 2.5x
    if auth or any(word in text.lower() for word in ("token", "unauthenticated", "authentication")):
        return NormbenchError(
            f"--executor ray: the Ray cluster at {where} requires token authentication (Ray >= "
            "2.5x starts clusters with it on): set RAY_AUTH_MODE=token and the cluster's token "
            f"(RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) in this shell, then run again ({first})")
    tmp = os.environ.get("RAY_TMPDIR")
    if tmp and isinstance(exc, OSError):
        return NormbenchError(f"--executor ray: cannot start Ray: RAY_TMPDIR={tmp} is not usable "
                              f"({exc.strerror or first})")
    return NormbenchError(f"--executor ray: cannot reach Ray at {where}: {first}")


def ray_preflight() -> None:
    """What can be checked before Ray starts: it is installed, and RAY_TMPDIR is usable."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise NormbenchError("--executor ray needs Ray: pip install 'normbench[ray]'")
    tmp = os.environ.get("RAY_TMPDIR")
    if tmp and not (Path(tmp).is_dir() and os.access(tmp, os.W_OK)):
        raise NormbenchError(f"--executor ray: RAY_TMPDIR={tmp} is not a writable directory")


def run_on_ray(todo: list[Planned], results_dir: Path, *, smoke: bool, force: bool, since: str,
               address: str | None = None, retry_fallback: bool = False,
               progress: Callable[[int, list[str]], None] | None = None,
               trackers: tuple = ()) -> Outcome:
    ray_preflight()
    import ray

    driver = Driver(results_dir, force, since, retry_fallback, tuple(trackers))
    started_here = not ray.is_initialized()
    if started_here and address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except (OSError, ValueError) as exc:  # Ray itself would wait minutes, then exit
            raise NormbenchError(f"--executor ray: cannot reach Ray at {address}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True,
                     runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
        except (Exception, SystemExit) as exc:  # Ray raises many kinds, and sometimes exits
            raise _ray_error(address, exc) from None
    task = ray.remote(num_cpus=1)(_ray_task)
    window = max(1, int(ray.available_resources().get("CPU", 1)))
    pending: dict = {}
    queue = list(reversed(todo))
    done = 0
    try:
        while queue or pending:
            done += driver.fill(queue, pending, window,
                                lambda item: task.remote(specs.to_dict(item.spec), smoke,
                                                         _model_path(results_dir, item)))
            if not pending:
                continue
            ready, _ = ray.wait(list(pending), num_returns=1)
            item, lock = pending.pop(ready[0])
            try:
                driver.save(item, RunRecord.model_validate_json(ray.get(ready[0])))
            except NormbenchError:
                raise
            except Exception as exc:  # a task's failure arrives here as RayTaskError
                driver.outcome.failed.append((item.run_id, str(exc).strip().splitlines()[-1][:300]))
            finally:
                lock.release()
                done += 1
            if progress:
                progress(done, [])
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        driver.outcome.interrupted = True
        driver.outcome.not_started = driver.unaccounted(len(todo))
    finally:
        for _, lock in pending.values():
            lock.release()
        if started_here:
            ray.shutdown()
    return driver.outcome


def _ray_task(spec_dict: dict, smoke: bool, model_path: Path | None = None) -> str:
    from normbench import train

    train.configure_threads(1)  # Ray places one task per CPU it was given
    # a saved model goes to the results directory's file system (a shared one on a cluster)
    return train_task(spec_dict, smoke, None, None if model_path is None else str(model_path))


def slurm_executor(results_dir: Path, options: specs.SlurmSpec):
    """A submitit executor for the runs: Slurm, or what NORMBENCH_SUBMITIT_CLUSTER names
    ("local" runs the jobs as local processes: how the tests exercise this path)."""
    try:
        import submitit
    except ImportError:
        raise NormbenchError("--executor slurm needs submitit: pip install 'normbench[slurm]'") from None
    cluster = os.environ.get("NORMBENCH_SUBMITIT_CLUSTER") or "slurm"
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise NormbenchError("--executor slurm: no Slurm here (sbatch is not on PATH); run from a "
                             "Slurm login node")
    folder = results_dir / "runs" / ".slurm" / "%j"  # each job's logs and pickles
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = dict(timeout_min=options.time_min, cpus_per_task=options.cpus_per_task,
                  mem_gb=options.mem_gb, name="normbench")
    if cluster == "slurm":
        params.update(slurm_array_parallelism=options.array_parallelism)
        if options.partition:
            params.update(slurm_partition=options.partition)
    executor.update_parameters(**params)
    return executor


def run_on_slurm(todo: list[Planned], results_dir: Path, *, smoke: bool, force: bool, since: str,
                 options: specs.SlurmSpec, retry_fallback: bool = False,
                 progress: Callable[[int, list[str]], None] | None = None,
                 trackers: tuple = (), poll_s: float = 2.0) -> Outcome:
    """Submit each run as a Slurm job (submitit); at most `options.array_parallelism` are
    claimed and queued at once. Jobs return records; this process saves them with the same
    atomic writer as local runs, so an interrupted sweep resumes the same way."""
    executor = slurm_executor(results_dir, options)
    driver = Driver(results_dir, force, since, retry_fallback, tuple(trackers))
    pending: dict = {}
    queue = list(reversed(todo))
    done = 0

    def submit(item: Planned):
        model = _model_path(results_dir, item)
        return executor.submit(train_task, specs.to_dict(item.spec), smoke, None,
                               None if model is None else str(model))

    try:
        while queue or pending:
            done += driver.fill(queue, pending, options.array_parallelism, submit)
            finished = [job for job in pending if job.done()]
            if not finished:
                time.sleep(poll_s)
                continue
            for job in finished:
                item, lock = pending.pop(job)
                try:
                    driver.save(item, RunRecord.model_validate_json(job.result()))
                except NormbenchError:
                    raise
                except Exception as exc:  # the job failed, timed out or was cancelled
                    driver.outcome.failed.append((item.run_id, _first_line(exc)))
                finally:
                    lock.release()
                    done += 1
            if progress:
                progress(done, [f"{len(pending)} queued or running"] if pending else [])
    except KeyboardInterrupt:
        for job in pending:
            job.cancel(check=False)
        driver.outcome.interrupted = True
        driver.outcome.not_started = driver.unaccounted(len(todo))
    finally:
        for _, lock in pending.values():
            lock.release()
    return driver.outcome
