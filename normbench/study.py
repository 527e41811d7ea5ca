"""A study's records laid out as cells: one cell per norm, axis value (x) and facet, its runs by seed.

`load_study` finds the runs a study's spec files describe (by run id) and lays them out; the
guards (`guards.py`), the comparisons (`findings.py`) and the documents (`report.py`) read the
cells. No TensorFlow, no matplotlib.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbench import grid, identity, stats, store, tables, tuning
from normbench import spec as specs
from normbench.errors import NormbenchError

CHANCE_ERROR = 0.9  # 10 classes

# Norms whose output does not depend on the other images of the batch: on an axis that moves the
# batch, their change is the protocol's (steps, learning rate), and BN's effect is read net of it.
BATCH_DEPENDENT = ("batch", "batch_renorm")


def metric_last(r: store.RunRecord) -> float | None:
    """The fraction of training steps whose evaluations the run's study averages (its saved
    spec's study.metric_last), or None for the paper's median of the last 5."""
    value = (r.spec.get("study") or {}).get("metric_last")
    return float(value) if isinstance(value, (int, float)) and 0 < value <= 1 else None


def metric_epochs(r: store.RunRecord) -> list[int]:
    """The evaluated epochs the study's metric reads: those ending in the last `metric_last` of
    the run's optimizer steps (epoch e ends at step min(e * steps per epoch, steps)), else the
    last 5 evaluated."""
    evaluated = [e.epoch for e in r.history if e.test_accuracy is not None]
    fraction = metric_last(r)
    if fraction is None:
        return evaluated[-5:]
    per_epoch = math.ceil(r.optimizer_steps / max(1, r.epochs)) if r.optimizer_steps else 1
    total = r.optimizer_steps or r.epochs
    inside = [e for e in evaluated
              if min(e * per_epoch, total) > (1 - fraction) * total * (1 + 1e-12)]
    return inside or evaluated[-1:]


def error_of(r: store.RunRecord) -> float:
    """The study's metric: the mean test error of the evaluations in the last `study.metric_last`
    of the steps when the spec sets it; else the median test error of the last 5 evaluations when
    the run evaluated periodically (the paper's), else the final test error; chance for a
    diverged run."""
    if r.status == "diverged":
        return CHANCE_ERROR
    if metric_last(r) is not None:
        wanted = set(metric_epochs(r))
        errors = [1.0 - e.test_accuracy for e in r.history
                  if e.epoch in wanted and e.test_accuracy is not None]
        if errors:
            return statistics.fmean(errors)
        return 1.0 - r.test_accuracy
    return r.test_error_median5 if r.test_error_median5 is not None else 1.0 - r.test_accuracy


def final_error(r: store.RunRecord) -> float:
    """The last evaluation's test error (chance for a diverged run)."""
    return CHANCE_ERROR if r.status == "diverged" else 1.0 - r.test_accuracy


@dataclass
class Cell:
    """One experiment of the study: its runs by seed."""

    norm: str
    x: Any
    facet: str
    runs: dict[int, store.RunRecord] = field(default_factory=dict)
    depth: str = ""  # the facet's model depth, where the study has several
    # the facet's other part: (field, value) of each field that varies inside a (norm, x, depth)
    # cell, e.g. (("steps", 9600),); findings compares the same cell across these settings
    setting: tuple[tuple[str, Any], ...] = ()

    @property
    def errors(self) -> dict[int, float]:
        return {seed: error_of(r) for seed, r in sorted(self.runs.items())}

    @property
    def diverged(self) -> int:
        return sum(r.status == "diverged" for r in self.runs.values())

    @property
    def label(self) -> str:
        """'batch at 2 (depth 3 ...)': how sentences and tables name the cell."""
        at = "" if self.x == "any" else f" at {self.x}"
        return f"{self.norm}{at}" + (f" ({self.facet})" if self.facet else "")

    def summary(self) -> tuple[float, float | None]:
        mean, _, half = stats.mean_ci(list(self.errors.values()))
        return mean, half

    def sd(self) -> float | None:
        """Sample SD of the metric over seeds (None for one seed)."""
        return stats.mean_ci(list(self.errors.values()))[1]

    def median_train_loss(self) -> float:
        """Median final training loss of the runs that did not diverge (NaN: none)."""
        losses = sorted(r.train_loss for r in self.runs.values()
                        if r.status != "diverged" and math.isfinite(r.train_loss))
        return _median(losses) if losses else math.nan

    def protocol(self) -> dict[str, str]:
        """What the optimizer saw, as text: batch size, steps and peak learning rate (each a
        single value, or the values its runs disagree on)."""
        def one(values):
            shown = sorted({tables.value_label(v) for v in values})
            return shown[0] if len(shown) == 1 else "/".join(shown)
        runs = list(self.runs.values())
        return {"batch": one(r.batch_size for r in runs),
                "steps": one(r.optimizer_steps for r in runs),
                "lr": one(None if r.learning_rate is None else float(f"{r.learning_rate:.6g}")
                          for r in runs)}


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


@dataclass
class Study:
    name: str
    x_label: str
    cells: list[Cell]
    missing: list[str]
    specs: list[specs.Spec]
    metric: str
    spec_files: list[Path] = field(default_factory=list)
    smoke: bool = False
    results_dir: Path | None = None

    @property
    def records(self) -> list[store.RunRecord]:
        return [r for c in self.cells for r in c.runs.values()]

    @property
    def context(self) -> str:
        from normbench import plot

        return plot.context(self.records)

    @property
    def facets(self) -> list[str]:
        """In the cells' order: by depth, then each setting by its values (10000 after 2000)."""
        return list(dict.fromkeys(c.facet for c in self.cells))

    @property
    def numeric_x(self) -> bool:
        """Whether the axis is a number (batch, v, groups) that a trend can be fitted over."""
        xs = [c.x for c in self.cells if c.x != "any"]
        return bool(xs) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                and x > 0 for x in xs)

    def series(self, facet: str, norm: str) -> list[Cell]:
        """The norm's cells along the axis in one facet, by x ('any' cells left out)."""
        mine = [c for c in self.cells if c.facet == facet and c.norm == norm and c.x != "any"]
        return sorted(mine, key=lambda c: tables.sort_key(c.x))

    def norms(self, facet: str) -> list[str]:
        return sorted({c.norm for c in self.cells if c.facet == facet})

    @property
    def n_test(self) -> int:
        return max(r.dataset.n_test for r in self.records)


