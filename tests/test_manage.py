"""tags in specs (outside the run id) and `normbench rm --where` to delete runs by filter."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_tags_filter_and_rm_deletes_only_what_matches(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndataset: mnist-10k\ntags: [pilot, gn]\nsweep: {train.batch_size: [16, 32]}\n")
    results = tmp_path / "r"
    assert cli("run", spec, "--smoke", "-q", "--results", results).returncode == 0
    other = tmp_path / "o.yaml"
    other.write_text("name: o\ndataset: mnist-10k\n")
    assert cli("run", other, "--smoke", "-q", "--results", results).returncode == 0
    # tags are not part of the run id: the same spec with other tags is already finished
    retagged = tmp_path / "s2.yaml"
    retagged.write_text(spec.read_text().replace("[pilot, gn]", "[final]"))
    dry = cli("run", retagged, "--smoke", "--dry-run", "--results", results)
    assert "2 run(s): 0 to run, 2 finished" in dry.stdout
    tagged = json.loads(cli("compare", "--results", results, "--runs", "-f", "json",
                            "--where", "tags=pilot").stdout)
    assert len(tagged) == 2 and {r["name"] for r in tagged} == {"s"}
    listed = cli("rm", "--where", "tags=pilot", "--dry-run", "--results", results)
    assert listed.returncode == 0 and "2 run(s) match" in listed.stdout
    assert len(list((results / "runs").glob("s-*"))) == 2  # a dry run deletes nothing
    gone = cli("rm", "--where", "tags=pilot", "--results", results)
    assert gone.returncode == 0 and "deleted 2 run(s)" in gone.stderr
    assert not list((results / "runs").glob("s-*")) and len(list((results / "runs").glob("o-*"))) == 1
    summary = (results / "summary.csv").read_text()
    assert "o-" in summary and "\ns-" not in summary
    assert not [p for p in (results / "runs" / ".tmp").iterdir()]


def test_rm_needs_a_filter_and_refuses_bad_tags(tmp_path):
    (tmp_path / "runs").mkdir()
    done = cli("rm", "--results", tmp_path)
    assert done.returncode == 2 and "needs at least one --where" in done.stderr
    bad = tmp_path / "b.yaml"
    bad.write_text("name: b\ntags: ['../x']\n")
    done = cli("validate", bad)
    assert done.returncode == 2 and "tags" in done.stderr and "Traceback" not in done.stderr


def _fake_results(tmp_path: Path, count: int = 4) -> Path:
    from normbench.bench.cli import fake_records

    results = tmp_path / "r"
    results.mkdir()
    fake_records(results, count)
    return results


@pytest.mark.slow
def test_rm_refuses_an_empty_filter_value(tmp_path):
    """`--where tags=` (an unset shell variable) deleted every run before."""
    results = _fake_results(tmp_path)
    for where in ("tags=", "tags= ", "name="):
        done = cli("rm", "--where", where, "--results", results)
        assert done.returncode == 2 and "the value is empty" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert len(list((results / "runs").glob("*-*"))) == 4


def test_rm_asks_on_a_terminal_and_yes_skips_the_question(tmp_path):
    import os
    import pty

    results = _fake_results(tmp_path)
    name = next((results / "runs").glob("*-*")).name.rsplit("-", 1)[0]
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "normbench", "rm", "--where",
                                 f"name={name}", "--results", str(results)], cwd=ROOT,
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        os.write(master, b"n\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 1 and "nothing deleted" in err, err
    assert len(list((results / "runs").glob("*-*"))) == 4
    done = cli("rm", "--where", f"name={name}", "--yes", "--results", results)
    assert done.returncode == 0 and "deleted 4 run(s)" in done.stderr
