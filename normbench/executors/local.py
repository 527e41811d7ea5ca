"""Engines on this machine: one run after another in this process, or a pool of spawned worker
processes (concurrent.futures; spawned, so no TensorFlow state is forked), one core share each."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys

from normbench import spec as specs
from normbench.executors.driver import model_path, status_path, train_task
from normbench.executors.engine import Engine, Options, RunLost

WORKER_MEMORY = 600 << 20  # a TensorFlow worker's resident memory with the data (measured ~440 MiB)


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_count(jobs: int, runs: int) -> tuple[int, str | None]:
    """How many workers to start: at most `jobs`, the number of runs, and what memory allows;
    with the reason when fewer than asked."""
    n, why = min(jobs, runs), None
    if n < jobs:
        why = f"{runs} run(s) to do"
    memory = available_memory()
    if memory is not None and memory // WORKER_MEMORY < n:
        n = max(1, memory // WORKER_MEMORY)
        why = f"{memory >> 20} MiB of memory available, ~{WORKER_MEMORY >> 20} MiB per worker"
    return n, why


class InProcess(Engine):
    """Each run trained here, when it is submitted: the simplest engine, and `-j 1`'s."""

    name = "process"
    title = ""  # a line per run (options.announce), no bar

    def submit(self, item):
        from normbench import train  # imports TensorFlow

        if self.options.announce:
            self.options.announce(item)
        future: cf.Future = cf.Future()
        try:
            future.set_result(train.run_one(
                item.spec, smoke=self.options.smoke, quiet=self.options.quiet,
                status_path=status_path(self.options.results_dir, item.run_id),
                model_path=model_path(self.options.results_dir, item), planned_hash=item.spec_hash))
        except Exception as exc:  # one broken run must not stop the sweep (the driver decides)
            future.set_exception(exc)
        return future

    def collect(self, handles, timeout):
        return [(f, f.exception() or f.result()) for f in handles]


def pin_worker(worker: int, jobs: int) -> int:
    """Pin worker `worker` of `jobs` to its own share of this process's cores; returns how many
    it got. Unpinned, two TensorFlow processes on 2 cores slowed each other down 1.5x (idle
    pool threads spin on the other's core); pinned, 1.03x (normbench bench workers)."""
    if not hasattr(os, "sched_getaffinity"):
        return max(1, (os.cpu_count() or 1) // jobs)
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // jobs)
    if 1 < jobs <= len(cores):
        os.sched_setaffinity(0, cores[worker * share:(worker + 1) * share])
    return share


def _die_with_parent(parent: int) -> None:
    """Make the kernel kill this worker when the driver dies (kill -9 included), so orphans
    never go on with a sweep nobody saves."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the driver died before prctl took effect
        os._exit(1)


def _init_worker(parent: int, counter, jobs: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops workers; Ctrl-C reaches all
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    cores = pin_worker(index % jobs, jobs)  # before TensorFlow starts its thread pools
    from normbench import train

    train.configure_threads(cores)


class LocalPool(Engine):
    """`jobs` spawned worker processes, each pinned to its share of the cores."""

    name = "local"
    title = "sweep (local, {jobs} workers)"

    def __init__(self, options: Options):
        super().__init__(options)
        self.window = options.jobs
        self.pool: cf.ProcessPoolExecutor | None = None

    def start(self):
        ctx = multiprocessing.get_context("spawn")
        self.pool = cf.ProcessPoolExecutor(
            max_workers=self.window, mp_context=ctx, initializer=_init_worker,
            initargs=(os.getpid(), ctx.Value("i", 0), self.window))

    def submit(self, item):
        model = model_path(self.options.results_dir, item)
        return self.pool.submit(train_task, specs.to_dict(item.spec), self.options.smoke,
                                str(status_path(self.options.results_dir, item.run_id)),
                                None if model is None else str(model), item.spec_hash)

    def collect(self, handles, timeout):
        finished, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out = []
        for future in finished:
            exc = future.exception()
            if isinstance(exc, cf.process.BrokenProcessPool):
                exc = RunLost(f"its worker process died ({exc})")
            out.append((future, exc or future.result()))
        return out

    def describe_failure(self, exc):
        return str(exc) if isinstance(exc, RunLost) else super().describe_failure(exc)

    def status(self, items):
        """What each worker is doing ('epoch 2/3'), from the status file it keeps for its run."""
        lines = []
        for item in items:
            try:
                lines.append(f"{item.run_id}: "
                             f"{status_path(self.options.results_dir, item.run_id).read_text()}")
            except OSError:
                lines.append(f"{item.run_id}: starting")
        return lines

    def close(self):
        """Shut the pool down now: queued work is cancelled and running workers are killed (they
        write nothing into the results directory, so killing them loses only unsaved training)."""
        if self.pool is None:
            return
        processes = list(getattr(self.pool, "_processes", {}).values())  # where concurrent.futures keeps them
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout=10)
