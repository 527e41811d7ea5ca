"""A study's comparisons and the sentences they allow: paired tests over seeds, one Holm family,
minimum detectable effects, equivalence only against a declared margin.

What is compared (cells a guard rejects as not converged are never compared):
- along the axis, per norm and facet: every pair of cells (each x against the reference, the
  largest x; against the best cell, which is chosen after seeing the means and so is only fair
  inside the family of all pairs; and the rest), and the trend (per seed, the least-squares slope
  of error on log2 x; then a t-test over seeds);
- BatchNorm against GroupNorm at the same x (the same protocol for both);
- the same cell across the settings of a field that varies inside it (e.g. `train.steps: [4800,
  9600]`, or a learning rate per cell): each setting against the first, shown but not tested
  where either cell is not converged;
- where the axis is confounded (`guards.confounds`: steps, learning rate or the optimizer's batch
  move with x): the along-axis comparisons are shown but not tested, and BN's change is tested
  net of each batch-independent norm's on the same axis (difference in differences), from the
  largest x at which both are converged.

Each tested comparison states its minimum detectable effect at the multiplicity-adjusted level
(Bonferroni's 0.05 / m, the level Holm's first step uses; 80% power; from the observed SD of the
paired differences, so an estimate), and a non-significant one reads "inconclusive: effects up
to X points not excluded", X the far end of its adjusted confidence interval. Equivalence (two
one-sided tests at the adjusted level) is judged only against `study.equivalence_margin` declared
in the spec that the runs were made with.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from normbench import guards, stats, tables, tuning
from normbench.study import BATCH_DEPENDENT, Cell, Study

ALPHA = guards.ALPHA


@dataclass
class Comparison:
    what: str  # "batch at 2 vs at 32"
    kind: str  # axis | best | trend | norms | net | setting
    norm: str
    facet: str
    n: int
    diff: float  # points: a minus b (trend: points per doubling of x)
    half: float | None  # 95% CI half-width, points
    p: float | None
    sd: float | None = None  # SD of the paired differences, points
    tested: bool = True  # in the Holm family; False: shown, not tested (confounded)
    note: str = ""
    p_holm: float | None = None
    alpha: float | None = None  # the adjusted level its CI and MDE use
    adj_half: float | None = None
    mde: float | None = None
    equivalent: bool | None = None  # None: no margin declared (or not tested)
    xs: tuple = ()  # trend: the axis values the slope is fitted over

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA

    @property
    def far(self) -> float | None:
        """The far end of the adjusted CI from zero, in points."""
        if self.adj_half is None:
            return None
        return max(abs(self.diff - self.adj_half), abs(self.diff + self.adj_half))


@dataclass
class Findings:
    comparisons: list[Comparison]
    convergence: dict[int, guards.Convergence]
    confounds: list[guards.Confound]
    ceiling: guards.Ceiling | None
    window: guards.Window | None
    margin: float | None  # equivalence margin in points, declared before the runs
    margin_note: str
    control_moves: list[str]  # warnings: a control moved more than its MDE
    axis: str  # short name of the axis: v, groups, batch size

    @property
    def tested(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.tested and c.p is not None]

    @property
    def excluded(self) -> list[guards.Convergence]:
        return [v for v in self.convergence.values() if not v.converged]


def _paired(what: str, kind: str, norm: str, facet: str, a: dict[int, float],
            b: dict[int, float] | None = None) -> Comparison:
    """a - b over the seeds both have (b None: a against zero), in points."""
    seeds = sorted(set(a) & set(b)) if b is not None else sorted(a)
    if not seeds:  # cells of a partly finished study with no seed in common
        return Comparison(what, kind, norm, facet, 0, math.nan, None, None, tested=False,
                          note="no seed in common")
    xs = [a[s] for s in seeds]
    ys = [b[s] for s in seeds] if b is not None else [0.0] * len(seeds)
    diff, half, p = stats.paired(xs, ys)
    sd = statistics.stdev([x - y for x, y in zip(xs, ys)]) if len(seeds) >= 2 else None
    if sd == 0.0:  # the same difference in every seed (errors move in steps of one image): no
        # variance to test against, never "p = 0"
        return Comparison(what, kind, norm, facet, len(seeds), 100 * diff, None, None, 0.0,
                          tested=False, note="the same difference in every seed: untestable")
    return Comparison(what, kind, norm, facet, len(seeds), 100 * diff,
                      None if half is None else 100 * half, p, None if sd is None else 100 * sd)


def _slopes(cells: list[Cell]) -> dict[int, float]:
    """Per seed present in every cell: least-squares slope of error on log2 x."""
    seeds = set.intersection(*(set(c.errors) for c in cells))
    xs = [math.log2(c.x) for c in cells]
    mx = statistics.fmean(xs)
    sxx = sum((x - mx) ** 2 for x in xs)
    out = {}
    for s in sorted(seeds):
        ys = [c.errors[s] for c in cells]
        my = statistics.fmean(ys)
        out[s] = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return out


def _axis_name(study: Study) -> str:
    if "per-replica" in study.x_label:
        return "v"
    if study.x_label.startswith("GroupNorm groups"):
        return "groups"
    return study.x_label


def _net(bn: Cell, bn_ref: Cell, c: Cell, c_ref: Cell) -> dict[int, float]:
    seeds = set(bn.errors) & set(bn_ref.errors) & set(c.errors) & set(c_ref.errors)
    return {s: (bn.errors[s] - bn_ref.errors[s]) - (c.errors[s] - c_ref.errors[s])
            for s in sorted(seeds)}


def declared_margin(study: Study) -> tuple[float | None, str]:
    """The equivalence margin (points) the spec declares, if the runs were made with it."""
    margins = {s.study.equivalence_margin for s in study.specs}
    margin = next(iter(margins)) if len(margins) == 1 else None
    if margin is None:
        return None, ("no equivalence margin declared (study.equivalence_margin in the spec, "
                      "before the runs): no equivalence verdict")
    recorded = {tables.flat_spec(r.spec).get("study.equivalence_margin") for r in study.records}
    if recorded != {margin}:
        return None, (f"the spec declares an equivalence margin of {margin:g} points, but its runs "
                      "were made without it (declared after the runs): no equivalence verdict")
    return margin, (f"equivalence margin ±{margin:g} points, declared in the spec before the runs "
                    "(two one-sided tests at the adjusted level)")


def analyse(study: Study) -> Findings:
    """Every guard's verdict and every comparison, with the Holm family adjusted."""
    verdicts = guards.convergence(study)
    ok = {id(c) for c in study.cells if verdicts[id(c)].converged}
    axis = _axis_name(study)
    x_is_batch = study.x_label == "batch size"
    confounded = {c.facet: c for c in guards.confounds(study, x_is_batch)} if study.numeric_x else {}
    found: list[Comparison] = []
    moves: list[str] = []
    for facet in study.facets:
        where = f" ({facet})" if facet else ""
        confound = confounded.get(facet)
        for norm in study.norms(facet):
            series = [c for c in study.series(facet, norm) if id(c) in ok]
            if len(series) < 2 or not study.numeric_x:
                continue
            ref = series[-1]
            best = min(series, key=lambda c: statistics.fmean(c.errors.values()))
            note = f"not tested: {', '.join(confound.fields)} change with {axis}" if confound else ""
            for cell in series[:-1]:
                found.append(_paired(f"{norm} at {cell.x} vs at {ref.x}{where}", "axis", norm,
                                     facet, cell.errors, ref.errors))
            # The best cell is picked after seeing the means, so its comparisons are only fair
            # inside the family of every pair of the series (Holm over all of them).
            for i, cell in enumerate(series[:-1]):
                for other in series[i + 1:-1]:
                    a, b = (other, cell) if cell is best else (cell, other)
                    kind = "best" if best in (cell, other) else "pair"
                    label = f"{norm} at {a.x} vs at {b.x}" + (", its best" if kind == "best" else "")
                    found.append(_paired(label + where, kind, norm, facet, a.errors, b.errors))
            if len(series) >= 3:
                trend = _paired(f"{norm}: trend over {axis}{where}", "trend", norm, facet,
                                _slopes(series))
                trend.xs = tuple(c.x for c in series)
                found.append(trend)
            if confound:
                for c in found:
                    if c.facet == facet and c.norm == norm and c.kind in ("axis", "best", "pair",
                                                                           "trend"):
                        c.tested, c.note = False, note
        # BN against GN at the same x: the same protocol for both norms.
        gn = {c.x: c for c in study.cells if c.facet == facet and c.norm == "group" and id(c) in ok}
        bn = [c for c in study.series(facet, "batch") if id(c) in ok]
        if "any" in gn and bn:
            bn = sorted({id(c): c for c in (bn[0], bn[-1])}.values(),
                        key=lambda c: tables.sort_key(c.x))
        for b in bn:
            g = gn.get(b.x) or gn.get("any")
            if g is not None:
                found.append(_paired(f"batch vs group at {b.x}{where}", "norms", "batch-group",
                                     facet, b.errors, g.errors))
        if not study.numeric_x or len({c.x for c in study.cells if c.facet == facet}) == 1:
            found += _against_best_norm(study, facet, ok, where)
        if confound:
            for control in guards.controls(study, facet):
                found += _net_of(study, facet, control, ok, axis, where, moves)
    found += _across_settings(study, ok)
    tested = [c for c in found if c.tested and c.p is not None]
    m = len(tested)
    for c, p in zip(tested, stats.holm([c.p for c in tested])):
        c.p_holm = p
    margin, margin_note = declared_margin(study)
    for c in tested:
        c.alpha = ALPHA / m
        if c.sd is not None and c.n >= 2:
            scale = c.sd / math.sqrt(c.n)
            c.adj_half = stats.t_ppf(1 - c.alpha / 2, c.n - 1) * scale
            c.mde = guards.mde(c.sd, c.n, c.alpha)
            if margin is not None and c.kind in ("axis", "best", "pair", "norms", "setting"):
                # the margin is in points of error: not for a slope or a difference in differences
                one_sided = stats.t_ppf(1 - c.alpha, c.n - 1) * scale
                c.equivalent = abs(c.diff) + one_sided < margin
    return Findings(found, verdicts, list(confounded.values()), guards.ceiling(study, verdicts),
                    guards.window(study), margin, margin_note, moves, axis)


