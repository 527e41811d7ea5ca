"""--save-model / train.save_model: model.keras in the run directory, written with the record;
it loads with normbench.layers.load_model and predicts what the run evaluated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_saved_models_predict_what_the_runs_evaluated(tmp_path, jobs):
    from normbench import data, evaluate as evaluation, layers

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndataset: mnist-10k\nsweep:\n"
                    "  - {model.norm.type: [batch], model.norm.eval_stats: [precise], "
                    "model.norm.precise_samples: [256], model.norm.momentum: [0.9]}\n"
                    "  - {model.norm.type: [group]}\n")
    done = cli("run", spec, "--smoke", "-q", "--save-model", "-j", jobs, "--results", tmp_path / "r")
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(cli("compare", "--results", tmp_path / "r", "--runs", "-f", "json").stdout)
    assert len(runs) == 2 and all(r["model"] == "model.keras" for r in runs)
    ds = data.load("mnist-10k", smoke=True)
    for r in runs:
        folder = tmp_path / "r" / "runs" / r["run_id"]
        assert sorted(p.name for p in folder.iterdir()) == ["history.csv", "metrics.json",
                                                            "model.keras", "spec.yaml"]
        model = layers.load_model(folder / "model.keras")
        got = evaluation.evaluate(model, ds.x_test, ds.y_test)
        assert got["accuracy"] == pytest.approx(r["test_accuracy"], abs=1e-6), r["norm"]
    assert not list((tmp_path / "r" / "runs" / ".claims").glob("*.keras"))  # nothing left behind


def test_save_model_is_not_part_of_the_run_id(tmp_path):
    spec = ROOT / "configs" / "groupnorm.yaml"
    plain = cli("run", spec, "--dry-run", "--results", tmp_path)
    saving = cli("run", spec, "--dry-run", "--save-model", "--results", tmp_path)
    ids = [line.split()[0] for line in plain.stdout.splitlines() if line.strip().startswith("groupnorm-")]
    assert ids and ids == [line.split()[0] for line in saving.stdout.splitlines()
                           if line.strip().startswith("groupnorm-")]
