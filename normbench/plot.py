"""Figures from run records (matplotlib, headless).

One colour per norm in every figure (`NORM_COLORS`), a legend in every panel, facets instead of
many lines in one panel, seeds drawn as a mean line with a 95% band clipped to what is possible,
integer epoch ticks, axis labels with units and a title that says what ran. The functions that
draw return matplotlib Figures (tests read their legends, labels and ticks); `save` writes PNG at
2x for screens or SVG for papers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from normbench import stats, store, tables
from normbench.errors import NormbenchError

NORM_COLORS = {"batch": "#1f77b4", "group": "#d62728", "layer": "#2ca02c", "instance": "#9467bd",
               "none": "#7f7f7f", "batch_renorm": "#17becf", "layer_channels": "#8c564b",
               "frn": "#e377c2", "rms": "#bcbd22", "ws_group": "#ff7f0e"}
NORM_NAMES = {"batch": "BN", "group": "GN", "layer": "LN", "instance": "IN", "none": "no norm",
              "batch_renorm": "BRN", "layer_channels": "LN (channels)", "frn": "FRN",
              "rms": "RMSNorm", "ws_group": "GN + WS"}
FORMATS = ("png", "svg")
PNG_DPI = 200  # twice a 100-dpi figure: sharp on high-density screens
LINESTYLES = ("-", "--", ":", "-.")
PAPER_TITLE = "Wu & He 2018, Table 2 (ResNet-50, ImageNet)"
PAPER = Path(__file__).parent / "_assets" / "wu_he_2018.json"


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise NormbenchError("normbench plot needs matplotlib: pip install 'normbench[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def color(norm: str) -> str:
    return NORM_COLORS.get(norm, "#333333")


def norm_name(norm: str) -> str:
    return NORM_NAMES.get(norm, norm)


@dataclass
class Series:
    """One line: y means with 95% half-widths (None: a single seed) along xs."""

    norm: str
    label: str
    xs: list
    means: list[float]
    halves: list[float | None]
    linestyle: str = "-"


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    levels: list[Series] = field(default_factory=list)  # independent of x: a level line
    log2: bool = False
    invert: bool = False  # the paper draws the batch shrinking to the right
    integer_x: bool = False
    logy: bool = False  # errors and losses that fall by orders of magnitude
    bounds: tuple[float, float] = (0.0, 100.0)  # what the y values can be: bands are clipped


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def band(means: list[float], halves: list[float | None], bounds=(0.0, 100.0)):
    """(lower, upper) of the 95% band, clipped to `bounds` (an error is never below 0%)."""
    lo, hi = bounds
    lower = [max(lo, m - (h or 0.0)) for m, h in zip(means, halves)]
    upper = [min(hi, m + (h or 0.0)) for m, h in zip(means, halves)]
    return lower, upper


def mean_band(values: list[float]) -> tuple[float, float | None]:
    mean, _, half = stats.mean_ci(values)
    return mean, half


def draw(panels: list[Panel], title: str, *, columns: int | None = None, width: float = 4.6,
         height: float = 3.4, sharey_rows: bool = False):
    """A figure of panels in a grid, each with its legend; returns the Figure. With
    `sharey_rows`, the panels of a row share their y axis (a row = one metric)."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = columns or min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows + 0.8),
                             squeeze=False, sharey="row" if sharey_rows else False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        xs_all = sorted({x for s in panel.series for x in s.xs}, key=tables.sort_key)
        # An axis of names (or of numbers mixed with names) is drawn at positions 0, 1, ...
        # with the values as tick labels: matplotlib cannot fill a band over strings.
        categorical = not all(_is_number(x) for x in xs_all)
        place = {x: i for i, x in enumerate(xs_all)}
        if categorical:
            panel = dataclasses.replace(panel, log2=False, integer_x=False, series=[
                dataclasses.replace(s, xs=[place[x] for x in s.xs]) for s in panel.series])
            ax.set_xticks(range(len(xs_all)))
            ax.set_xticklabels([tables.value_label(x) for x in xs_all])
            xs_all = list(range(len(xs_all)))
        for s in panel.series:
            ax.plot(s.xs, s.means, marker="o" if len(s.xs) < 20 else None, markersize=4,
                    color=color(s.norm), linestyle=s.linestyle, label=s.label)
            if any(h for h in s.halves):
                lower, upper = band(s.means, s.halves, panel.bounds)
                ax.fill_between(s.xs, lower, upper, color=color(s.norm), alpha=0.15, linewidth=0)
        for s in panel.levels:
            left, right = (min(xs_all), max(xs_all)) if xs_all else (0, 1)
            ax.hlines(s.means[0], left, right, colors=color(s.norm), linestyles=s.linestyle,
                      label=s.label)
            if s.halves[0]:
                (lower,), (upper,) = band(s.means, s.halves, panel.bounds)
                ax.fill_between([left, right], [lower, lower], [upper, upper],
                                color=color(s.norm), alpha=0.12, linewidth=0)
        numeric = [x for x in xs_all if isinstance(x, (int, float))]
        if panel.log2 and numeric and all(x > 0 for x in numeric):
            ax.set_xscale("log", base=2)
            ax.set_xticks(numeric)
            ax.set_xticklabels([f"{x:g}" for x in numeric])
            ax.minorticks_off()
        elif panel.integer_x and numeric:
            if len(numeric) <= 15:  # every epoch, and only whole ones
                ax.set_xticks(numeric)
                ax.set_xlim(min(numeric) - 0.5, max(numeric) + 0.5)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if panel.invert:
            ax.invert_xaxis()
        if panel.logy:  # plain numbers at 1, 2, 3, 5 x 10^k, not 10^0 notation
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=9)
        ax.grid(alpha=0.3)
        if panel.series or panel.levels:
            ax.legend(fontsize=7, frameon=False)
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, width=int(11 * width * columns))), fontsize=10)
    fig.tight_layout()
    return fig


