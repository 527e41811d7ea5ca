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
import string
import subprocess
from importlib import resources
from pathlib import Path

from normbench import columns, findings, grid, guards, stats, store, tables, tuning
from normbench.study import Cell, Study

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


def _fmt_cell(cell: Cell, verdict: guards.Convergence | None = None) -> str:
    mean, half = cell.summary()
    text = f"{100 * mean:.2f}" + (f" ± {100 * half:.2f}" if half is not None else "")
    text += f" (n={len(cell.runs)}"
    if cell.diverged:
        text += f", {cell.diverged} diverged"
    if verdict is not None and not verdict.converged:
        text += f", {len(verdict.runs) or len(cell.runs)} not converged"
    return text + ")"


def results_table(study: Study, verdicts: dict[int, guards.Convergence] | None = None
                  ) -> tuple[list[str], list[list[str]]]:
    """Rows: norm (and facet); columns: x values; cells: error % ± 95% CI (n), and how many runs
    did not converge where `verdicts` (guards.convergence) says so."""
    xs = sorted({c.x for c in study.cells}, key=tables.sort_key)
    head = ["norm"] + [str(x) for x in xs]
    rows = []
    for facet in study.facets:
        for norm in study.norms(facet):
            cells = {c.x: c for c in study.cells if c.facet == facet and c.norm == norm}
            label = f"{norm}" + (f", {facet}" if facet else "")
            rows.append([label] + [_fmt_cell(cells[x], (verdicts or {}).get(id(cells[x])))
                                   if x in cells else "" for x in xs])
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
    escapes (columns.printable)."""
    return html.escape(columns.printable(str(text)))


def _md(text: str) -> str:
    """A Markdown table cell: one line, `|` escaped, control and bidi characters as escapes."""
    return columns.printable(str(text), newlines=False).replace("|", "\\|")


def _md_table(head: list[str], rows: list[list[str]], table_id: str | None = None) -> str:
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




def page_template() -> string.Template:
    """report.html's page (its CSS inside): normbench/_assets/report.html, with $title, $context,
    $metric, $nav and $body filled in (each already HTML-escaped or built from escaped parts)."""
    return string.Template(resources.files("normbench").joinpath("_assets/report.html")
                           .read_text(encoding="utf-8"))


def _image(path: Path) -> str:
    kind = "svg+xml" if path.suffix == ".svg" else "png"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_h(path.stem)}" src="data:image/{kind};base64,{data}">'


# read only where a field varies inside a cell (a study of steps or learning rates)
SETTINGS = ("Settings: where a field varies inside a cell (more steps, another learning rate), "
            "each cell is laid out once per setting (a facet) and compared with itself at its "
            "first setting, paired by seed; where either of the two is not converged the "
            "difference is shown, not tested.")

READING = [
    "Cells: test error %, mean ± 95% Student-t CI over seeds (n). A diverged run counts at "
    "chance-level error (90%) in the means.",
    f"Not converged: a run whose final training loss is above {guards.LOSS_FACTOR:g}x the median "
    "of the best-fitting cell of its facet (and above it by more than "
    f"{guards.LOSS_GAP:g} nats), or that diverged; a cell whose error was still falling over the "
    "last quarter of training by more than half its minimum detectable effect (held-out error "
    "where recorded, else test error; where the learning rate still changes in that quarter, from "
    f"the first evaluation at {100 * guards.TAIL:g}% of its peak or below, if two reach it); a cell whose seed SD is above "
    f"{guards.SPREAD_FACTOR:g}x the median cell's. A decade, because BatchNorm with small ghost "
    "batches records its training loss under its own noisy statistics (4-7x the best cell on "
    "mnist-10k while its test error stays within half a point). Such cells are shown, never "
    "compared, never in the summary's claims.",
    f"Unstable (a warning only): an epoch's training loss above {guards.SPIKE_FACTOR:g}x its lowest "
    f"so far and by more than {guards.SPIKE_GAP:g} nats.",
    "Comparisons are paired by seed (a seed fixes initial weights and data order). Along the "
    "axis: every pair of a norm's cells (each value against the largest, against the norm's best "
    "cell, which is picked after seeing the means and so is only fair inside the family of all "
    "pairs, and the rest), and the trend (the least-squares slope of error on log2 of the axis, "
    "per seed: an average rate, not a shape). BatchNorm against GroupNorm at the same value. A "
    "difference that is the same in every seed has no variance to test and is shown untested.",
    "Confounded axis: where the optimizer's batch, the steps or the learning rate change along "
    "the axis, along-axis differences are shown but not tested; BatchNorm's change is tested net "
    "of each batch-independent norm's change on the same axis (difference in differences), "
    "and a control that itself moved by more than its minimum detectable effect is reported.",
    "p-values: paired t-tests, Holm-adjusted over the tested comparisons. Minimum detectable "
    "effect (MDE): the true difference a test at α = 0.05 / m (m tested comparisons) would find "
    "with 80% power, from the observed SD of the paired differences (an estimate). A "
    "non-significant difference is \"inconclusive: effects up to X points not excluded\", X the "
    "far end of the CI at the same level; equivalence is judged only against a margin the "
    "spec declared before its runs (study.equivalence_margin).",
    f"Ceiling: the reference error as test images, with one run's binomial SE; below "
    f"{100 * guards.CEILING_ERROR:g}% error effects are a handful of images.",
    "Metric window: a warning when the evaluations the metric's median is taken over straddle a "
    "learning-rate change or the end of warmup; the final evaluation is shown beside the median.",
]


def _comparison_rows(found: findings.Findings) -> tuple[list[str], list[list[str]]]:
    head = ["comparison", "n", "Δ error (pts)", "95% CI (pts)", "adjusted CI (pts)", "MDE (pts)",
            "p", "p (Holm)", "verdict"]
    rows = []
    for c in found.comparisons:
        if not c.tested:
            verdict = c.note
        elif c.p_holm is None:
            verdict = "too few seeds"
        elif c.significant:
            verdict = "significant"
        else:
            verdict = f"inconclusive: up to {c.far:.2f} not excluded"
            if c.equivalent is not None:
                verdict += "; equivalent" if c.equivalent else "; not shown equivalent"
        rows.append([c.what, str(c.n), f"{c.diff:+.2f}",
                     "-" if c.half is None else f"± {c.half:.2f}",
                     "-" if c.adj_half is None else f"± {c.adj_half:.2f}",
                     "-" if c.mde is None else f"{c.mde:.2f}",
                     "-" if c.p is None or not c.tested else f"{c.p:.3g}",
                     "-" if c.p_holm is None else f"{c.p_holm:.3g}", verdict])
    return head, rows


def write(study: Study, out: Path, fmt: str = "png", results_dir: Path | None = None) -> list[Path]:
    """report.md, report.html (self-contained) and the figures; returns the files written."""
    from normbench import plot

    out.mkdir(parents=True, exist_ok=True)
    error_png = plot.save(error_figure(study), out / f"{study.name}-error.{fmt}", fmt)
    curves_png = plot.save(curves_figure(study), out / f"{study.name}-curves.{fmt}", fmt)
    found = findings.analyse(study)
    claims = [findings.sentence(c, found.margin) for c in findings.headline(found, study)]
    checks = findings.warnings(found, study)
    tables_ = {
        "results": results_table(study, found.convergence),
        "convergence": findings.convergence_table(found),
        "protocol": findings.protocol_table(found),
        "window": guards.window_table(study),
        "bn": bn_modes_table(study),
        "comparisons": _comparison_rows(found),
        "tuning": tuning.describe(study.specs, study.results_dir, study.smoke)[1],
    }
    protocol = grid.describe(grid.Grid(Path(study.name), {}, [], [], study.specs[:1]))
    facts = provenance(study, results_dir)
    paper = plot.load_paper()
    p_rows = [["images per GPU"] + [str(n) for n in paper["batch_per_gpu"]["N"]],
              ["BN"] + [f"{v:.1f}" for v in paper["batch_per_gpu"]["batch"]],
              ["GN"] + [f"{v:.1f}" for v in paper["batch_per_gpu"]["group"]]]
    doc = Document(study, claims, checks, tables_, p_rows, protocol, facts, error_png, curves_png)
    store.write_atomic(out / "report.md", columns.printable(doc.markdown()))
    store.write_atomic(out / "report.html", doc.html())
    return [out / "report.md", out / "report.html", error_png, curves_png]


# The sections, in order: (id, title); report.md has each as '## title', report.html as <h2 id>
SECTIONS = [("summary", "Summary"), ("results", "Results"), ("guards", "What the records support"),
            ("comparisons", "Paired comparisons"), ("bn", "BatchNorm's test-time statistics"),
            ("paper", "The paper (Table 2, ImageNet val error %)"),
            ("reading", "How to read this"), ("how", "How this was run")]


class Document:
    """One report's content, written as Markdown and as a self-contained HTML page."""

    def __init__(self, study, claims, checks, tables_, p_rows, protocol, facts, error_png,
                 curves_png):
        self.study, self.claims, self.checks, self.t = study, claims, checks, tables_
        self.p_rows, self.protocol, self.facts = p_rows, protocol, facts
        self.error_png, self.curves_png = error_png, curves_png

    def _blocks(self, table, image, para, items, code):
        """The sections as (id, title, [parts]) through the format's writers."""
        s, t = self.study, self.t
        none = "(no comparison could be tested: too few converged cells or seeds)"
        head, rows = t["results"]
        missing = ([para(f"{len(s.missing)} run(s) of the study are not finished; this report "
                         "covers the rest.")] if s.missing else [])
        guard_parts = [items(self.checks), para("Convergence per cell:"), table(*t["convergence"])]
        if t["protocol"][1]:
            guard_parts += [para("The protocol along the axis (optimizer's batch, steps, peak "
                                 "learning rate):"), table(*t["protocol"])]
        guard_parts += [para("The metric beside the final evaluation:"), table(*t["window"])]
        if t["tuning"][1]:
            guard_parts += [para("Tuning (held-out error %, by learning rate; each group's choice "
                                 "beside it, so every group's error at the others' rates is the "
                                 "shared-rate check):"), table(*t["tuning"])]
        bn = table(*t["bn"]) if t["bn"][1] else para("No BatchNorm runs.")
        return [
            ("summary", [*missing, items(self.claims or [none])]),
            ("results", [para(f"Rows: norm; columns: {s.x_label}. Test error %, mean ± 95% CI "
                              "(n); a diverged run counts at 90%."), table(head, rows, table_id="headline"),
                         image(self.error_png, "test error"),
                         image(self.curves_png, "learning curves")]),
            ("guards", guard_parts),
            ("comparisons", [table(*t["comparisons"])]),
            ("bn", [bn]),
            ("paper", [table(self.p_rows[0], self.p_rows[1:])]),
            ("reading", [items(READING + [SETTINGS] * any(c.setting for c in s.cells))]),
            ("how", [code(self.protocol.strip()),
                     items([f"{k}: {v}" for k, v in self.facts.items()])]),
        ]

    def markdown(self) -> str:
        s = self.study
        md = [f"# {s.name}", "", f"{s.context}. Metric: {s.metric}.", ""]
        titles = dict(SECTIONS)
        blocks = self._blocks(
            table=_md_table,
            image=lambda path, what: f"![{s.name}: {what}]({path.name})\n",
            para=lambda text: text + "\n",
            items=lambda lines: "\n".join(f"- {line}" for line in lines) + "\n",
            code=lambda text: f"```yaml\n{text}\n```\n")
        for key, parts in blocks:
            md += [f"## {titles[key]}", ""] + parts
        if s.missing:
            md += [f"Missing runs ({len(s.missing)}): " + ", ".join(s.missing[:20])
                   + (" ..." if len(s.missing) > 20 else "")]
        return "\n".join(md) + "\n"

    def html(self) -> str:
        """The self-contained HTML page: images inlined, no request leaves the machine."""
        s = self.study
        up = '<a class="up" href="#summary">↑ summary</a>'
        titles = dict(SECTIONS)
        nav = "".join(f'<a href="#{i}">{_h(t)}</a>' for i, t in SECTIONS[1:])

        def items(lines):
            return "<ul>" + "".join(f"<li>{_h(x)}</li>" for x in lines) + "</ul>"

        blocks = self._blocks(
            table=lambda head, rows, table_id=None: _html_table(head, rows, table_id=table_id),
            image=lambda path, what: f"<p>{_image(path)}</p>",
            para=lambda text: f"<p class=note>{_h(text)}</p>",
            items=items, code=lambda text: f"<pre>{_h(text)}</pre>")
        body = "".join(f'<h2 id="{key}">{_h(titles[key])}{"" if key == "summary" else up}</h2>'
                       + "".join(parts) for key, parts in blocks)
        return page_template().substitute(title=_h(s.name), context=_h(s.context),
                                          metric=_h(s.metric), nav=nav, body=body)
