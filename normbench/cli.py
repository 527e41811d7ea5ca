"""The `normbench` command line: parse, call the library, print. TensorFlow loads only to train."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional  # noqa: F401 - Optional: the generated bench commands' types

import typer

import normbench
from normbench import api, bench, columns, console, executors, grid, norms, store, tables
from normbench.bench import common as bench_common
from normbench.console import say
from normbench.errors import NormbenchError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is printed as written: `normbench[ray]` is not markup
    help="Which normalization layer should your CNN use, and why: train YAML specs (GroupNorm, "
         "BatchNorm, ghost BN, LayerNorm, ...) on MNIST, Fashion-MNIST or your own data and "
         "model; tune learning rates on held-out data; compare runs and report studies with "
         "their statistics.",
    epilog="Norms: " + ", ".join(f"{n.name} ({n.summary})" for n in norms.NORMS.values()))

SPECS = typer.Argument(..., metavar="SPEC", help="YAML spec file(s); see configs/.", show_default=False)
SETS = typer.Option(bench_common.SETS.default, *bench_common.SETS.decls,
                    metavar=bench_common.SETS.metavar, help=bench_common.SETS.help)
RESULTS = typer.Option(Path("results"), "--results", help="Results directory.")


class Format(str, Enum):
    table = "table"
    md = "md"
    csv = "csv"
    json = "json"


class FigureFormat(str, Enum):
    png = "png"
    svg = "svg"


class _WarningHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        console.warning(record.getMessage())


def _friendly(command):
    """Bad input and unusable environments become one line on stderr and exit code 2. The help
    text is the docstring's first paragraph, joined into one line (the terminal wraps it)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NormbenchError as exc:
            console.error(str(exc))
            raise typer.Exit(2) from None
        except BrokenPipeError:  # `normbench ... | head`: the reader left; what ran is saved
            console.reader_gone()
            raise typer.Exit(141) from None  # as a shell reports a process ended by SIGPIPE
        except OSError as exc:  # an unwritable --out, a read-only results directory, a full disk
            where = f"{exc.filename}: " if exc.filename else ""
            console.error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(2) from None

    if command.__doc__:
        paragraphs = command.__doc__.strip().split("\n\n")
        wrapper.__doc__ = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    return wrapper


def _version(value: bool) -> None:
    if value:
        say(f"normbench {normbench.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Also show TensorFlow's own log lines."),
) -> None:
    if verbose:
        os.environ["NORMBENCH_VERBOSE"] = "1"  # read where TensorFlow is imported (workers too)
    logger = logging.getLogger("normbench")
    if not any(isinstance(h, _WarningHandler) for h in logger.handlers):
        logger.addHandler(_WarningHandler())
    logger.propagate = False


# --executor's choices: the engines registered in normbench.executors, in their order.
Executor = Enum("Executor", {name: name for name in executors.ENGINES}, type=str)


def _load_all(spec_files: List[Path], sets: List[str], sweeps: List[str]) -> list[grid.Grid]:
    """Every grid of every spec file; all invalid grid points of all files reported at once."""
    grids, errors = [], []
    for path in spec_files:
        try:
            grids.append(grid.load_grid(path, sets, sweeps))
        except NormbenchError as exc:
            errors.append(str(exc))
    if errors:
        raise NormbenchError("\n".join(errors))
    return grids


