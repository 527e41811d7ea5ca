"""Run records on disk: atomic writes, per-run claims, and loading (the schema is record.py's,
re-exported here: `store.RunRecord`).

A results directory holds `runs/<run_id>/{spec.yaml, history.csv, metrics.json}`. A run directory
appears whole (staged in `runs/.tmp/`, then renamed); `runs/.claims/<run_id>.lock` is held while a
process trains or saves that run. Every record read back is untrusted input: it is validated field
by field, and one that fails is skipped with a reason, never trusted and never crashes a reader.
"""

from __future__ import annotations

import csv
import errno
import gc
import hashlib
import io
import os
import shutil
import stat
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout
from pydantic import ValidationError

from normbench.errors import NormbenchError
from normbench.record import (  # noqa: F401  (the record schema, re-exported: store.RunRecord)
    FINAL, HISTORY_COLUMNS, MAX_DEPTH, MAX_TEXT, NAME, RUN_ID, Count, DatasetInfo, Epoch,
    EvalResult, Fraction, Provenance, RunRecord, Seconds, Selection, scalars_fit)

MIN_FREE_BYTES = 64 << 20  # below this, a run could finish training and then fail to save


def run_dir(results_dir: Path, rid: str) -> Path:
    """results_dir/runs/<rid>, refusing any id that could name a path outside runs/."""
    if not isinstance(rid, str) or not RUN_ID.fullmatch(rid):
        raise NormbenchError(f"run id {str(rid)[:80]!r} is not of the form NAME-HASH12; refusing "
                             "to use it as a path")
    return results_dir / "runs" / rid


def run_id(name: str, spec_hash: str, smoke: bool) -> str:
    """The run's identity: the spec name and a hash of its spec identity (identity.of: the
    fields that differ from their defaults, seed included) and of the smoke flag."""
    digest = hashlib.sha256(f"{spec_hash}:{'smoke' if smoke else 'full'}".encode()).hexdigest()
    return f"{name}-{digest[:12]}"


MAX_RECORD_BYTES = 16 << 20  # a metrics.json of 100,000 epochs is ~15 MB


class NotRegular(OSError):
    """A path inside a results directory that is not a plain file (a link, a FIFO, a device)."""


def read_regular(path: Path, limit: int = MAX_RECORD_BYTES) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes, opened without
    following a link and without blocking (a FIFO or /dev/zero in its place is refused, never
    waited on or read for ever). NotRegular or FileNotFoundError/OSError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegular(f"{path.name} is a symbolic link (not followed)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegular(f"{path.name} is not a regular file")
        if info.st_size > limit:
            raise NotRegular(f"{path.name} is {info.st_size >> 20} MiB (at most {limit >> 20} MiB)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(info.st_size + 1)  # one byte more: a file that grew is caught
    finally:
        os.close(fd)
    if len(data) > info.st_size:
        raise NotRegular(f"{path.name} changed while read")
    return data


def is_regular(path: Path) -> bool:
    """Whether `path` is a regular file itself (a link to one is not)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def inspect(entry: Path) -> tuple[RunRecord | None, str | None]:
    """(record, None) for a complete, valid run directory; else (None, why it is not one).

    `run` (is it finished?) and `compare` (what to show) both decide through this function, so
    they always agree."""
    if entry.is_symlink():
        return None, "a symbolic link (not followed: runs live inside runs/)"
    if not entry.is_dir():
        return None, "not a run directory"
    metrics = entry / "metrics.json"
    try:
        raw = read_regular(metrics)
    except FileNotFoundError:
        return None, "no metrics.json"
    except NotRegular as exc:
        return None, f"unusable metrics.json: {exc}"
    except OSError as exc:
        return None, f"unreadable metrics.json: {exc.strerror or exc}"
    try:
        record = RunRecord.model_validate_json(
            raw, context={"scalars_fit": True} if scalars_fit(raw) else None)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "(top)"
        return None, f"invalid metrics.json: {where}: {first['msg']} ({exc.error_count()} error(s))"
    except ValueError as exc:
        return None, f"invalid metrics.json: {str(exc).splitlines()[0][:120]}"
    if not is_regular(entry / "spec.yaml"):
        return None, "no spec.yaml (a run directory is written whole; a link is not followed)"
    if record.run_id != entry.name:
        return None, f"its metrics.json is for run {record.run_id!r}"
    return record, None


def finished(results_dir: Path, rid: str) -> RunRecord | None:
    """The run's record if it is done (finished or diverged) and intact, else None (also for
    an id that is not a run id)."""
    try:
        return inspect(run_dir(results_dir, rid))[0]
    except NormbenchError:
        return None


def scan(results_dir: Path) -> tuple[dict[str, RunRecord], list[tuple[str, str]]]:
    """Every valid record by run id, and (entry, reason) for each entry of runs/ skipped."""
    runs = results_dir / "runs"
    records, skipped = {}, []
    if not runs.is_dir():
        return records, skipped
    with os.scandir(runs) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith("."))  # .tmp, .claims
    collecting = gc.isenabled()
    gc.disable()  # records hold no cycles; collections while 10,000 pile up took a third of it
    try:
        for name in names:
            record, why = inspect(runs / name)
            if record is None:
                skipped.append((name, why))
            else:
                records[name] = record
    finally:
        if collecting:
            gc.enable()
    gc.freeze()  # and later collections skip them (they are freed by reference counting still)
    return records, skipped


def load_records(results_dir: Path) -> tuple[list[RunRecord], list[tuple[str, str]]]:
    """All valid run records (oldest first), and (entry, reason) for each one skipped."""
    records, skipped = scan(results_dir)
    return sorted(records.values(), key=lambda r: (r.started, r.run_id)), skipped


def claim(results_dir: Path, rid: str) -> FileLock | None:
    """Hold the run's lock (released by the OS if the process dies), or None if another holds it."""
    run_dir(results_dir, rid)  # a valid id, or NormbenchError
    claims = results_dir / "runs" / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(claims / f"{rid}.lock"), mode=0o666)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    # Nobody is running it now: a staging directory of it is what a killed writer left behind.
    staging = results_dir / "runs" / ".tmp"
    if staging.is_dir():
        for stale in staging.glob(f"{rid}.*"):
            _remove(stale)
    return lock