def _setting_label(cell: Cell, other: Cell) -> str:
    return ", ".join(f"{k}={tables.value_label(v)}"
                     for (k, v), (_, w) in zip(cell.setting, other.setting) if v != w)


def _across_settings(study: Study, ok: set[int]) -> list[Comparison]:
    """The same cell (norm, x, depth) under each setting of the fields that vary inside it (more
    steps, another learning rate) against its first setting, paired over seeds. Where either
    cell is not converged the difference is shown, not tested: a longer run of a cell that had
    not converged is how one finds out whether it had."""
    groups: dict[tuple, list[Cell]] = {}
    for c in study.cells:
        if c.setting:
            groups.setdefault((c.norm, tables.value_label(c.x), c.depth), []).append(c)
    found = []
    for (norm, x, depth), cells in groups.items():
        cells.sort(key=lambda c: [tables.sort_key(v) for _, v in c.setting])
        ref = cells[0]
        at = "" if x == "any" else f" at {x}"
        where = f" ({depth})" if depth else ""
        for cell in cells[1:]:
            c = _paired(f"{norm}{at} with {_setting_label(cell, ref)} vs with "
                        f"{_setting_label(ref, cell)}{where}", "setting", norm, cell.facet,
                        cell.errors, ref.errors)
            flagged = [d.label for d in (cell, ref) if id(d) not in ok]
            if flagged and c.n:
                c.tested, c.note = False, f"not tested: {' and '.join(flagged)} not converged"
            found.append(c)
    return found


