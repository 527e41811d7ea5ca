"""Sweep throughput with 1 vs 2 local worker processes, measured side by side in one invocation.

    .venv/bin/python benchmarks/sweep_workers.py [--runs 4] [--batch-size 4] [--reps 1]

Small-batch runs spend most of their time in per-step Python and TensorFlow overhead on one
core, which is where a second worker pays. Each repetition runs the same sweep (GroupNorm
tutorial model, mnist-10k, 1 epoch, seeds 0..runs-1) from an empty results directory with
--jobs 1 and then --jobs 2 (the order alternates between repetitions), and reports runs/minute.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from normbench import spec as specs, sweep

ROOT = Path(__file__).resolve().parents[1]


def one(jobs: int, runs: list[specs.Spec]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        todo = sweep.plan(runs, False, Path(tmp))
        start = time.perf_counter()
        outcome = sweep.run_workers(todo, Path(tmp), smoke=False, force=False, since=sweep.now(),
                                    jobs=jobs)
        seconds = time.perf_counter() - start
    assert len(outcome.ran) == len(runs) and not outcome.failed, outcome
    return len(runs) / seconds * 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    base = specs.load(ROOT / "configs" / "groupnorm.yaml",
                      ["dataset=mnist-10k", f"train.batch_size={args.batch_size}"])
    runs = [base.model_copy(update={"train": base.train.model_copy(update={"seed": s})})
            for s in range(args.runs)]
    rates = {1: [], 2: []}
    for rep in range(args.reps):
        for jobs in ((1, 2) if rep % 2 == 0 else (2, 1)):
            rates[jobs].append(one(jobs, runs))
            print(f"rep {rep + 1} jobs={jobs}: {rates[jobs][-1]:.2f} runs/min", flush=True)
    r1, r2 = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"{args.runs} runs of batch {args.batch_size} (8,000 images, 1 epoch): "
          f"1 worker {r1:.2f} runs/min, 2 workers {r2:.2f} runs/min, ratio {r2 / r1:.2f}x")


if __name__ == "__main__":
    main()
