"""Slurm: each run a job submitted with submitit (or what NORMBENCH_SUBMITIT_CLUSTER names:
"local" runs the jobs as local processes, which is how the tests exercise this path). Jobs return
records; the driver saves them with the same atomic writer as local runs, so an interrupted
sweep resumes the same way."""

from __future__ import annotations

import os
import shutil
import time

from normbench import spec as specs
from normbench.errors import NormbenchError
from normbench.executors.driver import model_path, train_task
from normbench.executors.engine import Engine, Options


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
    folder = results_dir / "runs" / ".slurm" / "%j"  # each job's logs and pickles
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = dict(timeout_min=options.time_min, cpus_per_task=options.cpus_per_task,
                  mem_gb=options.mem_gb, name="normbench")
    if cluster == "slurm":
        params.update(slurm_array_parallelism=options.array_parallelism)
        if options.partition:
            params.update(slurm_partition=options.partition)
    executor.update_parameters(**params)
    return executor


class SlurmEngine(Engine):
    """At most `array_parallelism` runs claimed and queued at once."""

    name = "slurm"
    title = "sweep (slurm)"
    poll_s = 2.0  # each look asks the cluster (squeue/sacct through submitit)

    def __init__(self, options: Options):
        super().__init__(options)
        self.slurm = options.slurm or specs.SlurmSpec()
        self.executor = submitit_executor(options.results_dir, self.slurm)  # fails before claims
        self.window = self.slurm.array_parallelism

    def submit(self, item):
        model = model_path(self.options.results_dir, item)
        return self.executor.submit(train_task, specs.to_dict(item.spec), self.options.smoke,
                                    None, None if model is None else str(model), item.spec_hash)

    def collect(self, handles, timeout):
        finished = [job for job in handles if job.done()]
        if not finished:
            time.sleep(timeout)
        out = []
        for job in finished:
            try:
                out.append((job, job.result()))
            except Exception as exc:  # the job failed, timed out or was cancelled
                out.append((job, exc))
        return out

    def cancel(self, handles):
        for job in handles:
            job.cancel(check=False)

    def status(self, items):
        return [f"{len(items)} queued or running"] if items else []