def _against_best_norm(study: Study, facet: str, ok: set[int], where: str) -> list[Comparison]:
    """A study with one x (a sweep over norms): every other norm against the best one."""
    out = []
    for x in sorted({c.x for c in study.cells if c.facet == facet}, key=tables.sort_key):
        cells = [c for c in study.cells if c.facet == facet and c.x == x and id(c) in ok]
        if len(cells) < 2:
            continue
        best = min(cells, key=lambda c: statistics.fmean(c.errors.values()))
        for c in cells:
            if c is not best and {c.norm, best.norm} != {"batch", "group"}:
                at = "" if len({c.x for c in study.cells if c.facet == facet}) == 1 else f" at {x}"
                out.append(_paired(f"{c.norm} vs {best.norm}, the best norm{at}{where}", "norms",
                                   f"{c.norm}-{best.norm}", facet, c.errors, best.errors))
    return out


def _net_of(study: Study, facet: str, control: str, ok: set[int], axis: str, where: str,
            moves: list[str]) -> list[Comparison]:
    """BN's change along the axis net of a batch-independent norm's (difference in differences),
    from the largest x at which both are converged; warns when the control itself moved by more
    than its MDE (at 0.05: a warning about the protocol, not a claim)."""
    out = []
    controls = {c.x: c for c in study.series(facet, control) if id(c) in ok}
    for norm in (n for n in BATCH_DEPENDENT if n in study.norms(facet)):
        bn = {c.x: c for c in study.series(facet, norm) if id(c) in ok}
        shared = sorted(set(bn) & set(controls), key=tables.sort_key)
        if len(shared) < 2:
            continue
        ref = shared[-1]
        for x in shared[:-1]:
            c = _paired(f"{norm} at {x} vs at {ref} net of {control}{where}", "net", norm, facet,
                        _net(bn[x], bn[ref], controls[x], controls[ref]))
            out.append(c)
            own = _paired("", "", control, facet, controls[x].errors, controls[ref].errors)
            limit = guards.mde(own.sd, own.n)
            if limit is not None and abs(own.diff) > limit:
                moves.append(f"The control moved: {control} at {x} vs at {ref}{where} changed by "
                             f"{own.diff:+.2f} points, more than its MDE ({limit:.2f} points at "
                             f"α = 0.05): the protocol, not BN alone, moves error along {axis}.")
    return out


