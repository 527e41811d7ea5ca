"""`normbench report`: a study's runs as report.md, PNG figures and a self-contained report.html.

Every number in a sentence is computed here from the records: means over paired seeds with 95%
Student-t intervals, paired differences with paired-t p-values, Holm-corrected over every
comparison the report makes. A diverged run is not dropped: it counts at chance-level error
(90%) in the means, and each cell says how many diverged.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbench import grid, spec as specs, stats, store, tables
from normbench.errors import NormbenchError

CHANCE_ERROR = 0.9  # 10 classes
PAPER = Path(__file__).parent / "_assets" / "wu_he_2018.json"
NORM_COLORS = {"batch": "#1f77b4", "group": "#d62728", "layer": "#2ca02c", "instance": "#9467bd",
               "none": "#7f7f7f", "batch_renorm": "#17becf", "layer_channels": "#8c564b",
               "frn": "#e377c2", "rms": "#bcbd22", "ws_group": "#ff7f0e"}


def error_of(r: store.RunRecord) -> float:
    """The study's metric: median test error of the last 5 evaluations when the run evaluated
    periodically (the paper's), else the final test error; chance for a diverged run."""
    if r.status == "diverged":
        return CHANCE_ERROR
    return r.test_error_median5 if r.test_error_median5 is not None else 1.0 - r.test_accuracy


@dataclass
class Cell:
    """One experiment of the study: its runs by seed."""

    norm: str
    x: Any
    facet: str
    runs: dict[int, store.RunRecord] = field(default_factory=dict)

    @property
    def errors(self) -> dict[int, float]:
        return {seed: error_of(r) for seed, r in sorted(self.runs.items())}

    @property
    def diverged(self) -> int:
        return sum(r.status == "diverged" for r in self.runs.values())

    def summary(self) -> tuple[float, float | None]:
        mean, _, half = stats.mean_ci(list(self.errors.values()))
        return mean, half


@dataclass
class Study:
    name: str
    x_label: str
    cells: list[Cell]
    missing: list[str]
    specs: list[specs.Spec]
    metric: str


def _x_axis(records: list[store.RunRecord]) -> tuple[str, Any]:
    """What the study varies, and a function giving a record's x value."""
    def flat(r):
        return tables.flat_spec(r.spec)

    if any(flat(r).get("model.norm.virtual_batch_size") for r in records):
        by_batch = {flat(r)["train.batch_size"]: flat(r)["model.norm.virtual_batch_size"]
                    for r in records if flat(r).get("model.norm.virtual_batch_size")}

        def per_group(r):
            f = flat(r)
            if f.get("model.norm.virtual_batch_size"):
                return f["model.norm.virtual_batch_size"]
            return by_batch.get(f["train.batch_size"], "any")  # GN: the same at every v
        return "images per BN group (per-replica batch v)", per_group
    groups = {flat(r).get("model.norm.groups") for r in records}
    if len(groups) > 1:
        return "GroupNorm groups (1 = LN ... channels = IN)", lambda r: flat(r).get("model.norm.groups")
    return "batch size", lambda r: flat(r)["train.batch_size"]


def _facet(r: store.RunRecord, varying: bool) -> str:
    if not varying:
        return ""
    widths = tables.flat_spec(r.spec).get("model.widths")
    depth = sum(1 for w in widths if w != "M") if widths else 0
    return f"depth {depth} ({tables.value_label(widths)})"


def load_study(spec_files: list[Path], results_dir: Path, smoke: bool = False) -> Study:
    """The runs the spec files describe, found in the results directory by run id."""
    runs = [s for path in spec_files for s in grid.load_runs(path)]
    if smoke:
        runs = grid.smoke(runs)
    wanted = {store.run_id(s.name, specs.spec_hash(s), smoke): s for s in runs}
    found = {rid: store.finished(results_dir, rid) for rid in wanted}
    records = [r for r in found.values() if r is not None]
    missing = [rid for rid, r in found.items() if r is None]
    if not records:
        raise NormbenchError(f"no finished runs of {', '.join(map(str, spec_files))} in "
                             f"{results_dir}: run them first (normbench run ...)")
    x_label, x_of = _x_axis(records)
    depths = {tables.value_label(tables.flat_spec(r.spec).get("model.widths")) for r in records}
    cells: dict[tuple, Cell] = {}
    for r in records:
        key = (r.norm_type, x_of(r), _facet(r, len(depths) > 1))
        cells.setdefault(key, Cell(*key)).runs[r.seed] = r
    order = sorted(cells.values(), key=lambda c: (c.facet, c.norm, tables.sort_key(c.x)))
    periodic = any(r.test_error_median5 is not None for r in records)
    metric = ("test error (%): median of the last 5 per-epoch evaluations (the paper's metric)"
              if periodic else "test error (%) at the end of training")
    return Study(runs[0].name, x_label, order, missing, runs, metric)


# ---------------------------------------------------------------------------------------------
# Comparisons


@dataclass
class Comparison:
    what: str
    norm: str
    facet: str
    n: int
    diff: float  # error difference in points, a minus b
    half: float | None
    p: float | None
    p_holm: float | None = None


def comparisons(study: Study) -> list[Comparison]:
    """Each x vs the reference (largest) x per norm, and BN vs GN at each x; paired by seed."""
    found = []
    facets = sorted({c.facet for c in study.cells})
    for facet in facets:
        mine = [c for c in study.cells if c.facet == facet]
        for norm in sorted({c.norm for c in mine}):
            series = [c for c in mine if c.norm == norm and c.x != "any"]
            numeric = [c for c in series if isinstance(c.x, (int, float))]
            if len(numeric) < 2:
                continue
            ref = max(numeric, key=lambda c: c.x)
            for cell in numeric:
                if cell is ref:
                    continue
                found.append(_paired(f"{norm} at {cell.x} vs at {ref.x}", norm, facet, cell, ref))
        bn = {c.x: c for c in mine if c.norm == "batch"}
        gn = {c.x: c for c in mine if c.norm == "group"}
        for x, b in sorted(bn.items(), key=lambda kv: tables.sort_key(kv[0])):
            g = gn.get(x) or gn.get("any")
            if g is not None:
                found.append(_paired(f"batch vs group at {x}", "batch-group", facet, b, g))
    adjusted = stats.holm([c.p for c in found])
    for c, p in zip(found, adjusted):
        c.p_holm = p
    return found


def _paired(what: str, norm: str, facet: str, a: Cell, b: Cell) -> Comparison:
    seeds = sorted(set(a.errors) & set(b.errors))
    diff, half, p = stats.paired([a.errors[s] for s in seeds], [b.errors[s] for s in seeds])
    return Comparison(what, norm, facet, len(seeds), 100 * diff,
                      None if half is None else 100 * half, p)


def sentence(c: Comparison) -> str:
    """A claim generated from the numbers, never written by hand."""
    a, _, b = c.what.partition(" vs ")
    where = f" ({c.facet})" if c.facet else ""
    if c.n < 2 or c.p_holm is None:
        return (f"{a} vs {b}{where}: {c.diff:+.2f} points from {c.n} paired seed(s); too few "
                "for a test.")
    ci = f" ± {c.half:.2f}" if c.half is not None else ""
    if c.p_holm < 0.05:
        verb = "higher" if c.diff > 0 else "lower"
        return (f"{a}{where} has {abs(c.diff):.2f}{ci} points {verb} error than {b} "
                f"(paired t, n = {c.n}, Holm-adjusted p = {c.p_holm:.3g}).")
    return (f"{a} vs {b}{where}: no significant difference ({c.diff:+.2f}{ci} points, n = "
            f"{c.n}, Holm-adjusted p = {c.p_holm:.3g}).")


# ---------------------------------------------------------------------------------------------
# Figures


def figure(study: Study, out: Path) -> Path:
    """Error vs x, one line per norm (fixed colours), 95% CI bands clipped at 0; a facet per
    depth; for a per-replica study, the paper's Table 2 beside it."""
    from normbench.plot import pyplot

    plt = pyplot()
    facets = sorted({c.facet for c in study.cells})
    paper = "per-replica" in study.x_label or "BN group" in study.x_label
    panels = len(facets) + (1 if paper else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), dpi=200, squeeze=False)
    for ax, facet in zip(axes[0], facets):
        mine = [c for c in study.cells if c.facet == facet]
        xs_all = sorted({c.x for c in mine if isinstance(c.x, (int, float))})
        for norm in sorted({c.norm for c in mine}):
            series = sorted((c for c in mine if c.norm == norm), key=lambda c: tables.sort_key(c.x))
            color = NORM_COLORS.get(norm)
            if series and series[0].x == "any":  # independent of x: a level line over all of it
                mean, half = series[0].summary()
                ax.hlines(100 * mean, min(xs_all), max(xs_all), colors=color, label=f"{norm} (any v)")
                if half:
                    ax.fill_between(xs_all, max(0, 100 * (mean - half)),
                                    min(100.0, 100 * (mean + half)), color=color, alpha=0.15)
                continue
            xs = [c.x for c in series]
            means = [100 * c.summary()[0] for c in series]
            halves = [100 * (c.summary()[1] or 0.0) for c in series]
            ax.plot(xs, means, marker="o", color=color, label=norm)
            ax.fill_between(xs, [max(0.0, m - h) for m, h in zip(means, halves)],
                            [min(100.0, m + h) for m, h in zip(means, halves)], color=color,
                            alpha=0.15)  # an error band stays within what is possible
        if xs_all and all(x > 0 for x in xs_all):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs_all)
            ax.set_xticklabels([str(x) for x in xs_all])
            if paper:
                ax.invert_xaxis()  # as the paper draws it: the batch shrinks to the right
        ax.set_xlabel(study.x_label)
        ax.set_ylabel("test error (%)")
        ax.set_title(facet or study.name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if paper:
        ref = json.loads(PAPER.read_text())["batch_per_gpu"]
        ax = axes[0][-1]
        for norm in ("batch", "group"):
            ax.plot(ref["N"], ref[norm], marker="s", color=NORM_COLORS[norm], label=norm)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ref["N"])
        ax.set_xticklabels([str(n) for n in ref["N"]])
        ax.invert_xaxis()
        ax.set_xlabel("images per GPU")
        ax.set_ylabel("ImageNet val error (%)")
        ax.set_title("Wu & He 2018, Table 2 (ResNet-50, ImageNet)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{study.name}: {study.metric}", fontsize=9)
    fig.tight_layout()
    path = out / f"{study.name}-error.png"
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Documents