@app.command()
@_friendly
def run(spec_files: List[Path] = SPECS, sets: List[str] = SETS,
        sweeps: List[str] = typer.Option([], "--sweep", metavar="PATH=V1,V2,...",
                                         help="Add or replace a sweep axis, e.g. "
                                              "--sweep train.batch_size=2,8,32."),
        results_dir: Path = RESULTS,
        smoke: bool = typer.Option(False, "--smoke",
                                   help="Train 1 epoch on 1,000 images (test on 500): seconds. "
                                        "An explicit -s train.epochs=N still applies."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the runs; train nothing."),
        force: bool = typer.Option(False, "--force", help="Run finished runs again."),
        retry_fallback: bool = typer.Option(False, "--retry-fallback",
                                            help="Run again the finished runs that trained on "
                                                 "fallback data (mnist-10k for an offline mnist)."),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64,
                                 help="Worker processes (at most one per run, and as many as "
                                      "memory allows)."),
        executor: Executor = typer.Option(Executor.local, "--executor",
                                          help="local processes, Ray tasks (normbench[ray]) or "
                                               "Slurm jobs (normbench[slurm], submitit)."),
        address: str = typer.Option(None, "--address", help="Ray cluster address (default: a "
                                    "local Ray instance)."),
        save_model: bool = typer.Option(False, "--save-model",
                                        help="Write each trained model as model.keras into its "
                                             "run directory (train.save_model: true; not part "
                                             "of the run id, so finished runs need --force)."),
        mlflow: bool = typer.Option(False, "--mlflow",
                                    help="Log each finished run to MLflow (normbench[mlflow]): "
                                         "MLFLOW_TRACKING_URI, else a SQLite store in RESULTS."),
        tensorboard: Path = typer.Option(None, "--tensorboard", metavar="DIR",
                                         help="Write each run's per-epoch scalars and HParams "
                                              "to DIR/<run_id> (normbench[tensorboard])."),
        slurm_partition: str = typer.Option(None, "--slurm-partition", help="Slurm partition."),
        slurm_time: int = typer.Option(None, "--slurm-time", min=1, metavar="MINUTES",
                                       help="Time limit per run (default: the spec's slurm: "
                                            "block, else 60)."),
        slurm_cpus: int = typer.Option(None, "--slurm-cpus", min=1, help="CPUs per run (2)."),
        slurm_mem_gb: float = typer.Option(None, "--slurm-mem-gb", min=0.1, help="Memory per run (8)."),
        slurm_parallel: int = typer.Option(None, "--slurm-parallel", min=1,
                                           help="Runs queued or running at once (32).")) -> None:
    """Train and evaluate each spec (every point of its sweep x seeds); finished runs are kept
    and skipped, so an interrupted sweep completes when run again."""
    slurm_options = {k: v for k, v in {"partition": slurm_partition, "time_min": slurm_time,
                                       "cpus_per_task": slurm_cpus, "mem_gb": slurm_mem_gb,
                                       "array_parallelism": slurm_parallel}.items() if v is not None}
    if slurm_options and executor is not Executor.slurm:
        raise NormbenchError("--slurm-* options apply to --executor slurm")
    if quiet:  # read where data is downloaded, in this process and the workers it spawns
        os.environ["NORMBENCH_QUIET"] = "1"
    if save_model:
        sets = [*sets, "train.save_model=true"]
    plan = api.plan_runs(_load_all(spec_files, sets, sweeps), results_dir, smoke=smoke, sets=sets,
                         force=force, retry_fallback=retry_fallback)
    if dry_run:
        rows = [{"run_id": p.run_id, "state": ("finished" if p.done else "to run")
                 + (" (fallback data)" if p.fallback else ""), "what": _summary(p.spec)}
                for p in plan.planned]
        title = f"{len(plan.planned)} run(s): {len(plan.todo)} to run, {plan.finished} finished"
        if len(rows) <= console.MAX_TABLE_ROWS:
            console.show(rows, ("run_id", "state", "what"), title)
        else:  # a table of 10,000 rows takes rich seconds to lay out: one line per run
            console.lines(title, [f"{r['run_id']}  {r['state']}  {r['what']}" for r in rows])
        return
    trackers = api.make_trackers(results_dir, mlflow, tensorboard)
    done = api.run_plan(plan, quiet=quiet, jobs=jobs, executor=executor.value, address=address,
                        trackers=trackers, slurm_overrides=slurm_options, describe=_summary)
    outcome = done.outcome
    for tracker in trackers:
        console.note(tracker.how_to_open())
    for rid, why in outcome.tracking_errors:
        console.note(f"tracking {rid} failed (the run is saved): {why}")
    if outcome.ran:
        console.show(tables.group_rows(outcome.ran), columns.TERMINAL_GROUP_COLUMNS, "This invocation")
    if done.summaries:
        say(f"summary: {results_dir / 'summary.md'}, {results_dir / 'summary.csv'}")
    diverged = sum(r.status == "diverged" for r in outcome.ran)
    console.note(f"{len(outcome.ran)} run(s) done ({diverged} diverged), "
                 f"{plan.finished + outcome.skipped} already finished, {len(outcome.busy)} "
                 f"running elsewhere, {len(outcome.failed)} failed"
                 + (f", {outcome.not_started} not run (interrupted)" if outcome.interrupted else ""))
    for rid, why in outcome.failed:
        console.note(f"failed {rid}: {why}")
    if outcome.interrupted:
        console.note("interrupted: finished runs are kept; run the same command again to complete "
                     "the rest")
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(1)


