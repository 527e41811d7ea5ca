"""store: run records on disk, atomic saves, claims, and the entries a reader skips (with why)."""

from __future__ import annotations

import csv
import os
import io
import shutil
from pathlib import Path

import pytest

from normbench import store, tables
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


def _one_run(tmp_path, make_record) -> Path:
    store.save(make_record(), "a\n", tmp_path)
    return tmp_path / "runs" / make_record().run_id


def test_files_respect_the_umask(tmp_path, make_record):
    old = os.umask(0o002)
    try:
        path = store.save(make_record(), "a\n", tmp_path)
        tables.write_summaries(tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o775
    assert (path / "metrics.json").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "summary.md").stat().st_mode & 0o777 == 0o664


def test_links_inside_a_run_directory_are_not_followed(tmp_path, make_record):
    """summary.csv linked outside gets no row appended; a spec.yaml link makes the run damaged."""
    outside = tmp_path / "outside.csv"
    outside.write_text("mine\n")
    results = tmp_path / "r"
    results.mkdir()
    (results / "summary.csv").symlink_to(outside)
    with pytest.raises(NormbenchError, match="symbolic link"):
        tables.append_summary(results, make_record())
    assert outside.read_text() == "mine\n"
    run = _one_run(results, make_record)
    (run / "spec.yaml").unlink()
    (run / "spec.yaml").symlink_to(outside)
    assert store.inspect(run) == (None, "no spec.yaml (a run directory is written whole; a link is "
                                        "not followed)")

