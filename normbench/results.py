"""Run records on disk (atomic), the summary tables derived from them, and loading for compare."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any, Iterable

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, ValidationError

from normbench import stats
from normbench.errors import NormbenchError


class RunRecord(BaseModel):
    """Everything one finished run measured; saved as runs/<run_id>/metrics.json."""

    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants")  # NaN loss round-trips

    run_id: str
    name: str
    status: str
    spec_hash: str
    config_hash: str  # spec_hash without the seed: runs that differ only by seed share it
    smoke: bool
    dataset: dict[str, Any]  # provenance: requested, name (used), source, sizes, sha256, warning
    norm_type: str
    norm_groups: int | None
    impl_requested: str
    impl_used: str
    params: int
    epochs: int
    batch_size: int
    seed: int
    test_accuracy: float
    test_loss: float
    train_accuracy: float
    train_loss: float
    epoch_times_s: list[float]
    first_epoch_s: float
    steady_epoch_s: float
    steady_samples_per_s: float
    steady_basis: str
    total_s: float
    started: str
    finished: str
    env: dict[str, Any]
    warnings: list[str] = []
    history: list[dict[str, Any]]  # epoch, loss, accuracy, time_s
    spec: dict[str, Any] = {}  # the resolved spec, for --where/--by and plots
    learning_rate: float | None = None  # after train.lr_scaling
    compiled: str | None = None  # XLA use: step (whole train step), kernels (norm, optimizer), none


FINAL = ("finished", "diverged")  # statuses that count as done: a sweep does not run them again
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}-[0-9a-f]{12}")  # run_id(): spec name, content hash
MIN_FREE_BYTES = 64 << 20  # below this, a run could finish training and then fail to save


def run_dir(results_dir: Path, rid: str) -> Path:
    """results_dir/runs/<rid>, refusing any id that could name a path outside runs/."""
    if not RUN_ID.fullmatch(rid):
        raise NormbenchError(f"run id {rid!r} is not of the form NAME-HASH12; refusing to use it "
                             "as a path")
    return results_dir / "runs" / rid


def run_id(name: str, spec_hash: str, smoke: bool) -> str:
    """The run's identity: the spec name and a hash of its resolved spec (seed included) and of
    the smoke flag, so the same run is recognised across invocations and processes."""
    digest = hashlib.sha256(f"{spec_hash}:{'smoke' if smoke else 'full'}".encode()).hexdigest()
    return f"{name}-{digest[:12]}"


def finished(results_dir: Path, rid: str) -> RunRecord | None:
    """The run's record if it is done (finished or diverged), else None."""
    try:
        record = RunRecord.model_validate_json((run_dir(results_dir, rid) / "metrics.json").read_bytes())
    except (OSError, ValidationError, ValueError, NormbenchError):
        return None
    return record if record.status in FINAL else None


