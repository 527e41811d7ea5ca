"""The Fashion-MNIST studies are pre-registered (docs/preregistration_fashion.md): every committed
record of a stage names, in its provenance, a commit at which the stage's config was already the
final one, with no uncommitted change. A record made before its config was final, or from a
dirty tree, fails here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "results" / "examples" / "studies"
# stage results directory -> its config; tuning records (S0) are checked in test_tuning's way:
# their standing runs must equal the study's (tuning.apply refuses otherwise)
STAGES = {"fashion_convergence": "fashion_convergence.yaml", "fashion_s1": "fashion_s1.yaml",
          "fashion_s1_sensitivity": "fashion_s1_sensitivity.yaml", "fashion_s2": "fashion_s2.yaml"}


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _records(stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((STUDIES / stage / "runs").glob("*/metrics.json"))]


def test_the_preregistration_came_before_every_study_record():
    """docs/preregistration_fashion.md was committed before the first record of any stage."""
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("a shallow clone has no history to check against")
    first = _git("log", "--diff-filter=A", "--format=%ct", "--", "docs/preregistration_fashion.md")
    assert first.returncode == 0 and first.stdout.strip(), "the pre-registration is not committed"
    registered = int(first.stdout.split()[-1])
    tuned = sorted((STUDIES / "fashion_s1" / "tuning").glob("*/runs/*/metrics.json"))
    stamps = [json.loads(p.read_text())["started"] for p in tuned]
    for stage in STAGES:
        stamps += [r["started"] for r in _records(stage)]
    if not stamps:
        pytest.skip("no Fashion-MNIST record is committed yet")
    import datetime as dt

    earliest = min(dt.datetime.fromisoformat(s).timestamp() for s in stamps)
    assert earliest > registered, "a study record predates the pre-registration's commit"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_record_names_a_clean_commit_with_the_final_config(stage):
    records = _records(stage)
    if not records:
        pytest.skip(f"{stage}: no record committed yet")
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("a shallow clone has no history to check against")
    config = f"configs/studies/{STAGES[stage]}"
    final = (ROOT / config).read_text()
    checked = {}
    for r in records:
        prov = r.get("provenance") or {}
        commit = prov.get("git_commit")
        assert commit and prov.get("git_dirty") is False, f"{r['run_id']}: {prov}"
        if commit not in checked:
            then = _git("show", f"{commit}:{config}")
            assert then.returncode == 0, f"{r['run_id']}: commit {commit[:12]} has no {config}"
            checked[commit] = then.stdout == final
        assert checked[commit], (f"{r['run_id']}: trained at {commit[:12]}, where {config} was not "
                                 "yet the final one")
