"""The commands that read results: `compare` (with its CI gates), `export` (MLflow,
TensorBoard), `rm`, `plot` and `report` (a study)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List

import typer

from normbench import api, columns, console, store, tables
from normbench.cli.app import RESULTS, SETS, SPECS, FigureFormat, Format, app, friendly
from normbench.console import say
from normbench.errors import NormbenchError


@app.command()
@friendly
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
@friendly
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
@friendly
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
@friendly
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
@friendly
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