def _fmt_cell(cell: Cell) -> str:
    mean, half = cell.summary()
    text = f"{100 * mean:.2f}" + (f" ± {100 * half:.2f}" if half is not None else "")
    text += f" (n={len(cell.runs)}"
    return text + (f", {cell.diverged} diverged)" if cell.diverged else ")")


def results_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Rows: norm (and facet); columns: x values; cells: error % ± 95% CI (n)."""
    xs = sorted({c.x for c in study.cells}, key=tables.sort_key)
    head = ["norm"] + [str(x) for x in xs]
    rows = []
    for facet in sorted({c.facet for c in study.cells}):
        for norm in sorted({c.norm for c in study.cells if c.facet == facet}):
            cells = {c.x: c for c in study.cells if c.facet == facet and c.norm == norm}
            label = f"{norm}" + (f", {facet}" if facet else "")
            rows.append([label] + [_fmt_cell(cells[x]) if x in cells else "" for x in xs])
    return head, rows


def bn_modes_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """BN's test error with moving, PreciseBN and batch statistics, per x."""
    head = ["x", "moving", "precise", "batch"]
    rows = []
    for cell in study.cells:
        if cell.norm != "batch":
            continue
        row = [str(cell.x) + (f" ({cell.facet})" if cell.facet else "")]
        for mode in ("moving", "precise", "batch"):
            values = [1 - r.bn_eval[mode].accuracy for r in cell.runs.values() if r.bn_eval]
            if not values:
                row.append("-")
                continue
            mean, _, half = stats.mean_ci(values)
            row.append(f"{100 * mean:.2f}" + (f" ± {100 * half:.2f}" if half is not None else ""))
        rows.append(row)
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table></div>'


