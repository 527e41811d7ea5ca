"""Run many specs: skip finished runs, claim the rest with locks, in-process, in N local worker
processes or as Ray tasks. Every finished run is saved by the same atomic writer."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from normbench import results, spec as specs
from normbench.errors import NormbenchError


@dataclass(frozen=True)
class Planned:
    spec: specs.Spec
    run_id: str
    done: bool  # a finished (or diverged) record already exists


@dataclass
class Outcome:
    ran: list[results.RunRecord] = field(default_factory=list)
    skipped: int = 0  # already finished
    busy: list[str] = field(default_factory=list)  # claimed by another process
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run_id, error)
    interrupted: bool = False

    def merge(self, other: Outcome) -> None:
        self.ran += other.ran
        self.skipped += other.skipped
        self.busy += other.busy
        self.failed += other.failed
        self.interrupted |= other.interrupted


def plan(runs: list[specs.Spec], smoke: bool, results_dir: Path) -> list[Planned]:
    """One entry per distinct run (identical grid points collapse), in grid order."""
    seen, out = set(), []
    for spec in runs:
        rid = results.run_id(spec.name, specs.spec_hash(spec), smoke)
        if rid not in seen:
            seen.add(rid)
            out.append(Planned(spec, rid, results.finished(results_dir, rid) is not None))
    return out


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _stale(record: results.RunRecord | None, force: bool, since: str) -> bool:
    """Whether a run must (re)run: no record, or --force and the record predates this sweep."""
    return record is None or (force and record.started < since)


def stop_on_sigterm() -> None:
    """Let SIGTERM stop a sweep as Ctrl-C does: finished runs kept, nothing half-written."""
    def handler(signum, frame):  # noqa: ARG001 - signal's signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_in_process(todo: list[Planned], results_dir: Path, *, smoke: bool, force: bool,
                   since: str, quiet: bool = False,
                   announce: Callable[[int, Planned], None] | None = None) -> Outcome:
    """Claim and run each planned run here, one after another."""
    from normbench import train  # imports TensorFlow

    outcome = Outcome()
    status_dir = results_dir / "runs" / ".claims"
    try:
        for i, item in enumerate(todo):
            lock = results.claim(results_dir, item.run_id)
            if lock is None:
                outcome.busy.append(item.run_id)
                continue
            status = status_dir / f"{item.run_id}.status"
            try:
                existing = results.finished(results_dir, item.run_id)
                if not _stale(existing, force, since):
                    outcome.skipped += 1
                    continue
                if announce:
                    announce(i, item)
                try:
                    record = train.run_one(item.spec, smoke=smoke, quiet=quiet, status_path=status)
                except NormbenchError:
                    raise
                except Exception as exc:  # one broken run must not stop the sweep
                    outcome.failed.append((item.run_id, f"{type(exc).__name__}: {exc}".splitlines()[0]))
                    continue
                results.save(record, specs.to_yaml(item.spec), results_dir, replace=existing is not None)
                results.write_summaries(results_dir)
                outcome.ran.append(record)
            finally:
                status.unlink(missing_ok=True)
                lock.release()
    except KeyboardInterrupt:
        outcome.interrupted = True
    return outcome


# ---------------------------------------------------------------------------------------------
# N local worker processes: each walks the same plan; the run locks keep them apart.


def run_workers(todo: list[Planned], results_dir: Path, *, smoke: bool, force: bool, since: str,
                jobs: int, progress: Callable[[int, list[str]], None] | None = None) -> Outcome:
    """Run `todo` in `jobs` worker processes; `progress(done, running)` is called as they go."""
    claims = results_dir / "runs" / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=claims, prefix=".sweep-") as tmp:
        plan_file = Path(tmp) / "plan.json"
        plan_file.write_text(json.dumps([specs.to_dict(p.spec) for p in todo]))
        workers = []
        for k in range(jobs):
            out_file = Path(tmp) / f"worker-{k}.json"
            argv = [sys.executable, "-m", "normbench.sweep", str(plan_file), str(results_dir),
                    str(out_file), "--offset", str(k * len(todo) // jobs), "--jobs", str(jobs),
                    "--worker", str(k),
                    "--since", since] + (["--smoke"] if smoke else []) + (["--force"] if force else [])
            workers.append((subprocess.Popen(argv), out_file))
        outcome = Outcome()
        try:
            while any(p.poll() is None for p, _ in workers):
                if progress:
                    done = sum(not _stale(results.finished(results_dir, t.run_id), force, since)
                               for t in todo)
                    running = [f"{f.stem}: {f.read_text()}" for f in claims.glob("*.status")
                               if f.exists()]
                    progress(done, running)
                time.sleep(0.5)
        except KeyboardInterrupt:
            for p, _ in workers:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p, _ in workers:
                p.wait()
            outcome.interrupted = True
        for p, out_file in workers:
            if out_file.exists():
                outcome.merge(_outcome_from_json(json.loads(out_file.read_text()), results_dir))
            elif p.returncode not in (0, 130):
                outcome.failed.append(("worker", f"worker exited with code {p.returncode}"))
    # Each worker skipped what the others ran: count a run once, as run or as skipped.
    ran = {r.run_id for r in outcome.ran}
    outcome.busy = [b for b in dict.fromkeys(outcome.busy) if b not in ran]
    outcome.skipped = max(0, len(todo) - len(ran) - len(outcome.busy) - len(outcome.failed))
    return outcome


def _outcome_to_json(outcome: Outcome) -> dict:
    return {"ran": [r.run_id for r in outcome.ran], "skipped": outcome.skipped,
            "busy": outcome.busy, "failed": outcome.failed, "interrupted": outcome.interrupted}


def _outcome_from_json(data: dict, results_dir: Path) -> Outcome:
    ran = [r for r in (results.finished(results_dir, rid) for rid in data["ran"]) if r]
    return Outcome(ran, data["skipped"], data["busy"], [tuple(f) for f in data["failed"]],
                   data["interrupted"])


def pin_worker(worker: int, jobs: int) -> int:
    """Pin worker `worker` of `jobs` to its own share of this process's cores; returns how many
    it got. Unpinned, two TensorFlow processes on 2 cores slowed each other down 1.5x (idle
    pool threads spin on the other's core); pinned, 1.03x (normbench bench workers)."""
    if not hasattr(os, "sched_getaffinity"):
        return max(1, (os.cpu_count() or 1) // jobs)
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // jobs)
    if jobs > 1 and jobs <= len(cores):
        os.sched_setaffinity(0, cores[worker * share:(worker + 1) * share])
    return share


def _worker_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="normbench.sweep", description="one sweep worker")
    for name in ("plan", "results", "out"):
        parser.add_argument(name)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--since", required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    cores = pin_worker(args.worker, args.jobs)  # before TensorFlow starts its thread pools
    from normbench import train

    train.configure_threads(cores)
    results_dir = Path(args.results)
    runs = [specs.Spec.model_validate(d) for d in json.loads(Path(args.plan).read_text())]
    todo = plan(runs, args.smoke, results_dir)
    todo = todo[args.offset:] + todo[:args.offset]  # start apart: fewer lock collisions
    try:
        outcome = run_in_process(todo, results_dir, smoke=args.smoke, force=args.force,
                                 since=args.since, quiet=True)
    except NormbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(_outcome_to_json(outcome)))
    for rid, why in outcome.failed:
        print(f"failed {rid}: {why}", file=sys.stderr)
    return 130 if outcome.interrupted else 0


