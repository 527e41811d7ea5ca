"""What a study's records can and cannot support: convergence, confounds, the ceiling, the metric window.

Each guard reads the cells of a `study.Study` and returns verdicts; `findings.py` keeps the
cells a guard rejects out of its tests and headline, and `report.py` shows every verdict. The
thresholds are fixed here, with their reasons, before any report is regenerated:

- **Not converged (per run)**: the final training loss is above `LOSS_FACTOR` (10x) the median
  final training loss of the best-fitting cell of the same facet (same model depth), and above it
  by more than `LOSS_GAP` (0.05 nats). A decade, not less, because BatchNorm with small ghost
  batches records its training loss under its own noisy per-group statistics: on the committed
  mnist-10k records that puts BN at v = 2 at 4-7x the best cell while its test error is within
  half a point of BN at v = 64. The gap keeps a cell at 0.002 from being flagged against 0.0002.
  A diverged run is not converged too.
- **Still improving (per cell)**: over the last quarter of training, the error of the first
  evaluation inside it minus the final one, averaged over seeds, exceeds half the cell's minimum
  detectable effect (`noise_mde`). Held-out error where every run of the cell recorded one, else
  test error (the verdict says which). The first evaluation *inside* the quarter, so a step
  schedule's last drop (often at 75%) does not read as progress. Likewise where the recorded
  learning rate still changes inside the quarter (a cosine annealing: 8.5% of its peak at epoch
  13 of 16; a step inside the quarter): the drop is read from the first evaluation whose rate is
  down to `TAIL` (5%) of the peak, because the error falls while a schedule anneals whether or
  not more steps would help (on the Fashion-MNIST stage C records, BN at v = 64 fell 0.40 points
  over epochs 13-16 of 4,800 steps, yet doubling its steps gained -0.16). Where fewer than two
  evaluations reach that tail (a rate that never falls to 5%, sparse evaluations) or a rate is
  missing, the whole quarter is read, as before: the check errs towards flagging, never off.
- **Seed spread (per cell)**: the SD over seeds is above `SPREAD_FACTOR` (3x) the median SD of
  the facet's cells and above one run's binomial standard error: runs that end in different
  places did not settle. Only where the facet has at least `SPREAD_CELLS` (5) cells of at least
  `SPREAD_SEEDS` (3) seeds, so that the median SD is itself well estimated. A variance 9x the
  median cell's: were the true SDs equal and the median exact, a 5-seed cell (4 degrees of
  freedom) would reach it with probability about 3e-7 (chi-square with 4 df above 36); the
  median of a handful of cells is noisier, so the real rate is higher (against one other 5-seed
  cell, F(4, 4) above 9, it is about 3%). Below one binomial SE the seeds differ by less than
  the test set resolves.
- **Unstable (per run, a warning only)**: the epoch's training loss rose above `SPIKE_FACTOR` (2x)
  its lowest value so far and by more than `SPIKE_GAP` (0.1 nats). It does not exclude a cell.
- **Confounded axis**: along the axis, the optimizer's batch (unless it is the axis), the number
  of steps or the peak learning rate differ between a norm's cells.
- **Ceiling**: a reference error below `CEILING_ERROR` (3%) leaves effects of a few test images;
  stated as a count of test images with the binomial SE of one run.
- **Metric window**: the evaluations the metric takes its median over straddle a learning-rate
  change (a step milestone, the end of warmup).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from normbench import stats, store, tables
from normbench.study import (BATCH_DEPENDENT, Cell, Study, binomial_se, final_error, metric_epochs,
                             metric_last)

LOSS_FACTOR = 10.0
LOSS_GAP = 0.05
SPREAD_FACTOR = 3.0
SPREAD_SEEDS = 3  # the spread check needs cells of at least this many seeds...
SPREAD_CELLS = 5  # ...and this many of them in the facet, for the median SD to mean something
SPIKE_FACTOR = 2.0
SPIKE_GAP = 0.1
# Recorded learning rates at or below this fraction of the run's peak are the schedule's tail (a
# cosine's end): the metric window's changes there are not phases of training, and the
# still-improving check reads its drop from there.
TAIL = 0.05
CEILING_ERROR = 0.03
POWER = 0.8
ALPHA = 0.05
WINDOW = 5  # the metric's median is over the last 5 evaluations


def mde(sd: float | None, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Minimum detectable effect of a (paired or one-sample) t-test from an observed SD: the
    true mean difference that a two-sided test at `alpha` detects with probability about `power`,
    (t_{1-alpha/2} + t_{power}) * sd / sqrt(n) with n - 1 degrees of freedom (the usual
    approximation: at n = 5 and alpha 0.01 the exact noncentral-t power is 75%). None for n < 2."""
    if sd is None or n < 2 or not math.isfinite(sd):
        return None
    df = n - 1
    return (stats.t_ppf(1 - alpha / 2, df) + stats.t_ppf(power, df)) * sd / math.sqrt(n)


