"""The Python API: normbench.run and normbench.load_results, as a notebook or CI script uses them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import normbench
from normbench.errors import NormbenchError

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"name": "api", "dataset": "mnist-10k",
        "model": {"norm": {"type": "group", "groups": 5}}, "train": {"epochs": 1}}


def test_importing_normbench_does_not_import_tensorflow():
    done = subprocess.run([sys.executable, "-c", "import sys, normbench; normbench.run; "
                           "normbench.load_results; print('tensorflow' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_public_names():
    assert set(normbench.__all__) >= {"run", "load_results", "NormbenchError"}
    for name in normbench.__all__:
        assert getattr(normbench, name) is not None
    with pytest.raises(AttributeError):
        normbench.nope  # noqa: B018


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    records = normbench.run(SPEC, sweep={"train.batch_size": [16, 64]}, overrides={"seeds": 2},
                            results=out, smoke=True)
    return out, records


@pytest.mark.slow
def test_run_trains_a_dict_spec_with_a_sweep_and_resumes(results):
    out, records = results
    assert len(records) == 4 and {r.batch_size for r in records} == {16, 64}
    assert {r.seed for r in records} == {0, 1} and all(r.status == "finished" for r in records)
    assert all(r.smoke and r.name == "api" for r in records)
    stamps = {r.run_id: r.finished for r in records}
    again = normbench.run(SPEC, sweep={"train.batch_size": [16, 64]}, overrides={"seeds": 2},
                          results=out, smoke=True)  # finished: nothing trains again
    assert {r.run_id: r.finished for r in again} == stamps

    # the CLI, given the same spec as a file, finds the same runs finished
    import yaml

    path = out / "api.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    cli = subprocess.run([sys.executable, "-m", "normbench", "run", str(path), "--smoke", "--dry-run",
                          "--sweep", "train.batch_size=16,64", "-s", "seeds=2", "--results", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "4 run(s): 0 to run, 4 finished" in cli.stdout, cli.stdout
    assert all(rid in cli.stdout for rid in stamps)


def test_a_spec_file_and_a_spec_object_give_the_cli_run_ids(tmp_path):
    from normbench import grid, identity, store

    path = ROOT / "configs" / "groupnorm.yaml"
    (one,) = grid.load_runs(path)
    from normbench import api

    for given in (path, str(path), one, one.model_dump(mode="json")):
        (g,) = api.grids_of(given)
        assert [store.run_id(s.name, identity.spec_hash(s), False) for s in g.runs] == \
            [store.run_id(one.name, identity.spec_hash(one), False)]


def test_bad_input_raises_normbench_error_not_system_exit(tmp_path):
    with pytest.raises(NormbenchError, match="model.norm.groups"):
        normbench.run({**SPEC, "model": {"norm": {"type": "group", "groups": 3}}}, results=tmp_path)
    with pytest.raises(NormbenchError, match="did you mean 'epochs'"):
        normbench.run(SPEC, overrides={"train.epohcs": 2}, results=tmp_path)
    with pytest.raises(NormbenchError, match="non-empty list"):
        normbench.run(SPEC, sweep={"train.batch_size": 8}, results=tmp_path)
    with pytest.raises(NormbenchError, match="jobs"):
        normbench.run(SPEC, jobs=0, results=tmp_path)
    with pytest.raises(NormbenchError):
        normbench.run(tmp_path / "missing.yaml", results=tmp_path)
    with pytest.raises(NormbenchError, match="expected a path, a dict"):
        normbench.run(42, results=tmp_path)
    from normbench import api

    with pytest.raises(NormbenchError, match="not found"):
        api.results_rows(tmp_path / "nothing")


@pytest.mark.slow
def test_load_results_grouped_and_per_run(results):
    pytest.importorskip("pandas")
    out, records = results
    grouped = normbench.load_results(out)
    assert len(grouped) == 2 and set(grouped["runs"]) == {2}
    assert {"test_acc_mean", "test_acc_ci95", "config"} <= set(grouped.columns)
    per_run = normbench.load_results(out, runs=True)
    assert len(per_run) == 4
    assert {"model.norm.type", "train.batch_size", "train.seed", "test_accuracy",
            "env.tensorflow", "has_model"} <= set(per_run.columns)
    assert sorted(per_run["test_accuracy"]) == sorted(r.test_accuracy for r in records)
    small = normbench.load_results(out, runs=True, where={"train.batch_size": 16})
    assert list(small["train.batch_size"]) == [16, 16]
    assert len(normbench.load_results(out, where=["train.batch_size=64"])) == 1


@pytest.mark.slow
def test_load_results_without_pandas_names_the_extra(results, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"normbench\[pandas\]"):
        normbench.load_results(results[0])


@pytest.mark.slow
def test_records_carry_provenance(tmp_path):
    """A spec file inside a git repository: its commit and dirty flag; installed packages."""
    import shutil

    repo = tmp_path / "repo"
    repo.mkdir()
    spec = repo / "s.yaml"
    shutil.copy(ROOT / "configs" / "groupnorm.yaml", spec)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a],  # noqa: E731
                                    cwd=repo, check=True, capture_output=True)
    git("init", "-q")
    git("add", "s.yaml")
    git("commit", "-qm", "spec")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True).stdout.strip()
    (record,) = normbench.run(spec, overrides={"dataset": "mnist-10k"}, results=tmp_path / "r",
                              smoke=True)
    p = record.provenance
    assert p.git_commit == commit and p.git_dirty is False and p.spec_file == str(spec.resolve())
    assert any(line.startswith("tensorflow") for line in p.packages) and len(p.packages_sha256) == 64
    (from_dict,) = normbench.run({**SPEC, "name": "nofile"}, results=tmp_path / "r", smoke=True)
    assert from_dict.provenance.spec_file is None and from_dict.provenance.git_commit is None


@pytest.mark.slow
def test_run_stops_on_sigterm_only_while_it_runs_and_restores_the_handler(tmp_path, monkeypatch):
    import signal

    from normbench.executors import signals

    seen = []
    real = signals.stop_on_sigterm
    monkeypatch.setattr(signals, "stop_on_sigterm",
                        lambda: (real(), seen.append(signal.getsignal(signal.SIGTERM))))
    before = signal.getsignal(signal.SIGTERM)
    normbench.run({**SPEC, "name": "sigterm"}, results=tmp_path, smoke=True)
    assert len(seen) == 1 and seen[0] is not before  # installed for the sweep ...
    assert signal.getsignal(signal.SIGTERM) is before  # ... and the caller's handler is back


@pytest.mark.slow
def test_run_from_a_worker_thread_leaves_signals_alone(tmp_path):
    import threading

    found = {}

    def call():
        try:
            found["records"] = normbench.run({**SPEC, "name": "thread"}, results=tmp_path, smoke=True)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            found["error"] = exc

    worker = threading.Thread(target=call)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive() and "error" not in found, found.get("error")
    assert len(found["records"]) == 1


def test_bad_argument_types_are_normbench_errors_in_a_fresh_process(tmp_path):
    """Each raised a TypeError or AttributeError from deep inside before (issue 27, item 7);
    none may create the results directory."""
    import subprocess
    import sys

    (tmp_path / "s.yaml").write_text("name: s\ndataset: mnist-10k\n")
    script = """
