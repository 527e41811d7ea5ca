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
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbench import grid, identity, stats, store, tables
from normbench.errors import NormbenchError

CHANCE_ERROR = 0.9  # 10 classes


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
    spec_files: list[Path] = field(default_factory=list)
    smoke: bool = False

    @property
    def records(self) -> list[store.RunRecord]:
        return [r for c in self.cells for r in c.runs.values()]

    @property
    def context(self) -> str:
        from normbench import plot

        return plot.context(self.records)


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


def load_study(spec_files: list[Path], results_dir: Path, smoke: bool = False) -> Study:
    """The runs the spec files describe, found in the results directory by run id."""
    runs = [s for path in spec_files for s in grid.load_runs(path)]
    if smoke:
        runs = grid.smoke(runs)
    wanted = {store.run_id(s.name, identity.spec_hash(s), smoke): s for s in runs}
    found = {rid: store.finished(results_dir, rid) for rid in wanted}
    records = [r for r in found.values() if r is not None]
    missing = [rid for rid, r in found.items() if r is None]
    if not records:
        raise NormbenchError(f"no finished runs of {', '.join(map(str, spec_files))} in "
                             f"{results_dir}: run them first (normbench run ...)")
    x_label, x_of = _x_axis(records)
    depths = {tables.value_label(tables.flat_spec(r.spec).get("model.widths")) for r in records}

    def layout(r):
        return r.norm_type, x_of(r), _facet(r, len(depths) > 1)

    others = _other_fields(records, layout)
    cells: dict[tuple, Cell] = {}
    for r in records:
        norm, x, depth = layout(r)
        config = _config(r)
        facet = ", ".join([depth] * bool(depth) + [f"{name.rsplit('.', 1)[-1]}="
                                                   f"{tables.value_label(config.get(name))}"
                                                   for name in others])
        cell = cells.setdefault((norm, x, facet), Cell(norm, x, facet))
        if r.seed in cell.runs:  # the layout lost a field: never let one run hide another
            raise NormbenchError(f"report: runs {cell.runs[r.seed].run_id} and {r.run_id} fall in "
                                 "one cell; report their specs separately")
        cell.runs[r.seed] = r
    order = sorted(cells.values(), key=lambda c: (c.facet, c.norm, tables.sort_key(c.x)))
    periodic = any(r.test_error_median5 is not None for r in records)
    metric = ("test error (%): median of the last 5 per-epoch evaluations (the paper's metric)"
              if periodic else "test error (%) at the end of training")
    return Study(runs[0].name, x_label, order, missing, runs, metric, list(spec_files), smoke)


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


def error_figure(study: Study):
    """Error vs x, one line per norm (fixed colours), 95% CI bands clipped at 0; a panel per
    depth; for a per-replica study, the paper's Table 2 beside it. Returns the Figure."""
    from normbench import plot

    panels = []
    per_replica = "per-replica" in study.x_label
    for facet in sorted({c.facet for c in study.cells}):
        mine = [c for c in study.cells if c.facet == facet]
        panel = plot.Panel(facet or "these runs", study.x_label,
                           "test error (%), mean ± 95% CI (log scale)", log2=True,
                           invert=per_replica, logy=True)  # errors from <1% to tens of %
        for norm in sorted({c.norm for c in mine}):
            series = sorted((c for c in mine if c.norm == norm), key=lambda c: tables.sort_key(c.x))
            summaries = [c.summary() for c in series]
            line = plot.Series(norm, plot.norm_name(norm), [c.x for c in series],
                               [100 * m for m, _ in summaries],
                               [None if h is None else 100 * h for _, h in summaries])
            if series and series[0].x == "any":  # independent of x: a level line over all of it
                line.label += " (any v)"
                panel.levels.append(line)
            else:
                panel.series.append(line)
        panels.append(panel)
    if per_replica:
        panels.append(plot.paper_panel(plot.load_paper()))
    return plot.draw(panels, f"{study.name}: {study.metric}\n{study.context}")


