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


def _assert_trained_under_final(records: list[dict], config: str) -> None:
    """Each record names a clean commit at which `config` was already today's text."""
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


def _shallow() -> bool:
    return _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_record_names_a_clean_commit_with_the_final_config(stage):
    records = _records(stage)
    if not records:
        pytest.skip(f"{stage}: no record committed yet")
    if _shallow():
        pytest.skip("a shallow clone has no history to check against")
    _assert_trained_under_final(records, f"configs/studies/{STAGES[stage]}")


FOLLOWUP = "fashion_followup"  # after S1, not pre-registered: docs/preregistration_fashion.md


def test_the_follow_up_reuses_s1_records_byte_for_byte_and_trained_the_rest_under_its_config():
    """The follow-up's cells identical to S1's are S1's own records (the same run ids, files
    equal byte for byte, never trained again); every other follow-up record was trained at a
    clean commit where the follow-up's config was already final (so after S1's records)."""
    runs = sorted(p for p in (STUDIES / FOLLOWUP / "runs").glob("[!.]*") if p.is_dir())
    if not runs:
        pytest.skip(f"{FOLLOWUP}: no record committed yet")
    reused, new = [], []
    for run in runs:
        twin = STUDIES / "fashion_s1" / "runs" / run.name
        if twin.is_dir():
            for name in ("metrics.json", "spec.yaml", "history.csv"):
                assert (run / name).read_bytes() == (twin / name).read_bytes(), f"{run.name}/{name}"
            reused.append(run.name)
        else:
            new.append(json.loads((run / "metrics.json").read_text()))
    assert len(reused) == 12, reused  # BN v=64, BN v=2 (lr 0.2), GN at 4,800 steps, seeds 0-3
    assert all(r["optimizer_steps"] == 9600 or r["learning_rate"] == 0.4 for r in new)
    if _shallow():
        pytest.skip("a shallow clone has no history to check against")
    _assert_trained_under_final(new, f"configs/studies/{FOLLOWUP}.yaml")


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
    if _shallow():
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