def paper_panel(paper: dict) -> Panel:
    """The paper's Table 2: ImageNet val error of BN and GN by images per GPU."""
    ref = paper["batch_per_gpu"]
    series = [Series(norm, norm_name(norm), list(ref["N"]), list(ref[norm]), [None] * len(ref["N"]))
              for norm in ("batch", "group")]
    return Panel(PAPER_TITLE, "images per GPU (per-replica batch)", "ImageNet val error (%)",
                 series, log2=True, invert=True)


def save(fig, path: Path, fmt: str = "png") -> Path:
    """Write the figure (PNG at 2x, or SVG) and close it; returns the file."""
    if fmt not in FORMATS:
        raise NormbenchError(f"--format {fmt!r}: choose png or svg")
    fig.savefig(path, dpi=PNG_DPI if fmt == "png" else None, format=fmt)
    pyplot().close(fig)
    return path


def figure_path(out_dir: Path, name: str, kind: str, fmt: str = "png") -> Path:
    """out_dir/<name>-<kind>.<fmt>, for a name that can only name a file inside out_dir (records
    are untrusted: a name such as ../../x or /etc/x never becomes a path)."""
    if not store.RUN_ID.fullmatch(f"{name}-{'0' * 12}"):
        raise NormbenchError(f"refusing to plot run name {name[:80]!r}: not a spec name")
    path = out_dir / f"{name}-{kind}.{fmt}"
    if path.resolve().parent != out_dir.resolve():
        raise NormbenchError(f"refusing to write {path}: outside {out_dir}")
    return path


# ---------------------------------------------------------------------------------------------
# What ran, in words


def context(records: Iterable[store.RunRecord]) -> str:
    """'mnist-10k, vgg [16, 16, M, 32], sgd lr 0.4, 12 epochs': what the runs share, for titles."""
    records = list(records)
    flats = [tables.flat_spec(r.spec) for r in records]

    def shared(path: str):
        values = {tables.value_label(f.get(path)) for f in flats}
        return flats[0].get(path) if len(values) == 1 else None

    parts = [", ".join(sorted({r.dataset.name for r in records}))
             + (" (smoke)" if all(r.smoke for r in records) else "")]
    arch = shared("model.arch")
    if arch:
        widths = shared("model.widths")
        parts.append(f"{arch} [{', '.join(map(str, widths))}]" if arch != "tutorial" and widths
                     else f"{arch} CNN")
    optimizer = shared("train.optimizer")
    if optimizer:
        lr = shared("train.learning_rate")
        parts.append(optimizer + (f" lr {lr:g}" if isinstance(lr, (int, float)) else "")
                     + (" (linear in the batch)" if shared("train.lr_scaling") == "linear" else ""))
    steps, epochs = shared("train.steps"), shared("train.epochs")
    varying = sorted({f["train.steps"] for f in flats if isinstance(f.get("train.steps"), int)})
    if steps:
        parts.append(f"{steps} steps")
    elif varying:  # runs of fixed steps, not all the same: their epochs say nothing
        parts.append("/".join(map(str, varying)) + " steps")
    elif epochs:
        parts.append(f"{epochs} epoch{'s' if epochs != 1 else ''}")
    return ", ".join(parts)


