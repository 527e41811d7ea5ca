"""A study's tuning stage: learning rates chosen on held-out data, frozen before any study run.

A spec's `tune:` block names a learning-rate grid and the fields whose values each get their own
rate (`by`, the norm by default). `normbench tune SPEC` trains, for each group, its first run
in grid order (put the reference value first on each axis: BN's v = 64 before v = 2) at every
rate of the grid, with `tune.seed` (never a study seed), and picks the rate with the lowest
held-out error at the final evaluation (ties: the smaller rate). The test set is trained past
and evaluated as in any run, but never read for the choice (a test shuffles the test labels and
gets the same choice). A best rate at an edge of the grid adds the next rate past it, up to
`tune.extend` times, a rule fixed in the spec before the stage runs.

The choice is frozen in `RESULTS/tuning/NAME/chosen.json` with the grid, the rule and the sha256
of the tuning records; `apply` writes each group's rate into its runs' specs (so into their run
ids) and the records' hash into `tune.records_sha256` (outside the run id). Tuning records live
in their own results directory, `RESULTS/tuning/NAME/`, never among the study's runs. No
TensorFlow: training goes through `api.tune`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from normbench import grid as grids
from normbench import identity, store, tables
from normbench import spec as specs
from normbench.errors import NormbenchError

RULE = ("the lowest held-out error at the final evaluation (ties: the smaller rate); a best rate "
        "at an edge of the grid adds the next rate past it, up to tune.extend times")


@dataclasses.dataclass
class Group:
    """The runs that share one learning rate, and the run that stands for them in tuning."""

    key: tuple  # the values of tune.by (or ("sensitivity", i))
    label: str  # "batch", or "sensitivity: model.norm.virtual_batch_size=2"
    base: specs.Spec
    sensitivity: bool = False


def directory(results_dir: Path, name: str, smoke: bool = False) -> Path:
    """Where a study's tuning records and its frozen choice live."""
    return Path(results_dir) / "tuning" / (f"{name}-smoke" if smoke else name)


def _key(spec: specs.Spec, by: list[str]) -> tuple:
    flat = tables.flat_spec(specs.to_dict(spec))
    return tuple(tables.value_label(flat.get(path)) for path in by)


def groups(g: grids.Grid) -> list[Group]:
    """The groups a study's tuning stage chooses a rate for, with the run standing for each."""
    if not g.runs:
        raise NormbenchError(f"{g.path}: describes no runs")
    t = g.runs[0].tune
    if not t.learning_rate:
        raise NormbenchError(f"{g.path}: no tune.learning_rate grid to choose from; add a tune: "
                             "block (see the README's tuning section)")
    known = tables.flat_spec(specs.to_dict(g.runs[0]))
    bad = [p for p in t.by if p not in known or p.startswith(tables.OUTSIDE_IDENTITY)]
    if bad or "train.learning_rate" in t.by or "train.seed" in t.by:
        raise NormbenchError(f"{g.path}: tune.by: {bad[0] if bad else 'train.*'!r} is not a field "
                             f"a rate can be chosen per; e.g. model.norm.type")
    seeds = {r.train.seed for r in g.runs}
    if t.seed in seeds:
        raise NormbenchError(f"{g.path}: tune.seed {t.seed} is one of the study's seeds; tuning "
                             "must use a seed the study never reports")
    if any(not r.train.validation_split for r in g.runs):
        raise NormbenchError(f"{g.path}: tuning chooses on held-out data: set "
                             "train.validation_split (and train.validation_fixed: true, so that "
                             "every seed holds out the same images)")
    found: dict[tuple, Group] = {}
    for run in g.runs:
        key = _key(run, t.by)
        if key not in found:
            label = ", ".join(f"{p}={v}" if len(t.by) > 1 else str(v) for p, v in zip(t.by, key))
            found[key] = Group(key, label, run)
    out = list(found.values())
    for i, cell in enumerate(t.sensitivity):
        wanted = {p: tables.value_label(v) for p, v in cell.items()}
        match = next((r for r in g.runs
                      if all(tables.value_label(tables.flat_spec(specs.to_dict(r)).get(p)) == v
                             for p, v in wanted.items())), None)
        if match is None:
            raise NormbenchError(f"{g.path}: tune.sensitivity[{i}]: no run of the study has "
                                 f"{', '.join(f'{p}={v}' for p, v in wanted.items())}")
        out.append(Group(("sensitivity", i),
                         "sensitivity: " + ", ".join(f"{p}={v}" for p, v in wanted.items()),
                         match, sensitivity=True))
    return out