def _summary(spec) -> str:
    from normbench import spec as specs

    return specs.summary(spec)


@app.command()
@_friendly
def tune(spec_files: List[Path] = SPECS, sets: List[str] = SETS, results_dir: Path = RESULTS,
         smoke: bool = typer.Option(False, "--smoke", help="Tune the --smoke runs (tests, CI)."),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
         jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64, help="Worker processes.")
         ) -> None:
    """Choose each group's learning rate (the spec's tune: block) on held-out data, before the
    study runs: train each group's first run at every rate of the grid with tune.seed into
    RESULTS/tuning/NAME, and freeze the choice there (chosen.json). `normbench run` and
    `normbench report` then use the frozen rates. Resumable; the test set is never read to choose."""
    from normbench import tuning

    if quiet:
        os.environ["NORMBENCH_QUIET"] = "1"
    for g in _load_all(spec_files, sets, []):
        _, path = api.tune(g, results_dir, smoke=smoke, quiet=quiet, jobs=jobs, sets=sets)
        head, rows = tuning.describe(g.runs, results_dir, smoke)[1]  # the report's own table
        console.plain_table(f"{g.runs[0].name}: held-out error % by learning rate ({tuning.RULE})",
                            tuple(head), [tuple(r) for r in rows])
        say(f"frozen: {path}")


@app.command()
@_friendly
def validate(spec_files: List[Path] = SPECS, sets: List[str] = SETS,
             sweeps: List[str] = typer.Option([], "--sweep", metavar="PATH=V1,V2,...",
                                              help="Add or replace a sweep axis."),
             show: bool = typer.Option(False, "--show", help="Print each resolved spec as YAML "
                                       "(a sweep: its first run, the axes and the seeds).")
             ) -> None:
    """Check spec files (and overrides) without training; exit code 2 on the first bad one."""
    from normbench import spec as specs

    for path in spec_files:
        g = grid.load_grid(path, sets, sweeps)
        what = specs.summary(g.runs[0]) if len(g.runs) == 1 else f"{len(g.runs)} runs (sweep x seeds)"
        say(f"ok  {path}  {what}")
        if show:
            say(grid.describe(g))