# ---------------------------------------------------------------------------------------------
# Sentences


def sentence(c: Comparison, margin: float | None = None) -> str:
    """A claim generated from the numbers, never written by hand, only as strong as they allow."""
    a, _, b = c.what.partition(" vs ")
    if c.n == 0:
        return f"{c.what}: {c.note}; not compared."
    ci = f" ± {c.half:.2f}" if c.half is not None else ""
    body = None
    if c.kind == "trend":  # "batch: trend over v (depth 3 ...)"
        norm, per = c.what.split(": trend over ", 1)
        over = ", ".join(map(str, c.xs))
        body = (f"{norm}: least-squares slope of error on log2 {per} over {{{over}}}: "
                f"{c.diff:+.2f}{ci} points per doubling")
    elif c.kind == "net":  # "batch at 2 vs at 32 net of instance"
        x, rest = c.what.split(" at ", 1)[1].split(" vs at ", 1)
        ref, control = rest.split(" net of ", 1)
        body = (f"{c.norm}'s change from {ref} to {x}, net of {control}'s: "
                f"{c.diff:+.2f}{ci} points")
    if c.p is None and c.tested:
        return f"{c.what}: {c.diff:+.2f} points from {c.n} paired seed(s); too few for a test."
    if not c.tested:
        text = body or f"{a} vs {b}: {c.diff:+.2f}{ci} points"
        return f"{text} ({c.note}; n = {c.n})."
    adjusted = (f"adjusted CI ± {c.adj_half:.2f} at α = {c.alpha:.2g}" if c.adj_half is not None
                else f"α = {c.alpha:.2g}")
    if c.significant:
        test = f"paired t over seeds, n = {c.n}, Holm-adjusted p = {c.p_holm:.3g}; {adjusted}"
        if c.kind == "net":
            return (f"{body}: {'higher' if c.diff > 0 else 'lower'} error net of the control "
                    f"({test}).")
        if body:
            return f"{body} ({test})."
        verb = "higher" if c.diff > 0 else "lower"
        return f"{a} has {abs(c.diff):.2f}{ci} points {verb} error than {b} ({test})."
    lead = body or f"{a} vs {b}: {c.diff:+.2f}{ci} points"
    unit = " per doubling" if c.kind == "trend" else ""
    power = (f"MDE {c.mde:.2f} points{unit} at about 80% power, α = {c.alpha:.2g}"
             if c.mde is not None else f"α = {c.alpha:.2g}")
    if c.equivalent and margin is not None:
        return (f"{lead}; equivalent within ±{margin:g} points (two one-sided tests at "
                f"α = {c.alpha:.2g}, n = {c.n}; Holm-adjusted p of the difference "
                f"{c.p_holm:.3g}).")
    text = (f"{lead}; inconclusive: effects up to {c.far:.2f} points{unit} not excluded "
            f"(Holm-adjusted p = {c.p_holm:.3g}, n = {c.n}; {power})")
    if c.equivalent is not None and margin is not None:
        text += f"; not shown equivalent within ±{margin:g} points"
    return text + "."