import sys, normbench
calls = {
    "overrides": lambda: normbench.run("s.yaml", overrides=5, results="out"),
    "sweep": lambda: normbench.run("s.yaml", sweep=[1], results="out"),
    "sweep values": lambda: normbench.run("s.yaml", sweep={"train.batch_size": 3}, results="out"),
    "results": lambda: normbench.run("s.yaml", results=5),
    "smoke": lambda: normbench.run("s.yaml", smoke="yes", results="out"),
    "executor": lambda: normbench.run("s.yaml", executor="bogus", results="out"),
    "tensorboard file": lambda: normbench.run("s.yaml", tensorboard="s.yaml", smoke=True,
                                              results="out"),
    "load_results": lambda: normbench.load_results(5),
    "where": lambda: normbench.load_results(".", where=5),
}
for name, call in calls.items():
    try:
        call()
        print(name, "no error")
    except normbench.NormbenchError as exc:
        print(name, "NormbenchError")
    except BaseException as exc:
        print(name, type(exc).__name__, exc)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 9 and all(line.endswith(" NormbenchError") for line in lines), done.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_where_matches_numbers_by_value_and_runs_refuses_by(tmp_path):
    import subprocess
    import sys

    from normbench.bench.cli import fake_records

    fake_records(tmp_path, 4)  # learning rate 0.001 stored as a float
    run = lambda *a: subprocess.run([sys.executable, "-m", "normbench", *a, "--results",  # noqa: E731
                                     str(tmp_path)], capture_output=True, text=True, timeout=300)
    for value in ("0.001", "1e-3", "0.0010"):
        done = run("compare", "--runs", "-f", "json", "--where", f"train.learning_rate={value}")
        assert done.returncode == 0 and done.stdout.count('"run_id"') == 4, (value, done.stderr)
    done = run("compare", "--runs", "--by", "train.batch_size")
    assert done.returncode == 2 and "drop --runs" in done.stderr
