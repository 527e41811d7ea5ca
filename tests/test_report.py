"""`normbench report` on each study's smoke variant: files written, numbers equal compare's."""

from __future__ import annotations

import html
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = sorted((ROOT / "configs" / "studies" / "smoke").glob("*.yaml"))


def cli(*args, timeout=900):
    done = subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("studies")
    done = cli("run", *SMOKE, "--smoke", "-q", "-j", "2", "--results", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config", SMOKE, ids=[p.stem for p in SMOKE])
def test_report_of_a_smoke_study(smoke_results, config, tmp_path):
    out = tmp_path / "report"
    done = cli("report", config, "--smoke", "--results", smoke_results, "--out", out)
    assert done.returncode == 0, done.stderr
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert list(out.glob("*.png")) and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # self-contained
    for section in ("## Summary", "## Results", "## Paired comparisons", "## How this was run"):
        assert section in md
    # A section added to one page and not the other, or left out of the page's navigation, fails:
    # every <h2> but the summary is linked from <nav>, in order, and report.md has the same
    # sections under the same titles.
    h2 = re.findall(r'<h2 id="([\w-]+)">', page)
    linked = re.findall(r'href="#([\w-]+)"', re.search(r"<nav>(.*?)</nav>", page, re.S).group(1))
    assert h2 == ["summary", *linked]
    titles = [html.unescape(t) for t in re.findall(r'<h2 id="[\w-]+">(.*?)(?:<a class="up"|</h2>)', page)]
    assert re.findall(r"^## (.+)$", md, re.M) == titles
    for section in ("What the records support", "How to read this"):
        assert f"## {section}" in md
    # Its numbers equal compare's: recompute each cell's mean from compare's per-run JSON.
    runs = json.loads(cli("compare", "--results", smoke_results, "--runs", "-f", "json").stdout)
    name = re.search(r"^name: (\S+)$", config.read_text(), re.M).group(1)
    mine = [r for r in runs if r["name"] == name]
    assert mine, name

    def error(r):
        if r["status"] == "diverged":
            return 0.9
        return r["test_error_median5"] if r["test_error_median5"] is not None else 1 - r["test_accuracy"]

    table = md.split("## Results", 1)[1].split("![", 1)[0]
    cells = re.findall(r"\| ([0-9.]+)(?: ± [0-9.]+)? \(n=(\d+)", table)
    shown = {f"{float(m):.2f}" for m, _ in cells}
    assert sum(int(n) for _, n in cells) == len(mine)
    # every group of runs that share norm and x appears with its mean
    groups: dict[tuple, list[float]] = {}
    for r in mine:  # x is the batch size (with v tied to it) or the groups
        key = (r["norm"], r["groups"] if "groups" in config.stem else r["batch_size"])
        groups.setdefault(key, []).append(error(r))
    if "ghost" not in config.stem:  # ghost: x is v, not a compare column; checked by n above
        for values in groups.values():
            assert f"{100 * statistics.fmean(values):.2f}" in shown, (values, shown)


def test_report_refuses_an_empty_results_directory(tmp_path):
    (tmp_path / "r").mkdir()
    done = cli("report", SMOKE[0], "--results", tmp_path / "r")
    assert done.returncode == 2 and "no finished runs" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("axis, values", [("train.optimizer", "[adam, sgd]"),
                                          ("train.learning_rate", "[0.001, 1000.0]")])
def test_every_run_counts_in_the_cell_of_its_own_configuration(tmp_path, axis, values):
    """A sweep over a field the layout does not show (optimizer, learning rate) gets a cell per
    value: before, the runs of one value overwrote the other's in a single cell."""
    pytest.importorskip("matplotlib")
    from normbench import grid, store
    from normbench.bench.cli import fake_record

    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: axes\ndataset: mnist-10k\nseeds: 2\nsweep:\n  {axis}: {values}\n")
    runs = grid.load_runs(spec)
    for i, run in enumerate(runs):
        store.save(fake_record(run, i), "x\n", tmp_path / "r")
    done = cli("report", spec, "--results", tmp_path / "r", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    table = md.split("## Results", 1)[1].split("![", 1)[0]
    cells = re.findall(r"\(n=(\d+)", table)
    assert sorted(map(int, cells)) == [2, 2], table  # 4 runs, none hidden
    name = axis.rsplit(".", 1)[-1]
    for value in values.strip("[]").split(", "):
        assert f"{name}={value}" in table, table


@pytest.mark.slow
def test_report_finds_runs_made_with_overrides(tmp_path):
    """Runs made with -s (as the README's examples are) are found when report gets the same -s,
    and without it the error says to give them (issue 27, item 6: before, no -s at all)."""
    pytest.importorskip("matplotlib")
    from normbench import grid, store
    from normbench.bench.cli import fake_record

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s6\nseeds: 2\nsweep: {model.norm.type: [batch, group]}\n")
    for i, run in enumerate(grid.load_runs(spec, ["dataset=mnist-10k"])):
        store.save(fake_record(run, i), "x\n", tmp_path / "r")
    done = cli("report", spec, "--results", tmp_path / "r", "--out", tmp_path / "out")
    assert done.returncode == 2 and "give report the -s overrides" in done.stderr
    done = cli("report", spec, "-s", "dataset=mnist-10k", "--results", tmp_path / "r",
               "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "(n=2)" in (tmp_path / "out" / "report.md").read_text()
