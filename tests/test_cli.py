"""The command line end to end: real smoke runs, compare, and bad input (exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CliRunner

from normbench import __version__
from normbench.cli import app

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
SINGLE = sorted(p for p in CONFIGS.glob("*.yaml") if "sweep:" not in p.read_text())  # not sweeps
NAMES = [p.stem for p in SINGLE]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["validate", str(CONFIGS / "groupnorm.yaml")],
                                  ["norms"], ["compare", "--results", str(ROOT / "tests")]])
def test_light_commands_do_not_import_tensorflow(argv):
    code = ("import sys; from normbench.cli import main; sys.argv = ['normbench'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n"
            "    assert exc.code in (0, None), f'exit code {exc.code}'\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_version_and_module_entry_point():
    assert invoke("--version").stdout.strip() == f"normbench {__version__}"
    proc = subprocess.run([sys.executable, "-m", "normbench", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == f"normbench {__version__}"


def test_validate_all_configs_and_show():
    result = invoke("validate", *sorted(CONFIGS.glob("*.yaml")))
    assert result.exit_code == 0 and result.stdout.count("ok  ") == len(list(CONFIGS.glob("*.yaml")))
    shown = invoke("validate", CONFIGS / "groupnorm.yaml", "-s", "model.norm.epsilon=1e-5", "--show")
    assert "epsilon: 1.0e-05" in shown.stdout


@pytest.mark.parametrize("args,fragment", [
    (["validate", "configs/nope.yaml"], "no such file"),
    (["validate", "configs/groupnorm.yaml", "-s", "model.norm.groups=3"], "3 does not divide the 10 channels"),
    (["run", "configs/groupnorm.yaml", "-s", "train.epoch=3"], "did you mean 'epochs'?"),
    (["run", "configs/groupnorm.yaml", "configs/batchnorm.yaml", "-s", "model.norm.impl=native"],
     "impl 'native' does not exist for norm 'batch'"),
    (["run", "configs/groupnorm.yaml", "-s", "name=../../etc"], "name: use 1-64 letters"),
    (["compare", "--results", "does/not/exist"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "results"
    extra = ["--results", str(out)] if args[0] == "run" else []
    result = invoke(*args, *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing was created before the input was found bad


def test_unwritable_results_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("run", CONFIGS / "groupnorm.yaml", "--smoke", "--results", blocker / "r")
    assert result.exit_code == 2 and "not writable" in result.stderr


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """One real smoke run of every shipped config (mnist-10k, so offline and quick)."""
    out = tmp_path_factory.mktemp("results")
    result = invoke("run", *SINGLE, "-s", "dataset=mnist-10k", "--smoke", "--quiet", "--results", out)
    assert result.exit_code == 0, result.output
    return out, result


@pytest.mark.slow
def test_smoke_run_writes_every_file(smoke_results):
    out, result = smoke_results
    runs = sorted(p for p in (out / "runs").iterdir() if not p.name.startswith("."))  # .claims
    assert len(runs) == len(NAMES)
    for run in runs:
        assert sorted(p.name for p in run.iterdir()) == ["history.csv", "metrics.json", "spec.yaml"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "finished" and metrics["smoke"] is True
        assert metrics["dataset"]["name"] == "mnist-10k" and metrics["dataset"]["n_train"] == 1000
        assert metrics["epochs"] == 1 and "epochs: 1" in (run / "spec.yaml").read_text()
        assert 0.5 < metrics["test_accuracy"] <= 1.0  # 1,000 digits, 1 epoch: well above chance
        assert metrics["steady_samples_per_s"] > 0 and metrics["env"]["tensorflow"]
        expected_impl = {"batch": "keras", "none": "none", "batch_renorm": "keras",
                         "layer_channels": "keras"}.get(metrics["norm_type"], "native")
        if metrics["env"]["tfa"] is None:
            assert metrics["impl_used"] == expected_impl
    assert (out / "summary.csv").read_text().count("\n") == len(NAMES) + 1
    assert "This invocation" in result.stdout


@pytest.mark.slow
def test_seeded_runs_repeat(smoke_results, tmp_path):
    out, _ = smoke_results
    first = json.loads(next((out / "runs").glob("groupnorm-*/metrics.json")).read_text())
    again = invoke("run", CONFIGS / "groupnorm.yaml", "-s", "dataset=mnist-10k", "--smoke", "--quiet",
                   "--results", tmp_path)
    assert again.exit_code == 0
    second = json.loads(next((tmp_path / "runs").glob("groupnorm-*/metrics.json")).read_text())
    assert second["history"][0]["loss"] == pytest.approx(first["history"][0]["loss"], rel=1e-5)
    assert second["test_accuracy"] == pytest.approx(first["test_accuracy"], abs=0.005)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["table", "md", "csv", "json"])
def test_compare_reads_the_runs(smoke_results, fmt):
    out, _ = smoke_results
    before = sorted(p.name for p in out.rglob("*"))
    result = invoke("compare", "--results", out, "--format", fmt)
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert name in result.stdout
    if fmt == "json":
        rows = json.loads(result.stdout)
        assert len(rows) == len(NAMES) and sum(r["best"] for r in rows) == 1
    assert sorted(p.name for p in out.rglob("*")) == before  # compare only reads


@pytest.mark.slow
def test_compare_reports_damaged_runs_and_shows_the_rest(smoke_results, tmp_path):
    out, _ = smoke_results
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = next((copy / "runs").glob("nonorm-*"))
    (victim / "metrics.json").write_text('{"truncated": ')
    result = invoke("compare", "--results", copy, "--format", "csv", "--runs")
    assert result.exit_code == 0
    assert result.stdout.count("\n") == len(NAMES)  # header + the readable runs
    assert f"skipped {victim.name}: invalid metrics.json" in result.stderr


def test_tfa_and_native_side_by_side_where_tfa_runs(tmp_path):
    from normbench import norms

    if not norms.tfa_status()[0]:
        pytest.skip(f"tensorflow-addons unusable: {norms.tfa_status()[1]}")
    for impl in ("auto", "native"):
        result = invoke("run", CONFIGS / "groupnorm.yaml", "-s", "dataset=mnist-10k", "-s",
                        f"model.norm.impl={impl}", "--smoke", "--quiet", "--results", tmp_path)
        assert result.exit_code == 0, result.output
    rows = json.loads(invoke("compare", "--results", tmp_path, "--format", "json").stdout)
    assert sorted(r["impl"] for r in rows) == ["native", "tfa"]  # auto picked tfa, recorded
    accuracies = [r["test_acc_mean"] for r in rows]
    assert abs(accuracies[0] - accuracies[1]) < 0.02  # same model, same seed, same data
