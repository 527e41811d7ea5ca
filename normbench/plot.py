"""PNG figures from run records (matplotlib, headless): batch-size curves, learning curves, groups."""

from __future__ import annotations

from pathlib import Path

from normbench import store, tables
from normbench.errors import NormbenchError


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise NormbenchError("normbench plot needs matplotlib: pip install 'normbench[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict], x: str) -> dict[str, list[tuple]]:
    """Experiments grouped into lines along spec field `x`: label -> [(x, err, ci)] sorted."""
    lines: dict[str, list[tuple]] = {}
    for row in rows:
        if x not in row["spec"] or row["spec"][x] is None:
            continue
        rest = [p for p in row["config"].split(", ") if p and not p.startswith(f"{x}=")]
        label = f"{row['name']}: " + (", ".join(rest) if rest else row["norm"])
        if row["smoke"]:
            label += " (smoke)"
        if row["test_err_mean"] is None:  # every run of it diverged: nothing to draw
            continue
        lines.setdefault(label, []).append((row["spec"][x], 100 * row["test_err_mean"],
                                            100 * (row["test_err_ci95"] or 0.0)))
    return {k: sorted(v) for k, v in lines.items() if len(v) > 1}


def _error_plot(plt, lines, xlabel: str, title: str, path: Path, log2: bool) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, points in sorted(lines.items()):
        xs, ys, cis = zip(*points)
        ax.plot(xs, ys, marker="o", label=label.split(": ", 1)[1].replace("model.norm.type=", "")
                .replace("model.norm.", "").replace("train.", ""))
        ax.fill_between(xs, [y - c for y, c in zip(ys, cis)], [y + c for y, c in zip(ys, cis)],
                        alpha=0.2)
    if log2:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p[0] for pts in lines.values() for p in pts}))
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test error (%), mean and 95% CI")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def figure_path(out_dir: Path, name: str, kind: str) -> Path:
    """out_dir/<name>-<kind>.png, for a name that can only name a file inside out_dir (records
    are untrusted: a name such as ../../x or /etc/x never becomes a path)."""
    if not store.RUN_ID.fullmatch(f"{name}-{'0' * 12}"):
        raise NormbenchError(f"refusing to plot run name {name[:80]!r}: not a spec name")
    path = out_dir / f"{name}-{kind}.png"
    if path.resolve().parent != out_dir.resolve():
        raise NormbenchError(f"refusing to write {path}: outside {out_dir}")
    return path


def plot_all(records: list[store.RunRecord], out_dir: Path) -> list[Path]:
    """Every figure the records support; returns the files written."""
    if not records:
        raise NormbenchError("no finished runs to plot")
    for name in {r.name for r in records}:  # before anything is drawn or created
        figure_path(out_dir, name, "check")
    plt = pyplot()
    if out_dir.exists() and not out_dir.is_dir():
        raise NormbenchError(f"--out {out_dir}: is a file, not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NormbenchError(f"--out {out_dir}: cannot create it ({exc.strerror or exc})") from None
    rows = tables.group_rows(records)
    written = []
    for name in sorted({r["name"] for r in rows}):
        mine = [r for r in rows if r["name"] == name]
        batch = _series(mine, "train.batch_size")
        if batch:
            written.append(_error_plot(plt, batch, "batch size (images per step)",
                                       f"{name}: test error vs batch size", figure_path(out_dir, name, "batch_size"),
                                       log2=True))
        groups = _series(mine, "model.norm.groups")
        if groups:
            written.append(_error_plot(plt, groups, "GroupNorm groups", f"{name}: groups ablation",
                                       figure_path(out_dir, name, "groups"), log2=False))
    by_config: dict[str, list[store.RunRecord]] = {}
    for r in records:
        by_config.setdefault(f"{r.name}/{r.config_hash}", []).append(r)
    for name in sorted({r.name for r in records}):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for key, rs in sorted(by_config.items()):
            if not key.startswith(f"{name}/"):
                continue
            row = next(g for g in rows if g["name"] == name and g["spec"] ==
                       {k: v for k, v in tables.flat_spec(rs[0].spec).items() if k != "train.seed"})
            epochs = min(len(r.history) for r in rs)
            losses = [sum(r.history[e].loss for r in rs) / len(rs) for e in range(epochs)]
            ax.plot(range(1, epochs + 1), losses, marker=".", label=row["config"] or row["norm"])
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (mean over seeds)")
        ax.set_yscale("log")
        ax.set_title(f"{name}: learning curves")
        ax.grid(alpha=0.3)
        if len(ax.lines) <= 12:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = figure_path(out_dir, name, "learning")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