def short(path: str) -> str:
    """model.norm.groups -> groups: a spec field as a legend says it."""
    for prefix in ("model.norm.", "train.", "model."):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


# ---------------------------------------------------------------------------------------------
# normbench plot's figures


def error_figure(rows: list[dict], x: str, xlabel: str, title: str, *, paper: dict | None = None):
    """Test error vs spec field `x`: a line per experiment family (fixed colour per norm,
    linestyles within a norm), 95% CI bands; facets per norm when there are many lines; the
    paper's Table 2 beside it when given. None if no line has two points. Fields that change
    together with x (a virtual batch size tied to the batch) do not split a line."""
    rows = [r for r in rows if r["spec"].get(x) is not None and r["test_err_mean"] is not None]
    label = lambda v: tables.value_label(v)  # noqa: E731
    families: dict[tuple, list[dict]] = {}
    for norm in sorted({r["norm"] for r in rows}):
        mine = [r for r in rows if r["norm"] == norm]
        fields = sorted({p for r in mine for p in r["spec"] if p not in (x, "model.norm.type")
                         and len({label(q["spec"].get(p)) for q in mine}) > 1})
        xs = {label(r["spec"][x]) for r in mine}
        linked = {p for p in fields
                  if len({(label(r["spec"][x]), label(r["spec"].get(p))) for r in mine}) == len(xs)
                  == len({label(r["spec"].get(p)) for r in mine})}
        for r in mine:
            key = (norm,) + tuple((p, label(r["spec"].get(p))) for p in fields
                                  if p not in linked and r["spec"].get(p) is not None)
            families.setdefault(key, []).append(r)
    families = {k: sorted(v, key=lambda r: tables.sort_key(r["spec"][x]))
                for k, v in families.items() if len(v) > 1}
    if not families:
        return None
    series, styles = [], {}
    for key in sorted(families, key=str):
        norm, rest = key[0], ", ".join(f"{short(p)}={v}" for p, v in key[1:])
        styles[norm] = styles.get(norm, -1) + 1
        points = families[key]
        series.append(Series(norm, norm_name(norm) + (f" ({rest})" if rest else ""),
                             [r["spec"][x] for r in points],
                             [100 * r["test_err_mean"] for r in points],
                             [None if r["test_err_ci95"] is None else 100 * r["test_err_ci95"]
                              for r in points],
                             LINESTYLES[styles[norm] % len(LINESTYLES)]))
    ylabel = "test error (%), mean ± 95% CI"
    log2 = all(isinstance(v, (int, float)) and v > 0 for s in series for v in s.xs)
    norms = sorted({s.norm for s in series})
    if len(series) > 6 and len(norms) > 1:  # one panel per norm
        panels = [Panel(norm_name(n), xlabel, ylabel, [s for s in series if s.norm == n], log2=log2)
                  for n in norms]
    else:
        panels = [Panel("these runs" if paper else "", xlabel, ylabel, series, log2=log2)]
    if paper:
        panels.append(paper_panel(paper))
    return draw(panels, title)


def curves_figure(groups: dict[str, dict[str, list[store.RunRecord]]], title: str):
    """Learning curves: a column per facet (e.g. batch size), rows for training loss, then
    held-out and test error when recorded; a line per label (its norm's colour), mean over seeds
    with a 95% band. `groups`: facet -> label -> runs (all of one norm)."""
    metrics = [("loss", "training loss", (0.0, math.inf), lambda e: e.loss)]
    everything = [r for labels in groups.values() for rs in labels.values() for r in rs]
    if any(e.val_accuracy is not None for r in everything for e in r.history):
        metrics.append(("val", "held-out error (%)", (0.0, 100.0),
                        lambda e: None if e.val_accuracy is None else 100 * (1 - e.val_accuracy)))
    if any(e.test_accuracy is not None for r in everything for e in r.history):
        metrics.append(("test", "test error (%)", (0.0, 100.0),
                        lambda e: None if e.test_accuracy is None else 100 * (1 - e.test_accuracy)))
    panels = []
    for _, ylabel, bounds, get in metrics:
        for facet, labels in groups.items():
            panel = Panel(facet, "epoch", ylabel + " (log scale)", integer_x=True, bounds=bounds,
                          logy=True)
            styles: dict[str, int] = {}
            for label, rs in labels.items():
                styles[rs[0].norm_type] = styles.get(rs[0].norm_type, -1) + 1
                by_epoch: dict[int, list[float]] = {}
                for r in rs:
                    for e in r.history:
                        value = get(e)
                        if value is not None and math.isfinite(value):
                            by_epoch.setdefault(e.epoch, []).append(value)
                if not by_epoch:
                    continue
                epochs = sorted(by_epoch)
                summary = [mean_band(by_epoch[e]) for e in epochs]
                panel.series.append(Series(rs[0].norm_type, label, epochs,
                                           [m for m, _ in summary], [h for _, h in summary],
                                           LINESTYLES[styles[rs[0].norm_type] % len(LINESTYLES)]))
            panels.append(panel)
    return draw(panels, title, columns=max(1, len(groups)), width=3.6, height=2.8,
                sharey_rows=True)