def _x_axis(records: list[store.RunRecord]) -> tuple[str, Any]:
    """What the study varies, and a function giving a record's x value."""
    def flat(r):
        return tables.flat_spec(r.spec)

    if any(flat(r).get("model.norm.virtual_batch_size") for r in records):
        by_batch: dict[int, set] = {}
        for r in records:
            if flat(r).get("model.norm.virtual_batch_size"):
                by_batch.setdefault(flat(r)["train.batch_size"], set()).add(
                    flat(r)["model.norm.virtual_batch_size"])

        def per_group(r):
            f = flat(r)
            if f.get("model.norm.virtual_batch_size"):
                return f["model.norm.virtual_batch_size"]
            # a batch-independent norm sits at the v of its batch (the replicas protocol: batch
            # 8v); where BN ran several v at its batch (ghost BN, batch fixed), it is the same at
            # every v
            vs = by_batch.get(f["train.batch_size"], set())
            return next(iter(vs)) if len(vs) == 1 else "any"
        return "images per BN group (per-replica batch v)", per_group
    groups = {flat(r).get("model.norm.groups") for r in records if r.norm_type == "group"}
    if len(groups) > 1:  # other norms (a BN baseline) are the same at every value of the axis
        return ("GroupNorm groups (1 = LN ... channels = IN)",
                lambda r: flat(r).get("model.norm.groups") if r.norm_type == "group" else "any")
    return "batch size", lambda r: flat(r)["train.batch_size"]


def _facet(r: store.RunRecord, varying: bool) -> str:
    if not varying:
        return ""
    widths = tables.flat_spec(r.spec).get("model.widths")
    depth = sum(1 for w in widths if w != "M") if widths else 0
    return f"depth {depth} ({tables.value_label(widths)})"


def _config(r: store.RunRecord) -> dict:
    """The fields that make a record's experiment: its flattened spec less seed and labels."""
    return {k: v for k, v in tables.flat_spec(r.spec).items()
            if k != "train.seed" and not k.startswith(tables.OUTSIDE_IDENTITY)}


