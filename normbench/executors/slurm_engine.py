"""Slurm: each run a job submitted with submitit (or what NORMBENCH_SUBMITIT_CLUSTER names:
"local" runs the jobs as local processes). Jobs return records; the driver saves them with the
same atomic writer as local runs, so an interrupted sweep resumes the same way.

What a job is doing is read from the queue itself (`squeue --states=all`, one call per look for
every job in flight), never from accounting: on a cluster without slurmdbd `sacct` fails, and a
job cancelled there would be waited for forever. A job that ends without a result (scancel, its
node failed) is reported as not done within `GRACE_S` of leaving the running states; a job held
for a reason no wait can cure (more CPUs, memory or time than any node or the partition allows)
stops the sweep with one error line; a job pending only because its nodes are down or drained is
given up after `slurm.unavailable_min`. Jobs are submitted with --no-requeue: a run whose node
fails is reported, and the next `normbench run` trains it again.

Each job's id is kept in `RESULTS/runs/.slurm/jobs/<run_id>` until its record is saved. A driver
stopped by Ctrl-C or SIGTERM cancels its jobs; a driver killed outright (SIGKILL, a lost login
node) cannot, so the next `run` adopts the jobs still queued or running (or finished, with their
result) instead of submitting them again: no run trains twice, and the driver that saves it is
the one holding its claim.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbench import spec as specs
from normbench import store
from normbench.errors import NormbenchError
from normbench.executors.driver import model_path, train_task
from normbench.executors.engine import Engine, Options

# squeue's states of a job that may still produce a result
ALIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                   "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED"})
# pending reasons that no wait cures: the job asks for more than the partition or any node has
NEVER = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
         "InvalidAccount", "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxMemoryPerJob",
         "QOSMaxWallDurationPerJobLimit", "AssocMaxCpuPerJobLimit", "AssocMaxWallDurationPerJobLimit")
# pending reasons that last while nodes are down or drained (a person may bring them back)
UNAVAILABLE = ("ReqNodeNotAvail", "NodeDown", "PartitionDown", "PartitionInactive",
               "Nodes required for job are DOWN")
GRACE_S = 5.0  # a job out of the running states has this long to leave its result
GRACE_DONE_S = 30.0  # ... or, when it says it completed, this long (a slow shared file system)
DONE_WAIT_S = 60.0  # a job whose result is written counts as finished after this, listed or not
LOOK_S = 2.0  # the queue is read at most this often
SQUEUE_TIMEOUT_S = 30.0


def submitit_executor(results_dir, options: specs.SlurmSpec):
    """A submitit executor for the runs, with the spec's (or the CLI's) `slurm:` options."""
    try:
        import submitit
    except ImportError:
        raise NormbenchError("--executor slurm needs submitit: pip install 'normbench[slurm]'") from None
    cluster = os.environ.get("NORMBENCH_SUBMITIT_CLUSTER") or "slurm"
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise NormbenchError("--executor slurm: no Slurm here (sbatch is not on PATH); run from a "
                             "Slurm login node")
    executor = submitit.AutoExecutor(folder=job_folder(results_dir), cluster=cluster)
    params = dict(timeout_min=options.time_min, cpus_per_task=options.cpus_per_task,
                  mem_gb=options.mem_gb, name="normbench")
    if cluster == "slurm":
        params.update(slurm_array_parallelism=options.array_parallelism,
                      slurm_additional_parameters={"no_requeue": True})
        if options.partition:
            params.update(slurm_partition=options.partition)
    executor.update_parameters(**params)
    return executor


def job_folder(results_dir: Path) -> Path:
    """Where each job's logs and pickles go (submitit replaces %j with the job id)."""
    return Path(results_dir) / "runs" / ".slurm" / "%j"