def warnings(f: Findings, study: Study) -> list[str]:
    """Every guard's verdict on the study as sentences, the strongest first."""
    out = []
    for v in f.excluded:
        out.append(f"Not converged: {v.cell.label}: {v.verdict()}; kept out of the comparisons "
                   "and the headline.")
    for v in f.convergence.values():
        for seed, spike in sorted(v.unstable.items()):
            out.append(f"Unstable: {v.cell.label}, seed {seed}: {spike}.")
    for confound in f.confounds:
        out.append(confound.sentence(f.axis) + (
            " BN's change is tested net of the batch-independent norms' (difference in "
            "differences)." if any(c.kind == "net" and c.facet == confound.facet
                                   for c in f.comparisons)
            else " No batch-independent norm was converged at two of its values, so nothing here "
                 "separates BN's effect from the protocol's."))
    out += f.control_moves
    if f.ceiling is not None:
        out.append(f.ceiling.sentence())
    mdes = [c.mde for c in f.tested if c.mde is not None]
    if mdes:
        out.append(f"Power: the {len(f.tested)} tested comparisons' minimum detectable effects "
                   f"(80% power, α = 0.05 / {len(f.tested)} each, from the observed SDs) are "
                   f"{min(mdes):.2f}-{max(mdes):.2f} points; a difference below that reads "
                   "\"inconclusive\", never \"no effect\".")
    out.append(f"Equivalence: {f.margin_note}.")
    out += tuning.describe(study.specs, study.results_dir, study.smoke)[0]
    if f.window is not None:
        out.append(f.window.sentence())
    if study.smoke:
        out.append("Smoke runs (--smoke): a few hundred images and steps; nothing here is a finding.")
    return out


def headline(f: Findings, study: Study) -> list[Comparison]:
    """The comparisons a summary leads with, in this order: BN's change net of a control where
    the axis is confounded, the trend, the smallest x against the reference and against the best
    cell, the norms against each other at the smallest and the largest x; then any other
    significant comparison. The rest are in the report's table."""
    order = {"net": 0, "trend": 1, "axis": 2, "best": 3, "norms": 4, "pair": 5, "setting": 6}
    xs = [c.x for c in study.cells if c.x != "any"]
    ends = set()
    if xs and study.numeric_x:
        ends = {f" at {min(xs)} ", f" at {min(xs)}"}

    def leads(c: Comparison) -> bool:
        if c.kind in ("net", "trend", "setting") or c.significant:
            return True
        if c.kind == "pair" or not ends:  # pairs not involving the best: the table has them
            return c.kind != "pair"
        text = c.what.split(" (", 1)[0] + " "
        if c.kind == "norms":
            return text.endswith(f" at {min(xs)} ") or text.endswith(f" at {max(xs)} ")
        return text.startswith(f"{c.norm} at {min(xs)} ")

    return sorted((c for c in f.tested if leads(c)), key=lambda c: (c.facet, order[c.kind]))


def protocol_table(f: Findings) -> tuple[list[str], list[list[str]]]:
    """For a confounded axis: the optimizer's batch, steps and peak learning rate per x."""
    head = ["facet", "x", "batch", "steps", "lr"]
    rows = [[c.facet or "-", str(x), p["batch"], p["steps"], p["lr"]]
            for c in f.confounds for x, p in c.by_x.items()]
    return head, rows


def convergence_table(f: Findings) -> tuple[list[str], list[list[str]]]:
    """Per cell: converged or not (with why), unstable runs, median final training loss."""
    head = ["cell", "runs", "median final train loss", "verdict"]
    rows = []
    for v in f.convergence.values():
        verdict = v.verdict() or "converged"
        if v.unstable:
            verdict += f"; unstable: seed(s) {', '.join(map(str, sorted(v.unstable)))}"
        rows.append([v.cell.label, str(len(v.cell.runs)), f"{v.cell.median_train_loss():.3g}",
                     verdict])
    return head, rows
