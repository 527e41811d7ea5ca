"""Shared fixtures: synthetic run records for the results tests."""

from __future__ import annotations

import os

import pytest

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 (TF >= 2.15 prints
# "oneDNN custom operations are on"); without them a channels_first Conv2D cannot run on CPU at
# all (the tfa-era functional model of test_legacy_models). On, everywhere: the suite sees the same
# kernels on every machine CI lands on (an AMD EPYC without AVX-512 had them off).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from normbench.store import RunRecord


def spec_from_yaml(tmp_path, text: str):
    """The one spec of `text` (after a name and mnist-10k), loaded as a spec file is."""
    from normbench import grid

    path = tmp_path / "s.yaml"
    path.write_text("name: s\ndataset: mnist-10k\n" + text)
    return grid.load(path)


def record(**fields) -> RunRecord:
    base = dict(
        run_id="gn-0123456789ab", name="gn", status="finished", spec_hash="s" * 64,
        config_hash="c" * 64, smoke=False,
        dataset={"requested": "mnist-10k", "name": "mnist-10k", "n_train": 8000, "n_test": 2000,
                 "sha256": "x", "source": "embedded", "warning": None},
        norm_type="group", norm_groups=5, impl_requested="auto", impl_used="native", params=866818,
        epochs=2, batch_size=32, seed=0, test_accuracy=0.9, test_loss=0.3, train_accuracy=0.92,
        train_loss=0.25, epoch_times_s=[3.0, 2.0], first_epoch_s=3.0, steady_epoch_s=2.0,
        steady_samples_per_s=4000.0, steady_basis="epochs 2-2", total_s=6.0,
        started="2026-01-01T00:00:00+00:00", finished="2026-01-01T00:00:06+00:00",
        env={"tensorflow": "2.21.0", "keras": "3.15.1"},
        history=[{"epoch": 1, "loss": 0.5, "accuracy": 0.85, "time_s": 3.0},
                 {"epoch": 2, "loss": 0.25, "accuracy": 0.92, "time_s": 2.0}])
    base.update(fields)
    return RunRecord(**base)


@pytest.fixture
def make_record():
    return record


def pytest_sessionfinish(session, exitstatus):
    """The engine tests (tests/engines.py) stop every daemon they start; checked here, at the
    end of the session: one still alive is killed and fails the run."""
    import sys

    engines = sys.modules.get("engines")
    if engines is None:
        return
    left = [(what, pid) for what, pid in engines.STARTED if engines.alive(pid)]
    for _, pid in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    if left:
        print(f"\nengine daemons still alive at the end of the session (killed now): {left}")
        session.exitstatus = 1


def CliRunner():  # noqa: N802 - stands in for the class
    """typer's CliRunner with stdout and stderr apart: click >= 8.2 always separates them; 8.1
    (the floor the legacy stack tests) needs mix_stderr=False."""
    from typer.testing import CliRunner as Runner

    try:
        return Runner(mix_stderr=False)
    except TypeError:
        return Runner()
