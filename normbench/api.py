"""normbench from Python: `run(spec, ...) -> [RunRecord]` and `load_results(...) -> DataFrame`.

The same validation, run ids, records and resumption as `normbench run` and `normbench compare`;
errors are raised as `NormbenchError`, never `SystemExit`. Importing this module does not import
TensorFlow: training imports it, in the process that trains.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from normbench import console, executors, grid, identity, store, tables, tuning
from normbench.errors import NormbenchError
from normbench.index import Index
from normbench.spec import Spec

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


def execute(todo: list[executors.Planned], results_dir: Path, *, smoke: bool, force: bool,
            since: str, quiet: bool, jobs: int, executor: str, address: str | None,
            retry_fallback: bool, describe: Callable[[Any], str],
            trackers: tuple = (), slurm: Any = None,
            record_index: Index | None = None) -> executors.Outcome:
    """Run the planned runs on the engine named `executor` (executors.ENGINES: in this process or
    a pool of local workers, on Ray, as Slurm jobs with `slurm`, a SlurmSpec, by default the
    first run's `slurm:` block), with progress unless `quiet`."""
    if not todo:
        return executors.Outcome()
    if executor == "local":
        jobs, why = executors.worker_count(jobs, len(todo))
        if why and not quiet:
            console.note(f"starting {jobs} worker(s): {why}")
    index = {item.run_id: i for i, item in enumerate(todo)}

    def announce(item) -> None:
        if not quiet:
            console.note(f"run {index[item.run_id] + 1}/{len(todo)} {describe(item.spec)}"
                         + (" (smoke)" if smoke else ""))

    engine = executors.engine(executor, executors.Options(
        results_dir, smoke, quiet=quiet, jobs=jobs, address=address,
        slurm=slurm or todo[0].spec.slurm, announce=announce))  # its checks: before any claim
    driver = executors.Driver(results_dir, force, since, retry_fallback, tuple(trackers),
                              record_index)
    if not engine.title:
        return driver.drive(engine, todo)
    bar, task = console.sweep_progress(len(todo), engine.title.format(jobs=jobs), disable=quiet)
    with bar:
        def progress(done: int, running: list[str]) -> None:
            bar.update(task, completed=done, running="; ".join(sorted(running))[:60])

        return driver.drive(engine, todo, progress)


@dataclass
class Plan:
    """What an invocation of `normbench run` or `normbench.run` has to do."""

    planned: list[executors.Planned]  # every distinct run, in grid order
    todo: list[executors.Planned]  # those to train now
    results_dir: Path
    smoke: bool
    force: bool
    retry_fallback: bool
    index: Index | None = None  # the record index plan() used; run_plan() writes what it learned

    @property
    def finished(self) -> int:
        return len(self.planned) - len(self.todo)

    @property
    def fell_back(self) -> int:
        """Finished runs that trained on fallback data (mnist-10k for an offline mnist)."""
        return sum(p.fallback and p.done for p in self.planned)


def plan_runs(grids: list[grid.Grid], results_dir: Path, *, smoke: bool = False,
              sets: Iterable[str] = (), force: bool = False, retry_fallback: bool = False,
              from_files: bool = True) -> Plan:
    """Every run of `grids` (with `--smoke`'s shrinking, explicit `sets` kept), its run id and
    whether it is to run now. The first half of the one pipeline of `run`."""
    grids = [tuning.apply(g, results_dir, smoke) for g in grids]  # tuned rates into the specs
    loaded = [s for g in grids for s in g.runs]
    hashes = None if smoke else [h for g in grids for h in g.hashes]
    if smoke:
        loaded = grid.smoke(loaded, list(sets))
    record_index = Index.load(results_dir)
    planned = executors.plan(loaded, smoke, results_dir, retry_fallback=retry_fallback,
                             hashes=hashes, spec_files=[str(g.path) if from_files else None
                                                        for g in grids for _ in g.runs],
                             index=record_index)
    todo = [p for p in planned if force or not p.done]
    return Plan(planned, todo, results_dir, smoke, force, retry_fallback, record_index)


@dataclass
class Done:
    outcome: executors.Outcome
    summaries: bool  # summary.md and summary.csv were rebuilt


def run_plan(plan: Plan, *, quiet: bool, jobs: int = 1, executor: str = "local",
             address: str | None = None, trackers: tuple = (),
             slurm_overrides: Mapping[str, Any] | None = None,
             describe: Callable[[Any], str] | None = None) -> Done:
    """Train what `plan` has to do and rebuild the summaries: the second half of the pipeline
    `normbench run` and `normbench.run` share. SIGTERM stops it as Ctrl-C does while it runs
    (on the main thread; the caller's handler comes back after)."""
    from normbench import spec as specs

    slurm = None
    if executor == "slurm" and plan.todo:
        try:
            slurm = plan.todo[0].spec.slurm.model_copy(update=dict(slurm_overrides or {}))
            slurm = type(slurm).model_validate(slurm.model_dump())
        except ValueError as exc:
            raise NormbenchError(f"--slurm-*: {exc}") from None
    store.prepare(plan.results_dir)
    if plan.finished and not quiet:
        console.note(f"skipping {plan.finished} finished run(s) (--force runs them again)")
    if plan.fell_back and not quiet:
        console.note(f"{plan.fell_back} finished run(s) trained on fallback data (mnist-10k for "
                     "an offline mnist); --retry-fallback trains them again once the data is there")
    try:
        with executors.sigterm_stops():  # finished runs kept, nothing half-written
            outcome = execute(plan.todo, plan.results_dir, smoke=plan.smoke, force=plan.force,
                              since=executors.now(), quiet=quiet, jobs=jobs, executor=executor,
                              address=address, retry_fallback=plan.retry_fallback,
                              describe=describe or specs.summary, trackers=trackers, slurm=slurm,
                              record_index=plan.index)
    finally:
        if plan.index is not None:  # this process saves runs: it keeps the index current
            plan.index.write()
    summaries = bool(plan.todo) and not (outcome.interrupted and not outcome.ran)
    if summaries:
        tables.write_summaries(plan.results_dir)
    return Done(outcome, summaries)


def tune(g: grid.Grid, results_dir: Path, *, smoke: bool = False, quiet: bool = True,
         jobs: int = 1, executor: str = "local", address: str | None = None,
         sets: Iterable[str] = ()) -> tuple[list[dict], Path]:
    """A study's tuning stage (`tuning`): train each group's standing run at every rate of the
    grid into RESULTS/tuning/NAME (resumable, like any sweep), extend a grid whose best rate sits
    at an edge, and freeze the choice. Returns (the choice table, chosen.json)."""
    groups = tuning.groups(g)
    t = g.runs[0].tune
    target = tuning.directory(results_dir, g.runs[0].name, smoke)
    rates = {group.key: list(t.learning_rate) for group in groups}
    grown = {group.key: 0 for group in groups}
    while True:
        todo = [tuning.tuning_run(group, rate, t.seed) for group in groups
                for rate in rates[group.key]]
        plan = plan_runs([grid.Grid(g.path, {}, [], [t.seed], todo,
                                    [identity.spec_hash(s) for s in todo])], target, smoke=smoke,
                          sets=list(sets))
        done = run_plan(plan, quiet=quiet, jobs=jobs, executor=executor, address=address)
        if done.outcome.interrupted:
            raise NormbenchError("tuning interrupted: finished tuning runs are kept; run normbench "
                                 "tune again to complete it")
        found = {p.run_id: store.finished(target, p.run_id) for p in plan.planned}
        missing = [rid for rid, r in found.items() if r is None]
        if missing:
            o = done.outcome
            why = dict(o.failed) | {rid: "claimed by another process" for rid in o.busy}
            said = "; ".join(f"{rid}: {why.get(rid, 'not run')}" for rid in missing[:3])
            raise NormbenchError(f"{len(missing)} tuning run(s) did not finish ({said}"
                                 f"{' ...' if len(missing) > 3 else ''}); run normbench tune again")
        table, again = [], False
        for group in groups:
            errors = {}
            for rate in rates[group.key]:
                run = tuning.tuning_run(group, rate, t.seed)
                run = grid.smoke([run], list(sets))[0] if smoke else run
                rid = store.run_id(run.name, identity.spec_hash(run), smoke)
                errors[rate] = tuning.held_out_error(found[rid])  # never a test metric
            if not any(math.isfinite(e) for e in errors.values()):
                raise NormbenchError(f"tuning {group.label}: every rate of the grid diverged or "
                                     "has no held-out error; nothing to choose (lower the grid)")
            chosen = tuning.best(errors)
            nxt = tuning.past_edge(rates[group.key], chosen)
            if nxt is not None and grown[group.key] < t.extend and math.isfinite(errors[chosen]):
                rates[group.key].append(nxt)
                grown[group.key] += 1
                again = True
            table.append({"key": list(group.key), "label": group.label,
                          "sensitivity": group.sensitivity, "learning_rate": chosen,
                          "held_out_error": {f"{r:g}": (e if math.isfinite(e) else None)
                                             for r, e in sorted(errors.items())},
                          "edge": nxt is not None, "extended": grown[group.key]})
        if not again:
            break
    records = [r for r in found.values() if r is not None]
    return table, tuning.freeze(g, results_dir, smoke, table, records)


def run(spec: str | os.PathLike | Mapping | Spec, *, overrides: Mapping[str, Any] | None = None,
        sweep: Mapping[str, list] | None = None, results: str | os.PathLike = "results",
        smoke: bool = False, jobs: int = 1, executor: str = "local", quiet: bool = True,
        force: bool = False, mlflow: bool = False,
        tensorboard: str | os.PathLike | None = None,
        retry_fallback: bool = False) -> list[store.RunRecord]:
    """Train every run a spec describes (its sweep x seeds) that is not finished yet, and return
    the records of all of them, in grid order.

    `spec` is a YAML path, a spec document (dict) or a `Spec`; `overrides` maps field paths to
    values ({"train.epochs": 3}); `sweep` adds or replaces sweep axes ({"train.batch_size": [8,
    32]}). Records are written under `results` exactly as `normbench run` writes them, so an
    interrupted call completes when called again. `executor` is local, ray or slurm (the spec's
    `slurm:` block); `mlflow=True` and `tensorboard=DIR` log each finished run from this process;
    `retry_fallback=True` trains again the runs that trained on fallback data.
    Raises `NormbenchError` on bad input or when a run fails (the others are kept)."""
    _check_types(overrides=(overrides, Mapping, True), sweep=(sweep, Mapping, True),
                 results=(results, (str, os.PathLike), False), smoke=(smoke, bool, False),
                 quiet=(quiet, bool, False), force=(force, bool, False),
                 mlflow=(mlflow, bool, False), retry_fallback=(retry_fallback, bool, False),
                 tensorboard=(tensorboard, (str, os.PathLike), True),
                 executor=(executor, str, False))
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 64:
        raise NormbenchError(f"jobs: expected 1..64, got {jobs!r}")
    if executor not in executors.ENGINES:
        raise NormbenchError(f"executor {executor!r}: choose {', '.join(executors.ENGINES)}")
    results_dir = Path(results)
    plan = plan_runs(grids_of(spec, overrides, sweep), results_dir, smoke=smoke,
                     sets=[f"{k}=" for k in (overrides or {})], force=force,
                     retry_fallback=retry_fallback, from_files=isinstance(spec, (str, os.PathLike)))
    trackers = make_trackers(results_dir, mlflow, tensorboard)
    outcome = run_plan(plan, quiet=quiet, jobs=jobs, executor=executor,
                       trackers=trackers).outcome
    if outcome.interrupted:
        raise KeyboardInterrupt
    if outcome.failed:
        raise NormbenchError("; ".join(f"{rid}: {why}" for rid, why in outcome.failed))
    found = [store.finished(results_dir, p.run_id) for p in plan.planned]
    return [r for r in found if r is not None]


def _check_types(**arguments: tuple[Any, Any, bool]) -> None:
    """Each argument of the Python API against its type(s) (None allowed where the flag says):
    a wrong type is a NormbenchError naming it, never a TypeError from deep inside."""
    for name, (value, kinds, optional) in arguments.items():
        if value is None and optional:
            continue
        if isinstance(value, bool) and kinds is not bool and bool not in (
                kinds if isinstance(kinds, tuple) else (kinds,)):
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = kinds if isinstance(kinds, tuple) else (kinds,)
            want = " or ".join(getattr(k, "__name__", str(k)) for k in names)
            raise NormbenchError(f"{name}: expected {want}{' or None' if optional else ''}, "
                                 f"got {type(value).__name__} {value!r:.60}")


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
    _check_types(results=(results, (str, os.PathLike), False), runs=(runs, bool, False),
                 where=(where, (Mapping, str, list, tuple), True))
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
    rows = results_rows(results, runs=runs, where=where)  # bad arguments say so first
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("normbench.load_results needs pandas: pip install 'normbench[pandas]'") from None
    return pd.DataFrame(rows)