def claim(results_dir: Path, rid: str) -> FileLock | None:
    """Hold the run's lock (released by the OS if the process dies), or None if another holds it."""
    run_dir(results_dir, rid)  # a valid id, or NormbenchError
    claims = results_dir / "runs" / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(claims / f"{rid}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    # Nobody is running it now: a staging directory of it is what a killed writer left behind.
    for stale in (results_dir / "runs").glob(f".{rid}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    return lock


def prepare(results_dir: Path) -> Path:
    """Create results_dir/runs and prove it writable, before any training starts."""
    runs = results_dir / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=runs, prefix=".probe-") as probe:
            probe.write(b"\0" * (64 << 10))  # a full disk or quota fails here, not after training
            probe.flush()
            os.fsync(probe.fileno())
        free = shutil.disk_usage(runs).free
    except OSError as exc:
        raise NormbenchError(f"results directory {results_dir}: not writable "
                             f"({exc.strerror or exc})") from None
    if free < MIN_FREE_BYTES:
        raise NormbenchError(f"results directory {results_dir}: only {free >> 20} MiB free on its "
                             f"disk; normbench needs {MIN_FREE_BYTES >> 20} MiB to save runs")
    return runs


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(record: RunRecord, spec_yaml: str, results_dir: Path, *, replace: bool = False) -> Path:
    """Write runs/<run_id>/{spec.yaml,history.csv,metrics.json}; the directory appears whole.

    An existing run directory is an error unless `replace` (then it is swapped out, never left
    half-replaced: the old one moves aside before the new one is renamed in)."""
    final = run_dir(results_dir, record.run_id)
    runs = prepare(results_dir)
    staging = Path(tempfile.mkdtemp(dir=runs, prefix=f".{record.run_id}."))
    try:
        _write_atomic(staging / "spec.yaml", spec_yaml)
        _write_atomic(staging / "history.csv",
                      _csv(record.history, ["epoch", "loss", "accuracy", "time_s"]))
        _write_atomic(staging / "metrics.json", record.model_dump_json(indent=2) + "\n")
        if replace and final.exists():
            old = Path(tempfile.mkdtemp(dir=runs, prefix=f".{record.run_id}.old."))
            os.rename(final, old / "run")
            os.rename(staging, final)
            shutil.rmtree(old)
        else:
            os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def load_records(results_dir: Path) -> tuple[list[RunRecord], list[tuple[str, str]]]:
    """All readable run records (oldest first), and (entry, reason) for each one skipped."""
    runs = results_dir / "runs"
    records, skipped = [], []
    if not runs.is_dir():
        return records, skipped
    for entry in sorted(runs.iterdir()):
        if entry.name.startswith("."):
            continue  # staging directories and probes of runs in flight
        metrics = entry / "metrics.json"
        if entry.is_symlink():
            skipped.append((entry.name, "a symbolic link (not followed: runs live inside runs/)"))
        elif not entry.is_dir():
            skipped.append((entry.name, "not a run directory"))
        elif not metrics.is_file():
            skipped.append((entry.name, "no metrics.json"))
        else:
            try:
                record = RunRecord.model_validate_json(metrics.read_bytes())
            except (OSError, ValidationError, ValueError) as exc:
                first = str(exc).splitlines()[0]
                skipped.append((entry.name, f"unreadable metrics.json: {first}"))
                continue
            if not (entry / "spec.yaml").is_file():
                skipped.append((entry.name, "no spec.yaml (a run directory is written whole)"))
            elif record.run_id != entry.name:
                skipped.append((entry.name, f"its metrics.json is for run {record.run_id[:80]!r}"))
            else:
                records.append(record)
    records.sort(key=lambda r: (r.started, r.run_id))
    return records, skipped


# ---------------------------------------------------------------------------------------------
# Tables. Column names are documented in results/README.md (a test keeps the two in step).

RUN_COLUMNS = ("run_id", "name", "status", "dataset", "dataset_requested", "smoke", "n_train",
               "n_test", "norm", "groups", "impl_requested", "impl_used", "params", "epochs",
               "batch_size", "seed", "test_accuracy", "test_loss", "train_accuracy", "train_loss",
               "first_epoch_s", "steady_epoch_s", "steady_samples_per_s", "total_s", "tensorflow",
               "keras", "started")

GROUP_COLUMNS = ("name", "config", "dataset", "smoke", "norm", "impl", "runs", "test_acc_mean",
                 "test_acc_std", "test_acc_ci95", "test_acc_best", "test_err_mean",
                 "test_err_ci95", "test_loss_mean", "first_epoch_s", "steady_epoch_s",
                 "samples_per_s", "best")


def run_row(r: RunRecord) -> dict[str, Any]:
    return {"run_id": r.run_id, "name": r.name, "status": r.status,
            "dataset": r.dataset["name"], "dataset_requested": r.dataset["requested"],
            "smoke": r.smoke, "n_train": r.dataset["n_train"], "n_test": r.dataset["n_test"],
            "norm": r.norm_type, "groups": r.norm_groups, "impl_requested": r.impl_requested,
            "impl_used": r.impl_used, "params": r.params, "epochs": r.epochs,
            "batch_size": r.batch_size, "seed": r.seed, "test_accuracy": r.test_accuracy,
            "test_loss": r.test_loss, "train_accuracy": r.train_accuracy,
            "train_loss": r.train_loss, "first_epoch_s": r.first_epoch_s,
            "steady_epoch_s": r.steady_epoch_s, "steady_samples_per_s": r.steady_samples_per_s,
            "total_s": r.total_s, "tensorflow": r.env.get("tensorflow"),
            "keras": r.env.get("keras"), "started": r.started}


def flat_spec(spec: dict, prefix: str = "") -> dict[str, Any]:
    """{"model.norm.type": "group", ...} from a nested spec dict."""
    out = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_spec(value, f"{path}."))
        else:
            out[path] = value
    return out


