"""Sweeps: grid expansion, run identity, skip/resume, interrupts, concurrent writers, divergence,
local workers and Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CliRunner

from normbench import executors, grid, identity, spec as specs, store
from normbench.executors import local, ray_engine
from normbench.cli import app
from normbench.errors import NormbenchError

ROOT = Path(__file__).parents[2]
SWEEP = """name: sw
dataset: mnist-10k
train: {epochs: 1, batch_size: 64}
seeds: 2
sweep:
  model.norm.type: [group, none]
"""


def write(tmp_path: Path, text: str = SWEEP, name: str = "sw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_grid_is_the_product_times_seeds(tmp_path):
    runs = grid.load_runs(write(tmp_path))
    assert len(runs) == 4
    assert [(r.model.norm.type, r.train.seed) for r in runs] == [
        ("group", 0), ("group", 1), ("none", 0), ("none", 1)]
    more = grid.load_runs(write(tmp_path), ["train.epochs=2"], ["train.batch_size=8,16,32"])
    assert len(more) == 12 and {r.train.epochs for r in more} == {2}
    assert {r.train.batch_size for r in more} == {8, 16, 32}
    listed = grid.load_runs(write(tmp_path, SWEEP.replace("seeds: 2", "seeds: [7, 9]")))
    assert {r.train.seed for r in listed} == {7, 9}


def test_every_invalid_grid_point_is_reported_at_once(tmp_path):
    text = SWEEP + "  model.norm.groups: [3, 5, 4]\n"
    with pytest.raises(NormbenchError) as info:
        grid.load_runs(write(tmp_path, text))
    lines = str(info.value).splitlines()
    assert len(lines) == 4  # groups 3 and 4 with 2 seeds each; 'none' ignores groups
    assert all("does not divide the 10 channels" in line for line in lines)
    assert "model.norm.groups=3" in lines[0] and "train.seed=0" in lines[0]


@pytest.mark.parametrize("text,fragment", [
    ("sweep: [1, 2]\n", "expected a mapping of field paths"),
    ("sweep: {train.epochs: []}\n", "non-empty list"),
    ("sweep: {train.epochs: [1, 1]}\n", "repeated values"),
    ("sweep: {train.epoch: [1, 2]}\n", "train.epoch: unknown key; did you mean 'epochs'?"),
    ("seeds: 0\n", "seeds: a count must be 1..1000"),
    ("seeds: [1, 1]\n", "distinct integers"),
    ("seeds: three\n", "seeds: expected a count"),
])
def test_bad_sweeps(tmp_path, text, fragment):
    with pytest.raises(NormbenchError, match=fragment):
        grid.load_runs(write(tmp_path, "name: a\n" + text))


def test_bad_sweep_option(tmp_path):
    with pytest.raises(NormbenchError, match="expected PATH=V1,V2"):
        grid.load_runs(write(tmp_path), sweeps=["train.batch_size"])


def test_run_ids_are_content_hashes(tmp_path):
    a, b = grid.load_runs(write(tmp_path))[:2]
    rid = store.run_id(a.name, identity.spec_hash(a), False)
    assert rid == store.run_id(a.name, identity.spec_hash(grid.load_runs(write(tmp_path))[0]), False)
    assert rid != store.run_id(b.name, identity.spec_hash(b), False)  # seed differs
    assert rid != store.run_id(a.name, identity.spec_hash(a), True)  # smoke differs
    assert rid.startswith("sw-") and len(rid) == len("sw-") + 12


@pytest.mark.slow
def test_dry_run_then_resume_then_force(tmp_path):
    spec_file, out = write(tmp_path), tmp_path / "results"
    dry = invoke("run", spec_file, "--smoke", "--dry-run", "--results", out)
    assert dry.exit_code == 0 and "4 run(s): 4 to run, 0 finished" in dry.stdout
    assert not out.exists()
    first = invoke("run", spec_file, "--smoke", "-q", "--results", out)
    assert first.exit_code == 0, first.output
    assert "4 run(s) done (0 diverged), 0 already finished" in first.stderr
    started = {r.run_id: r.started for r in store.load_records(out)[0]}
    again = invoke("run", spec_file, "--smoke", "-q", "--results", out)
    assert again.exit_code == 0 and "0 run(s) done (0 diverged), 4 already finished" in again.stderr
    dry = invoke("run", spec_file, "--smoke", "--dry-run", "--results", out)
    assert "4 run(s): 0 to run, 4 finished" in dry.stdout
    forced = invoke("run", spec_file, "--smoke", "-q", "--force", "--sweep", "model.norm.type=none",
                    "--results", out)
    assert "2 run(s) done" in forced.stderr
    after = {r.run_id: r.started for r in store.load_records(out)[0]}
    assert set(after) == set(started) and sum(after[k] != started[k] for k in after) == 2
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")
                and p.name not in (".claims", ".tmp", ".index.json")]
    assert not list((out / "runs" / ".tmp").iterdir())  # nothing half-written left behind


@pytest.mark.slow
def test_divergence_is_recorded_and_the_sweep_goes_on(tmp_path):
    text = SWEEP.replace("seeds: 2", "seeds: 1") + "  train.learning_rate: [0.05, 1.0e+30]\n"
    text = text.replace("train: {epochs: 1, batch_size: 64}", "train: {epochs: 2, batch_size: 64, optimizer: sgd}")
    result = invoke("run", write(tmp_path, text), "--smoke", "-q", "--results", tmp_path / "r")
    assert result.exit_code == 0, result.output
    records = store.load_records(tmp_path / "r")[0]
    status = {(r.norm_type, r.learning_rate): r.status for r in records}
    assert status[("none", 1e30)] == "diverged" and status[("none", 0.05)] == "finished"
    assert "diverged)" in result.stderr


@pytest.mark.slow
def test_a_failing_run_does_not_stop_the_others(tmp_path, monkeypatch):
    from normbench import train

    real = train.run_one

    def flaky(spec, **kwargs):
        if spec.model.norm.type == "group":
            raise RuntimeError("simulated out-of-memory")
        return real(spec, **kwargs)

    monkeypatch.setattr(train, "run_one", flaky)
    runs = [specs.for_smoke(s) for s in grid.load_runs(write(tmp_path))]
    todo = executors.plan(runs, True, tmp_path)
    outcome = executors.run(todo, tmp_path, smoke=True, quiet=True)
    assert executors.engine("local", executors.Options(tmp_path, True)).name == "process"
    assert len(outcome.ran) == 2 and len(outcome.failed) == 2
    assert "simulated out-of-memory" in outcome.failed[0][1]
    assert executors.plan(runs, True, tmp_path)[0].done is False  # failed runs run again next time


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "normbench", *map(str, args)]


@pytest.mark.slow
def test_sigint_mid_sweep_keeps_finished_runs_and_resumes(tmp_path):
    spec_file, out = write(tmp_path, SWEEP.replace("seeds: 2", "seeds: 3")), tmp_path / "r"
    for _ in range(3):  # the interrupt must land mid-sweep: a sweep that ended first is redone
        proc = subprocess.Popen(_cli("run", spec_file, "--smoke", "-q", "--results", out),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and len(store.load_records(out)[0]) < 2 and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is None:
            break
        proc.communicate(timeout=120)
        shutil.rmtree(out)
    else:
        pytest.fail("the sweep ended each time before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: finished runs are kept" in stderr
    kept, skipped = store.load_records(out)
    assert 2 <= len(kept) < 6 and not skipped
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")
                and p.name not in (".claims", ".tmp", ".index.json")]
    assert not list((out / "runs" / ".tmp").iterdir())  # nothing half-written left behind
    for record in kept:
        assert sorted(p.name for p in (out / "runs" / record.run_id).iterdir()) == [
            "history.csv", "metrics.json", "spec.yaml"]
    resumed = subprocess.run(_cli("run", spec_file, "--smoke", "-q", "--results", out),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{6 - len(kept)} run(s) done (0 diverged), {len(kept)} already finished" in resumed.stderr
    assert len(store.load_records(out)[0]) == 6


@pytest.mark.slow
def test_sigterm_stops_cleanly(tmp_path):
    spec_file, out = write(tmp_path), tmp_path / "r"
    proc = subprocess.Popen(_cli("run", spec_file, "--smoke", "-q", "--results", out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not store.load_records(out)[0]:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr


@pytest.mark.slow
def test_two_processes_on_one_results_dir_never_run_a_run_twice(tmp_path):
    spec_file, out = write(tmp_path, SWEEP.replace("seeds: 2", "seeds: 3")), tmp_path / "r"
    procs = [subprocess.Popen(_cli("run", spec_file, "--smoke", "-q", "--results", out),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    done = [int(o.split(" run(s) done")[0].split()[-1]) for o in outputs]
    assert sum(done) == 6  # every run trained exactly once between the two
    # ... and they really ran at the same time: both trained some, in overlapping intervals
    assert all(d > 0 for d in done), outputs
    spans = {}
    for path in (out / "runs").glob("*/metrics.json"):
        record = json.loads(path.read_text())
        spans.setdefault(record["env"].get("pid"), []).append((record["started"], record["finished"]))
    (a, b) = [(min(s for s, _ in v), max(f for _, f in v)) for v in spans.values()]
    assert a[0] < b[1] and b[0] < a[1], spans
    records, skipped = store.load_records(out)
    assert len(records) == 6 and not skipped
    assert len(list(csv_rows(out / "summary.csv"))) == 6


def csv_rows(path: Path):
    import csv

    return csv.DictReader(path.open())


@pytest.mark.slow
def test_local_workers(tmp_path):
    out = tmp_path / "r"
    result = invoke("run", write(tmp_path), "--smoke", "-q", "-j", "2", "--results", out)
    assert result.exit_code == 0, result.output
    assert "4 run(s) done" in result.stderr
    assert len(store.load_records(out)[0]) == 4


@pytest.mark.slow
def test_ray_executor_on_a_local_cluster(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "r"
    env_before = dict(os.environ)
    result = invoke("run", write(tmp_path, SWEEP.replace("seeds: 2", "seeds: 1")), "--smoke", "-q",
                    "--executor", "ray", "--results", out)
    os.environ.clear()
    os.environ.update(env_before)
    assert result.exit_code == 0, result.output
    records = store.load_records(out)[0]
    assert len(records) == 2 and {r.status for r in records} == {"finished"}
    again = invoke("run", write(tmp_path, SWEEP.replace("seeds: 2", "seeds: 1")), "--smoke", "-q",
                   "--executor", "ray", "--results", out)
    assert "2 already finished" in again.stderr


def test_ray_unreachable_address_is_a_clear_error(tmp_path):
    pytest.importorskip("ray")
    result = invoke("run", write(tmp_path), "--smoke", "-q", "--executor", "ray", "--address",
                    "127.0.0.1:1", "--results", tmp_path / "r")
    assert result.exit_code == 2 and "cannot reach Ray at 127.0.0.1:1" in result.stderr


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found |= {int(c) for c in task.read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_workers_die_with_a_killed_driver(tmp_path):
    spec_file, out = write(tmp_path, SWEEP.replace("seeds: 2", "seeds: 4")), tmp_path / "r"
    proc = subprocess.Popen(_cli("run", spec_file, "--smoke", "-q", "-j", "2", "--results", out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "runs" / ".claims").glob("*.status")):
        time.sleep(0.05)  # a worker is training
    workers = _children(proc.pid)
    assert workers, "no worker processes"
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "workers outlived the killed driver"
    finished = len(store.load_records(out)[0])
    time.sleep(3)
    assert len(store.load_records(out)[0]) == finished  # nobody goes on with the sweep


@pytest.mark.slow
def test_ctrl_c_with_two_workers_counts_what_was_not_run(tmp_path):
    spec_file, out = write(tmp_path, SWEEP.replace("seeds: 2", "seeds: 4")), tmp_path / "r"
    proc = subprocess.Popen(_cli("run", spec_file, "--smoke", "-q", "-j", "2", "--results", out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(store.load_records(out)[0]) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    kept = len(store.load_records(out)[0])
    assert f"{kept} run(s) done (0 diverged), 0 already finished" in stderr, stderr[-2000:]
    assert f"{8 - kept} not run (interrupted)" in stderr
    assert not list((out / "runs" / ".tmp").iterdir())
    resumed = subprocess.run(_cli("run", spec_file, "--smoke", "-q", "-j", "2", "--results", out),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and f"{kept} already finished" in resumed.stderr


def test_worker_count_is_capped_by_runs_and_memory(monkeypatch):
    assert executors.worker_count(8, 3) == (3, "3 run(s) to do")
    monkeypatch.setattr(local, "available_memory", lambda: 1300 << 20)
    n, why = executors.worker_count(8, 100)
    assert n == 2 and "MiB of memory available" in why
    monkeypatch.setattr(local, "available_memory", lambda: 100 << 20)
    assert executors.worker_count(4, 100)[0] == 1


@pytest.mark.slow
def test_ray_claims_a_run_only_when_it_is_handed_out(tmp_path, monkeypatch):
    """With one CPU in the cluster, the second run is not claimed while the first trains: a
    second normbench invocation could take it."""
    pytest.importorskip("ray")
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        runs = [specs.for_smoke(s) for s in grid.load_runs(write(tmp_path))][:2]
        todo = executors.plan(runs, True, tmp_path)
        window = []
        real_claim_method = executors.Driver.claim

        def claim(self, item):
            lock = real_claim_method(self, item)
            window.append(len([o for o in self.outcome.ran]))
            return lock

        monkeypatch.setattr(executors.Driver, "claim", claim)
        outcome = executors.run(todo, tmp_path, executor="ray", smoke=True)
        assert len(outcome.ran) == 2
        assert window == [0, 1]  # the second run was claimed after the first was saved
    finally:
        ray.shutdown()


def test_ray_token_authentication_failure_says_what_to_set():
    class AuthenticationError(Exception):  # the shape of ray.exceptions.AuthenticationError
        pass

    error = ray_engine.connection_error("10.0.0.1:6379", AuthenticationError("Failed to authenticate"))
    assert "RAY_AUTH_MODE=token" in str(error) and "10.0.0.1:6379" in str(error)
    plain = ray_engine.connection_error("h:1", ConnectionError("connection refused"))
    assert "cannot reach Ray at h:1: connection refused" in str(plain)


def test_a_sweep_can_be_a_union_of_grids_with_linked_axes(tmp_path):
    text = """name: u
dataset: mnist-10k
model: {norm: {momentum: 0.9}}
seeds: 2
sweep:
  - model.norm.type: [batch]
    train.batch_size+model.norm.virtual_batch_size: [[64, 8], [16, 2]]
  - model.norm.type: [group, layer]
    train.batch_size: [64, 16]
"""
    runs = grid.load_runs(write(tmp_path, text))
    assert len(runs) == (2 + 4) * 2
    bn = [(r.train.batch_size, r.model.norm.virtual_batch_size) for r in runs if r.model.norm.type == "batch"]
    assert sorted(set(bn)) == [(16, 2), (64, 8)]
    assert all(r.model.norm.virtual_batch_size is None for r in runs if r.model.norm.type != "batch")
    with pytest.raises(NormbenchError, match="linked paths take one list of 2 values"):
        grid.load_runs(write(tmp_path, text.replace("[[64, 8], [16, 2]]", "[64, 16]")))