def curves_figure(study: Study):
    """Learning curves (training loss, test error by epoch), a column per x value."""
    from normbench import plot

    xs = sorted({c.x for c in study.cells if c.x != "any"}, key=tables.sort_key)
    short = study.x_label.split("(")[-1].rstrip(")") if "(" in study.x_label else study.x_label
    groups: dict[str, dict[str, list]] = {}
    for x in xs:
        facet = f"{short} = {x}"
        for cell in study.cells:
            if cell.x in (x, "any"):
                label = plot.norm_name(cell.norm) + (f" ({cell.facet})" if cell.facet else "")
                groups.setdefault(facet, {}).setdefault(label, []).extend(cell.runs.values())
    return plot.curves_figure(groups, f"{study.name}: learning curves, mean over seeds ± 95% CI "
                                      f"({study.context})")


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


def _h(text: str) -> str:
    """Text for the HTML page: escaped, and control or bidi characters of records shown as
    escapes (tables.printable)."""
    return html.escape(tables.printable(str(text)))


def _md(text: str) -> str:
    """A Markdown table cell: one line, `|` escaped, control and bidi characters as escapes."""
    return tables.printable(str(text), newlines=False).replace("|", "\\|")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_md, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(_md, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(head: list[str], rows: list[list[str]], *, table_id: str | None = None,
                row_ids: list[str] | None = None) -> str:
    cells = "".join(f"<th>{_h(h)}</th>" for h in head)
    ids = row_ids or [None] * len(rows)
    body = "".join((f'<tr id="{i}">' if i else "<tr>")
                   + "".join(f"<td>{_h(c)}</td>" for c in r) + "</tr>"
                   for r, i in zip(rows, ids))
    table = f'<table id="{table_id}">' if table_id else "<table>"
    return f'<div class="scroll">{table}<thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table></div>'


def provenance(study: Study, results_dir: Path | None = None) -> dict[str, str]:
    """How this was run: the commands, commit, versions, machine and time."""
    records = study.records
    env = records[0].env
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    summed = sum(r.total_s for r in records)
    start = min(dt.datetime.fromisoformat(r.started) for r in records)
    end = max(dt.datetime.fromisoformat(r.finished) for r in records)
    files = " ".join(str(p) for p in study.spec_files) or study.name
    where = f" --results {results_dir}" if results_dir is not None else ""
    smoke = " --smoke" if study.smoke else ""
    return {"commands": f"normbench run {files}{smoke} -j 2{where}; "
                        f"normbench report {files}{smoke}{where}",
            "runs": f"{len(records)} finished ({sum(r.status == 'diverged' for r in records)} "
                    f"diverged), {len(study.missing)} missing",
            "dataset": ", ".join(sorted({f'{r.dataset.name} ({r.dataset.n_train:,} train / '
                                         f'{r.dataset.n_test:,} test)' for r in records})),
            "wall time": f"{(end - start).total_seconds() / 60:.1f} min from the first run's start "
                         f"to the last run's end ({start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC; "
                         "resumed runs include the pause)",
            "run time": f"{summed / 60:.1f} min, summed over runs",
            "versions": f"normbench {env.get('normbench')}, TensorFlow {env.get('tensorflow')}, "
                        f"Keras {env.get('keras')}, Python {env.get('python')}",
            "machine": f"{env.get('cpu')} x {env.get('cpu_count')}",
            "commit (report)": commit,
            "written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                       + f" on {platform.node()}"}


CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:72rem;margin:0 auto;
padding:1rem;line-height:1.45;color:#1d1d1f;overflow-wrap:anywhere}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto;display:block}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.9rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;white-space:nowrap;text-align:right}
td:first-child,th:first-child{text-align:left;position:sticky;left:0;background:#fff}
pre{overflow-x:auto;background:#f6f6f6;padding:.5rem;white-space:pre}
nav{display:flex;flex-wrap:wrap;gap:.25rem 1rem}
.up{font-size:.8rem;margin-left:.5rem}
.note{color:#555;font-size:.9rem}
"""


def _image(path: Path) -> str:
    kind = "svg+xml" if path.suffix == ".svg" else "png"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_h(path.stem)}" src="data:image/{kind};base64,{data}">'


def write(study: Study, out: Path, fmt: str = "png", results_dir: Path | None = None) -> list[Path]:
    """report.md, report.html (self-contained) and the figures; returns the files written."""
    from normbench import plot

    out.mkdir(parents=True, exist_ok=True)
    error_png = plot.save(error_figure(study), out / f"{study.name}-error.{fmt}", fmt)
    curves_png = plot.save(curves_figure(study), out / f"{study.name}-curves.{fmt}", fmt)
    found = comparisons(study)
    head, rows = results_table(study)
    bn_head, bn_rows = bn_modes_table(study)
    protocol = grid.describe(grid.Grid(Path(study.name), {}, [], [], study.specs[:1]))
    facts = provenance(study, results_dir)
    sentences = [sentence(c) for c in found]
    paper = plot.load_paper()
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
    md = [f"# {study.name}", "", f"{study.context}. Metric: {study.metric}.", "", "## Summary", ""]
    md += [f"- {s}" for s in sentences] or ["- (no comparison has two paired seeds yet)"]
    md += ["", "## Results", "", f"Rows: norm; columns: {study.x_label}. {note}", "",
           _md_table(head, rows), f"![{study.name}: test error]({error_png.name})", "",
           f"![{study.name}: learning curves]({curves_png.name})", "",
           "## The paper (Table 2, ImageNet val error %)", "", _md_table(p_rows[0], p_rows[1:]),
           "## BatchNorm's test-time statistics (test error %)", "",
           _md_table(bn_head, bn_rows) if bn_rows else "No BatchNorm runs.\n",
           "## Paired comparisons", "", _md_table(cmp_head, cmp_rows),
           "## How this was run", "", "```yaml", protocol.strip(), "```", ""]
    md += [f"- {k}: {v}" for k, v in facts.items()]
    if study.missing:
        md += ["", f"Missing runs ({len(study.missing)}): " + ", ".join(study.missing[:20])
               + (" ..." if len(study.missing) > 20 else "")]
    store.write_atomic(out / "report.md", tables.printable("\n".join(md) + "\n"))
    store.write_atomic(out / "report.html", _page(study, sentences, found, note, head, rows,
                                                  error_png, curves_png, p_rows, bn_head, bn_rows,
                                                  cmp_head, cmp_rows, protocol, facts))
    return [out / "report.md", out / "report.html", error_png, curves_png]


def _page(study, sentences, found, note, head, rows, error_png, curves_png, p_rows, bn_head,
          bn_rows, cmp_head, cmp_rows, protocol, facts) -> str:
    """The self-contained HTML page: images inlined, no request leaves the machine."""
    up = '<a class="up" href="#summary">↑ summary</a>'
    sections = [("results", "Results"), ("curves", "Learning curves"), ("paper", "The paper"),
                ("bn", "BN statistics"), ("comparisons", "Comparisons"), ("how", "How this was run")]
    nav = "".join(f'<a href="#{i}">{_h(t)}</a>' for i, t in sections)
    items = "".join(f'<li>{_h(s)} <a href="#cmp-{k}">details</a></li>'
                    for k, s in enumerate(sentences)) or "<li>(no comparison has two paired seeds yet)</li>"
    cmp_table = _html_table(cmp_head, cmp_rows, row_ids=[f"cmp-{k}" for k in range(len(cmp_rows))])
    missing = (f"<p class=note>{len(study.missing)} run(s) of the study are not finished; this "
               "report covers the rest.</p>" if study.missing else "")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_h(study.name)}</title><style>{CSS}</style></head><body>
<h1>{_h(study.name)}</h1>
<p>{_h(study.context)}. Metric: {_h(study.metric)}.</p>{missing}
<nav>{nav}</nav>
<h2 id="summary">Summary</h2><ul>{items}</ul>
<h2 id="results">Results{up}</h2><p class=note>{_h(f'Rows: norm; columns: {study.x_label}. {note}')}</p>
{_html_table(head, rows, table_id="headline")}<p>{_image(error_png)}</p>
<h2 id="curves">Learning curves{up}</h2><p>{_image(curves_png)}</p>
<h2 id="paper">The paper (Table 2, ImageNet val error %){up}</h2>{_html_table(p_rows[0], p_rows[1:])}
<h2 id="bn">BatchNorm's test-time statistics (test error %){up}</h2>{_html_table(bn_head, bn_rows) if bn_rows else '<p>No BatchNorm runs.</p>'}
<h2 id="comparisons">Paired comparisons{up}</h2>{cmp_table}
<h2 id="how">How this was run{up}</h2><pre>{_h(protocol)}</pre>
<ul>{''.join(f'<li>{_h(k)}: <code>{_h(v)}</code></li>' if k == 'commands' else f'<li>{_h(k)}: {_h(v)}</li>' for k, v in facts.items())}</ul>
</body></html>
"""