def figures(records: list[store.RunRecord], paper: dict | None = None) -> dict[tuple[str, str], Any]:
    """Every figure the records support: (name, kind) -> Figure."""
    rows = tables.group_rows(records)
    found = {}
    for name in sorted({r.name for r in records}):
        mine_records = [r for r in records if r.name == name]
        mine = [r for r in rows if r["name"] == name]
        what = context(mine_records)
        batch = error_figure(mine, "train.batch_size", "batch size (images per step)",
                             f"{name}: test error vs batch size ({what})", paper=paper)
        if batch is not None:
            found[(name, "batch_size")] = batch
        groups = error_figure(mine, "model.norm.groups", "GroupNorm groups",
                              f"{name}: groups ablation ({what})")
        if groups is not None:
            found[(name, "groups")] = groups
        found[(name, "learning")] = curves_figure(
            learning_groups(mine_records), f"{name}: learning curves, mean over seeds ± 95% CI ({what})")
    return found


def learning_groups(records: list[store.RunRecord], max_facets: int = 6) -> dict[str, dict[str, list]]:
    """Facets by batch size when it varies (at most `max_facets`, else one facet), lines by the
    rest of the config; runs that differ only by seed share a line."""
    flats = {id(r): {k: v for k, v in tables.flat_spec(r.spec).items() if k != "train.seed"}
             for r in records}
    varying = {}  # per norm: the fields that tell its runs apart
    for norm in {r.norm_type for r in records}:
        mine = [flats[id(r)] for r in records if r.norm_type == norm]
        fields = {p for f in mine for p in f}  # each field's values counted once: linear in runs
        varying[norm] = sorted(p for p in fields
                               if len({tables.value_label(g.get(p)) for g in mine}) > 1)
    batches = sorted({flats[id(r)].get("train.batch_size") for r in records}, key=tables.sort_key)
    facet_by_batch = 1 < len(batches) <= max_facets
    groups: dict[str, dict[str, list]] = {}
    for r in records:
        f = flats[id(r)]
        facet = f"batch {f.get('train.batch_size')}" if facet_by_batch else "all runs"
        rest = [f"{short(p)}={tables.value_label(f.get(p))}" for p in varying[r.norm_type]
                if p not in ("model.norm.type", "train.batch_size" if facet_by_batch else "")
                and f.get(p) is not None]
        label = norm_name(r.norm_type) + (f" ({', '.join(rest)})" if rest else "")
        groups.setdefault(facet, {}).setdefault(label, []).append(r)
    order = sorted(groups, key=lambda k: tables.sort_key(int(k.split()[1]) if k != "all runs" else k))
    return {k: dict(sorted(groups[k].items())) for k in order}


def plot_all(records: list[store.RunRecord], out_dir: Path, fmt: str = "png",
             paper: dict | None = None) -> list[Path]:
    """Every figure the records support, written to out_dir; returns the files written."""
    if not records:
        raise NormbenchError("no finished runs to plot")
    if fmt not in FORMATS:
        raise NormbenchError(f"--format {fmt!r}: choose png or svg")
    for name in {r.name for r in records}:  # before anything is drawn or created
        figure_path(out_dir, name, "check", fmt)
    pyplot()
    if out_dir.exists() and not out_dir.is_dir():
        raise NormbenchError(f"--out {out_dir}: is a file, not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NormbenchError(f"--out {out_dir}: cannot create it ({exc.strerror or exc})") from None
    return [save(fig, figure_path(out_dir, name, kind, fmt), fmt)
            for (name, kind), fig in figures(records, paper).items()]


def load_paper() -> dict:
    """The paper's numbers (only those quoted in the issues), from the package's data file."""
    return json.loads(PAPER.read_text())
