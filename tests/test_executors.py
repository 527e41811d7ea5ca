"""The executor registry and its one driver loop, with engines written in the test: an engine is
one small class, and the loop (claims, saves, failures, Ctrl-C) is the same for all of them."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from normbench import api, cli, executors, grid, store
from normbench.errors import NormbenchError
from normbench.executors import Engine, Options

SPEC = """name: ex
dataset: mnist-10k
model: {norm: {type: group, groups: 2}}
train: {epochs: 1}
seeds: 3
"""


@pytest.fixture
def todo(tmp_path):
    path = tmp_path / "ex.yaml"
    path.write_text(SPEC)
    return executors.plan(grid.load_runs(path), False, tmp_path / "r")


def _record(make_record, item):
    return make_record(run_id=item.run_id, name=item.spec.name, seed=item.spec.train.seed,
                       spec_hash="s" * 64).model_dump_json()


class Threads(Engine):
    """An engine in a dozen lines: each run "trained" on a thread."""

    name, title = "threads", "sweep (threads)"

    def __init__(self, options, train):
        super().__init__(options)
        self.window, self.train = 2, train

    def start(self):
        self.pool = cf.ThreadPoolExecutor(self.window)

    def submit(self, item):
        return self.pool.submit(self.train, item)

    def collect(self, handles, timeout):
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return [(f, f.exception() or f.result()) for f in done]

    def close(self):
        self.pool.shutdown()


def test_every_registered_engine_is_a_choice_of_run_and_of_the_api(tmp_path):
    assert [e.value for e in cli.Executor] == list(executors.ENGINES)
    with pytest.raises(NormbenchError, match="choose local, ray, slurm"):
        api.run({"name": "x"}, results=tmp_path, executor="dask")
    with pytest.raises(NormbenchError, match="choose local, ray, slurm"):
        executors.engine("dask", Options(tmp_path, False))
    assert type(executors.engine("local", Options(tmp_path, False, jobs=1))).__name__ == "InProcess"
    assert type(executors.engine("local", Options(tmp_path, False, jobs=2))).__name__ == "LocalPool"


def test_a_new_engine_is_one_class_and_the_driver_saves_what_it_returns(todo, tmp_path, make_record):
    results = tmp_path / "r"
    failing = todo[1].run_id

    def train(item):
        if item.run_id == failing:
            raise RuntimeError("simulated: the node went away")
        return _record(make_record, item)

    driver = executors.Driver(results, False, executors.now(), False)
    outcome = driver.drive(Threads(Options(results, False), train), todo)
    assert sorted(r.run_id for r in outcome.ran) == sorted(p.run_id for p in todo if p.run_id != failing)
    assert outcome.failed == [(failing, "RuntimeError: simulated: the node went away")]
    again = executors.plan([p.spec for p in todo], False, results)
    assert [p.done for p in again] == [p.run_id != failing for p in todo]
    assert all(store.claim(results, p.run_id) is not None for p in todo)  # every claim released


def test_a_submission_that_raises_releases_its_claim(todo, tmp_path):
    results = tmp_path / "r"

    class Broken(Threads):
        def submit(self, item):
            raise NormbenchError("the cluster refused the job")

    driver = executors.Driver(results, False, executors.now(), False)
    with pytest.raises(NormbenchError, match="refused"):
        driver.drive(Broken(Options(results, False), None), todo)
    lock = store.claim(results, todo[-1].run_id)  # the first handed out, claimed, then released
    assert lock is not None
    lock.release()


def test_ctrl_c_while_waiting_cancels_the_engine_and_counts_what_did_not_run(todo, tmp_path,
                                                                            make_record):
    results, cancelled = tmp_path / "r", []

    class Interrupted(Threads):
        def collect(self, handles, timeout):
            raise KeyboardInterrupt

        def cancel(self, handles):
            cancelled.extend(handles)

    driver = executors.Driver(results, False, executors.now(), False)
    outcome = driver.drive(Interrupted(Options(results, False), lambda item: _record(make_record, item)),
                           todo)
    assert outcome.interrupted and outcome.not_started == 3 and len(cancelled) == 2
    assert all(store.claim(results, p.run_id) is not None for p in todo)


def test_a_signal_another_thread_receives_waits_for_the_held_block_to_end():
    """Ctrl-C sent to the process while a run is being saved: the kernel may hand it to any
    thread (the pool's manager thread), Python runs the handler on the main thread; the save
    and its count finish first, and the interrupt comes right after the block."""
    import os
    import signal
    import threading
    import time

    from normbench.executors.signals import signals_held

    stop = threading.Event()
    helper = threading.Thread(target=stop.wait, daemon=True)  # a thread that takes signals
    helper.start()
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.3)  # a handler run here would interrupt the "save"
                done.append("saved and counted")
    finally:
        stop.set()
    assert done == ["saved and counted"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _Job:
    """What the Slurm engine reads of a submitit job: its id, its result file, scancel."""

    def __init__(self, tmp_path, job_id="7"):
        self.job_id = job_id
        self.paths = type("P", (), {"result_pickle": tmp_path / f"{job_id}_result.pkl"})()
        self.cancelled = False

    def cancel(self, check=True):
        self.cancelled = True


def _slurm_engine(tmp_path, **slurm):
    from normbench import spec as specs
    from normbench.executors.slurm_engine import SlurmEngine

    engine = SlurmEngine.__new__(SlurmEngine)  # no cluster: only the judging is under test
    Engine.__init__(engine, Options(tmp_path, smoke=True))
    engine.slurm, engine.real, engine.watching = specs.SlurmSpec(**slurm), True, {}
    engine.jobs_dir = tmp_path / "jobs"
    return engine


def test_slurm_judges_each_job_from_the_queue_without_accounting(tmp_path, monkeypatch):
    """The verdicts the Slurm engine draws from squeue's (state, reason): a job that can never
    start stops the sweep (NormbenchError), one pending on unavailable nodes is given up after
    slurm.unavailable_min, one that ended or left the queue without a result is lost after a
    grace, a live one is waited for."""
    from normbench.executors import slurm_engine as se

    clock = [1000.0]
    monkeypatch.setattr(se.time, "monotonic", lambda: clock[0])
    engine = _slurm_engine(tmp_path, unavailable_min=1.0)
    never = _Job(tmp_path, "1")
    verdict = engine._judge(never, ("PENDING", "PartitionConfig"))
    assert isinstance(verdict, NormbenchError) and "can never start" in str(verdict) and never.cancelled
    live = _Job(tmp_path, "2")
    assert engine._judge(live, ("RUNNING", "None")) is None
    assert engine._judge(live, ("PENDING", "Priority")) is None and not live.cancelled
    drained = _Job(tmp_path, "3")
    reason = "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"
    assert engine._judge(drained, ("PENDING", reason)) is None
    clock[0] += 59
    assert engine._judge(drained, ("PENDING", reason)) is None and not drained.cancelled
    clock[0] += 2
    lost = engine._judge(drained, ("PENDING", reason))
    assert isinstance(lost, se.JobLost) and "unschedulable: pending 61 s" in str(lost) and drained.cancelled
    for state, said, grace in ((("CANCELLED", "None"), "ended CANCELLED without a result", se.GRACE_S),
                               (None, "left the queue", se.GRACE_DONE_S)):
        job = _Job(tmp_path, "4" if state else "5")
        assert engine._judge(job, state) is None  # a result may still be on its way
        clock[0] += grace / 2
        assert engine._judge(job, state) is None
        clock[0] += grace
        verdict = engine._judge(job, state)
        assert isinstance(verdict, se.JobLost) and said in str(verdict)
    done = _Job(tmp_path, "6")
    done.paths.result_pickle.write_bytes(b"")
    assert engine._judge(done, ("COMPLETED", "None")) is None  # collect reads its result