@app.command()
@_friendly
def compare(results_dir: Path = RESULTS,
            format: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
            runs: bool = typer.Option(False, "--runs", help="One row per run instead of per experiment."),
            filters: List[str] = typer.Option([], "--where", metavar="FIELD=VALUE",
                                              help="Keep runs whose spec field (e.g. "
                                                   "model.norm.type), record field or column "
                                                   "(norm, groups, batch_size) has VALUE; null "
                                                   "matches an empty value."),
            by: str = typer.Option(None, "--by", metavar="FIELD",
                                   help="Pivot: one column per value of FIELD (e.g. "
                                        "train.batch_size), cells = test error % ± 95% CI "
                                        "(points)."),
            baseline: str = typer.Option(None, "--baseline", metavar="NAME|FIELD=VALUE",
                                         help="Add each experiment's accuracy difference to this "
                                              "baseline (points) and Welch's t-test p-value."),
            fail_under: List[str] = typer.Option([], "--fail-under", metavar="COLUMN=VALUE",
                                                 help="CI gate: exit 1 if a shown experiment (or "
                                                      "run, with --runs) is below VALUE in a "
                                                      "higher-is-better COLUMN (a fraction, e.g. "
                                                      "test_acc_mean=0.93), has no finished run "
                                                      "or a diverged one. Repeatable."),
            fail_over: List[str] = typer.Option([], "--fail-over", metavar="COLUMN=VALUE",
                                                help="CI gate for lower-is-better columns (error, "
                                                     "loss, seconds): exit 1 if above VALUE, e.g. "
                                                     "test_err_mean=0.07. Repeatable."),
            allow_diverged: bool = typer.Option(False, "--allow-diverged",
                                                help="Gate an experiment's finished runs even if "
                                                     "some of its runs diverged (by default such "
                                                     "an experiment fails)."),
            junit_xml: Path = typer.Option(None, "--junit-xml", metavar="PATH",
                                           help="Write a JUnit XML report: one testcase per "
                                                "experiment (or run), failed by the gates.")) -> None:
    """Compare finished runs: experiments (runs that differ only by seed) with n, mean, std and a
    95% Student-t confidence interval of test accuracy and error (reads only). Diverged runs are
    counted, never averaged in."""
    from normbench import gates

    if not results_dir.is_dir():
        raise NormbenchError(f"results directory {results_dir}: not found")
    if runs and (by or baseline):  # both group experiments; --runs lists runs one by one
        raise NormbenchError(f"{'--by' if by else '--baseline'} compares experiments, not single "
                             "runs: drop --runs (or use --where to pick runs)")
    if (fail_under or fail_over or junit_xml) and by:
        raise NormbenchError("--fail-under, --fail-over and --junit-xml check experiments or runs, "
                             "not a --by pivot")
    checks = gates.parse(fail_under, columns.RUN_COLUMNS if runs else columns.GROUP_COLUMNS, fail_over)
    records, skipped = store.load_records(results_dir)
    records = tables.where(records, filters)
    view = tables.compare_view(records, str(results_dir), runs=runs, baseline=baseline, by=by)
    rows = view.rows
    if format is Format.table:
        console.show(rows, view.shown, view.title)
    else:
        console.raw(columns.render(rows, view.columns, format.value))
    note = tables.fallback_note(records)
    if note:
        console.note(f"note: {note}")
    for name, why in skipped:
        console.note(f"skipped {name}: {why}")
    if not (checks or junit_xml):
        return
    verdicts = gates.judge(rows, checks, runs, allow_diverged=allow_diverged)
    if junit_xml:
        gates.junit_xml(verdicts, junit_xml)
        console.note(f"wrote {junit_xml}")
    lines, passed = gates.outcome(verdicts, checks, runs)
    for line in lines:
        console.note(line)
    if not passed:
        raise typer.Exit(1)


class Target(str, Enum):
    mlflow = "mlflow"
    tensorboard = "tensorboard"


@app.command()
@_friendly
def export(target: Target = typer.Argument(..., help="mlflow or tensorboard."),
           results_dir: Path = RESULTS,
           logdir: Path = typer.Option(None, "--logdir", help="tensorboard: where event files go "
                                       "(default: RESULTS/tensorboard)."),
           filters: List[str] = typer.Option([], "--where", metavar="FIELD=VALUE",
                                             help="Export only matching runs.")) -> None:
    """Log finished runs to MLflow (MLFLOW_TRACKING_URI, else a SQLite store in RESULTS) or
    write them as TensorBoard event files. Idempotent: a run already there is not logged again."""
    if not results_dir.is_dir():
        raise NormbenchError(f"results directory {results_dir}: not found")
    records, _ = store.load_records(results_dir)
    records = tables.where(records, filters)
    if target is Target.mlflow:
        (tracker,) = api.make_trackers(results_dir, True, None)
    else:
        (tracker,) = api.make_trackers(results_dir, False, logdir or results_dir / "tensorboard")
    failed = []
    for record in records:
        try:
            tracker.log(record, store.run_dir(results_dir, record.run_id))
        except Exception as exc:  # a tracking server down: say which runs were not logged
            failed.append((record.run_id, " ".join(str(exc).split())[:300] or type(exc).__name__))
    console.note(tracker.how_to_open())
    if failed:
        console.error(f"{len(failed)} run(s) not logged ({', '.join(r for r, _ in failed[:5])}"
                      f"{' ...' if len(failed) > 5 else ''}): {failed[0][1]}; run the same "
                      "command again once it is reachable (nothing is logged twice)")
        raise typer.Exit(1)


