"""`normbench bench cli`: the start-up paths that must not import TensorFlow (--help, --version,
validate, compare), each in a fresh interpreter; then, at 100 to 10,000 records, what a sweep does
around training per finished run, and run --dry-run (before and after a saving process wrote the
record index), compare and plot over all records."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from normbench import console, grid, identity, spec as specs
from normbench.bench.common import CONFIGS, Option, median
from normbench.errors import NormbenchError


SCALE_NORMS = ["batch", "group", "layer", "instance", "none"]


SCALE_BATCHES = [2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640,
                 768, 1024]  # 5 norms x 20 batch sizes = 100 runs per seed


def scale_spec(path: Path, records: int) -> Path:
    """A sweep of `records` runs (5 norms x 20 batch sizes x records/100 seeds)."""
    seeds = max(1, records // 100)
    path.write_text("name: scale\ndataset: mnist-10k\n"
                    f"seeds: {seeds}\nsweep:\n  model.norm.type: {SCALE_NORMS}\n"
                    f"  train.batch_size: {SCALE_BATCHES}\n")
    return path


def _template_record() -> dict[str, Any]:
    return {"status": "finished", "smoke": False, "impl_requested": "auto",
            "impl_used": "native", "params": 866_848, "epochs": 3, "test_loss": 0.2,
            "train_accuracy": 0.95, "train_loss": 0.15, "epoch_times_s": [1.4, 0.6, 0.6],
            "first_epoch_s": 1.4, "steady_epoch_s": 0.6, "steady_samples_per_s": 13_000.0,
            "steady_basis": "epochs 2-3", "total_s": 3.0, "started": "2026-01-01T00:00:00",
            "finished": "2026-01-01T00:00:03", "env": {"tensorflow": "2.21.0"},
            "dataset": {"requested": "mnist-10k", "name": "mnist-10k", "n_train": 8000,
                        "n_test": 2000, "sha256": hashlib.sha256(b"mnist-10k").hexdigest()},
            "history": [{"epoch": e, "loss": 0.3 / e, "accuracy": 0.9, "time_s": 0.6}
                        for e in (1, 2, 3)]}


def fake_record(spec: specs.Spec, i: int):
    """The record a finished run of `spec` would leave (numbers made up; shapes real)."""
    from normbench import norms, store

    h = identity.spec_hash(spec)
    return store.RunRecord.model_validate({
        **_template_record(), "run_id": store.run_id(spec.name, h, False), "name": spec.name,
        "spec_hash": h, "config_hash": identity.spec_hash(spec, without_seed=True),
        "norm_type": spec.model.norm.type,
        "norm_groups": norms.effective_groups(spec.model.norm.type, spec.model.norm.groups, 10),
        "batch_size": spec.train.batch_size, "seed": spec.train.seed,
        "test_accuracy": 0.9 + 0.001 * (i % 7), "spec": specs.to_dict(spec)})


def fake_records(results_dir: Path, count: int) -> Path:
    """`count` finished runs of the scale sweep, written as a sweep writes them (without the
    fsyncs, which only make the set-up slow); returns the sweep's spec file."""
    from normbench import store

    spec_file = scale_spec(results_dir / "scale.yaml", count)
    runs = grid.load_runs(spec_file)[:count]
    root = results_dir / "runs"
    root.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(runs):
        record = fake_record(spec, i)
        run = root / record.run_id
        run.mkdir()
        (run / "spec.yaml").write_text(specs.to_yaml(spec))
        (run / "history.csv").write_text(store.history_csv(record))
        (run / "metrics.json").write_text(record.model_dump_json(indent=2) + "\n")
    return spec_file


