"""`normbench bench workers`: sweep throughput with 1 and with N local worker processes, from an
empty results directory, order alternating between repetitions."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from normbench import console, grid
from normbench.bench.common import CONFIGS, Option, median
from normbench.errors import NormbenchError


def bench_workers(*, runs: int = 8, batch_size: int = 4, reps: int = 1, jobs: int = 2,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """The same sweep (GN tutorial model, mnist-10k, 1 epoch, seeds 0..runs-1) from an empty
    results directory with 1 worker and with `jobs`, order alternating between repetitions."""
    from normbench import executors

    base = grid.load(CONFIGS / "groupnorm.yaml", ["dataset=mnist-10k", f"train.batch_size={batch_size}"])
    planned = [base.model_copy(update={"train": base.train.model_copy(update={"seed": s})})
               for s in range(runs)]
    rates: dict[int, list[float]] = {1: [], jobs: []}
    for rep in range(reps):
        for n in ((1, jobs) if rep % 2 == 0 else (jobs, 1)):
            with tempfile.TemporaryDirectory() as tmp:
                todo = executors.plan(planned, False, Path(tmp))
                start = time.perf_counter()
                pool = executors.LocalPool(executors.Options(Path(tmp), smoke=False, jobs=n))
                outcome = executors.Driver(Path(tmp), False, executors.now(), False).drive(pool, todo)
                seconds = time.perf_counter() - start
            if len(outcome.ran) != runs or outcome.failed:
                raise NormbenchError(f"bench workers: a run failed: {outcome.failed}")
            rates[n].append(runs / seconds * 60.0)
            log(f"rep {rep + 1} jobs={n}: {rates[n][-1]:.2f} runs/min")
    one, many = median(rates[1]), median(rates[jobs])
    return {"runs": runs, "batch_size": batch_size, "reps": reps, "jobs": jobs,
            "runs_per_min": {"1": one, str(jobs): many}, "ratio": many / one,
            "runs_per_min_each": {str(n): rs for n, rs in rates.items()}}


def show(found: dict[str, Any]) -> None:
    rate, jobs = found["runs_per_min"], found["jobs"]
    console.say(f"{found['runs']} runs of batch {found['batch_size']} (8,000 images, 1 epoch): "
                f"1 worker {rate['1']:.2f} runs/min, {jobs} workers {rate[str(jobs)]:.2f} "
                f"runs/min, ratio {found['ratio']:.2f}x")



HELP = """Sweep throughput (runs/min) with 1 vs N local worker processes (target >= 1.6x for 2)."""

OPTIONS = (Option("runs", "int", 8, min=1, max=100, help="Runs in the sweep."),
           Option("batch_size", "int", 4, min=1, max=4096),
           Option("reps", "int", 1, min=1, max=20, help="Repetitions (median)."),
           Option("jobs", "int", 2, min=2, max=64, help="Workers to compare with 1."))


def run(*, runs: int, batch_size: int, reps: int, jobs: int,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    return bench_workers(runs=runs, batch_size=batch_size, reps=reps, jobs=jobs, log=log)