@app.command()
@_friendly
def rm(results_dir: Path = RESULTS,
       filters: List[str] = typer.Option([], "--where", metavar="FIELD=VALUE",
                                         help="Delete the runs that match (as compare's --where; "
                                              "e.g. tags=pilot). Required."),
       dry_run: bool = typer.Option(False, "--dry-run", help="List the runs; delete nothing."),
       yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking (on a terminal "
                                "rm lists the runs and asks first).")) -> None:
    """Delete runs by filter: lists them first, asks on a terminal (unless --yes), then removes
    each run directory whole and rebuilds the summaries. A run in progress elsewhere is left
    alone."""
    if not filters:
        raise NormbenchError("rm needs at least one --where FIELD=VALUE (it never deletes everything)")
    empty = [f for f in filters if not f.partition("=")[2].strip()]
    if empty:  # `--where tags=$TAG` with TAG unset: never read as "whatever matches"
        raise NormbenchError(f"rm --where {empty[0]!r}: the value is empty (an unset shell "
                             "variable?); give the value to match (null matches a missing one)")
    if not results_dir.is_dir():
        raise NormbenchError(f"results directory {results_dir}: not found")
    records, _ = store.load_records(results_dir)
    chosen = tables.where(records, filters)
    rows = [{"run_id": r.run_id, "status": r.status, "what": _summary_of_record(r)} for r in chosen]
    title = f"{len(chosen)} run(s) match" + (" (dry run: nothing deleted)" if dry_run else "")
    console.show(rows, ("run_id", "status", "what"), title)
    if dry_run or not chosen:
        return
    if not yes and sys.stdin is not None and sys.stdin.isatty():
        if not typer.confirm(f"delete these {len(chosen)} run(s)?", default=False, err=True):
            console.note("nothing deleted")
            raise typer.Exit(1)
    busy = [r.run_id for r in chosen if not store.delete(results_dir, r.run_id)]
    tables.write_summaries(results_dir)
    console.note(f"deleted {len(chosen) - len(busy)} run(s)"
                 + (f"; {len(busy)} in progress elsewhere, left alone: {', '.join(busy)}" if busy else ""))
    if busy:
        raise typer.Exit(1)


def _summary_of_record(record) -> str:
    from normbench import spec as specs

    try:
        return specs.summary(specs.Spec.model_validate(record.spec))
    except Exception:  # a record from an older normbench whose spec no longer validates
        return record.name


@app.command()
@_friendly
def plot(results_dir: Path = RESULTS,
         out_dir: Path = typer.Option(None, "--out", help="Where PNGs go (default: RESULTS/plots)."),
         filters: List[str] = typer.Option([], "--where", metavar="FIELD=VALUE",
                                           help="Plot only matching runs."),
         fmt: FigureFormat = typer.Option(FigureFormat.png, "--format", "-f",
                                          help="png (2x, for screens) or svg (for papers).")) -> None:
    """Write figures: test error vs batch size (one colour per norm, 95% CI bands, log2 axis,
    the paper's Table 2 beside it), learning curves (training loss and held-out/test error per
    epoch, a panel per batch size), and a groups ablation when the runs vary model.norm.groups."""
    from normbench import plot as plots  # imports matplotlib

    if not results_dir.is_dir():
        raise NormbenchError(f"results directory {results_dir}: not found")
    records, _ = store.load_records(results_dir)
    for path in plots.plot_all(tables.where(records, filters), out_dir or results_dir / "plots",
                               fmt.value, paper=plots.load_paper()):
        say(f"wrote {path}")


@app.command()
@_friendly
def report(spec_files: List[Path] = SPECS, sets: List[str] = SETS, results_dir: Path = RESULTS,
           out_dir: Path = typer.Option(None, "--out", help="Where report.md, report.html and "
                                        "the PNGs go (default: RESULTS/reports/NAME)."),
           smoke: bool = typer.Option(False, "--smoke", help="Report the --smoke runs."),
           fmt: FigureFormat = typer.Option(FigureFormat.png, "--format", "-f",
                                            help="Figures as png (2x) or svg; inlined in "
                                                 "report.html either way.")) -> None:
    """Write a study's report: report.md, a self-contained report.html and PNG figures, with
    test error per norm and batch (95% CIs), paired comparisons (Holm-adjusted p-values),
    BatchNorm's three kinds of test statistics, the paper's numbers beside ours, and how the
    runs were made. Every sentence with a number is computed from the records."""
    from normbench import report as reports  # imports matplotlib
    from normbench import study as studies

    if not results_dir.is_dir():
        raise NormbenchError(f"results directory {results_dir}: not found")
    study = studies.load_study(list(spec_files), results_dir, smoke=smoke, overrides=sets)
    target = out_dir or results_dir / "reports" / study.name
    if target.exists() and not target.is_dir():
        raise NormbenchError(f"--out {target}: is a file, not a directory")
    for path in reports.write(study, target, fmt.value, results_dir):
        say(f"wrote {path}")
    if study.missing:
        console.note(f"{len(study.missing)} run(s) of the study are not finished: the report "
                     "covers the rest (normbench run completes them)")