def prepare(results_dir: Path) -> Path:
    """Create results_dir/runs and prove it writable, before any training starts."""
    runs = results_dir / "runs"
    try:
        if results_dir.exists() and not results_dir.is_dir():
            raise NormbenchError(f"results directory {results_dir}: not writable (a file, not a "
                                 "directory)")
        (runs / ".tmp").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=runs / ".tmp", prefix=".probe-") as probe:
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str, *, durable: bool = True) -> None:
    """Replace `path` by `text` whole (a reader sees the old or the new file, never half), with
    the permissions a plain open() would give under the umask (shared lab directories). With
    `durable=False` the data is not forced to disk first (a progress line, rewritten each epoch)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summaries_lock(results_dir: Path) -> FileLock:
    """The lock every writer of summary.csv and summary.md holds (appends and rebuilds)."""
    return FileLock(str(results_dir / ".summary.lock"))


def append_lines(path: Path, text: str, *, header: str = "") -> None:
    """Add whole lines to `path` in one write (`header` first when the file is new), under the
    summaries' lock: a reader sees every line whole. A link or other non-regular file in its
    place is never written through. Raises NormbenchError on a write error."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_NONBLOCK", 0)
    try:
        with summaries_lock(path.parent):
            fd = os.open(path, flags, 0o666)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise NotRegular(f"{path.name} is not a regular file")
                os.write(fd, (header + text if info.st_size == 0 else text).encode("utf-8"))
            finally:
                os.close(fd)
    except OSError as exc:
        why = "a symbolic link (not followed)" if exc.errno == errno.ELOOP else exc.strerror or exc
        raise NormbenchError(f"{path}: cannot write ({why})") from None


def delete(results_dir: Path, rid: str) -> bool:
    """Remove a run directory as one step (renamed into runs/.tmp, then deleted), holding its
    claim; False if another process holds the claim (a run in progress there)."""
    final = run_dir(results_dir, rid)
    lock = claim(results_dir, rid)
    if lock is None:
        return False
    try:
        (results_dir / "runs" / ".tmp").mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(dir=results_dir / "runs" / ".tmp", prefix=f"{rid}.rm.")) / "run"
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NormbenchError(f"cannot remove {final}: {exc.strerror or exc}") from None
        _remove(aside.parent)
    finally:
        lock.release()
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def history_csv(record: RunRecord) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    writer.writerows([getattr(h, c) for c in HISTORY_COLUMNS] for h in record.history)
    return out.getvalue()


def model_staging(results_dir: Path, rid: str) -> Path:
    """Where a run's trainer leaves model.keras for save() to move into the run directory."""
    run_dir(results_dir, rid)  # a valid id, or NormbenchError
    return results_dir / "runs" / ".claims" / f"{rid}.model.keras"


def save(record: RunRecord, spec_yaml: str, results_dir: Path,
         files: dict[str, Path] | None = None) -> Path:
    """Write runs/<run_id>/{spec.yaml,history.csv,metrics.json} and move `files` ({name: path},
    e.g. the trained model) in beside them; the directory appears whole. Whatever stands at that
    path (an older or damaged run directory, a stray file, a symlink) is moved aside first and
    removed after the new one is in place. The caller holds the run's claim."""
    final = run_dir(results_dir, record.run_id)
    runs = results_dir / "runs"  # proven writable by prepare() before training started
    try:
        (runs / ".tmp").mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=runs / ".tmp", prefix=f"{record.run_id}."))
        os.chmod(staging, 0o777 & ~_umask())
        try:
            write_atomic(staging / "spec.yaml", spec_yaml)
            write_atomic(staging / "history.csv", history_csv(record))
            for name, path in (files or {}).items():
                os.replace(path, staging / name)  # same file system: results/runs/
            write_atomic(staging / "metrics.json", record.model_dump_json(indent=2) + "\n")
            old = None
            if final.exists() or final.is_symlink():
                old = Path(tempfile.mkdtemp(dir=runs / ".tmp", prefix=f"{record.run_id}.old.")) / "run"
                os.rename(final, old)
            os.rename(staging, final)
            if old is not None:
                _remove(old.parent)
        except BaseException:
            _remove(staging)
            raise
    except OSError as exc:
        raise NormbenchError(f"results directory {results_dir}: cannot save run {record.run_id}: "
                             f"{exc.strerror or exc}") from None
    return final
