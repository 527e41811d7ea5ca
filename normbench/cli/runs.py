"""The commands that train: `run` (a sweep, on a registered engine), `tune` (a study's learning
rates on held-out data) and `validate` (spec files checked without training)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import List

import typer

from normbench import api, columns, console, executors, grid, tables
from normbench.cli.app import RESULTS, SETS, SPECS, app, friendly, load_all, summary
from normbench.console import say
from normbench.errors import NormbenchError

# --executor's choices: the engines registered in normbench.executors, in their order.
Executor = Enum("Executor", {name: name for name in executors.ENGINES}, type=str)


@app.command()
@friendly
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
    plan = api.plan_runs(load_all(spec_files, sets, sweeps), results_dir, smoke=smoke, sets=sets,
                         force=force, retry_fallback=retry_fallback)
    if dry_run:
        rows = [{"run_id": p.run_id, "state": ("finished" if p.done else "to run")
                 + (" (fallback data)" if p.fallback else ""), "what": summary(p.spec)}
                for p in plan.planned]
        title = f"{len(plan.planned)} run(s): {len(plan.todo)} to run, {plan.finished} finished"
        if len(rows) <= console.MAX_TABLE_ROWS:
            console.show(rows, ("run_id", "state", "what"), title)
        else:  # a table of 10,000 rows takes rich seconds to lay out: one line per run
            console.lines(title, [f"{r['run_id']}  {r['state']}  {r['what']}" for r in rows])
        return
    trackers = api.make_trackers(results_dir, mlflow, tensorboard)
    done = api.run_plan(plan, quiet=quiet, jobs=jobs, executor=executor.value, address=address,
                        trackers=trackers, slurm_overrides=slurm_options, describe=summary)
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


@app.command()
@friendly
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
    for g in load_all(spec_files, sets, []):
        _, path = api.tune(g, results_dir, smoke=smoke, quiet=quiet, jobs=jobs, sets=sets)
        head, rows = tuning.describe(g.runs, results_dir, smoke)[1]  # the report's own table
        console.plain_table(f"{g.runs[0].name}: held-out error % by learning rate ({tuning.RULE})",
                            tuple(head), [tuple(r) for r in rows])
        say(f"frozen: {path}")


@app.command()
@friendly
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