def _other_fields(records: list[store.RunRecord], key) -> list[str]:
    """Fields that differ between runs the layout (norm, x, depth) would put in one cell: each
    becomes part of the facet, so every run counts in the cell of its own configuration."""
    by_key: dict[tuple, list[dict]] = {}
    for r in records:
        by_key.setdefault(key(r), []).append(_config(r))
    fields = set()
    for configs in by_key.values():
        for name in set().union(*configs):
            if len({tables.value_label(c.get(name)) for c in configs}) > 1:
                fields.add(name)
    return sorted(fields)


def _find(runs: list[specs.Spec], results_dir: Path, smoke: bool
          ) -> tuple[list[store.RunRecord], list[str]]:
    wanted = [store.run_id(s.name, identity.spec_hash(s), smoke) for s in runs]
    found = {rid: store.finished(results_dir, rid) for rid in wanted}
    return ([r for r in found.values() if r is not None],
            [rid for rid, r in found.items() if r is None])


def load_study(spec_files: list[Path], results_dir: Path, smoke: bool = False,
               overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """The runs the spec files describe (with `-s` overrides, as they were run), found in the
    results directory by run id."""
    # a spec with a tune: block gets its frozen learning rates (its run ids depend on them)
    runs = [s for path in spec_files
            for s in tuning.apply(grid.load_grid(path, overrides), results_dir, smoke).runs]
    records, missing = _find(grid.smoke(runs, list(overrides)) if smoke else runs, results_dir,
                             smoke)
    if not records:
        other, _ = _find(runs if smoke else grid.smoke(runs, list(overrides)), results_dir,
                         not smoke)
        files = ", ".join(map(str, spec_files))
        if other and not smoke:
            raise NormbenchError(f"no finished full-size runs of {files} in {results_dir}; "
                                 f"its {len(other)} finished run(s) there were made with --smoke: "
                                 "add --smoke to report them")
        if other:
            raise NormbenchError(f"no --smoke runs of {files} in {results_dir}; its "
                                 f"{len(other)} finished run(s) there are full-size: drop --smoke")
        sets = "".join(f" -s {o}" for o in overrides)
        raise NormbenchError(f"no finished runs of {files}{sets} in {results_dir}: run them first "
                             "(normbench run ...), or give report the -s overrides they were "
                             "run with")
    if smoke:
        runs = grid.smoke(runs, list(overrides))
    x_label, x_of = _x_axis(records)
    depths = {tables.value_label(tables.flat_spec(r.spec).get("model.widths")) for r in records}

    def layout(r):
        return r.norm_type, x_of(r), _facet(r, len(depths) > 1)

    others = _other_fields(records, layout)
    cells: dict[tuple, Cell] = {}
    for r in records:
        norm, x, depth = layout(r)
        config = _config(r)
        setting = tuple((name.rsplit(".", 1)[-1], config.get(name)) for name in others)
        facet = ", ".join([depth] * bool(depth)
                          + [f"{k}={tables.value_label(v)}" for k, v in setting])
        cell = cells.setdefault((norm, x, facet), Cell(norm, x, facet, depth=depth,
                                                       setting=setting))
        if r.seed in cell.runs:  # the layout lost a field: never let one run hide another
            raise NormbenchError(f"report: runs {cell.runs[r.seed].run_id} and {r.run_id} fall in "
                                 "one cell; report their specs separately")
        cell.runs[r.seed] = r
    order = sorted(cells.values(), key=lambda c: (  # settings in their values' order
        c.depth, [tables.sort_key(v) for _, v in c.setting], c.norm, tables.sort_key(c.x)))
    periodic = any(r.test_error_median5 is not None for r in records)
    fractions = {metric_last(r) for r in records}
    if len(fractions) > 1:
        raise NormbenchError("report: the runs' specs name different study.metric_last values "
                             f"({', '.join(map(str, sorted(fractions, key=str)))}); report them "
                             "separately")
    fraction = fractions.pop() if fractions else None
    metric = (f"test error (%): mean of the evaluations in the last {100 * fraction:g}% of "
              "training steps (the study's pre-stated metric)" if fraction is not None else
              "test error (%): median of the last 5 per-epoch evaluations (the paper's metric)"
              if periodic else "test error (%) at the end of training")
    return Study(runs[0].name, x_label, order, missing, runs, metric, list(spec_files), smoke,
                 results_dir)


def binomial_se(error: float, n_test: int) -> float:
    """The standard error of one run's test error from the finite test set alone."""
    return math.sqrt(max(error * (1.0 - error), 0.0) / n_test) if n_test else math.nan
