"""The README's measured numbers are the committed result files' (scripts/render_readme.py)."""

from __future__ import annotations

import pytest

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_numbers_come_from_the_committed_files():
    done = subprocess.run([sys.executable, "scripts/render_readme.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


@pytest.mark.slow
def test_the_check_fails_when_a_number_is_edited_by_hand(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import render_readme
    finally:
        sys.path.pop(0)
    edited = render_readme.README.read_text().replace("| BN | 23.6 |", "| BN | 22.6 |", 1)
    assert edited != render_readme.README.read_text()
    fake = tmp_path / "README.md"
    fake.write_text(edited)
    monkeypatch.setattr(render_readme, "README", fake)
    assert render_readme.main(["--check"]) == 1
    assert render_readme.main([]) == 0 and render_readme.main(["--check"]) == 0
    assert "| BN | 23.6 |" in fake.read_text()


def test_every_committed_example_has_its_records():
    """Tables and figures under results/examples/ are rebuilt from records committed beside them."""
    examples = ROOT / "results" / "examples"
    for run in (examples / "demo" / "runs").iterdir():
        if not run.name.startswith("."):
            assert {p.name for p in run.iterdir()} == {"metrics.json", "spec.yaml", "history.csv"}
    assert not list(examples.glob("*.png")) and not list(examples.glob("*.md"))


def test_committed_study_reports_match_their_records():
    """Each committed report's results table is what its committed records give today."""
    from normbench import findings, report, study

    studies = ROOT / "results" / "examples" / "studies"
    # reports of other specs over a study's records: report directory -> (spec, records)
    analyses = {"fashion_followup/steps": ("fashion_followup_steps", "fashion_followup"),
                "fashion_followup/rate": ("fashion_followup_rate", "fashion_followup")}
    checked = 0
    for md in sorted(studies.glob("*/report.md")) + sorted(studies.glob("*/*/report.md")):
        where = md.parent.relative_to(studies).as_posix()
        name, records = analyses.get(where, (where, where))
        assert (studies / records).is_dir(), f"{where}: a report of no known study"
        cells = study.load_study([ROOT / "configs" / "studies" / f"{name}.yaml"], studies / records)
        head, rows = report.results_table(cells, findings.analyse(cells).convergence)
        assert report._md_table(head, rows) in md.read_text(), name
        for run in (studies / records / "runs").iterdir():
            if not run.name.startswith("."):
                assert {p.name for p in run.iterdir()} == {"metrics.json", "spec.yaml", "history.csv"}
        assert list(md.parent.glob("*.png")), name
        checked += 1
    pilot = list((studies / "pilot" / "runs").glob("*/metrics.json"))
    assert len(pilot) == 7 and checked == len(list(studies.glob("*/report.md"))) + len(analyses)


# each committed study directory and the spec files whose runs it holds
COMMITTED_STUDIES = {
    "gn_paper_replicas": ["gn_paper_replicas"], "gn_paper_ghost": ["gn_paper_ghost"],
    "gn_paper_groups": ["gn_paper_groups"], "fashion_convergence": ["fashion_convergence"],
    "fashion_s1": ["fashion_s1"],
    "fashion_followup": ["fashion_followup", "fashion_followup_steps", "fashion_followup_rate"]}


@pytest.mark.parametrize("results", sorted(COMMITTED_STUDIES))
def test_every_committed_study_plans_nothing_to_run(results):
    """`normbench run --dry-run` over a committed study reports 0 to run: a committed record that
    started reading as damaged, or a run id that moved, would be trained again."""
    from normbench import api, grid

    studies = ROOT / "results" / "examples" / "studies"
    planned = set()
    for name in COMMITTED_STUDIES[results]:
        plan = api.plan_runs([grid.load_grid(ROOT / "configs" / "studies" / f"{name}.yaml")],
                             studies / results)
        assert plan.planned and not plan.todo, (name, [p.run_id for p in plan.todo])
        planned |= {p.run_id for p in plan.planned}
    on_disk = {p.name for p in (studies / results / "runs").iterdir() if not p.name.startswith(".")}
    assert len(on_disk) == len(planned), results