def noise_mde(cell: Cell, n_test: int) -> float:
    """The smallest change of the cell's mean error that its seeds could show: the larger of the
    MDE from the seeds' SD and the one from test-set noise alone (binomial SE of a run)."""
    errors = list(cell.errors.values())
    n = len(errors)
    mean = statistics.fmean(errors)
    from_test = (stats.t_ppf(1 - ALPHA / 2, 1e6) + stats.t_ppf(POWER, 1e6)) \
        * binomial_se(mean, n_test) / math.sqrt(n)
    return max(mde(cell.sd(), n) or 0.0, from_test)


# ---------------------------------------------------------------------------------------------
# Convergence


@dataclass
class Convergence:
    """One cell's convergence verdict: runs not converged (diverged, or a training loss far above
    the best cell's), cell-level reasons, and unstable runs (a warning)."""

    cell: Cell
    diverged: dict[int, str] = field(default_factory=dict)  # seed -> the reason
    ratios: dict[int, float] = field(default_factory=dict)  # seed -> train loss / the best cell's
    best: str = ""  # the best-fitting cell and its median final training loss
    reasons: list[str] = field(default_factory=list)  # about the cell as a whole
    unstable: dict[int, str] = field(default_factory=dict)  # seed -> the spike
    metric: str = "test"  # which error the still-improving check read: held-out or test

    @property
    def runs(self) -> set[int]:
        """Seeds whose run did not converge."""
        return set(self.diverged) | set(self.ratios)

    @property
    def converged(self) -> bool:
        return not self.runs and not self.reasons

    def verdict(self) -> str:
        """'5 of 5 not converged (final training loss 18-89x the best cell's ...)', or ''."""
        n = len(self.cell.runs)
        if self.converged:
            return ""
        why = []
        if self.ratios:
            low, high = min(self.ratios.values()), max(self.ratios.values())
            span = f"{low:.0f}x" if round(low) == round(high) else f"{low:.0f}-{high:.0f}x"
            why.append(f"final training loss {span} the best cell's, {self.best}")
        if self.diverged:
            why.append(f"{len(self.diverged)} diverged")
        count = len(self.runs) if self.runs else n
        return f"{count} of {n} not converged ({'; '.join(why + self.reasons)})"


def _spike(history: list[store.Epoch]) -> str | None:
    low = math.inf
    for e in history:
        if math.isfinite(low) and e.loss > SPIKE_FACTOR * low and e.loss - low > SPIKE_GAP:
            return f"training loss jumped from {low:.3g} to {e.loss:.3g} in epoch {e.epoch}"
        low = min(low, e.loss)
    return None


def _last_quarter_drop(r: store.RunRecord, held_out: bool) -> float | None:
    """Error of the first evaluation inside the last quarter of training minus the final one
    (positive: still falling); None without two evaluations there. Where the recorded learning
    rate still changes inside the quarter and two or more of its evaluations are at `TAIL` of
    the peak or below, the drop is read from the first of those."""
    key = "val_accuracy" if held_out else "test_accuracy"
    inside = [e for e in r.history if getattr(e, key) is not None and e.epoch > 0.75 * r.epochs]
    rates = [e.learning_rate for e in inside]
    if rates and None not in rates:
        peak = max(e.learning_rate for e in r.history if e.learning_rate is not None)
        if max(rates) > min(rates) * (1 + 1e-6) and max(rates) > TAIL * peak:
            tail = [e for e in inside if e.learning_rate <= TAIL * peak]
            if len(tail) >= 2:
                inside = tail
    if len(inside) < 2:
        return None
    return getattr(inside[-1], key) - getattr(inside[0], key)