def queue(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, reason)} for the jobs the queue still lists, finished ones included for
    the cluster's MinJobAge; None when squeue itself fails (the cluster unreachable)."""
    if not job_ids:
        return {}
    try:
        done = subprocess.run(["squeue", "--noheader", "--states=all", "--jobs", ",".join(job_ids),
                               "--format=%i|%T|%r"], capture_output=True, text=True,
                              timeout=SQUEUE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        # every id unknown to the controller (long finished, or another cluster's)
        return {} if "Invalid job id" in done.stderr else None
    out = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


def sbatch_error(exc: BaseException) -> str:
    """The first line of sbatch's output that says why it refused a job."""
    lines = [line.strip() for line in str(exc).splitlines() if "error" in line.lower()]
    said = [line for line in lines if line.startswith("sbatch:")] or lines or [str(exc)]
    return said[0].removeprefix("sbatch: error: ")[:300]


class JobLost(RuntimeError):
    """A job ended or was given up without a result: its run stays to do."""


@dataclass
class Watch:
    """What the engine has seen of one job."""

    run_id: str
    adopted: bool = False
    unavailable_since: float | None = None
    ended_since: float | None = None
    done_since: float | None = None  # its result written
    state: str = "PENDING"
    reason: str = ""


class SlurmEngine(Engine):
    """At most `array_parallelism` runs claimed and queued or running at once."""

    name = "slurm"
    title = "sweep (slurm)"
    poll_s = LOOK_S

    def __init__(self, options: Options):
        super().__init__(options)
        self.slurm = options.slurm or specs.SlurmSpec()
        self.executor = submitit_executor(options.results_dir, self.slurm)  # fails before claims
        self.window = self.slurm.array_parallelism
        self.real = (os.environ.get("NORMBENCH_SUBMITIT_CLUSTER") or "slurm") == "slurm"
        self.jobs_dir = Path(options.results_dir) / "runs" / ".slurm" / "jobs"
        self.watching: dict[Any, Watch] = {}
        self.last_look = 0.0

    # --- submitting and adopting -------------------------------------------------------------

    def submit(self, item):
        job = self.adopt(item.run_id) if self.real else None
        if job is not None:
            self.watching[job] = Watch(item.run_id, adopted=True)
            return job
        from submitit.core.utils import UncompletedJobError  # FailedJobError: sbatch refused

        model = model_path(self.options.results_dir, item)
        try:
            # submitit prints sbatch's complaint to stderr before raising it: said once, below
            with contextlib.redirect_stderr(io.StringIO()):
                job = self.executor.submit(train_task, specs.to_dict(item.spec), self.options.smoke,
                                           None, None if model is None else str(model),
                                           item.spec_hash)
        except (UncompletedJobError, subprocess.SubprocessError, OSError) as exc:
            if not self.real:  # sbatch refused: a missing partition, a limit it enforces
                raise
            raise NormbenchError(f"--executor slurm: sbatch refused the job: {sbatch_error(exc)}"
                                 ) from None
        if self.real:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            store.write_atomic(self.jobs_dir / item.run_id, f"{job.job_id}\n")
        self.watching[job] = Watch(item.run_id)
        return job

    def adopt(self, run_id: str):
        """The job an earlier driver submitted for `run_id`, if it is still queued, running or
        finished with its result; else None (and its note removed)."""
        note = self.jobs_dir / run_id
        try:
            job_id = note.read_text().strip()
        except OSError:
            return None
        from submitit.slurm.slurm import SlurmJob

        if re.fullmatch(r"\d+", job_id):
            job = SlurmJob(folder=job_folder(self.options.results_dir), job_id=job_id)
            if job.paths.result_pickle.exists():
                return job
            states = queue([job_id])
            if states is None:  # never submit twice on a guess
                raise NormbenchError(f"--executor slurm: squeue does not answer, so whether job "
                                     f"{job_id} (submitted earlier for {run_id}) still runs is "
                                     "unknown; run again when the cluster answers")
            entry = states.get(job_id)
            if entry is not None and entry[0] in ALIVE:
                return job
        note.unlink(missing_ok=True)
        return None

    # --- watching ----------------------------------------------------------------------------

    def collect(self, handles, timeout):
        out = []
        if not self.real:  # submitit's local executor: its own watcher
            out = [(job, self._result(job)) for job in handles if job.done()]
        elif time.monotonic() - self.last_look >= LOOK_S:
            self.last_look = now = time.monotonic()
            states = queue([job.job_id for job in handles])
            for job in handles:
                watch = self.watching.setdefault(job, Watch(""))
                entry = None if states is None else states.get(job.job_id)
                if job.paths.result_pickle.exists():
                    # the run is done; its job counts against the window until the cluster no
                    # longer holds it (squeue shows at most `array_parallelism` jobs)
                    watch.done_since = watch.done_since or now
                    if (states is not None and (entry is None or entry[0] not in ALIVE)) \
                            or now - watch.done_since > DONE_WAIT_S:
                        out.append((job, self._result(job)))
                elif states is not None:
                    verdict = self._judge(job, entry)
                    if verdict is not None:
                        out.append((job, verdict))
        if not out:
            time.sleep(timeout)
        for job, _ in out:
            watch = self.watching.pop(job, None)
            if watch is not None and self.real:
                (self.jobs_dir / watch.run_id).unlink(missing_ok=True)
        return out

    def _result(self, job):
        try:
            return job.result()
        except Exception as exc:  # the job failed, timed out or was cancelled
            return exc

    def _judge(self, job, entry: tuple[str, str] | None) -> BaseException | None:
        """None while the job may still bring its result; else what to report for it."""
        watch = self.watching.setdefault(job, Watch(""))
        now = time.monotonic()
        state, reason = entry if entry is not None else ("GONE", "")
        watch.state, watch.reason = state, reason
        if state in ALIVE:
            watch.ended_since = None
            if state == "PENDING" and reason.startswith(NEVER):
                job.cancel(check=False)
                return NormbenchError(
                    f"--executor slurm: job {job.job_id} can never start: Slurm holds it for "
                    f"{reason} (it asks for more CPUs, memory or time than the partition or any "
                    f"of its nodes has: compare --slurm-cpus {self.slurm.cpus_per_task}, "
                    f"--slurm-mem-gb {self.slurm.mem_gb:g}, --slurm-time {self.slurm.time_min} "
                    "with `sinfo -o '%P %c %m %l'`)")
            if state == "PENDING" and reason.startswith(UNAVAILABLE):
                watch.unavailable_since = watch.unavailable_since or now
                waited = now - watch.unavailable_since
                if waited >= 60 * self.slurm.unavailable_min:
                    job.cancel(check=False)
                    return JobLost(f"Slurm job {job.job_id} is unschedulable: pending {waited:.0f} s "
                                   f"because its nodes are unavailable ({reason}); cancelled, the "
                                   "run stays to do")
            else:
                watch.unavailable_since = None
            return None
        if job.paths.result_pickle.exists():
            return None  # taken at the next look
        watch.ended_since = watch.ended_since or now
        if now - watch.ended_since < (GRACE_DONE_S if state in ("COMPLETED", "GONE") else GRACE_S):
            return None
        if state == "GONE":
            return JobLost(f"Slurm job {job.job_id} left the queue without a result (cancelled, "
                           "or its node failed); the run stays to do")
        return JobLost(f"Slurm job {job.job_id} ended {state}"
                       + (f" ({reason})" if reason and reason != "None" else "")
                       + " without a result; the run stays to do")

    # --- stopping ----------------------------------------------------------------------------

    def cancel(self, handles):
        for job in handles:
            job.cancel(check=False)
            watch = self.watching.pop(job, None)
            if watch is not None and self.real:
                (self.jobs_dir / watch.run_id).unlink(missing_ok=True)

    def close(self):
        # an error stopped the sweep (a job that can never start, a refused submission): the
        # jobs still in flight are cancelled, not left to train runs nobody will save
        self.cancel(list(self.watching))

    def describe_failure(self, exc):
        if isinstance(exc, JobLost):
            return str(exc)[:300]
        return super().describe_failure(exc)

    def status(self, items):
        if not items:
            return []
        adopted = sum(w.adopted for w in self.watching.values())
        counts: dict[str, int] = {}
        for watch in self.watching.values():
            counts[watch.state.lower()] = counts.get(watch.state.lower(), 0) + 1
        text = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return [text + (f" ({adopted} adopted from an earlier run)" if adopted else "")]