def provenance(study: Study) -> dict[str, str]:
    records = [r for c in study.cells for r in c.runs.values()]
    env = records[0].env
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    wall = sum(r.total_s for r in records)
    return {"runs": f"{len(records)} finished ({sum(r.status == 'diverged' for r in records)} "
                    f"diverged), {len(study.missing)} missing",
            "dataset": ", ".join(sorted({f'{r.dataset.name} ({r.dataset.n_train:,} train / '
                                         f'{r.dataset.n_test:,} test)' for r in records})),
            "training time": f"{wall / 60:.1f} min of run time, summed over runs",
            "versions": f"normbench {env.get('normbench')}, TensorFlow {env.get('tensorflow')}, "
                        f"Keras {env.get('keras')}, Python {env.get('python')}",
            "machine": f"{env.get('cpu')} x {env.get('cpu_count')}",
            "commit (report)": commit,
            "written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + f" on {platform.node()}"}


def write(study: Study, out: Path) -> list[Path]:
    """report.md, report.html (self-contained) and the figure; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    png = figure(study, out)
    found = comparisons(study)
    head, rows = results_table(study)
    bn_head, bn_rows = bn_modes_table(study)
    protocol = grid.describe(grid.Grid(Path(study.name), {}, [], [], study.specs[:1]))
    facts = provenance(study)
    sentences = [sentence(c) for c in found]
    paper = json.loads(PAPER.read_text())
    p_rows = [["images per GPU"] + [str(n) for n in paper["batch_per_gpu"]["N"]],
              ["BN"] + [f"{v:.1f}" for v in paper["batch_per_gpu"]["batch"]],
              ["GN"] + [f"{v:.1f}" for v in paper["batch_per_gpu"]["group"]]]
    cmp_head = ["comparison", "n", "Δ error (pts)", "95% CI (pts)", "p", "p (Holm)"]
    cmp_rows = [[c.what + (f" ({c.facet})" if c.facet else ""), str(c.n), f"{c.diff:+.2f}",
                 "-" if c.half is None else f"± {c.half:.2f}",
                 "-" if c.p is None else f"{c.p:.3g}", "-" if c.p_holm is None else f"{c.p_holm:.3g}"]
                for c in found]
    note = ("Means count a diverged run at chance-level error (90%); each cell gives n and how "
            "many diverged. p-values are paired t-tests over seeds, Holm-adjusted over the "
            f"{len(found)} comparisons of this report.")
    md = [f"# {study.name}", "", f"Metric: {study.metric}.", "", "## Summary", ""]
    md += [f"- {s}" for s in sentences] or ["- (no comparison has two paired seeds yet)"]
    md += ["", "## Results", "", f"Rows: norm; columns: {study.x_label}. {note}", "",
           _md_table(head, rows), f"![{study.name}]({png.name})", "",
           "## The paper (Table 2, ImageNet val error %)", "", _md_table(p_rows[0], p_rows[1:]),
           "## BatchNorm's test-time statistics (test error %)", "",
           _md_table(bn_head, bn_rows) if bn_rows else "No BatchNorm runs.\n",
           "## Paired comparisons", "", _md_table(cmp_head, cmp_rows),
           "## How this was run", "", "```yaml", protocol.strip(), "```", ""]
    md += [f"- {k}: {v}" for k, v in facts.items()]
    if study.missing:
        md += ["", f"Missing runs ({len(study.missing)}): " + ", ".join(study.missing[:20])
               + (" ..." if len(study.missing) > 20 else "")]
    (out / "report.md").write_text("\n".join(md) + "\n")
    image = base64.b64encode(png.read_bytes()).decode()
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(study.name)}</title><style>
body{{font-family:system-ui,sans-serif;max-width:72rem;margin:0 auto;padding:1rem;line-height:1.45;color:#222}}
img{{max-width:100%;height:auto}} .scroll{{overflow-x:auto}} table{{border-collapse:collapse;font-variant-numeric:tabular-nums}}
td,th{{border:1px solid #ccc;padding:.25rem .5rem;white-space:nowrap;text-align:right}} td:first-child,th:first-child{{text-align:left}}
pre{{overflow-x:auto;background:#f6f6f6;padding:.5rem}} nav a{{margin-right:1rem}}
</style></head><body>
<h1>{html.escape(study.name)}</h1><p>Metric: {html.escape(study.metric)}.</p>
<nav><a href="#summary">Summary</a><a href="#results">Results</a><a href="#paper">Paper</a><a href="#bn">BN statistics</a><a href="#comparisons">Comparisons</a><a href="#how">How this was run</a></nav>
<h2 id="summary">Summary</h2><ul>{''.join(f'<li>{html.escape(s)}</li>' for s in sentences)}</ul>
<h2 id="results">Results</h2><p>{html.escape(f'Rows: norm; columns: {study.x_label}. {note}')}</p>
{_html_table(head, rows)}<p><img alt="{html.escape(study.name)} figure" src="data:image/png;base64,{image}"></p>
<h2 id="paper">The paper (Table 2, ImageNet val error %)</h2>{_html_table(p_rows[0], p_rows[1:])}
<h2 id="bn">BatchNorm's test-time statistics (test error %)</h2>{_html_table(bn_head, bn_rows) if bn_rows else '<p>No BatchNorm runs.</p>'}
<h2 id="comparisons">Paired comparisons</h2>{_html_table(cmp_head, cmp_rows)}
<h2 id="how">How this was run</h2><pre>{html.escape(protocol)}</pre>
<ul>{''.join(f'<li>{html.escape(k)}: {html.escape(v)}</li>' for k, v in facts.items())}</ul>
</body></html>
"""
    (out / "report.html").write_text(page)
    return [out / "report.md", out / "report.html", png]
