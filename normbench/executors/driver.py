"""The one executor loop: hand runs out as the engine has room (claiming each as it goes), wait,
save what comes back through the one atomic writer, release, and stop cleanly on Ctrl-C. Engines
only train; this process (the driver) alone writes into the results directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from normbench import provenance, spec as specs, store, tables
from normbench.errors import NormbenchError
from normbench.executors.engine import Engine, RunLost, first_line
from normbench.executors.plan import Planned
from normbench.executors.signals import signals_held
from normbench.store import RunRecord


@dataclass
class Outcome:
    ran: list[RunRecord] = field(default_factory=list)
    skipped: int = 0  # found finished when claimed (another process finished it meanwhile)
    busy: list[str] = field(default_factory=list)  # claimed by another process
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run_id, error)
    not_started: int = 0  # left when interrupted
    interrupted: bool = False
    tracking_errors: list[tuple[str, str]] = field(default_factory=list)  # (run_id, error)


def stale(record: RunRecord | None, force: bool, since: str, retry_fallback: bool) -> bool:
    """Whether a run must (re)run: no record, --force and the record predates this sweep, or
    --retry-fallback and it trained on fallback data."""
    return (record is None or (force and record.started < since)
            or (retry_fallback and record.dataset.fallback))


def status_path(results_dir: Path, rid: str) -> Path:
    """The file a trainer keeps its progress in ('epoch 2/3'), beside the run's claim."""
    return results_dir / "runs" / ".claims" / f"{rid}.status"


def model_path(results_dir: Path, item: Planned) -> Path | None:
    """Where the trainer writes the model when the spec asks for one (train.save_model)."""
    return store.model_staging(results_dir, item.run_id) if item.spec.train.save_model else None


@dataclass
class Driver:
    """Claims, saves and counts for every engine."""

    results_dir: Path
    force: bool
    since: str
    retry_fallback: bool
    trackers: tuple = ()  # track.MLflow / track.TensorBoard: log each saved run (driver only)
    index: Any = None  # the results directory's record index (index.Index): told of each save
    outcome: Outcome = field(default_factory=Outcome)

    def claim(self, item: Planned):
        """The run's lock if this process should run it now, else None (counted)."""
        lock = store.claim(self.results_dir, item.run_id)
        if lock is None:
            self.outcome.busy.append(item.run_id)
            return None
        if not stale(store.finished(self.results_dir, item.run_id), self.force, self.since,
                     self.retry_fallback):
            lock.release()
            self.outcome.skipped += 1
            return None
        return lock

    def unaccounted(self, planned: int) -> int:
        """Runs of the plan that were neither saved, skipped, busy nor failed: not run."""
        o = self.outcome
        return planned - len(o.ran) - o.skipped - len(o.busy) - len(o.failed)

    def fill(self, queue: list[Planned], running: dict, window: int, submit) -> int:
        """Claim runs from the end of `queue` and `submit` them until `window` are in flight
        (claims are taken as each run is handed out); returns how many were passed over. A run
        whose submission raises (Ctrl-C, a cluster gone) has its claim released."""
        passed = 0
        while queue and len(running) < window:
            item = queue.pop()
            lock = self.claim(item)
            if lock is None:
                passed += 1
                continue
            try:
                handle = submit(item)
            except BaseException:
                status_path(self.results_dir, item.run_id).unlink(missing_ok=True)
                lock.release()
                raise
            running[handle] = (item, lock)
        return passed

    def save(self, item: Planned, record: RunRecord) -> None:
        """Save, add the summary row and count the run, as one step that Ctrl-C or SIGTERM
        cannot split (a signal arriving meanwhile is handled right after)."""
        record = record.model_copy(update={
            "provenance": store.Provenance(**provenance.of(item.spec_file))})
        files = None
        if record.saved_model:
            files = {record.saved_model: store.model_staging(self.results_dir, item.run_id)}
        with signals_held():
            folder = store.save(record, specs.to_yaml(item.spec), self.results_dir, files)
            tables.append_summary(self.results_dir, record)
            self.outcome.ran.append(record)
            if self.index is not None:
                self.index.saved(record)
        for tracker in self.trackers:  # the record is safe on disk: a tracker's failure is noted
            try:
                tracker.log(record, folder)
            except Exception as exc:  # a tracking store down, a full disk: the run stays done
                self.outcome.tracking_errors.append((item.run_id, first_line(exc)))

    def drive(self, engine: Engine, todo: list[Planned],
              progress: Callable[[int, list[str]], None] | None = None) -> Outcome:
        """Run `todo` on `engine`: at most `engine.window` runs claimed at a time, each when it
        is handed out; every record that comes back saved here."""
        running: dict = {}  # handle -> (item, lock)
        queue = list(reversed(todo))
        done = 0
        try:
            engine.start()
            while queue or running:
                done += self.fill(queue, running, engine.window, engine.submit)
                if progress:
                    progress(done, engine.status([item for item, _ in running.values()]))
                if not running:
                    continue
                for handle, result in engine.collect(list(running), engine.poll_s):
                    item, lock = running.pop(handle)
                    try:
                        if isinstance(result, NormbenchError):
                            raise result  # bad input found while training: the sweep stops
                        if isinstance(result, RunLost):
                            queue.clear()  # no engine left to run the rest: they stay to do
                        if isinstance(result, BaseException):
                            self.outcome.failed.append((item.run_id, engine.describe_failure(result)))
                        else:  # a RunRecord from this process, its JSON from anywhere else
                            self.save(item, result if isinstance(result, RunRecord)
                                      else RunRecord.model_validate_json(result))
                    finally:
                        status_path(self.results_dir, item.run_id).unlink(missing_ok=True)
                        lock.release()
                        done += 1
            if progress:
                progress(done, [])
        except KeyboardInterrupt:
            engine.cancel(list(running))
            self.outcome.interrupted = True
            self.outcome.not_started = self.unaccounted(len(todo))
        finally:
            try:
                engine.close()
            finally:
                for item, lock in running.values():
                    status_path(self.results_dir, item.run_id).unlink(missing_ok=True)
                    lock.release()
        return self.outcome


def train_task(spec_dict: dict, smoke: bool, status: str | None = None,
               model: str | None = None, spec_hash: str | None = None) -> str:
    """Train one run in a worker process, Ray task or Slurm job; the record comes back as JSON
    (the model, when asked for, as a file at `model`). `spec_hash` is the plan's: the run fails
    if what the spec names (npz data, a model factory) changed since."""
    from normbench import train  # imports TensorFlow, in the process that trains

    spec = specs.Spec.model_validate(spec_dict)
    record = train.run_one(spec, smoke=smoke, quiet=True,
                           status_path=Path(status) if status else None,
                           model_path=Path(model) if model else None, planned_hash=spec_hash)
    return record.model_dump_json()
