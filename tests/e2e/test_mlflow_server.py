"""`--mlflow` and `normbench export mlflow` against a real `mlflow server` on 127.0.0.1 (HTTP, a
SQLite backend; tests/engines.py): runs read back over HTTP, and the server stopped or hung in
the middle of a sweep. Without MLflow installed (the legacy stack) the tests skip."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engines

ROOT = Path(__file__).resolve().parents[2]
SPEC = "name: served\ndataset: mnist-10k\nseeds: {seeds}\ntrain: {{eval_every: 1}}\n"


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("mlflow")
    s = engines.started(engines.MlflowServer(), "mlflow server")
    yield s
    s.stop()


@pytest.fixture
def live(server):
    if server.proc.poll() is not None or not server.healthy():
        server.up()
    yield server
    if server.proc.poll() is None:
        server.resume()  # a test that paused it


def env_for(server) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": server.uri}


def normbench(server, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                          env=env_for(server), capture_output=True, text=True, timeout=timeout)


def logged(server, experiment: str) -> list:
    """The runs the server has for the experiment, read over HTTP."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def spec(tmp_path: Path, name: str, seeds: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.replace("served", name).format(seeds=seeds))
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_runs_are_logged_over_http_once_and_read_back(live, tmp_path):
    done = normbench(live, "run", spec(tmp_path, "served1", 2), "--smoke", "-q", "-j", "2",
                     "--mlflow", "--results", tmp_path / "r")
    assert done.returncode == 0 and "2 run(s) logged to MLflow at http://127.0.0.1" in done.stderr, \
        done.stderr[-2000:]
    runs = logged(live, "served1")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    ids = sorted(p.name for p in (tmp_path / "r" / "runs").iterdir() if not p.name.startswith("."))
    assert sorted(r.data.tags["normbench.run_id"] for r in runs) == ids
    assert all("final.test_accuracy" in r.data.metrics and r.data.params["train.seed"] in "01"
               for r in runs)
    again = normbench(live, "export", "mlflow", "--results", tmp_path / "r")
    assert again.returncode == 0 and len(logged(live, "served1")) == 2  # never twice


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_server_stopped_mid_sweep_costs_bounded_time_and_export_logs_the_rest(live, tmp_path):
    path = spec(tmp_path, "served2", 3)
    proc = subprocess.Popen([sys.executable, "-m", "normbench", "run", str(path), "--smoke", "-q",
                             "--mlflow", "--results", str(tmp_path / "r")], cwd=ROOT,
                            env=env_for(live), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        engines.wait_for("the first run logged", lambda: [
            r for r in logged(live, "served2") if r.info.status == "FINISHED"], 180, every=0.5)
        live.down()
        stopped = time.monotonic()
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]  # every run saved: tracking is not the result
    assert time.monotonic() - stopped < 120, err[-2000:]
    saved = {p.parent.name for p in (tmp_path / "r" / "runs").glob("served2-*/metrics.json")}
    assert len(saved) == 3 and "Traceback" not in err
    live.up()  # the same port and store
    complete = {r.data.tags["normbench.run_id"] for r in logged(live, "served2")
                if r.info.status == "FINISHED"}
    named = {line.split()[1] for line in err.splitlines() if "(the run is saved)" in line}
    assert saved - complete and named == saved - complete, err[-2000:]  # each run not logged named
    again = normbench(live, "export", "mlflow", "--results", tmp_path / "r")
    assert again.returncode == 0, again.stderr[-2000:]
    runs = logged(live, "served2")  # a logging cut short is logged again whole, never twice
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["normbench.run_id"] for r in runs} == saved


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_hung_server_costs_bounded_time_and_names_the_run(live, tmp_path):
    live.pause()  # the port accepts, nothing answers
    started = time.monotonic()
    try:
        done = normbench(live, "run", spec(tmp_path, "served3", 1), "--smoke", "-q", "--mlflow",
                         "--results", tmp_path / "r", timeout=240)
    finally:
        live.resume()
    took = time.monotonic() - started
    assert done.returncode == 0 and len(list((tmp_path / "r" / "runs").glob("served3-*"))) == 1
    rid = next((tmp_path / "r" / "runs").glob("served3-*")).name
    assert f"tracking {rid} failed (the run is saved)" in done.stderr, done.stderr[-2000:]
    assert took < 150, took  # MLflow's own retries would take minutes
    again = normbench(live, "export", "mlflow", "--results", tmp_path / "r")
    assert again.returncode == 0 and len(logged(live, "served3")) == 1


def test_the_server_helper_reports_a_closed_port_as_unhealthy():
    s = engines.MlflowServer.__new__(engines.MlflowServer)
    s.uri = f"http://127.0.0.1:{engines.free_port()}"
    assert not s.healthy()
