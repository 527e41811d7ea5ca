"""`normbench run --executor slurm` against a real, private one-node Slurm cluster (tests/engines.py):
jobs, the parallelism cap, and the faults a cluster has: a job cancelled, its node set DOWN or
DRAINED, a job that can never be scheduled, the driver killed. No accounting (no slurmdbd), as on
many small clusters: `sacct` fails here, so nothing may depend on it.

Each test bounds its own waits; the module's cluster is reset (queue empty, node idle) between
tests and stopped at the end, also after a failure. Without Debian's slurm-wlm and munge (or
submitit) the tests skip, except under CI, where .ci/run installs them and they must run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import engines
from normbench.executors import slurm_engine

ROOT = Path(__file__).resolve().parents[2]
SPEC = "name: slurmed\ndataset: mnist-10k\nseeds: {seeds}\n"
OPTIONS = ["--executor", "slurm", "--slurm-cpus", "1", "--slurm-mem-gb", "1", "--slurm-time", "10"]
WHOLE_NODE = ["--slurm-cpus", str(os.cpu_count())]  # one job at a time: the next one waits


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("submitit")
    why = engines.slurm_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"under CI the Slurm tests must run: {why}")
        pytest.skip(why)
    c = engines.started(engines.SlurmCluster(), "the private Slurm cluster")
    yield c
    c.stop()


@pytest.fixture
def slurm(cluster):
    cluster.reset()
    yield cluster
    cluster.reset()


def spec(tmp_path: Path, seeds: int = 1, extra: str = "") -> Path:
    path = tmp_path / "slurmed.yaml"
    path.write_text(SPEC.format(seeds=seeds) + extra)
    return path


def normbench(slurm, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                          env=slurm.env, capture_output=True, text=True, timeout=timeout)


def start(slurm, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                            env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"normbench still running after {timeout:.0f} s: {err[-2000:]}")
    return proc.returncode, err


def saved(results: Path) -> list[str]:
    return sorted(p.parent.name for p in (results / "runs").glob("*/metrics.json"))


def running(slurm, timeout: float = 90) -> str:
    """The id of the first job the cluster runs (waiting for it)."""
    found = engines.wait_for("a running job", lambda: [j for j, (state, _) in slurm.jobs().items()
                                                      if state == "RUNNING"], timeout)
    return found[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_runs_train_as_jobs_at_most_parallel_at_once_with_logs_under_results(slurm, tmp_path):
    seen = []
    stop = threading.Event()

    def watch():  # what squeue shows while the sweep runs
        while not stop.is_set():
            seen.append(len(slurm.jobs()))
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        done = normbench(slurm, "run", spec(tmp_path, seeds=3), "--smoke", "-q", *OPTIONS,
                         "--slurm-parallel", "1", "--results", tmp_path / "r")
    finally:
        stop.set()
        thread.join(10)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(saved(tmp_path / "r")) == 3
    assert max(seen) == 1, seen  # --slurm-parallel 1: one job queued or running at a time
    jobs = [p for p in (tmp_path / "r" / "runs" / ".slurm").iterdir() if p.name.isdigit()]
    assert len(jobs) == 3 and all(list(j.glob("*_log.out")) for j in jobs)
    assert not list((tmp_path / "r" / "runs" / ".slurm" / "jobs").iterdir())  # notes cleared
    again = normbench(slurm, "run", spec(tmp_path, seeds=3), "--smoke", "-q", *OPTIONS,
                      "--results", tmp_path / "r")
    assert again.returncode == 0 and "0 run(s) done" in again.stderr and not slurm.jobs()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault, said", [
    ("scancel", "ended CANCELLED without a result"),  # no accounting: never read from sacct
    ("node down", "without a result"),  # NODE_FAIL (--no-requeue), or gone from the queue
])
def test_a_job_lost_mid_run_is_reported_not_done_and_the_rerun_trains_it_once(slurm, tmp_path,
                                                                               fault, said):
    path = spec(tmp_path, extra="train: {epochs: 40}\n")  # long enough to act mid-run
    args = ["run", path, "--smoke", "-q", *OPTIONS, "--results", tmp_path / "r"]
    proc = start(slurm, *args)
    job = running(slurm)
    if fault == "scancel":
        slurm.run("scancel", job)
    else:
        slurm.set_node("down")
    acted = time.monotonic()
    code, err = finish(proc, 90)
    took = time.monotonic() - acted
    assert code == 1 and f"Slurm job {job}" in err and said in err, err[-2000:]
    assert "Traceback" not in err and took < 30, took  # noticed within seconds
    assert saved(tmp_path / "r") == []  # nothing half-written
    assert not [p for p in (tmp_path / "r" / "runs").iterdir() if not p.name.startswith(".")]
    slurm.reset()  # the node comes back
    again = normbench(slurm, *args)
    assert again.returncode == 0 and "1 run(s) done" in again.stderr, again.stderr[-2000:]
    assert len(saved(tmp_path / "r")) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_drained_node_finishes_its_job_and_pending_jobs_are_reported(slurm, tmp_path):
    # two CPUs a job: the second waits for the first; the node drains while the first runs
    path = spec(tmp_path, seeds=2, extra="train: {epochs: 20}\nslurm: {unavailable_min: 0.1}\n")
    proc = start(slurm, "run", path, "--smoke", "-q", *OPTIONS, *WHOLE_NODE,
                 "--results", tmp_path / "r")
    running(slurm)
    slurm.set_node("drain")
    code, err = finish(proc, 150)
    assert code == 1 and "is unschedulable: pending" in err and "unavailable" in err, err[-2000:]
    assert "1 run(s) done" in err and len(saved(tmp_path / "r")) == 1
    assert "Traceback" not in err and not slurm.jobs()  # the pending job was cancelled


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("option, said", [
    (["--slurm-cpus", "999"], "can never start: Slurm holds it for"),
    (["--slurm-partition", "nosuch"], "sbatch refused the job: invalid partition specified: nosuch"),
])
def test_a_job_the_cluster_can_never_run_is_one_error_line(slurm, tmp_path, option, said):
    started = time.monotonic()
    done = normbench(slurm, "run", spec(tmp_path, seeds=2), "--smoke", "-q", *OPTIONS, *option,
                     "--results", tmp_path / "r", timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and said in lines[0], done.stderr[-2000:]
    assert time.monotonic() - started < 60 and not slurm.jobs()  # nothing left queued
    plan = normbench(slurm, "run", spec(tmp_path, seeds=2), "--smoke", "--dry-run",
                     "--results", tmp_path / "r")
    assert "2 to run" in plan.stdout + plan.stderr  # the claims were released


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_driver_leaves_its_jobs_to_the_rerun_which_adopts_them(slurm, tmp_path):
    path = spec(tmp_path, seeds=2, extra="train: {epochs: 20}\n")
    args = ["run", path, "--smoke", "-q", *OPTIONS, *WHOLE_NODE, "--results", tmp_path / "r"]
    proc = start(slurm, *args)
    running(slurm)
    engines.wait_for("both jobs queued", lambda: len(slurm.jobs()) == 2, 60)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to cancel anything
    proc.communicate(timeout=30)
    queued = set(slurm.jobs())
    assert len(queued) == 2
    again = normbench(slurm, *args)
    assert again.returncode == 0 and "2 run(s) done" in again.stderr, again.stderr[-2000:]
    assert len(saved(tmp_path / "r")) == 2
    folders = {p.name for p in (tmp_path / "r" / "runs" / ".slurm").iterdir() if p.name.isdigit()}
    assert folders == queued  # no job submitted again: the two were adopted


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_driver_stopped_by_sigterm_cancels_its_jobs(slurm, tmp_path):
    path = spec(tmp_path, seeds=2, extra="train: {epochs: 40}\n")
    args = ["run", path, "--smoke", "-q", *OPTIONS, *WHOLE_NODE, "--results", tmp_path / "r"]
    proc = start(slurm, *args)
    running(slurm)
    engines.wait_for("both jobs queued", lambda: len(slurm.jobs()) == 2, 60)
    os.kill(proc.pid, signal.SIGTERM)
    code, err = finish(proc, 60)
    assert code == 130 and "not run (interrupted)" in err and "Traceback" not in err, err[-2000:]
    engines.wait_for("its jobs to leave the queue", lambda: not slurm.jobs(), 30)
    assert not list((tmp_path / "r" / "runs" / ".slurm" / "jobs").iterdir())
    again = normbench(slurm, *args)
    assert again.returncode == 0 and "2 run(s) done" in again.stderr, again.stderr[-2000:]


# --- quick: the queue's answers, read without a cluster ----------------------------------

def test_queue_states_are_read_from_squeue_output(tmp_path, monkeypatch):
    fake = tmp_path / "squeue"
    fake.write_text("#!/bin/sh\necho '12|RUNNING|None'\necho '13|PENDING|PartitionConfig'\n"
                    "echo '14|CANCELLED|None'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert slurm_engine.queue(["12", "13", "14"]) == {
        "12": ("RUNNING", "None"), "13": ("PENDING", "PartitionConfig"), "14": ("CANCELLED", "None")}
    fake.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    assert slurm_engine.queue(["99"]) == {}
    fake.write_text("#!/bin/sh\necho 'Unable to contact slurm controller' >&2\nexit 1\n")
    assert slurm_engine.queue(["99"]) is None  # unknown: wait, never a verdict


def test_sbatch_errors_are_reduced_to_their_reason():
    text = ("Command '['sbatch', 'x.sh']' returned non-zero exit status 1.\n"
            "sbatch: error: invalid partition specified: nosuch\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert slurm_engine.sbatch_error(RuntimeError(text)) == "invalid partition specified: nosuch"