def bookkeeping(results_dir: Path, spec_file: Path, runs: int = 100) -> float:
    """Median seconds per finished run of what a sweep does around training (claim, the
    finished check, the atomic save with its fsyncs, the summary row, release) in a results
    directory that already holds the scale sweep's records; new runs are new seeds."""
    from normbench import store, tables

    fresh = grid.load_runs(spec_file, ["seeds=1"])
    specs_new = [s.model_copy(update={"train": s.train.model_copy(update={"seed": 5000 + k})})
                 for k, s in enumerate((fresh * (runs // len(fresh) + 1))[:runs])]
    times = []
    for k, spec in enumerate(specs_new):
        record = fake_record(spec, k)
        start = time.perf_counter()
        lock = store.claim(results_dir, record.run_id)
        assert lock is not None and store.finished(results_dir, record.run_id) is None
        store.save(record, specs.to_yaml(spec), results_dir)
        tables.append_summary(results_dir, record)
        lock.release()
        times.append(time.perf_counter() - start)
    return median(times)


def bench_scale(*, sizes=(100, 1000, 10_000), repeats: int = 3,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per results-directory size: bookkeeping per finished run (in process), and `run
    --dry-run`, `compare` and `plot` over all records (fresh interpreters, median)."""
    exe = [sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "normbench"]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "results"
            results.mkdir()
            spec_file = fake_records(results, n)
            dry_run = exe + ["run", str(spec_file), "--dry-run", "--results", str(results)]
            row = {"records": n,
                   "bookkeeping_ms_per_run": 1000 * bookkeeping(results, spec_file),
                   # before any saving process wrote the record index: every record is read
                   "dry_run_unindexed_s": _time_command(dry_run, repeats)}
            # a saving process with nothing to do (the sweep already finished) writes the index
            row["index_write_s"] = _time_command(exe + ["run", str(spec_file), "--results",
                                                        str(results)], 1)
            row["dry_run_s"] = _time_command(dry_run, repeats)
            row["compare_s"] = _time_command(exe + ["compare", "--results", str(results)], repeats)
            plots = _try_plot(exe, results, repeats)
            if plots is not None:
                row["plot_s"] = plots
            rows.append(row)
            log(f"{n:6d} records: bookkeeping {row['bookkeeping_ms_per_run']:.2f} ms/run, "
                f"dry-run {row['dry_run_s']:.2f} s (before the index: "
                f"{row['dry_run_unindexed_s']:.2f} s), compare {row['compare_s']:.2f} s"
                + (f", plot {row['plot_s']:.2f} s" if "plot_s" in row else ""))
    by = {r["records"]: r for r in rows}
    ratios = {}
    if 100 in by and 10_000 in by:
        ratios["bookkeeping_10000_over_100"] = (by[10_000]["bookkeeping_ms_per_run"]
                                                / by[100]["bookkeeping_ms_per_run"])
    if 1000 in by and 10_000 in by:
        for key in ("dry_run_s", "compare_s", "plot_s"):
            if key in by[1000] and key in by[10_000]:
                ratios[f"{key[:-2]}_10000_over_1000"] = by[10_000][key] / by[1000][key]
    return {"rows": rows, "ratios": ratios,
            "targets": {"bookkeeping_10000_over_100": 1.2, "dry_run_10000_over_1000": 12.0,
                        "compare_10000_over_1000": 12.0, "plot_10000_over_1000": 12.0,
                        "dry_run_s_at_10000": 2.0, "compare_s_at_10000": 2.0}}


def _try_plot(exe: list[str], results: Path, repeats: int) -> float | None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return None
    return _time_command(exe + ["plot", "--results", str(results), "--out", str(results / "p")],
                         repeats)


def _time_command(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise NormbenchError(f"bench cli: {' '.join(args[2:])} failed: "
                                 f"{(done.stderr or done.stdout).strip()[-300:]}")
    return median(times)


def imports_tensorflow(args: list[str]) -> bool:
    """Whether `python ARGS` imports TensorFlow (from -X importtime's report)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True)
    return any(line.rstrip().endswith("| tensorflow") for line in done.stderr.splitlines())


def bench_cli(*, records: int = 1000, repeats: int = 5, log: Callable[[str], None] = print
              ) -> list[dict[str, Any]]:
    """Median wall time of each command in a fresh interpreter, as a user runs it."""
    exe = [sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "normbench"]
    with tempfile.TemporaryDirectory() as tmp:
        fake_records(Path(tmp), records)
        commands = {"normbench --help": ["--help"], "normbench --version": ["--version"],
                    "normbench validate configs/*.yaml": ["validate", *map(str, sorted(CONFIGS.glob("*.yaml")))],
                    f"normbench compare ({records} records)": ["compare", "--results", tmp]}
        rows = []
        for label, args in commands.items():
            seconds = _time_command(exe + args, repeats)
            tf_imported = imports_tensorflow(exe[1:] + args)
            rows.append({"command": label, "seconds": seconds, "target_s": 0.5,
                         "imports_tensorflow": tf_imported})
            log(f"{label:40s} {seconds:.3f} s" + ("  (imports TensorFlow)" if tf_imported else ""))
    python = _time_command([sys.executable, "-c", "pass"], repeats)
    rows.append({"command": "python -c pass (interpreter start)", "seconds": python,
                 "target_s": None, "imports_tensorflow": False})
    return rows


def parse_sizes(text: str) -> tuple[int, ...]:
    """'100,1000,10000' -> (100, 1000, 10000); 'none' or '' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise NormbenchError(f"--scale {text!r}: expected sizes such as 100,1000,10000 or none") from None
    if any(not 1 <= n <= 100_000 for n in sizes):
        raise NormbenchError(f"--scale {text!r}: each size must be 1..100000")
    return sizes


def show(found: dict[str, Any]) -> None:
    rows, scale = found["rows"], found["scale"]
    console.plain_table("bench cli: median wall time, fresh interpreter",
                        ("command", "seconds", "target", "imports TF"),
                        [(r["command"], f"{r['seconds']:.3f}",
                          "-" if r["target_s"] is None else f"< {r['target_s']}",
                          "yes" if r["imports_tensorflow"] else "no") for r in rows])
    if not scale:
        return
    console.plain_table(
        "bench cli, scale: bookkeeping per finished run (claim, check, save, summary row) and "
        "whole commands over every record",
        ("records", "bookkeeping ms/run", "run --dry-run s", "(no index) s", "compare s", "plot s"),
        [(f"{r['records']:,}", f"{r['bookkeeping_ms_per_run']:.2f}", f"{r['dry_run_s']:.2f}",
          f"{r['dry_run_unindexed_s']:.2f}" if "dry_run_unindexed_s" in r else "-",
          f"{r['compare_s']:.2f}", f"{r['plot_s']:.2f}" if "plot_s" in r else "-")
         for r in scale["rows"]])
    for key, value in scale["ratios"].items():
        target = scale["targets"].get(key)
        console.say(f"{key}: {value:.2f}x (target <= {target}x: "
                    f"{'met' if target is not None and value <= target else 'MISSED'})")



HELP = """Wall time of --help, --version, validate configs/*.yaml and compare over N records, each
in a fresh interpreter (median), and whether each imports TensorFlow; then, at each scale,
bookkeeping per finished run and run --dry-run, compare and plot over all records."""

OPTIONS = (
    Option("records", "int", 1000, min=1, max=100_000, help="Run records for compare."),
    Option("repeats", "int", 5, min=1, max=100),
    Option("scale", "str", "100,1000,10000", metavar="N,N,...",
           help="Results-directory sizes for the scale measurements ('none' skips them)."),
)


def run(*, records: int, repeats: int, scale: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    sizes = parse_sizes(scale)  # a bad --scale fails before minutes of measuring
    rows = bench_cli(records=records, repeats=repeats, log=log)
    return {"rows": rows, "scale": bench_scale(sizes=sizes, repeats=repeats, log=log) if sizes else None}