# ---------------------------------------------------------------------------------------------
# Ray: the driver claims runs and saves what comes back; tasks only train.


def _ray_task(spec_dict: dict, smoke: bool) -> str:
    from normbench import train

    train.configure_threads(1)  # Ray places one task per CPU it was given
    spec = specs.Spec.model_validate(spec_dict)
    return train.run_one(spec, smoke=smoke, quiet=True).model_dump_json()


def run_on_ray(todo: list[Planned], results_dir: Path, *, smoke: bool, force: bool, since: str,
               address: str | None = None,
               progress: Callable[[int, list[str]], None] | None = None) -> Outcome:
    try:
        import ray
    except ImportError:
        raise NormbenchError("--executor ray needs Ray: pip install 'normbench[ray]'") from None
    outcome = Outcome()
    started_here = not ray.is_initialized()
    if started_here and address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except (OSError, ValueError) as exc:  # Ray itself would wait minutes, then exit
            raise NormbenchError(f"--executor ray: cannot reach Ray at {address}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True,
                     runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
        except (ConnectionError, ValueError, RuntimeError, SystemExit) as exc:
            where = address or "a new local instance"
            raise NormbenchError(f"--executor ray: cannot reach Ray at {where}: "
                                 f"{str(exc).splitlines()[0]}") from None
    task = ray.remote(num_cpus=1)(_ray_task)
    pending, locks = {}, {}
    try:
        for item in todo:
            lock = results.claim(results_dir, item.run_id)
            if lock is None:
                outcome.busy.append(item.run_id)
                continue
            existing = results.finished(results_dir, item.run_id)
            if not _stale(existing, force, since):
                lock.release()
                outcome.skipped += 1
                continue
            locks[item.run_id] = lock
            pending[task.remote(specs.to_dict(item.spec), smoke)] = (item, existing is not None)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            item, replace = pending.pop(ready[0])
            try:
                record = results.RunRecord.model_validate_json(ray.get(ready[0]))
                results.save(record, specs.to_yaml(item.spec), results_dir, replace=replace)
                results.write_summaries(results_dir)
                outcome.ran.append(record)
            except Exception as exc:  # a task's failure arrives here as RayTaskError
                outcome.failed.append((item.run_id, str(exc).strip().splitlines()[-1][:300]))
            finally:
                locks.pop(item.run_id).release()
            if progress:
                progress(len(outcome.ran) + len(outcome.failed), [])
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        outcome.interrupted = True
    finally:
        for lock in locks.values():
            lock.release()
        if started_here:
            ray.shutdown()
    return outcome


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
