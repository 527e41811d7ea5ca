"""Trackers: each finished run's record logged to MLflow or written as TensorBoard event files.

Only the driver process (the one that saves records) logs: workers, Ray tasks and Slurm jobs
never talk to a tracking store. Both trackers read the saved record and run directory, so
`normbench export mlflow` can log runs that finished long ago. No TensorFlow here.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import filelock

import normbench
from normbench import store, tables
from normbench.errors import NormbenchError

EPOCH_METRICS = ("loss", "accuracy", "time_s", "learning_rate", "val_loss", "val_accuracy",
                 "test_loss", "test_accuracy")
MLFLOW_PARAM_LIMIT = 6000  # characters MLflow keeps of a parameter value


def _millis(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MLFLOW_PARAM_LIMIT]


def epoch_metrics(record: store.RunRecord) -> list[tuple[str, float, int]]:
    """(name, value, epoch) for every finite per-epoch number of the history."""
    out = []
    for e in record.history:
        for name in EPOCH_METRICS:
            value = getattr(e, name, None)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.append((name, float(value), e.epoch))
    return out


def final_metrics(record: store.RunRecord) -> dict[str, float]:
    found = {"test_accuracy": record.test_accuracy, "test_loss": record.test_loss,
             "samples_per_s": record.steady_samples_per_s, "first_epoch_s": record.first_epoch_s,
             "total_s": record.total_s, "test_error_median5": record.test_error_median5}
    return {k: float(v) for k, v in found.items() if v is not None and math.isfinite(v)}


# MLflow's HTTP client retries a dead server for minutes (7 retries with exponential backoff,
# 120 s each): two smoke runs took 506 s against a closed port. Unless the user set them, one
# retry and 10 s per request; and after the first failure an invocation stops trying.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class MLflow:
    """Logs records to an MLflow tracking store: MLFLOW_TRACKING_URI, else a local SQLite store
    in the results directory (`mlflow ui --backend-store-uri ...` opens it). The experiment is
    MLFLOW_EXPERIMENT_NAME, else the spec's name. A run is found by its `normbench.run_id` tag
    and never logged twice: the look-up and the logging hold a lock in the results directory, so
    two processes exporting the same records (or a sweep and an export) log each run once; a run
    whose logging a failure cut short (still RUNNING in the store) is deleted and logged again. After
    a failure (a server down) the invocation logs nothing more: each later run fails at once
    with the first failure's reason, and `normbench export mlflow` logs them later."""

    def __init__(self, results_dir: Path):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise NormbenchError("--mlflow needs MLflow: pip install 'normbench[mlflow]'") from None
        self.results_dir = results_dir
        self.local = not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"
        db = results_dir / "mlflow.db"
        if self.local and db.exists():  # a damaged store fails deep in SQLAlchemy otherwise
            try:
                if not db.is_file():  # a FIFO or device would block
                    raise OSError(f"{db}: not a regular file")
                with db.open("rb") as f:
                    head = f.read(16)
            except OSError as exc:
                raise NormbenchError(f"{db}: cannot read it ({exc.strerror or exc})") from None
            if head != b"SQLite format 3\x00":
                raise NormbenchError(f"{db}: not an SQLite database (damaged?): move it aside, "
                                     "and normbench export mlflow logs the runs again from their "
                                     "records")
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.lock = filelock.FileLock(str(results_dir / ".mlflow.lock"))
        if not self.local:
            self.client = MlflowClient(tracking_uri=self.uri)
        else:  # a new SQLite store's tables are made on first use: one process at a time
            try:
                with self.lock:
                    self.client = MlflowClient(tracking_uri=self.uri)
                    self.client.search_experiments(max_results=1)
            except Exception as exc:
                raise NormbenchError(f"{results_dir / 'mlflow.db'}: cannot open the MLflow store "
                                     f"({' '.join(str(exc).split())[:200]})") from None
        self.experiments: dict[str, str] = {}
        self.logged = self.skipped = 0
        self.down: str | None = None  # the first failure's reason

    def _experiment(self, name: str) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or name
        if name not in self.experiments:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                self.experiments[name] = found.experiment_id
            else:
                where = (self.results_dir / "mlartifacts").resolve().as_uri() if self.local else None
                self.experiments[name] = self.client.create_experiment(name, artifact_location=where)
        return self.experiments[name]

    def find(self, experiment: str, rid: str):
        runs = self.client.search_runs([experiment], filter_string=f"tags.`normbench.run_id` = '{rid}'",
                                       max_results=1)
        return runs[0] if runs else None

    def log(self, record: store.RunRecord, run_dir: Path) -> bool:
        """Log one run (params, per-epoch and final metrics, tags, the run directory as
        artifacts); False if the store already has it."""
        if self.down is not None:
            raise RuntimeError(f"not logged: MLflow failed earlier in this invocation "
                               f"({self.down}); normbench export mlflow logs it later")
        try:
            with self.lock:
                return self._log(record, run_dir)
        except Exception as exc:
            self.down = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise

    def _log(self, record: store.RunRecord, run_dir: Path) -> bool:
        from mlflow.entities import Metric, Param, RunTag

        experiment = self._experiment(record.name)
        found = self.find(experiment, record.run_id)
        if found is not None and found.info.status == "RUNNING":
            # an earlier logging that a failure cut short (the server went down after the run
            # was made): deleted and logged again, whole
            self.client.delete_run(found.info.run_id)
        elif found is not None:
            self.skipped += 1
            return False
        tags = {"normbench.run_id": record.run_id, "normbench.impl_used": record.impl_used,
                "normbench.dataset_sha256": record.dataset.sha256,
                "normbench.version": normbench.__version__, "normbench.status": record.status,
                "mlflow.runName": record.run_id}
        run = self.client.create_run(experiment, start_time=_millis(record.started), tags=tags,
                                     run_name=record.run_id)
        rid = run.info.run_id
        params = [Param(k, _param(v)) for k, v in sorted(tables.flat_spec(record.spec).items())]
        stamp = _millis(record.finished)
        metrics = [Metric(name, value, stamp, step) for name, value, step in epoch_metrics(record)]
        metrics += [Metric(f"final.{k}", v, stamp, 0) for k, v in final_metrics(record).items()]
        for i in range(0, max(len(params), len(metrics)), 100):  # MLflow's batch limits
            self.client.log_batch(rid, metrics=metrics[i:i + 100], params=params[i:i + 100])
        own = ["spec.yaml", "history.csv", "metrics.json"] + [record.saved_model] * bool(
            record.saved_model)
        for name in own:  # the run's own files only: a link to a system file is not uploaded
            if store.is_regular(run_dir / name):
                self.client.log_artifact(rid, str(run_dir / name))
        self.client.set_terminated(rid, status="FINISHED" if record.status == "finished" else "FAILED",
                                   end_time=stamp)
        self.logged += 1
        return True

    def how_to_open(self) -> str:
        where = f"{self.logged} run(s) logged to MLflow" + (
            f", {self.skipped} already there" if self.skipped else "")
        if self.local:
            return f"{where}; open it with: mlflow ui --backend-store-uri {self.uri}"
        return f"{where} at {self.uri}"


