"""`normbench bench memory`: the peak resident memory of a whole `normbench run` in a child
process."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from normbench import console
from normbench.bench.common import CONFIGS, Option
from normbench.errors import NormbenchError


def bench_memory(*, dataset: str = "fashion-mnist", epochs: int = 1,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Peak resident memory of `normbench run configs/groupnorm.yaml` in a child process."""
    # A fresh parent whose only child is the run: RUSAGE_CHILDREN is the max over all children.
    probe = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-c", probe, sys.executable, "-m", "normbench", "run",
                str(CONFIGS / "groupnorm.yaml"), "-s", f"dataset={dataset}",
                "-s", f"train.epochs={epochs}", "--results", tmp, "--quiet"]
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise NormbenchError(f"bench memory: the run failed: {done.stderr.strip()[-300:]}")
    peak_kib = int(done.stdout.strip().splitlines()[-1])  # Linux reports KiB
    row = {"dataset": dataset, "epochs": epochs, "peak_rss_mib": peak_kib / 1024,
           "target_mib": 2048, "seconds": seconds}
    log(f"normbench run on {dataset}, {epochs} epoch(s): peak RSS {row['peak_rss_mib']:.0f} MiB "
        f"in {seconds:.1f} s")
    return row


def show(row: dict[str, Any]) -> None:
    console.say(f"peak RSS {row['peak_rss_mib']:.0f} MiB (target < {row['target_mib']} MiB)")



HELP = """Peak resident memory (RSS) of a whole `normbench run` in a child process (target < 2 GiB)."""

OPTIONS = (Option("dataset", "str", "fashion-mnist", help="Dataset of the run."),
           Option("epochs", "int", 1, min=1, max=100))


def run(*, dataset: str, epochs: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    return bench_memory(dataset=dataset, epochs=epochs, log=log)
