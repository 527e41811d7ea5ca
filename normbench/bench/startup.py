"""`normbench bench startup`: in fresh processes, the first epoch's extra time over a steady one
(tracing, compilation) and `normbench run --smoke` from process start to exit."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from normbench import console
from normbench.bench.common import CONFIGS, Option, median
from normbench.errors import NormbenchError


STARTUP_TARGETS = {"first_epoch_extra_s": 1.0, "smoke_s": 6.0}


def bench_startup(*, repeats: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    """In fresh processes, as a user starts them: the first epoch's extra time over a steady one
    (tracing, compilation, warm-up) of `normbench run configs/groupnorm.yaml` on mnist-10k, and
    the wall time of `normbench run configs/groupnorm.yaml --smoke` from process start to exit
    (median of `repeats`)."""
    from normbench import store

    extra, smoke, imports = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tensorflow, keras"], capture_output=True)
        imports.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            base = [sys.executable, "-m", "normbench", "run", str(CONFIGS / "groupnorm.yaml"),
                    "--quiet"]
            start = time.perf_counter()
            done = subprocess.run([*base, "--smoke", "--results", f"{tmp}/smoke"],
                                  capture_output=True, text=True)
            smoke.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise NormbenchError(f"bench startup: the smoke run failed: {done.stderr.strip()[-300:]}")
            done = subprocess.run([*base, "-s", "dataset=mnist-10k", "-s", "train.epochs=3",
                                   "--results", f"{tmp}/full"], capture_output=True, text=True)
            if done.returncode != 0:
                raise NormbenchError(f"bench startup: the run failed: {done.stderr.strip()[-300:]}")
            record = store.load_records(Path(tmp) / "full")[0][0]
            extra.append(record.first_epoch_s - record.steady_epoch_s)
        log(f"import tensorflow, keras {imports[-1]:.2f} s; --smoke end to end {smoke[-1]:.2f} s; first epoch {record.first_epoch_s:.2f} s, "
            f"steady {record.steady_epoch_s:.2f} s: extra {extra[-1]:.2f} s")
    return {"first_epoch_extra_s": median(extra), "smoke_s": median(smoke),
            "import_s": median(imports),
            "runs": {"first_epoch_extra_s": extra, "smoke_s": smoke, "import_s": imports},
            "targets": STARTUP_TARGETS}


def show(found: dict[str, Any]) -> None:
    for key, label in (("first_epoch_extra_s", "first epoch's extra time over a steady one"),
                       ("smoke_s", "`run --smoke`, process start to exit")):
        target = found["targets"][key]
        console.say(f"{label}: {found[key]:.2f} s (target <= {target:g} s: "
                    f"{'met' if found[key] <= target else 'MISSED'})")
    console.say(f"(`python -c 'import tensorflow, keras'` alone: {found['import_s']:.2f} s)")



HELP = """The first epoch's extra time over a steady one (tracing, compilation; target <= 1 s) and
`normbench run --smoke` from process start to exit (target <= 6 s), in fresh processes."""

OPTIONS = (Option("repeats", "int", 3, min=1, max=20, help="Fresh processes (median)."),)


def run(*, repeats: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    return bench_startup(repeats=repeats, log=log)
