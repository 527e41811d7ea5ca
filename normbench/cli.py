"""The `normbench` command line: parse, call the library, print. TensorFlow loads only to train."""

from __future__ import annotations

import functools
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import List

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import normbench
from normbench import compare as compare_views, norms, results, spec as specs, sweep
from normbench.errors import NormbenchError

# Piped or captured output is not cut to 80 columns: it is read by programs and in files.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train the tutorial CNN with a chosen normalization layer on MNIST and compare results.",
    epilog="Norms: " + ", ".join(f"{n.name} ({n.summary})" for n in norms.NORMS.values()))

SPECS = typer.Argument(..., help="YAML spec file(s); see configs/.", show_default=False)
SETS = typer.Option([], "-s", "--set", metavar="PATH=VALUE",
                    help="Override a spec field for every spec, e.g. -s train.epochs=3 "
                         "-s model.norm.groups=2 (value read as YAML).")
RESULTS = typer.Option(Path("results"), "--results", help="Results directory.")


class Format(str, Enum):
    table = "table"
    md = "md"
    csv = "csv"
    json = "json"


class _WarningHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]warning:[/] {record.getMessage()}", markup=True)


def _friendly(command):
    """Bad input and unusable environments become one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NormbenchError as exc:
            err.print(f"error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        out.print(f"normbench {normbench.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    logger = logging.getLogger("normbench")
    if not any(isinstance(h, _WarningHandler) for h in logger.handlers):
        logger.addHandler(_WarningHandler())
    logger.propagate = False


# The terminal shows the columns people read; md/csv/json (and summary files) carry them all.
TABLE_GROUP = ("name", "config", "dataset", "smoke", "norm", "impl", "runs", "test_acc_mean",
               "test_acc_ci95", "test_err_mean", "test_loss_mean", "first_epoch_s", "steady_epoch_s",
               "samples_per_s")
TABLE_RUNS = ("run_id", "dataset", "smoke", "norm", "impl_used", "epochs", "batch_size", "seed",
              "test_accuracy", "test_loss", "first_epoch_s", "steady_samples_per_s")
HEADERS = {"test_acc_mean": "acc", "test_acc_std": "± std", "test_acc_best": "best acc",
           "test_acc_ci95": "± 95% CI", "test_err_mean": "error", "delta_acc": "Δ acc",
           "test_loss_mean": "loss", "first_epoch_s": "1st epoch s", "steady_epoch_s": "s/epoch",
           "samples_per_s": "samples/s", "steady_samples_per_s": "samples/s", "impl_used": "impl",
           "batch_size": "batch", "test_accuracy": "acc", "test_loss": "loss"}
TEXT_COLUMNS = ("name", "config", "dataset", "norm", "impl", "impl_used", "run_id", "baseline")


def _table(rows: list[dict], columns: tuple[str, ...], title: str) -> Table:
    if not any(row.get("smoke") for row in rows):
        columns = tuple(c for c in columns if c != "smoke")
    if not any(row.get("config") for row in rows):
        columns = tuple(c for c in columns if c != "config")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(HEADERS.get(column, column), no_wrap=column in TEXT_COLUMNS,
                         justify="left" if column in TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*(results.fmt(c, row[c]) for c in columns),
                      style="bold green" if row.get("best") else None)
    return table


class Executor(str, Enum):
    local = "local"
    ray = "ray"


def _load_all(spec_files: List[Path], sets: List[str], sweeps: List[str]) -> list:
    """Every run of every spec file; all invalid grid points of all files reported at once."""
    runs, errors = [], []
    for path in spec_files:
        try:
            runs += specs.load_runs(path, sets, sweeps)
        except NormbenchError as exc:
            errors.append(str(exc))
    if errors:
        raise NormbenchError("\n".join(errors))
    return runs


@app.command()
@_friendly
def run(spec_files: List[Path] = SPECS, sets: List[str] = SETS,
        sweeps: List[str] = typer.Option([], "--sweep", metavar="PATH=V1,V2,...",
                                         help="Add or replace a sweep axis, e.g. "
                                              "--sweep train.batch_size=2,8,32."),
        results_dir: Path = RESULTS,
        smoke: bool = typer.Option(False, "--smoke",
                                   help="Train 1 epoch on 1,000 images (test on 500): seconds."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the runs; train nothing."),
        force: bool = typer.Option(False, "--force", help="Run finished runs again."),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64,
                                 help="Worker processes (they share the CPU cores)."),
        executor: Executor = typer.Option(Executor.local, "--executor",
                                          help="local processes, or Ray tasks (normbench[ray])."),
        address: str = typer.Option(None, "--address", help="Ray cluster address (default: a "
                                    "local Ray instance).")) -> None:
    """Train and evaluate each spec (every point of its sweep x seeds); finished runs are kept
    and skipped, so an interrupted sweep completes when run again."""
    loaded = _load_all(spec_files, sets, sweeps)  # every spec and grid point is checked first
    if smoke:
        loaded = [specs.for_smoke(s) for s in loaded]
    planned = sweep.plan(loaded, smoke, results_dir)
    todo = [p for p in planned if force or not p.done]
    if dry_run:
        table = Table(title=f"{len(planned)} run(s): {len(todo)} to run, "
                            f"{len(planned) - len(todo)} finished", title_justify="left",
                      box=box.SIMPLE_HEAD)
        for column in ("run_id", "state", "what"):
            table.add_column(column, no_wrap=column != "what")
        for p in planned:
            table.add_row(p.run_id, "finished" if p.done else "to run", specs.summary(p.spec))
        out.print(table)
        return
    results.prepare(results_dir)
    sweep.stop_on_sigterm()
    since = sweep.now()
    if len(planned) > len(todo) and not quiet:
        err.print(f"skipping {len(planned) - len(todo)} finished run(s) (--force runs them again)",
                  markup=False)
    outcome = _execute(todo, results_dir, smoke=smoke, force=force, since=since, quiet=quiet,
                       jobs=jobs, executor=executor, address=address)
    if outcome.ran:
        out.print(_table(results.group_rows(outcome.ran), TABLE_GROUP, "This invocation"))
        out.print(f"summary: {results_dir / 'summary.md'}, {results_dir / 'summary.csv'}")
    diverged = sum(r.status == "diverged" for r in outcome.ran)
    err.print(f"{len(outcome.ran)} run(s) done ({diverged} diverged), {len(planned) - len(todo) + outcome.skipped}"
              f" already finished, {len(outcome.busy)} running elsewhere, {len(outcome.failed)} failed",
              markup=False)
    for rid, why in outcome.failed:
        err.print(f"failed {rid}: {why}", markup=False, soft_wrap=True)
    if outcome.interrupted:
        err.print("interrupted: finished runs are kept; run the same command again to complete "
                  "the rest", markup=False)
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(1)


def _execute(todo, results_dir: Path, *, smoke, force, since, quiet, jobs, executor, address):
    if not todo:
        return sweep.Outcome()
    if executor is Executor.local and jobs == 1:
        def announce(i: int, item) -> None:
            if not quiet:
                err.print(f"run {i + 1}/{len(todo)} {specs.summary(item.spec)}"
                          + (" (smoke)" if smoke else ""), markup=False)

        return sweep.run_in_process(todo, results_dir, smoke=smoke, force=force, since=since,
                                    quiet=quiet, announce=announce)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[running]}"), console=err,
                  disable=quiet) as bar:
        task = bar.add_task(f"sweep ({executor.value}, {jobs} job(s))" if executor is Executor.local
                            else "sweep (ray)", total=len(todo), running="")

        def progress(done: int, running: list[str]) -> None:
            bar.update(task, completed=done, running="; ".join(sorted(running))[:60])

        if executor is Executor.ray:
            return sweep.run_on_ray(todo, results_dir, smoke=smoke, force=force, since=since,
                                    address=address, progress=progress)
        return sweep.run_workers(todo, results_dir, smoke=smoke, force=force, since=since,
                                 jobs=jobs, progress=progress)


@app.command()
@_friendly
def validate(spec_files: List[Path] = SPECS, sets: List[str] = SETS,
             sweeps: List[str] = typer.Option([], "--sweep", metavar="PATH=V1,V2,...",
                                              help="Add or replace a sweep axis."),
             show: bool = typer.Option(False, "--show", help="Print each resolved spec as YAML.")
             ) -> None:
    """Check spec files (and overrides) without training; exit code 2 on the first bad one."""
    for path in spec_files:
        runs = specs.load_runs(path, sets, sweeps)
        what = specs.summary(runs[0]) if len(runs) == 1 else f"{len(runs)} runs (sweep x seeds)"
        out.print(f"ok  {path}  {what}", markup=False)
        if show:
            for spec in runs:
                out.print(specs.to_yaml(spec), markup=False)


@app.command()
@_friendly
def compare(results_dir: Path = RESULTS,
            format: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
            runs: bool = typer.Option(False, "--runs", help="One row per run instead of per experiment."),
            filters: List[str] = typer.Option([], "--where", metavar="FIELD=VALUE",
                                              help="Keep runs whose spec field (e.g. "
                                                   "model.norm.type) or record field has VALUE."),
            by: str = typer.Option(None, "--by", metavar="FIELD",
                                   help="Pivot: one column per value of FIELD (e.g. "
                                        "train.batch_size), cells = test error % ± 95% CI."),
            baseline: str = typer.Option(None, "--baseline", metavar="NAME|FIELD=VALUE",
                                         help="Add each experiment's accuracy difference to this "
                                              "baseline and Welch's t-test p-value.")) -> None:
    """Compare finished runs: experiments (runs that differ only by seed) with n, mean, std and a
    95% Student-t confidence interval of test accuracy and error (reads only)."""
    if not results_dir.is_dir():
        raise NormbenchError(f"results directory {results_dir}: not found")
    records, skipped = results.load_records(results_dir)
    records = compare_views.where(records, filters)
    if runs:
        rows, columns, shown = [results.run_row(r) for r in records], results.RUN_COLUMNS, TABLE_RUNS
    else:
        rows, columns, shown = results.group_rows(records), results.GROUP_COLUMNS, TABLE_GROUP
        if baseline:
            rows = compare_views.with_baseline(rows, baseline)
            columns = shown = columns[:-1] + ("baseline", "delta_acc", "p_value")
        if by:
            rows, columns = compare_views.pivot(rows, by)
            shown = tuple(columns)
    if format is Format.table:
        out.print(_table(rows, shown, f"{len(records)} run(s) in {results_dir}"))
    else:
        out.print(results.render(rows, columns, format.value), end="", markup=False, soft_wrap=True)
    for name, why in skipped:
        err.print(f"skipped {name}: {why}", markup=False)


@app.command()
@_friendly
def plot(results_dir: Path = RESULTS,
         out_dir: Path = typer.Option(None, "--out", help="Where PNGs go (default: RESULTS/plots)."),
         filters: List[str] = typer.Option([], "--where", metavar="FIELD=VALUE",
                                           help="Plot only matching runs.")) -> None:
    """Write PNG figures: test error vs batch size per norm (95% CI bands, log2 axis), learning
    curves, and a groups ablation when the runs vary model.norm.groups."""
    from normbench import plot as plots  # imports matplotlib

    if not results_dir.is_dir():
        raise NormbenchError(f"results directory {results_dir}: not found")
    records, _ = results.load_records(results_dir)
    for path in plots.plot_all(compare_views.where(records, filters), out_dir or results_dir / "plots"):
        out.print(f"wrote {path}", markup=False)


@app.command()
def verify(quick: bool = typer.Option(False, "--quick", help="Every 7th case and a smaller batch test."),
           format: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
           failures_only: bool = typer.Option(False, "--failures", help="Show failed checks only.")
           ) -> None:
    """Check the GN/IN layers' numerics on this stack: vs float64, tfa (if it runs) and Keras."""
    from normbench import verify as checks  # imports TensorFlow

    found = checks.run_all(quick=quick)
    rows = [{"check": r.check, "case": r.case, "output_error": r.output_error,
             "grad_error": r.grad_error, "native_exact": r.native_exact,
             "other_exact": r.other_exact, "tolerance": r.tolerance, "ok": r.ok}
            for r in found if not (failures_only and r.ok)]
    columns = ("check", "case", "output_error", "grad_error", "native_exact", "other_exact",
               "tolerance", "ok")
    if format is Format.table:
        table = Table(title=f"{len(found)} checks, {sum(not r.ok for r in found)} failed. error = "
                            "max|a-b| / max|b| per tensor; grad = worst of x, gamma, beta; "
                            "*_exact = each side vs float64",
                      title_justify="left", box=box.SIMPLE_HEAD)
        for column in columns:
            table.add_column(column, justify="left" if column in ("check", "case") else "right")
        def sci(value: float | None) -> str:
            return "-" if value is None else f"{value:.1e}"

        for row in rows:
            table.add_row(row["check"], row["case"], sci(row["output_error"]),
                          sci(row["grad_error"]), sci(row["native_exact"]), sci(row["other_exact"]),
                          f"{row['tolerance']:.0e}", "pass" if row["ok"] else "[red]FAIL[/]")
        out.print(table)
    else:
        out.print(results.render(rows, columns, format.value), end="", markup=False)
    worst: dict[str, float] = {}
    for r in found:
        worst[r.check] = max(worst.get(r.check, 0.0), r.output_error, r.grad_error or 0.0)
    err.print("worst: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()), markup=False)
    if not all(r.ok for r in found):
        raise typer.Exit(1)


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: every ratio is measured side by "
                        "side in one invocation (machines are noisy); each writes JSON too.")
