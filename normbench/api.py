"""normbench from Python: `run(spec, ...) -> [RunRecord]` and `load_results(...) -> DataFrame`.

The same validation, run ids, records and resumption as `normbench run` and `normbench compare`;
errors are raised as `NormbenchError`, never `SystemExit`. Importing this module does not import
TensorFlow: training imports it, in the process that trains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from normbench import console, grid, store, sweep as sweeps, tables
from normbench.errors import NormbenchError
from normbench.spec import Spec

EXECUTORS = ("local", "ray", "slurm")


def grids_of(spec: str | os.PathLike | Mapping | Spec, overrides: Mapping[str, Any] | None = None,
             sweep: Mapping[str, list] | None = None) -> list[grid.Grid]:
    """The grid a spec file, a spec document (dict) or a Spec describes, with `overrides`
    ({"train.epochs": 3}) and `sweep` axes ({"train.batch_size": [8, 32]}) applied."""
    sets = [f"{path}={json.dumps(value)}" for path, value in (overrides or {}).items()]
    axes = []
    for path, values in (sweep or {}).items():
        if not isinstance(values, (list, tuple)) or not values:
            raise NormbenchError(f"sweep {path!r}: expected a non-empty list of values")
        axes.append((path, list(values)))
    if isinstance(spec, Spec):
        spec = spec.model_dump(mode="json")
    if isinstance(spec, Mapping):
        return [grid.load_grid(Path(str(spec.get("name") or "spec")), sets, doc=dict(spec),
                               axes=axes)]
    if isinstance(spec, (str, os.PathLike)):
        return [grid.load_grid(Path(spec), sets, axes=axes)]
    raise NormbenchError(f"spec: expected a path, a dict or a normbench Spec, got {type(spec).__name__}")


def execute(todo: list[sweeps.Planned], results_dir: Path, *, smoke: bool, force: bool, since: str,
            quiet: bool, jobs: int, executor: str, address: str | None,
            retry_fallback: bool, describe: Callable[[Any], str],
            trackers: tuple = (), slurm: Any = None) -> sweeps.Outcome:
    """Run the planned runs in this process, a pool of local workers, on Ray or as Slurm jobs
    (`slurm`: a SlurmSpec, by default the first run's `slurm:` block), with progress unless
    `quiet`."""
    if not todo:
        return sweeps.Outcome()
    if executor not in EXECUTORS:
        raise NormbenchError(f"executor {executor!r}: choose local, ray or slurm")
    common = dict(smoke=smoke, force=force, since=since, retry_fallback=retry_fallback,
                  trackers=tuple(trackers))
    if executor == "ray":
        sweeps.ray_preflight()
    elif executor == "slurm":
        sweeps.slurm_executor(results_dir, slurm or todo[0].spec.slurm)  # fails fast, before claims
    else:
        jobs, why = sweeps.worker_count(jobs, len(todo))
        if why and not quiet:
            console.note(f"starting {jobs} worker(s): {why}")
    if executor == "local" and jobs == 1:
        def announce(i: int, item) -> None:
            if not quiet:
                console.note(f"run {i + 1}/{len(todo)} {describe(item.spec)}"
                             + (" (smoke)" if smoke else ""))

        return sweeps.run_in_process(todo, results_dir, quiet=quiet, announce=announce, **common)
    title = f"sweep (local, {jobs} workers)" if executor == "local" else f"sweep ({executor})"
    bar, task = console.sweep_progress(len(todo), title, disable=quiet)
    with bar:
        def progress(done: int, running: list[str]) -> None:
            bar.update(task, completed=done, running="; ".join(sorted(running))[:60])

        if executor == "ray":
            return sweeps.run_on_ray(todo, results_dir, address=address, progress=progress, **common)
        if executor == "slurm":
            return sweeps.run_on_slurm(todo, results_dir, options=slurm or todo[0].spec.slurm,
                                       progress=progress, **common)
        return sweeps.run_pool(todo, results_dir, jobs=jobs, progress=progress, **common)


def run(spec: str | os.PathLike | Mapping | Spec, *, overrides: Mapping[str, Any] | None = None,
        sweep: Mapping[str, list] | None = None, results: str | os.PathLike = "results",
        smoke: bool = False, jobs: int = 1, executor: str = "local", quiet: bool = True,
        force: bool = False, mlflow: bool = False,
        tensorboard: str | os.PathLike | None = None) -> list[store.RunRecord]:
    """Train every run a spec describes (its sweep x seeds) that is not finished yet, and return
    the records of all of them, in grid order.

    `spec` is a YAML path, a spec document (dict) or a `Spec`; `overrides` maps field paths to
    values ({"train.epochs": 3}); `sweep` adds or replaces sweep axes ({"train.batch_size": [8,
    32]}). Records are written under `results` exactly as `normbench run` writes them, so an
    interrupted call completes when called again. `executor` is local, ray or slurm (the spec's
    `slurm:` block); `mlflow=True` and `tensorboard=DIR` log each finished run from this process.
    Raises `NormbenchError` on bad input or when a run fails (the others are kept)."""
    from normbench import spec as specs

    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 64:
        raise NormbenchError(f"jobs: expected 1..64, got {jobs!r}")
    results_dir = Path(results)
    grids = grids_of(spec, overrides, sweep)
    loaded = [s for g in grids for s in g.runs]
    hashes = None if smoke else [h for g in grids for h in g.hashes]
    if smoke:
        loaded = grid.smoke(loaded, [f"{k}=" for k in (overrides or {})])
    from_file = isinstance(spec, (str, os.PathLike))
    planned = sweeps.plan(loaded, smoke, results_dir, hashes=hashes,
                          spec_files=[str(g.path) if from_file else None
                                      for g in grids for _ in g.runs])
    todo = [p for p in planned if force or not p.done]
    store.prepare(results_dir)
    trackers = make_trackers(results_dir, mlflow, tensorboard)
    with sweeps.sigterm_stops():  # as `normbench run`: finished runs kept, nothing half-written
        outcome = execute(todo, results_dir, smoke=smoke, force=force, since=sweeps.now(),
                          quiet=quiet, jobs=jobs, executor=executor, address=None,
                          retry_fallback=False, describe=specs.summary, trackers=trackers)
    if todo:
        tables.write_summaries(results_dir)
    if outcome.interrupted:
        raise KeyboardInterrupt
    if outcome.failed:
        raise NormbenchError("; ".join(f"{rid}: {why}" for rid, why in outcome.failed))
    found = [store.finished(results_dir, p.run_id) for p in planned]
    return [r for r in found if r is not None]


def make_trackers(results_dir: Path, mlflow: bool, tensorboard: str | os.PathLike | None) -> tuple:
    """The trackers asked for (each checks its library is installed before anything runs)."""
    from normbench import track

    found = []
    if mlflow:
        found.append(track.MLflow(results_dir))
    if tensorboard is not None:
        found.append(track.TensorBoard(Path(tensorboard)))
    return tuple(found)


def _filters(where: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    if where is None:
        return []
    if isinstance(where, Mapping):
        return [f"{k}={'null' if v is None else v}" for k, v in where.items()]
    if isinstance(where, str):
        return [where]
    return list(where)


def results_rows(results: str | os.PathLike = "results", *, runs: bool = False,
                 where: Mapping[str, Any] | Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The rows load_results puts in its DataFrame (no pandas needed)."""
    results_dir = Path(results)
    if not results_dir.is_dir():
        raise NormbenchError(f"results directory {results_dir}: not found")
    records, _ = store.load_records(results_dir)
    records = tables.where(records, _filters(where))
    if not runs:
        return [{k: v for k, v in row.items() if k not in ("spec", "accuracies")}
                for row in tables.group_rows(records)]
    out = []
    for r in records:
        row = {**tables.flat_spec(r.spec), **tables.run_row(r)}
        row.update({f"env.{k}": v for k, v in r.env.items()})
        row["has_model"] = bool(r.saved_model) and (
            store.run_dir(results_dir, r.run_id) / r.saved_model).is_file()
        out.append(row)
    return out


def load_results(results: str | os.PathLike = "results", *, runs: bool = False,
                 where: Mapping[str, Any] | Iterable[str] | None = None):
    """The results as a pandas DataFrame: one row per experiment (runs that differ only by seed,
    with n, mean and 95% CI, as `normbench compare`), or with `runs=True` one row per run with the
    flattened spec as columns (`model.norm.type`, `train.batch_size`, ...), its metrics and its
    environment (`env.tensorflow`, ...). `where` filters as `--where` does: {"model.norm.type":
    "group"} or ["train.batch_size=8"]. Needs the pandas extra: pip install 'normbench[pandas]'."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("normbench.load_results needs pandas: pip install 'normbench[pandas]'") from None
    return pd.DataFrame(results_rows(results, runs=runs, where=where))
