"""The interface an engine implements: `submit` one run, `collect` the finished ones. Everything
else (claims, saving, counting, Ctrl-C) is the driver's, once, in driver.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from normbench import spec as specs
from normbench.executors.plan import Planned


@dataclass(frozen=True)
class Options:
    """What an engine may need; each reads its own fields (Hydra's launcher config, flattened)."""

    results_dir: Path
    smoke: bool
    quiet: bool = True
    jobs: int = 1  # local: worker processes
    address: str | None = None  # ray: the cluster (None: a new local instance)
    slurm: specs.SlurmSpec | None = None  # slurm: the job options
    announce: Callable[[Planned], None] | None = None  # in-process: told before each run


class RunLost(Exception):
    """The engine itself broke (a worker pool died): this run failed, and no other can start."""


class Engine:
    """One way to run trainings. `submit(item)` starts `item` (claimed by the driver) and returns
    a handle; `collect(handles, timeout)` returns [(handle, record JSON or the exception it
    raised)] for the runs that ended, waiting at most `timeout` seconds for one. `window` runs are
    in flight at a time. `start`/`close` bracket a sweep; `cancel` is called on Ctrl-C with the
    handles still in flight. Checks that need no cluster (installed? reachable?) go in
    `__init__`, which runs before any run is claimed."""

    name: ClassVar[str]
    title: ClassVar[str]  # the progress bar's, e.g. "sweep (ray)"; "" for one line per run
    poll_s: ClassVar[float] = 0.5  # the longest `collect` waits: how often progress is drawn

    def __init__(self, options: Options):
        self.options = options
        self.window = 1

    def start(self) -> None:
        """Bring the engine up (a pool, a Ray connection); `window` may change here."""

    def submit(self, item: Planned) -> Any:
        raise NotImplementedError

    def collect(self, handles: list, timeout: float) -> list[tuple[Any, Any]]:
        raise NotImplementedError

    def cancel(self, handles: list) -> None:
        """Stop what is in flight (Ctrl-C); their runs stay to do."""

    def close(self) -> None:
        """Take the engine down; called once, also after an error or Ctrl-C."""

    def describe_failure(self, exc: BaseException) -> str:
        """The one line a failed run is reported with."""
        return first_line(exc)

    def status(self, items: list[Planned]) -> list[str]:
        """What the runs in flight are doing, for the progress bar."""
        return []


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
