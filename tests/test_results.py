"""Run records on disk, skipped entries, grouping statistics and the rendered tables."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest

from normbench import columns, store, tables
from normbench.errors import NormbenchError

README = Path(__file__).parents[1] / "results" / "README.md"


def test_save_writes_a_whole_run_directory(tmp_path, make_record):
    rec = make_record()
    path = store.save(rec, "name: gn\n", tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["history.csv", "metrics.json", "spec.yaml"]
    assert store.RunRecord.model_validate_json((path / "metrics.json").read_text()) == rec
    rows = list(csv.DictReader(io.StringIO((path / "history.csv").read_text())))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["loss"] == "0.25"
    assert not list((tmp_path / "runs" / ".tmp").iterdir())  # no leftovers


@pytest.mark.parametrize("damage", ["rerun", "empty", "truncated", "random", "deleted", "file",
                                    "symlink"])
def test_save_replaces_whatever_stands_at_the_run_path(tmp_path, make_record, damage):
    """The caller holds the claim: an older or damaged entry is moved aside, then removed."""
    path = store.save(make_record(), "a\n", tmp_path)
    metrics = path / "metrics.json"
    if damage == "empty":
        metrics.write_bytes(b"")
    elif damage == "truncated":
        metrics.write_bytes(metrics.read_bytes()[:100])
    elif damage == "random":
        metrics.write_bytes(bytes(range(256)) * 4)
    elif damage == "deleted":
        metrics.unlink()
    elif damage in ("file", "symlink"):
        shutil.rmtree(path)
        if damage == "file":
            path.write_text("not a directory")
        else:
            (tmp_path / "elsewhere").mkdir()
            path.symlink_to(tmp_path / "elsewhere")
    if damage != "rerun":
        assert store.finished(tmp_path, path.name) is None
    store.save(make_record(test_accuracy=0.5), "b\n", tmp_path)
    (loaded,), skipped = store.load_records(tmp_path)
    assert loaded.test_accuracy == 0.5 and skipped == []
    assert (path / "spec.yaml").read_text() == "b\n"
    assert not list((tmp_path / "runs" / ".tmp").iterdir())
    if damage == "symlink":
        assert (tmp_path / "elsewhere").is_dir()  # the link's target is not touched


def test_nan_loss_round_trips(tmp_path, make_record):
    store.save(make_record(status="diverged", test_loss=float("nan")), "a\n", tmp_path)
    (loaded,), _ = store.load_records(tmp_path)
    assert loaded.status == "diverged" and loaded.test_loss != loaded.test_loss


def test_unwritable_results_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(NormbenchError, match="not writable"):
        store.prepare(blocker / "results")


def test_damaged_entries_are_skipped_with_reasons(tmp_path, make_record):
    store.save(make_record(), "a\n", tmp_path)
    runs = tmp_path / "runs"
    (runs / "half").mkdir()
    (runs / "half" / "metrics.json").write_text('{"run_id": "half", "name"')
    (runs / "nometrics").mkdir()
    (runs / "stray.txt").write_text("hello")
    (runs / ".gn-staging.123").mkdir()  # a run being written right now: not reported
    nospec = runs / "gn-111111111111"
    shutil.copytree(runs / "gn-0123456789ab", nospec)
    (nospec / "spec.yaml").unlink()
    moved = runs / "gn-222222222222"  # a whole run directory copied under another name
    shutil.copytree(runs / "gn-0123456789ab", moved)
    outside = tmp_path / "elsewhere"
    shutil.copytree(runs / "gn-0123456789ab", outside)
    (runs / "gn-333333333333").symlink_to(outside, target_is_directory=True)
    records, skipped = store.load_records(tmp_path)
    assert [r.run_id for r in records] == ["gn-0123456789ab"]
    reasons = dict(skipped)
    assert reasons["nometrics"] == "no metrics.json"
    assert reasons["stray.txt"] == "not a run directory"
    assert reasons["half"].startswith("invalid metrics.json: (top): Invalid JSON")
    assert reasons["gn-111111111111"].startswith("no spec.yaml")
    assert reasons["gn-222222222222"] == "its metrics.json is for run 'gn-0123456789ab'"
    assert reasons["gn-333333333333"].startswith("a symbolic link")
    assert len(skipped) == 6


@pytest.mark.parametrize("rid", ["../../etc", "a/b-0123456789ab", "..-0123456789ab/x", "",
                                 "x" * 65 + "-0123456789ab", "gn-0123456789AB", "/abs-0123456789ab"])
def test_run_ids_can_never_name_a_path_outside_runs(tmp_path, make_record, rid):
    hostile = make_record().model_copy(update={"run_id": rid})  # as if read unvalidated
    with pytest.raises(NormbenchError, match="refusing to use it as a path"):
        store.save(hostile, "a\n", tmp_path)
    with pytest.raises(NormbenchError, match="refusing to use it as a path"):
        store.claim(tmp_path, rid)
    assert store.finished(tmp_path, rid) is None
    assert not any(p.name not in ("runs", ".claims") for p in tmp_path.rglob("*"))


def test_a_full_disk_is_an_error_before_training(tmp_path, monkeypatch):
    import shutil as sh

    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr(store.shutil, "disk_usage",
                        lambda path: usage._replace(free=10 << 20))
    with pytest.raises(NormbenchError, match=r"only 10 MiB free on its disk; normbench needs 64"):
        store.prepare(tmp_path / "r")


def test_a_killed_writer_leaves_no_run_and_its_leftovers_are_cleaned(tmp_path, make_record):
    store.prepare(tmp_path)
    stale = tmp_path / "runs" / ".tmp" / "gn-0123456789ab.k1ll3d"
    stale.mkdir()
    (stale / "metrics.json").write_text("{")
    assert store.load_records(tmp_path) == ([], [])
    lock = store.claim(tmp_path, "gn-0123456789ab")
    assert lock is not None and not stale.exists()
    lock.release()


def test_group_statistics_by_hand(make_record):
    recs = [make_record(run_id=f"gn-00000000000{i}", seed=i, test_accuracy=a, steady_samples_per_s=s)
            for i, (a, s) in enumerate([(0.90, 1000.0), (0.92, 2000.0), (0.97, 3000.0)])]
    other = make_record(run_id="bn-0000000000aa", name="bn", config_hash="d" * 64, norm_type="batch", test_accuracy=0.95)
    smoke = make_record(run_id="gn-0000000000bb", smoke=True, test_accuracy=0.5)
    rows = tables.group_rows(recs + [other, smoke])
    gn = next(r for r in rows if r["name"] == "gn" and not r["smoke"])
    assert gn["runs"] == 3
    assert gn["test_acc_mean"] == pytest.approx(0.93)
    assert gn["test_acc_std"] == pytest.approx(statistics.stdev([0.90, 0.92, 0.97]))
    assert gn["test_acc_std"] == pytest.approx(0.036055512754639925)
    assert gn["test_acc_best"] == 0.97 and gn["samples_per_s"] == pytest.approx(2000.0)
    bn = next(r for r in rows if r["name"] == "bn")
    assert bn["runs"] == 1 and bn["test_acc_std"] is None
    assert bn["best"] and not gn["best"]  # best mean accuracy per dataset
    assert next(r for r in rows if r["smoke"])["best"]  # smoke runs are ranked apart


def test_render_formats(make_record):
    rows = tables.group_rows([make_record()])
    md = columns.render(rows, columns.GROUP_COLUMNS, "md")
    assert md.splitlines()[0].startswith("| name | dataset |") and "**90.00%**" in md
    assert "config" in columns.render(rows, columns.GROUP_COLUMNS, "csv").splitlines()[0]
    assert "diverged" not in md and "diverged" not in columns.render(rows, columns.GROUP_COLUMNS, "csv")
    parsed = list(csv.DictReader(io.StringIO(columns.render(rows, columns.GROUP_COLUMNS, "csv"))))
    assert float(parsed[0]["test_acc_mean"]) == 0.9
    assert json.loads(columns.render(rows, columns.GROUP_COLUMNS, "json"))[0]["runs"] == 1


def test_summaries_rebuilt_from_records(tmp_path, make_record):
    store.save(make_record(run_id="a-00000000000a"), "x\n", tmp_path)
    store.save(make_record(run_id="b-00000000000b", seed=1, test_accuracy=0.8), "x\n", tmp_path)
    (tmp_path / "runs" / "junk").mkdir()
    skipped = tables.write_summaries(tmp_path)
    assert skipped == [("junk", "no metrics.json")]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["run_id"] for r in rows] == ["a-00000000000a", "b-00000000000b"] and list(rows[0]) == list(columns.RUN_COLUMNS)
    md = (tmp_path / "summary.md").read_text()
    assert "2 run(s)" in md and "85.00%" in md and "`junk`: no metrics.json" in md


def test_every_column_is_documented():
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", README.read_text(), re.M))
    missing = (set(columns.RUN_COLUMNS) | set(columns.GROUP_COLUMNS)) - documented
    assert not missing, f"results/README.md lacks {sorted(missing)}"