app.add_typer(bench_app, name="bench")


def _bench_json(name: str) -> Path:
    return typer.Option(Path("results/bench") / f"{name}.json", "--json",
                        help="Where the measurements go as JSON.")


def _log(line: str) -> None:
    err.print(line, markup=False, highlight=False)


def _bench_table(title: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    out.print(table)


@bench_app.command("train")
@_friendly
def bench_train(epochs: int = typer.Option(3, min=2, max=100, help="Epochs per run (>= 2)."),
                seeds: int = typer.Option(3, min=1, max=20, help="Seeds (runs per path)."),
                dataset: str = typer.Option("mnist-10k", help="mnist, mnist-10k or fashion-mnist."),
                batch_size: int = typer.Option(32, min=1, max=4096),
                json_path: Path = _bench_json("train")) -> None:
    """The tutorial's recipe (Sequential + model.fit) vs normbench's default training path:
    steady samples/s, the ratio, first-epoch time, test accuracy, GFLOP/s vs sgemm peak."""
    from normbench import bench

    found = bench.bench_train(epochs=epochs, seeds=seeds, dataset=dataset,
                              batch_size=batch_size, log=_log)
    bench.write_json(json_path, {**found, "env": bench.environment()})
    peak = found["sgemm_peak_gflops"]
    rows = [(path, f"{s['samples_per_s']:,.0f}", f"{s['first_epoch_s']:.2f}",
             f"{100 * s['test_accuracy_mean']:.2f} ± {100 * s['test_accuracy_std']:.2f}",
             f"{s['gflops']:.1f}", f"{100 * s['fraction_of_peak']:.1f}%")
            for path, s in found["summary"].items()]
    _bench_table(f"bench train: {found['dataset']}, batch {batch_size}, {epochs} epochs x "
                 f"{seeds} seed(s); {found['flops_per_sample'] / 1e6:.2f} MFLOP/sample; "
                 f"sgemm peak {peak:.0f} GFLOP/s; normbench compiled: {found['compiled']}",
                 ("path", "samples/s", "1st epoch s", "test acc % (mean ± std)", "GFLOP/s",
                  "of peak"), rows)
    p = found["accuracy_p_value"]
    out.print(f"ratio normbench / tutorial: {found['ratio']:.2f}x (per seed "
              + ", ".join(f"{r:.2f}" for r in found["ratio_per_seed"]) + "; target >= 3.0); "
              f"normbench / tutorial + normbench GN (the training loop alone): "
              f"{found['ratio_same_layer']:.2f}x; test accuracy normbench - tutorial "
              f"{100 * found['accuracy_difference']:+.2f} points"
              + (f" (Welch p = {p:.2f})" if p is not None else ""), markup=False)
    out.print(f"wrote {json_path}", markup=False)


@bench_app.command("layers")
@_friendly
def bench_layers(repeats: int = typer.Option(15, min=3, max=1000, help="Timed calls per implementation."),
                 json_path: Path = _bench_json("layers")) -> None:
    """GroupNorm and InstanceNorm forward+backward (ms, median) per implementation, in graph
    mode and under XLA, against the floor: a per-channel affine layer's forward+backward."""
    from normbench import bench

    rows = bench.bench_layers(repeats=repeats, log=_log)
    bench.write_json(json_path, {"rows": rows, "env": bench.environment()})
    impls = [k for k in rows[0]["ms"] if k != "floor"]
    _bench_table("bench layers: forward+backward ms (median); floor = x*gamma+beta fwd+bwd",
                 ("norm", "shape", "mode", *impls, "floor", "keras/native", "native/floor"),
                 [(r["norm"] if r["norm"] != "group" else f"group g={r['groups']}",
                   "x".join(map(str, r["shape"])), r["mode"],
                   *(f"{r['ms'][k]:.2f}" for k in impls), f"{r['ms']['floor']:.2f}",
                   f"{r['keras_over_native']:.2f}x", f"{r['native_over_floor']:.2f}x")
                  for r in rows])
    out.print("targets: graph keras/native >= 1.5x; xla keras/native >= 1.0x and native/floor "
              "<= 1.5x on the two larger shapes", markup=False)
    out.print(f"wrote {json_path}", markup=False)


@bench_app.command("cli")
@_friendly
def bench_cli(records: int = typer.Option(1000, min=1, max=100_000, help="Run records for compare."),
              repeats: int = typer.Option(5, min=1, max=100),
              json_path: Path = _bench_json("cli")) -> None:
    """Wall time of --help, --version, validate configs/*.yaml and compare over N records, each
    in a fresh interpreter (median), and whether each imports TensorFlow."""
    from normbench import bench

    rows = bench.bench_cli(records=records, repeats=repeats, log=_log)
    bench.write_json(json_path, {"rows": rows, "env": bench.environment()})
    _bench_table("bench cli: median wall time, fresh interpreter", ("command", "seconds", "target",
                 "imports TF"), [(r["command"], f"{r['seconds']:.3f}",
                                  "-" if r["target_s"] is None else f"< {r['target_s']}",
                                  "yes" if r["imports_tensorflow"] else "no") for r in rows])
    out.print(f"wrote {json_path}", markup=False)


@bench_app.command("memory")
@_friendly
def bench_memory(dataset: str = typer.Option("fashion-mnist", help="Dataset of the run."),
                 epochs: int = typer.Option(1, min=1, max=100),
                 json_path: Path = _bench_json("memory")) -> None:
    """Peak resident memory (RSS) of a whole `normbench run` in a child process (target < 2 GiB)."""
    from normbench import bench

    row = bench.bench_memory(dataset=dataset, epochs=epochs, log=_log)
    bench.write_json(json_path, {**row, "env": bench.environment()})
    out.print(f"peak RSS {row['peak_rss_mib']:.0f} MiB (target < {row['target_mib']} MiB)",
              markup=False)
    out.print(f"wrote {json_path}", markup=False)


@bench_app.command("workers")
@_friendly
def bench_workers(runs: int = typer.Option(8, min=1, max=100, help="Runs in the sweep."),
                  batch_size: int = typer.Option(4, min=1, max=4096),
                  reps: int = typer.Option(1, min=1, max=20, help="Repetitions (median)."),
                  jobs: int = typer.Option(2, min=2, max=64, help="Workers to compare with 1."),
                  json_path: Path = _bench_json("workers")) -> None:
    """Sweep throughput (runs/min) with 1 vs N local worker processes (target >= 1.6x for 2)."""
    from normbench import bench

    found = bench.bench_workers(runs=runs, batch_size=batch_size, reps=reps, jobs=jobs, log=_log)
    bench.write_json(json_path, {**found, "env": bench.environment()})
    rate = found["runs_per_min"]
    out.print(f"{runs} runs of batch {batch_size} (8,000 images, 1 epoch): 1 worker "
              f"{rate['1']:.2f} runs/min, {jobs} workers {rate[str(jobs)]:.2f} runs/min, "
              f"ratio {found['ratio']:.2f}x", markup=False)
    out.print(f"wrote {json_path}", markup=False)


@app.command("norms")
def list_norms() -> None:
    """List the normalization layers and their implementations."""
    table = Table(title="norms (impl: auto picks the first usable)", title_justify="left")
    for column in ("name", "aliases", "impls", "what it normalizes"):
        table.add_column(column)
    for n in norms.NORMS.values():
        aliases = ", ".join(a for a, target in norms.ALIASES.items() if target == n.name)
        table.add_row(n.name, aliases, ", ".join(n.impls) or "-", n.summary)
    out.print(table)


def main() -> None:
    """The console script. Usage errors (unknown command or option, a bad option value) are one
    line on stderr and exit code 2, like every other bad input."""
    # click's exceptions, wherever this Typer keeps them (its own copy of click, or click)
    click = sys.modules[typer.BadParameter.__module__]
    try:
        code = app(standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # Typer's rich help has printed itself already
        if exc.message.strip():
            out.print(exc.message, markup=False, highlight=False)
        code = 2
    except click.UsageError as exc:
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        err.print(f"error: {' '.join(exc.format_message().split())}{where}", markup=False,
                  highlight=False)
        code = 2
    except (typer.Abort, getattr(click, "Abort", typer.Abort)):
        code = 130
    except click.ClickException as exc:
        err.print(f"error: {' '.join(exc.format_message().split())}", markup=False, highlight=False)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)