def convergence(study: Study) -> dict[int, Convergence]:
    """Every cell's verdict, keyed by id(cell)."""
    verdicts: dict[int, Convergence] = {}
    for facet in study.facets:
        mine = [c for c in study.cells if c.facet == facet]
        fitted = [c for c in mine if math.isfinite(c.median_train_loss())]
        best = min(fitted, key=lambda c: c.median_train_loss()) if fitted else None
        floor = best.median_train_loss() if best is not None else math.nan
        sds = [c.sd() for c in mine if len(c.runs) >= SPREAD_SEEDS and c.sd() is not None]
        typical_sd = statistics.median(sds) if len(sds) >= SPREAD_CELLS else None
        for cell in mine:
            v = Convergence(cell)
            for seed, r in sorted(cell.runs.items()):
                if r.status == "diverged":
                    v.diverged[seed] = r.diverged_reason or "non-finite loss"
                elif (floor > 0 and math.isfinite(r.train_loss)  # NaN floor: no comparison
                      and r.train_loss > LOSS_FACTOR * floor and r.train_loss - floor > LOSS_GAP):
                    v.ratios[seed] = r.train_loss / floor
                    v.best = f"{best.label}: {floor:.3g}"
                spike = _spike(r.history)
                if spike:
                    v.unstable[seed] = spike
            held_out = all(any(e.val_accuracy is not None for e in r.history)
                           for r in cell.runs.values())
            v.metric = "held-out" if held_out else "test"
            drops = [d for r in cell.runs.values() if r.status != "diverged"
                     for d in [_last_quarter_drop(r, held_out)] if d is not None]
            if drops and len(drops) == len(cell.runs):
                # the noise of the error read: the held-out images' count where held out
                n_eval = study.n_test
                if held_out:
                    counts = [r.selection.n_validation for r in cell.runs.values()
                              if r.selection is not None and r.selection.n_validation]
                    n_eval = min(counts) if counts else n_eval
                drop, limit = statistics.fmean(drops), 0.5 * noise_mde(cell, n_eval)
                if drop > limit:
                    v.reasons.append(f"{v.metric} error still falling over the last quarter of "
                                     f"training by {100 * drop:.2f} points on average (more than "
                                     f"half its MDE, {100 * limit:.2f})")
            sd = cell.sd()
            if typical_sd and sd is not None and len(cell.runs) >= SPREAD_SEEDS:
                mean = statistics.fmean(cell.errors.values())
                if sd > SPREAD_FACTOR * typical_sd and sd > binomial_se(mean, study.n_test):
                    v.reasons.append(f"seed SD {100 * sd:.2f} points, {sd / typical_sd:.0f}x the "
                                     f"median cell's ({100 * typical_sd:.2f})")
            verdicts[id(cell)] = v
    return verdicts


# ---------------------------------------------------------------------------------------------
# Confounds


@dataclass
class Confound:
    """Along the axis in one facet: which of batch, steps and learning rate move with x."""

    facet: str
    fields: list[str]  # 'batch size', 'steps', 'learning rate'
    by_x: dict  # x -> {"batch": ..., "steps": ..., "lr": ...}

    def sentence(self, axis: str) -> str:
        where = f" ({self.facet})" if self.facet else ""
        moved = ", ".join(self.fields[:-1]) + (" and " if len(self.fields) > 1 else "") + self.fields[-1]
        return (f"Confounded axis{where}: along {axis}, the {moved} change too; a norm's change "
                "along it is the protocol's as much as the norm's.")


def confounds(study: Study, x_is_batch: bool) -> list[Confound]:
    """One Confound per facet whose axis moves the optimizer's batch (unless the batch is the
    axis), the steps or the learning rate together with x."""
    found = []
    names = {"batch": "optimizer's batch", "steps": "number of steps", "lr": "learning rate"}
    for facet in study.facets:
        by_x: dict = {}
        moving: set[str] = set()
        for norm in study.norms(facet):
            series = study.series(facet, norm)
            protocols = [c.protocol() for c in series]
            for key in names:
                if key == "batch" and x_is_batch:
                    continue
                if len({p[key] for p in protocols}) > 1:
                    moving.add(key)
            for c, p in zip(series, protocols):
                by_x.setdefault(c.x, []).append(p)
        if moving:
            merged = {x: {k: "/".join(sorted({p[k] for p in ps}, key=_num)) for k in names}
                      for x, ps in sorted(by_x.items(), key=lambda kv: tables.sort_key(kv[0]))}
            found.append(Confound(facet, [names[k] for k in names if k in moving], merged))
    return found


def _num(text: str):
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def controls(study: Study, facet: str) -> list[str]:
    """Batch-independent norms with two or more cells along the axis in the facet."""
    return [n for n in study.norms(facet)
            if n not in BATCH_DEPENDENT and len(study.series(facet, n)) >= 2]


# ---------------------------------------------------------------------------------------------
# Ceiling and metric window