def tuning_run(group: Group, rate: float, seed: int) -> specs.Spec:
    """The group's standing run at `rate`, with the tuning seed."""
    base = group.base
    train = base.train.model_copy(update={"learning_rate": float(rate), "seed": seed})
    # a tuning run is a plain run: without the tune: block (nothing to apply to it)
    return base.model_copy(update={"train": train, "tune": specs.TuneSpec()})


def held_out_error(record: store.RunRecord) -> float:
    """The final held-out error (inf for a non-finite training loss or no held-out evaluation).
    Only this is read to choose: never a test metric, nor the record's status, which a test
    accuracy at chance would set to diverged."""
    if not all(math.isfinite(e.loss) for e in record.history):
        return math.inf
    evaluated = [e.val_accuracy for e in record.history if e.val_accuracy is not None]
    return 1.0 - evaluated[-1] if evaluated else math.inf


def best(errors: dict[float, float]) -> float:
    """The rule: the lowest held-out error; ties to the smaller rate."""
    return min(sorted(errors), key=lambda rate: errors[rate])


def past_edge(rates: list[float], chosen: float) -> float | None:
    """The next rate past the grid's edge where `chosen` sits (None: inside, or one rate)."""
    rates = sorted(rates)
    if len(rates) < 2:
        return None
    if chosen == rates[-1]:
        return float(f"{rates[-1] * rates[-1] / rates[-2]:.6g}")
    if chosen == rates[0]:
        return float(f"{rates[0] * rates[0] / rates[1]:.6g}")
    return None