class TensorBoard:
    """Writes each run's per-epoch scalars (loss, accuracy, learning rate, held-out and test
    metrics, epoch time) to DIR/<run_id>, and its HParams: the spec's fields without the seed,
    with the config hash as the session group, so seeds line up as one configuration."""

    def __init__(self, logdir: Path):
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401
        except ImportError:
            raise NormbenchError("--tensorboard needs TensorBoard: pip install "
                                 "'normbench[tensorboard]'") from None
        if logdir.exists() and not logdir.is_dir():
            raise NormbenchError(f"--tensorboard/--logdir {logdir}: is a file, not a directory")
        self.logdir = logdir
        self.written = self.skipped = 0

    def log(self, record: store.RunRecord, run_dir: Path) -> bool:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import summary_v2 as hp
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        target = self.logdir / record.run_id
        if target.exists() and any(target.iterdir()):
            self.skipped += 1
            return False  # written before: event files are appended to, never duplicated
        writer = EventFileWriter(str(target))
        start = _millis(record.started) / 1000
        hparams = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v))
                   for k, v in tables.flat_spec(record.spec).items()
                   if k != "train.seed" and v is not None}
        writer.add_event(Event(wall_time=start, step=0,
                               summary=hp.hparams_pb(hparams, trial_id=record.config_hash,
                                                     start_time_secs=start)))
        elapsed = start
        for e in record.history:
            elapsed += e.time_s
            values = [Summary.Value(tag=name, simple_value=value)
                      for name, value, step in epoch_metrics(record) if step == e.epoch]
            if e.epoch == len(record.history):
                values.append(Summary.Value(tag="samples_per_s",
                                            simple_value=record.steady_samples_per_s))
            writer.add_event(Event(wall_time=elapsed, step=e.epoch, summary=Summary(value=values)))
        writer.flush()
        writer.close()
        self.written += 1
        return True

    def how_to_open(self) -> str:
        return (f"{self.written} run(s) written for TensorBoard"
                + (f", {self.skipped} already there" if self.skipped else "")
                + f"; open with: tensorboard --logdir {self.logdir}")