@dataclass
class Ceiling:
    reference: Cell
    error: float  # mean error of the reference
    n_test: int
    images: float  # error as a count of test images
    se: float  # binomial SE of one run's error

    @property
    def warn(self) -> bool:
        return self.error < CEILING_ERROR

    def sentence(self) -> str:
        text = (f"Ceiling: the reference ({self.reference.label}) misses {100 * self.error:.2f}% "
                f"of {self.n_test:,} test images, about {self.images:.0f} images; one image is "
                f"{100 / self.n_test:.3g} points and one run's binomial SE is "
                f"{100 * self.se:.2f} points.")
        if self.warn:
            text += (f" Below {100 * CEILING_ERROR:g}% error an effect is a handful of images: "
                     "what a study here cannot show, it cannot rule out on harder data.")
        return text


def ceiling(study: Study, converged: dict[int, Convergence]) -> Ceiling | None:
    """The reference cell (BN at the largest x where the study has BN along its axis, else the
    best converged cell) and its error as test images."""
    ok = [c for c in study.cells if converged[id(c)].converged]
    if not ok:
        return None
    bn = [c for c in ok if c.norm == "batch" and c.x != "any"]
    ref = (max(bn, key=lambda c: tables.sort_key(c.x)) if bn and study.numeric_x
           else min(ok, key=lambda c: statistics.fmean(c.errors.values())))
    error = statistics.fmean(ref.errors.values())
    n = study.n_test
    return Ceiling(ref, error, n, error * n, binomial_se(error, n))


@dataclass
class Window:
    """Where the metric's evaluations straddle a learning-rate change."""

    epochs: tuple[int, int]  # the window's first and last evaluated epoch
    changes: list[str]  # what changes inside it
    what: str = f"the last {WINDOW} evaluations"  # the metric's evaluations, in words
    how: str = "the median"

    def sentence(self) -> str:
        return (f"Metric window: {self.what} (epochs {self.epochs[0]}-{self.epochs[1]}) straddle "
                f"{', '.join(self.changes)}, so {self.how} mixes learning-rate phases; the final "
                "evaluation is shown beside it.")


def _changes(r: store.RunRecord, first: int, last: int) -> list[str]:
    lrs = {e.epoch: e.learning_rate for e in r.history}
    if all(lrs.get(e) is not None for e in range(first, last + 1)):
        values = [lrs[e] for e in range(first, last + 1)]
        peak = max(v for v in lrs.values() if v is not None)
        if max(values) <= min(values) * (1 + 1e-6) or max(values) <= TAIL * peak:
            return []
        return [f"recorded learning rates from {max(values):.3g} to {min(values):.3g}"]
    t = tables.flat_spec(r.spec)
    epochs = r.epochs
    marks = []
    if t.get("train.schedule") == "step":
        marks += [(float(m), f"the step at {100 * float(m):g}% of training")
                  for m in t.get("train.milestones") or []]
    if t.get("train.warmup_epochs"):
        marks.append((float(t["train.warmup_epochs"]) / epochs, "the end of warmup"))
    return [what for frac, what in marks if first / epochs <= frac < last / epochs]


def window(study: Study) -> Window | None:
    """The first record whose metric window (the evaluations the metric reads) crosses a change."""
    for r in study.records:
        if r.status == "diverged" or (r.test_error_median5 is None and metric_last(r) is None):
            continue
        evaluated = metric_epochs(r)
        if len(evaluated) < 2:
            continue
        changes = _changes(r, evaluated[0], evaluated[-1])
        if changes:
            fraction = metric_last(r)
            if fraction is None:
                return Window((evaluated[0], evaluated[-1]), changes)
            lengths = {x.optimizer_steps for x in study.records}
            of = f" of a {r.optimizer_steps:,}-step run" if len(lengths) > 1 else ""
            return Window((evaluated[0], evaluated[-1]), changes,
                          f"the {len(evaluated)} evaluations in the last {100 * fraction:g}% of "
                          f"the steps{of}", "the mean")
    return None


def window_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Per cell: the metric (median of the last 5, or the study's pre-stated window) beside the
    final evaluation."""
    fraction = next((metric_last(r) for r in study.records), None)
    name = "median of last 5" if fraction is None else f"mean of last {100 * fraction:g}%"
    head = ["cell", f"{name} (%)", "final evaluation (%)", "final - metric (pts)"]
    rows = []
    for cell in study.cells:
        median = statistics.fmean(cell.errors.values())
        final = statistics.fmean(final_error(r) for r in cell.runs.values())
        rows.append([cell.label, f"{100 * median:.2f}", f"{100 * final:.2f}",
                     f"{100 * (final - median):+.2f}"])
    return head, rows
