"""The record index (normbench/index.py): a cache of which runs are finished that a sweep's plan
trusts only while each run's files are unchanged and older than the index, that only a saving
process writes, and that is rebuilt, never trusted, when missing or damaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normbench import executors, grid, index, store
from normbench.bench.cli import fake_records

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, timeout: int = 120):
    done = subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


@pytest.fixture
def results(tmp_path):
    """The 100 finished runs of a sweep (records as a sweep writes them) and its spec file."""
    folder = tmp_path / "results"
    folder.mkdir()
    return folder, fake_records(folder, 100)


def plan(results_dir: Path, spec_file: Path, idx: index.Index | None = None):
    return executors.plan(grid.load_runs(spec_file), False, results_dir, index=idx)


def indexed(results_dir: Path, spec_file: Path) -> index.Index:
    """What a saving process leaves: every finished run verified and written to the index."""
    idx = index.Index.load(results_dir)
    assert all(p.done for p in plan(results_dir, spec_file, idx))
    idx.write()
    return index.Index.load(results_dir)


def first_metrics(results_dir: Path) -> Path:
    return sorted((results_dir / "runs").glob("*/metrics.json"))[0]


def same_size_damage(path: Path) -> None:
    """Make the record invalid without changing its size (a status no reader accepts)."""
    text = path.read_text()
    assert '"status": "finished"' in text
    path.write_text(text.replace('"status": "finished"', '"status": "finishex"'))


def test_plan_trusts_indexed_entries_without_reading_records(results, monkeypatch):
    results_dir, spec_file = results
    idx = indexed(results_dir, spec_file)
    assert len(idx.entries) == 100 and idx.problem is None
    monkeypatch.setattr(store, "finished", lambda *a: pytest.fail("read a record the index holds"))
    assert all(p.done for p in plan(results_dir, spec_file, idx))


def test_an_edited_record_is_read_again(results):
    """At nanosecond timestamps an edit changes the fingerprint (ctime at least): read again."""
    results_dir, spec_file = results
    idx = indexed(results_dir, spec_file)
    metrics = first_metrics(results_dir)
    before = os.stat(metrics)
    same_size_damage(metrics)
    os.utime(metrics, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back, too
    assert os.stat(metrics).st_size == before.st_size
    done = {p.run_id: p.done for p in plan(results_dir, spec_file, idx)}
    assert done[metrics.parent.name] is False and sum(done.values()) == 99


def test_a_same_size_edit_in_the_same_second_as_the_index_is_caught(results, monkeypatch):
    """git's racy-clean rule: on a file system that keeps whole seconds, a same-size edit made in
    the second the index was written leaves the fingerprint as it was; the entry is trusted only
    for files older than the index, so this one is read again."""
    results_dir, spec_file = results
    monkeypatch.setattr(index, "TICK_NS", 10 ** 9)
    while time.time_ns() % 10 ** 9 > 300_000_000:  # start early in a second: all of it fits
        time.sleep(0.01)
    second = time.time_ns() // 10 ** 9
    metrics = first_metrics(results_dir)
    metrics.write_text(metrics.read_text())  # the record written (valid) in this second
    idx = indexed(results_dir, spec_file)  # verified and written in the same second
    same_size_damage(metrics)  # the edit: same size, same second
    assert time.time_ns() // 10 ** 9 == second, "the machine was too slow to test within a second"
    entry = idx.entries[metrics.parent.name]
    assert index.current(results_dir, metrics.parent.name) == entry.fingerprint  # looks unchanged
    assert idx.lookup(metrics.parent.name) is None  # but is not older than the index
    done = {p.run_id: p.done for p in plan(results_dir, spec_file, idx)}
    assert done[metrics.parent.name] is False


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "checksum", "entry", "fifo", "link"])
def test_a_damaged_index_is_ignored_and_rewritten(results, damage, tmp_path):
    results_dir, spec_file = results
    indexed(results_dir, spec_file)
    path = results_dir / "runs" / index.FILE
    if damage == "garbage":
        path.write_bytes(b"\x00{not json")
    elif damage == "checksum":  # a fingerprint changed by hand: the checksum no longer matches
        data = json.loads(path.read_text())
        rid = next(iter(data["entries"]))
        data["entries"][rid][0] += 1
        path.write_text(json.dumps(data))
    elif damage == "entry":  # a well-formed file with a malformed entry
        body = {"x/../y": [1, 2, 3, 4, False]}
        text = json.dumps(body, separators=(",", ":"))
        import hashlib
        path.write_text(json.dumps({"version": 1, "entries": body,
                                    "sha256": hashlib.sha256(text.encode()).hexdigest()}))
    elif damage == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        other = tmp_path / "other.json"
        other.write_text(path.read_text())
        path.unlink()
        path.symlink_to(other)
    loaded = index.Index.load(results_dir)
    assert loaded.entries == {} and loaded.problem
    # a dry run still plans right, reading the records, and leaves the file alone
    done = cli("run", spec_file, "--dry-run", "--results", results_dir)
    assert done.returncode == 0 and "0 to run, 100 finished" in done.stdout
    # a saving process (run with nothing to do) writes a good one in its place
    done = cli("run", spec_file, "--results", results_dir)
    assert done.returncode == 0, done.stderr
    again = index.Index.load(results_dir)
    assert again.problem is None and len(again.entries) == 100


@pytest.mark.slow
def test_only_a_saving_process_writes_the_index(results):
    """run --dry-run and compare never write it; run writes it; a rerun after an edit plans the
    edited run again, through the real CLI."""
    results_dir, spec_file = results
    path = results_dir / "runs" / index.FILE
    for args in (("run", spec_file, "--dry-run"), ("compare",)):
        done = cli(*args, "--results", results_dir)
        assert done.returncode == 0, done.stderr
        assert not path.exists() and not (results_dir / "runs" / ".claims" / "index.lock").exists()
    done = cli("run", spec_file, "--results", results_dir)
    assert done.returncode == 0 and path.is_file()
    written = path.stat().st_mtime_ns
    time.sleep(0.01)
    metrics = first_metrics(results_dir)
    same_size_damage(metrics)
    done = cli("run", spec_file, "--dry-run", "--results", results_dir)
    assert "1 to run, 99 finished" in done.stdout and path.stat().st_mtime_ns == written
    done = cli("compare", "--results", results_dir)
    assert path.stat().st_mtime_ns == written


def test_removed_and_replaced_runs_are_not_trusted(results, tmp_path):
    results_dir, spec_file = results
    idx = indexed(results_dir, spec_file)
    runs = sorted(p.parent for p in (results_dir / "runs").glob("*/metrics.json"))
    gone, linked = runs[0], runs[1]
    store.delete(results_dir, gone.name)
    aside = tmp_path / "aside"
    linked.rename(aside)
    linked.symlink_to(aside)  # the same files, behind a link: never followed
    done = {p.run_id: p.done for p in plan(results_dir, spec_file, idx)}
    assert done[gone.name] is False and done[linked.name] is False and sum(done.values()) == 98
    touched = runs[2] / "metrics.json"
    touched.write_text(touched.read_text())  # read again by the next plan: something to write
    plan(results_dir, spec_file, idx)
    idx.write()  # and the entries of runs that are gone are dropped
    assert set(index.Index.load(results_dir).entries) == {p.name for p in runs[2:]}