@app.command()
@_friendly
def verify(quick: bool = typer.Option(False, "--quick", help="Every 7th case and a smaller batch test."),
           format: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
           failures_only: bool = typer.Option(False, "--failures", help="Show failed checks only.")
           ) -> None:
    """Check the GN/IN layers' numerics on this stack: vs float64, tfa (if it runs) and Keras."""
    from normbench import verify as checks  # imports TensorFlow

    found = checks.run_all(quick=quick)
    checks.report(found, failures_only=failures_only, fmt=format.value)
    if not all(r.ok for r in found):
        raise typer.Exit(1)


bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Benchmarks: every ratio is measured side by side in one invocation "
                             "(machines are noisy); each prints its table, then writes JSON.")
app.add_typer(bench_app, name="bench")


def _log(line: str) -> None:
    console.note(line)


def _bench_command(name: str) -> None:
    """`normbench bench NAME`, generated from the benchmark module's OPTIONS and HELP: it runs
    the benchmark, prints its table, then writes the measurements as JSON."""
    module = bench.load(name)
    options = [*module.OPTIONS, bench_common.Option(
        "json_path", "Path", Path("results/bench") / f"{name}.json", ("--json",),
        help="Where the measurements go as JSON (written after the table).")]

    def command(**kwargs) -> None:
        json_path = kwargs.pop("json_path")
        found = module.run(**kwargs, log=_log)
        module.show(found)
        bench_common.write_json(json_path, {**found, "env": bench_common.environment()})

    command.__name__ = command.__qualname__ = f"bench_{name}"
    command.__doc__ = module.HELP
    # Typer reads the parameters from the signature and their types from the annotations, which
    # are evaluated in this module (List, Optional and Path are imported above).
    command.__signature__ = inspect.Signature([inspect.Parameter(
        o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=o.type,
        default=typer.Option(o.default, *o.decls, min=o.min, max=o.max, help=o.help,
                             metavar=o.metavar)) for o in options])
    command.__annotations__ = {**{o.name: o.type for o in options}, "return": "None"}
    bench_app.command(name)(_friendly(command))


for _name in bench.BENCHMARKS:
    _bench_command(_name)


@app.command("norms")
def list_norms() -> None:
    """List the normalization layers and their implementations."""
    console.plain_table("norms (impl: auto picks the first usable)",
                        ("name", "aliases", "impls", "what it normalizes"),
                        [(n.name, ", ".join(a for a, t in norms.ALIASES.items() if t == n.name),
                          ", ".join(n.impls) or "-", n.summary) for n in norms.NORMS.values()])


def main() -> None:
    """The console script. Usage errors (unknown command or option, a bad option value) are one
    line on stderr and exit code 2, like every other bad input."""
    console.tolerate_any_encoding()
    # click's exceptions, wherever this Typer keeps them (its own copy of click, or click)
    click = sys.modules[typer.BadParameter.__module__]
    no_args = getattr(click, "NoArgsIsHelpError", None)  # click >= 8.2; 8.1 exits 0 by itself
    try:
        code = app(standalone_mode=False)
    except BrokenPipeError:  # `normbench ... | head`: the reader left; what ran is saved
        console.reader_gone()
        code = 141  # as a shell reports a process ended by SIGPIPE
    except click.UsageError as exc:
        if no_args is not None and isinstance(exc, no_args):  # the help has printed itself
            code = 2
        else:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
            console.error(f"{' '.join(exc.format_message().split())}{where}")
            code = 2
    except (typer.Abort, getattr(click, "Abort", typer.Abort)):
        code = 130
    except click.ClickException as exc:
        console.error(" ".join(exc.format_message().split()))
        code = exc.exit_code
    code = code if isinstance(code, int) else 0
    try:
        if sys.stdout is not None:  # None: started with stdout closed, nothing to flush
            sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        console.reader_gone()
        code = code or 141
    sys.exit(code)