def records_sha256(records: list[store.RunRecord]) -> str:
    """One hash of the tuning records (their saved metrics, by run id)."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.run_id):
        h.update(r.run_id.encode() + b"\0" + r.model_dump_json().encode() + b"\0")
    return h.hexdigest()


def freeze(g: grids.Grid, results_dir: Path, smoke: bool, table: list[dict],
           records: list[store.RunRecord]) -> Path:
    """Write the choice (chosen.json) beside the tuning records; returns its path."""
    t = g.runs[0].tune
    doc = {"study": g.runs[0].name, "smoke": smoke, "rule": RULE, "grid": t.learning_rate,
           "by": t.by, "seed": t.seed, "extend": t.extend, "sensitivity": t.sensitivity,
           "choices": table, "runs": sorted(r.run_id for r in records),
           "records_sha256": records_sha256(records), "standing": standing(g),
           "frozen": dt.datetime.now(dt.timezone.utc).isoformat()}
    path = directory(results_dir, g.runs[0].name, smoke) / "chosen.json"
    store.write_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def standing(g: grids.Grid) -> dict[str, str]:
    """Each group's standing run, as the hash of its identity less rate and seed: what the
    choice was made for (a changed model, data or schedule makes the choice stale)."""
    out = {}
    for group in groups(g):
        base = tuning_run(group, 1.0, 0)
        out["/".join(map(str, group.key))] = identity.spec_hash(base, without_seed=True)
    return out


def load(results_dir: Path, name: str, smoke: bool = False) -> dict | None:
    path = directory(results_dir, name, smoke) / "chosen.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(store.read_regular(path).decode())
        if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list) or not all(
                isinstance(c, dict) and isinstance(c.get("key"), list)
                and isinstance(c.get("learning_rate"), (int, float))
                and isinstance(c.get("sensitivity"), bool)
                and isinstance(c.get("held_out_error"), dict) and "label" in c
                for c in doc["choices"]) or not isinstance(doc.get("records_sha256"), str):
            raise ValueError("not a tuning choice")
        return doc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise NormbenchError(f"{path}: damaged ({str(exc)[:200]}); run normbench tune again") from None


def apply(g: grids.Grid, results_dir: Path, smoke: bool = False) -> grids.Grid:
    """The grid with each run's learning rate from the frozen choice (a spec without a tune:
    block is returned as it is). No choice yet, one for another grid, or tuning records changed
    since the choice: an error saying to run `normbench tune`."""
    if not g.runs or not g.runs[0].tune.learning_rate:
        return g
    t, name = g.runs[0].tune, g.runs[0].name
    doc = load(results_dir, name, smoke)
    command = f"normbench tune {g.path} --results {results_dir}{' --smoke' if smoke else ''}"
    if doc is None:
        raise NormbenchError(f"{g.path}: its learning rates are chosen by a tuning stage that has "
                             f"not run in {results_dir}: run `{command}` first")
    if (doc.get("grid"), doc.get("by"), doc.get("seed"), doc.get("extend"),
            doc.get("sensitivity")) != (t.learning_rate, t.by, t.seed, t.extend, t.sensitivity):
        raise NormbenchError(f"{g.path}: its tune: block differs from the one the frozen choice "
                             f"in {directory(results_dir, name, smoke)} was made with: run "
                             f"`{command}` again")
    if doc.get("standing") != standing(g):
        raise NormbenchError(f"{g.path}: the runs tuning chose for have changed since (model, data "
                             f"or schedule): run `{command}` again")
    tuned = store.load_records(directory(results_dir, name, smoke))[0]
    mine = [r for r in tuned if r.run_id in set(doc.get("runs", []))]
    if len(mine) != len(doc.get("runs", [])) or records_sha256(mine) != doc.get("records_sha256"):
        raise NormbenchError(f"{directory(results_dir, name, smoke)}: the tuning records changed "
                             f"since the choice was frozen: run `{command}` again")
    rates = {tuple(c["key"]): c["learning_rate"] for c in doc["choices"] if not c["sensitivity"]}
    runs = []
    for run in g.runs:
        key = _key(run, t.by)
        if key not in rates:
            raise NormbenchError(f"{g.path}: no rate was chosen for {', '.join(key)}: run "
                                 f"`{command}` again")
        train = run.train.model_copy(update={"learning_rate": float(rates[key])})
        tune = run.tune.model_copy(update={"records_sha256": doc["records_sha256"]})
        runs.append(run.model_copy(update={"train": train, "tune": tune}))
    return dataclasses.replace(g, runs=runs, hashes=[identity.spec_hash(r) for r in runs])


def describe(specs_: list[specs.Spec], results_dir: Path | None, smoke: bool
             ) -> tuple[list[str], tuple[list[str], list[list[str]]]]:
    """Where a study's learning rates came from (sentences), and the tuning table (each group's
    held-out error at every rate tried): what a report shows."""
    if not specs_:
        return [], ([], [])
    t = specs_[0].tune
    if not t.learning_rate:
        rates = sorted({s.train.learning_rate for s in specs_})
        scaled = {s.train.lr_scaling for s in specs_} - {"none"}
        return ([f"Learning rates: from the spec ({', '.join(f'{r:g}' for r in rates)}"
                 + (f", {'/'.join(sorted(scaled))} in the batch" if scaled else "")
                 + "), not chosen by a tuning stage on held-out data: how they were picked is not "
                 "in the records, and one rate for every cell may favour some of them."], ([], []))
    doc = load(results_dir, specs_[0].name, smoke) if results_dir is not None else None
    if doc is None:
        return ["Learning rates: the spec has a tune: block, but no frozen choice was found."], ([], [])
    other = [s for s in specs_ if s.tune.records_sha256 not in (None, doc["records_sha256"])]
    tried = sorted({float(r) for c in doc["choices"] for r in c["held_out_error"]})
    head = ["group"] + [f"{r:g}" for r in tried] + ["chosen"]
    rows, parts = [], []
    for c in doc["choices"]:
        errors = {float(r): e for r, e in c["held_out_error"].items()}
        rows.append([c["label"]] + [("-" if r not in errors else
                                     "diverged" if errors[r] is None else f"{100 * errors[r]:.2f}")
                                    for r in tried]
                    + [f"{c['learning_rate']:g}" + (" (edge)" if c["edge"] else "")])
        where = (" (at an edge of the grid even after extending it)" if c["edge"] else "")
        parts.append(f"{c['label']} {c['learning_rate']:g}{where}")
    lines = [f"Learning rates: chosen on held-out data by `normbench tune` (seed {doc['seed']}, "
             f"grid {', '.join(f'{r:g}' for r in doc['grid'])}; rule: {doc['rule']}; tuning "
             f"records sha256 {doc['records_sha256'][:12]}): " + "; ".join(parts) + ". Each rate "
             "was tuned at its group's first cell (e.g. BN at the largest v) and used at every "
             "cell of the group: along the axis a rate tuned elsewhere is part of what changes."]
    if other:
        lines.append(f"Learning rates: {len(other)} run(s) were made under another tuning choice "
                     "than the one frozen now.")
    return lines, (head, rows)