def value_label(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def group_rows(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    """One row per experiment: runs sharing name, data actually used, smoke flag and config
    (the resolved spec but the seed). `config` names the spec fields that tell apart the
    experiments of one name; each row keeps its accuracies under `_acc` for tests of difference."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.name, r.dataset["name"], r.smoke, r.config_hash), []).append(r)
    flats = {key: {k: v for k, v in flat_spec(rs[0].spec).items() if k != "train.seed"}
             for key, rs in groups.items()}
    rows = []
    for key, rs in groups.items():
        name, dataset, smoke, _ = key
        siblings = [flats[k] for k in groups if k[0] == name]
        varying = sorted({p for f in siblings for p in f if any(g.get(p) != f.get(p) for g in siblings)})
        acc = [r.test_accuracy for r in rs]
        mean, std, half = stats.mean_ci(acc)
        rows.append({
            "name": name, "config": ", ".join(f"{p}={value_label(flats[key][p])}" for p in varying
                                              if flats[key].get(p) is not None),
            "dataset": dataset, "smoke": smoke, "norm": rs[0].norm_type,
            "impl": ",".join(sorted({r.impl_used for r in rs})), "runs": len(rs),
            "test_acc_mean": mean, "test_acc_std": std, "test_acc_ci95": half,
            "test_acc_best": max(acc), "test_err_mean": 1.0 - mean, "test_err_ci95": half,
            "test_loss_mean": statistics.fmean(r.test_loss for r in rs),
            "first_epoch_s": statistics.fmean(r.first_epoch_s for r in rs),
            "steady_epoch_s": statistics.fmean(r.steady_epoch_s for r in rs),
            "samples_per_s": statistics.fmean(r.steady_samples_per_s for r in rs),
            "best": False, "_acc": acc, "_spec": flats[key]})
    for dataset, smoke in {(row["dataset"], row["smoke"]) for row in rows}:
        peers = [row for row in rows if (row["dataset"], row["smoke"]) == (dataset, smoke)]
        max(peers, key=lambda row: row["test_acc_mean"])["best"] = True
    rows.sort(key=lambda row: (row["dataset"], row["smoke"], -row["test_acc_mean"]))
    return rows


def fmt(column: str, value: Any) -> str:
    """Human formatting shared by Markdown and the terminal table."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column.startswith(("test_acc", "train_acc", "test_err", "delta_")) or column == "test_accuracy":
        return f"{100 * value:.2f}%"
    if column == "p_value":
        return f"{value:.3g}"
    if column in ("samples_per_s", "steady_samples_per_s"):
        return f"{value:,.0f}"
    if column.endswith("_s"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value)


def to_markdown(rows: list[dict], columns: Iterable[str]) -> str:
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt(c, row[c]) for c in columns]
        if row.get("best"):
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def render(rows: list[dict], columns: Iterable[str], fmt_name: str) -> str:
    """rows as md, csv or json text (the terminal table is drawn by the CLI)."""
    columns = list(columns)
    if fmt_name == "md":
        return to_markdown(rows, columns)
    if fmt_name == "csv":
        return _csv(rows, columns)
    if fmt_name == "json":
        return json.dumps([{c: row[c] for c in columns} for row in rows], indent=2) + "\n"
    raise ValueError(f"unknown format {fmt_name!r}")


def write_summaries(results_dir: Path) -> list[tuple[str, str]]:
    """Rebuild summary.csv and summary.md from every run record; returns the entries skipped."""
    with FileLock(str(results_dir / ".summary.lock")):
        records, skipped = load_records(results_dir)
        _write_atomic(results_dir / "summary.csv",
                      _csv([run_row(r) for r in records], list(RUN_COLUMNS)))
        md = ["# normbench results", "",
              f"{len(records)} run(s); rebuilt from runs/*/metrics.json. Columns: README.md.", "",
              "## By experiment (best mean test accuracy per dataset in bold)", "",
              to_markdown(group_rows(records), GROUP_COLUMNS), "## Runs", "",
              to_markdown([run_row(r) for r in records], RUN_COLUMNS)]
        if skipped:
            md += ["## Skipped", ""] + [f"- `{name}`: {why}" for name, why in skipped]
        _write_atomic(results_dir / "summary.md", "\n".join(md) + "\n")
    return skipped
