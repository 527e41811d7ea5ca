"""Running many specs: skip finished runs, claim the rest, train them on an engine, save each
record as it comes back.

`plan.py` says what there is to do; `driver.py` holds the one loop (claim when a run is handed
out, wait, save, release, stop on Ctrl-C); each engine is one small class (`engine.Engine`:
`submit` and `collect`) registered by name in `ENGINES` below, from which `normbench run
--executor` and `normbench.run(executor=...)` take their choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from normbench.errors import NormbenchError
from normbench.executors.driver import Driver, Outcome, status_path, train_task
from normbench.executors.engine import Engine, Options, RunLost
from normbench.executors.local import InProcess, LocalPool, pin_worker, worker_count
from normbench.executors.plan import Planned, now, plan
from normbench.executors.ray_engine import RayEngine
from normbench.executors.signals import sigterm_stops, stop_on_sigterm
from normbench.executors.slurm_engine import SlurmEngine

# name -> engine: what --executor offers, in its help's order. `local` with one job trains in
# this process (InProcess), one run after another.
ENGINES: dict[str, type[Engine]] = {"local": LocalPool, "ray": RayEngine, "slurm": SlurmEngine}


def engine(name: str, options: Options) -> Engine:
    """The engine registered as `name`, set up with `options` (its checks run here, before any
    run is claimed)."""
    try:
        cls = ENGINES[name]
    except KeyError:
        raise NormbenchError(f"executor {name!r}: choose {', '.join(ENGINES)}") from None
    if cls is LocalPool and options.jobs == 1:
        cls = InProcess
    return cls(options)


def run(todo: list[Planned], results_dir: Path, *, executor: str = "local", smoke: bool,
        force: bool = False, since: str | None = None, retry_fallback: bool = False,
        trackers: tuple = (), progress: Callable[[int, list[str]], None] | None = None,
        **options) -> Outcome:
    """Train `todo` on the engine named `executor` (Options' fields as keywords: jobs=, address=,
    slurm=, quiet=, announce=) and save each record into `results_dir`."""
    chosen = engine(executor, Options(results_dir, smoke, **options))
    driver = Driver(results_dir, force, since or now(), retry_fallback, tuple(trackers))
    return driver.drive(chosen, todo, progress)


__all__ = ["ENGINES", "Driver", "Engine", "InProcess", "LocalPool", "Options", "Outcome", "Planned",
           "RayEngine", "RunLost", "SlurmEngine", "engine", "now", "pin_worker", "plan", "run",
           "sigterm_stops", "status_path", "stop_on_sigterm", "train_task", "worker_count"]
