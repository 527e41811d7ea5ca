"""MLflow, TensorBoard and Slurm (submitit's local executor), each against the real library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = "name: tracked\ndataset: mnist-10k\nseeds: 2\ntrain: {eval_every: 1}\n"


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tracked.yaml"
    path.write_text(SPEC)
    return path


@pytest.mark.slow
def test_mlflow_logs_each_run_once_and_export_is_idempotent(spec, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    # with a user's store, artifacts go where MLflow puts them: ./mlruns of the working directory
    done = cli("run", spec, "--smoke", "-q", "-j", "2", "--mlflow", "--results", tmp_path / "r",
               env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 run(s) logged to MLflow" in done.stderr
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tracked"])
    assert len(runs) == 2
    assert set(runs["params.model.norm.type"]) == {"group"} and set(runs["params.train.seed"]) == {"0", "1"}
    assert runs["metrics.final.test_accuracy"].between(0, 1).all()
    assert runs["tags.normbench.run_id"].str.startswith("tracked-").all()
    assert set(runs["status"]) == {"FINISHED"}
    client = mlflow.tracking.MlflowClient(uri)
    rid = runs["run_id"][0]
    losses = client.get_metric_history(rid, "loss")
    assert [m.step for m in losses] == [1]
    assert {a.path for a in client.list_artifacts(rid)} >= {"metrics.json", "spec.yaml", "history.csv"}
    again = cli("export", "mlflow", "--results", tmp_path / "r", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "0 run(s) logged to MLflow, 2 already there" in again.stderr
    assert len(mlflow.search_runs(experiment_names=["tracked"])) == 2
    assert (tmp_path / "mlruns").is_dir() and not (ROOT / "mlruns").exists()
    named = cli("export", "mlflow", "--results", tmp_path / "r",
                env={**env, "MLFLOW_EXPERIMENT_NAME": "elsewhere"}, cwd=tmp_path)
    assert named.returncode == 0 and len(mlflow.search_runs(experiment_names=["elsewhere"])) == 2


@pytest.mark.slow
def test_mlflow_without_a_uri_uses_a_local_store_it_names(spec, tmp_path):
    pytest.importorskip("mlflow")
    env = {"MLFLOW_TRACKING_URI": ""}
    done = cli("run", spec, "--smoke", "-q", "--mlflow", "--results", tmp_path / "r", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "r" / "mlflow.db").is_file()
    assert f"mlflow ui --backend-store-uri sqlite:///{(tmp_path / 'r' / 'mlflow.db').resolve()}" in done.stderr


@pytest.mark.slow
def test_tensorboard_scalars_and_hparams_read_back(spec, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    logdir = tmp_path / "tb"
    done = cli("run", spec, "--smoke", "-q", "--tensorboard", logdir, "--results", tmp_path / "r")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(logdir.iterdir())
    assert len(runs) == 2 and all(p.name.startswith("tracked-") for p in runs)
    groups = []
    for run in runs:
        events = EventAccumulator(str(run))
        events.Reload()
        assert {"loss", "accuracy", "learning_rate", "test_accuracy", "samples_per_s"} <= set(events.Tags()["scalars"])
        assert [e.step for e in events.Scalars("loss")] == [1]
        assert events.Scalars("learning_rate")[0].value == pytest.approx(0.001)
        (content,) = events.PluginTagToContent("hparams").values()
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        hparams = data.session_start_info.hparams
        assert hparams["model.norm.type"].string_value == "group" and "train.seed" not in hparams
        groups.append(data.session_start_info.group_name)
    assert groups[0] == groups[1]  # the two seeds are one configuration
    again = cli("export", "tensorboard", "--results", tmp_path / "r", "--logdir", logdir)
    assert again.returncode == 0 and "2 already there" in again.stderr


@pytest.mark.slow
def test_slurm_through_submitits_local_executor_resumes(spec, tmp_path):
    pytest.importorskip("submitit")
    env = {"NORMBENCH_SUBMITIT_CLUSTER": "local"}
    done = cli("run", spec, "--smoke", "-q", "--executor", "slurm", "--slurm-time", "10",
               "--slurm-parallel", "2", "--results", tmp_path / "r", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 run(s) done" in done.stderr
    assert len(list((tmp_path / "r" / "runs").glob("tracked-*/metrics.json"))) == 2
    again = cli("run", spec, "--smoke", "-q", "--executor", "slurm", "--results", tmp_path / "r", env=env)
    assert again.returncode == 0 and "0 run(s) done" in again.stderr and "2 already finished" in again.stderr


def test_slurm_without_slurm_is_one_error_line(spec, tmp_path):
    pytest.importorskip("submitit")
    # PATH is an empty directory: /usr/bin:/bin holds Debian's sbatch where slurm-wlm is
    # installed, and the test must not depend on what the machine happens to lack
    empty = tmp_path / "empty-path"
    empty.mkdir()
    done = cli("run", spec, "--smoke", "--executor", "slurm", "--results", tmp_path / "r",
               env={"NORMBENCH_SUBMITIT_CLUSTER": "", "PATH": str(empty)})
    assert done.returncode == 2 and "sbatch is not on PATH" in done.stderr
    bad = cli("run", spec, "--smoke", "--slurm-time", "5", "--results", tmp_path / "r")
    assert bad.returncode == 2 and "apply to --executor slurm" in bad.stderr


def test_tracking_and_executor_options_never_change_run_ids(spec, tmp_path):
    base = cli("run", spec, "--dry-run", "--results", tmp_path / "r").stdout
    spec.write_text(SPEC + "slurm: {partition: gpu, time_min: 5}\ntags: [x]\n")
    other = cli("run", spec, "--dry-run", "--mlflow", "--tensorboard", tmp_path / "tb",
                "--save-model", "--results", tmp_path / "r").stdout
    ids = lambda text: [w for w in text.split() if w.startswith("tracked-")]  # noqa: E731
    assert ids(base) and ids(base) == ids(other)


@pytest.mark.slow
def test_an_unreachable_mlflow_server_costs_seconds_and_names_the_runs(spec, tmp_path):
    """Against a closed port two smoke runs took 506 s of MLflow's retries before, in silence.
    Now: one bounded failure, the rest of the invocation skips at once, runs stay saved, and
    export says which runs were not logged (exit 1)."""
    pytest.importorskip("mlflow")
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        os.environ.pop(name, None)  # the defaults normbench sets are what is tested
    done = subprocess.run([sys.executable, "-m", "normbench", "run", str(spec), "--smoke", "-q",
                           "--mlflow", "--results", str(tmp_path / "r")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-1500:]  # the runs are what matters: saved
    assert len(list((tmp_path / "r" / "runs").glob("tracked-*"))) == 2
    assert done.stderr.count("(the run is saved)") == 2
    assert "failed earlier in this invocation" in done.stderr  # the second did not retry
    again = cli("export", "mlflow", "--results", tmp_path / "r", env=env)
    assert again.returncode == 1 and "2 run(s) not logged" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.slow
def test_two_concurrent_exports_log_each_run_once(tmp_path):
    """Two `export mlflow` at once on a new store made 17 MLflow runs of 10 records (and a
    duplicate-column error) before; the look-up and the logging now hold a lock."""
    pytest.importorskip("mlflow")
    from normbench.bench.cli import fake_records

    results = tmp_path / "r"
    results.mkdir()
    fake_records(results, 10)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-m", "normbench", "export", "mlflow", "--results",
                               str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-1500:]
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 10
    assert len({r.data.tags["normbench.run_id"] for r in runs}) == 10
