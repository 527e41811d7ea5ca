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
# (S2 and the S1 sensitivity cell were cut for the budget before S1: see the pre-registration)
STAGES = {"fashion_convergence": "fashion_convergence.yaml", "fashion_s1": "fashion_s1.yaml"}


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


PREREG = "docs/preregistration_fashion.md"


def _protocol(text: str) -> str:
    """The pre-registration less its follow-up sections (the only part that may grow after S1):
    each '## Follow-up...' section up to the next '## ' heading."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            skipping = line.startswith("## Follow-up")
        if not skipping:
            kept.append(line)
    return "\n".join(kept).rstrip()


def test_the_protocol_text_is_the_one_every_s1_record_was_trained_under():
    """Nothing in the pre-registration outside a '## Follow-up' section changed after S1's first
    run: each S1 record's commit holds the same protocol text as today's."""
    records = _records("fashion_s1")
    if not records:
        pytest.skip("fashion_s1: no record committed yet")
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("a shallow clone has no history to check against")
    now = _protocol((ROOT / PREREG).read_text())
    commits = {(r.get("provenance") or {}).get("git_commit") for r in records}
    assert None not in commits, "an S1 record names no commit"
    for commit in sorted(commits):
        then = _git("show", f"{commit}:{PREREG}")
        assert then.returncode == 0, f"commit {commit[:12]} has no {PREREG}"
        assert _protocol(then.stdout) == now, (f"{PREREG} changed outside a follow-up section "
                                               f"after S1 trained at {commit[:12]}")


def test_protocol_text_ignores_only_follow_up_sections():
    text = "# P\n\n## S1\nrule\n\n## Publication\nwhere\n"
    follow = "## Follow-up: BN v=2 at 0.4\nnew\n\n"
    assert _protocol(text + "\n" + follow) == _protocol(text)
    assert _protocol(text.replace("## Publication", follow + "## Publication")) == _protocol(text)
    assert _protocol(text.replace("rule", "changed rule")) != _protocol(text)
    assert _protocol(text.replace("where", "elsewhere")) != _protocol(text)  # after a follow-up
