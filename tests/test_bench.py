"""Benchmark commands: they run, measure what they say, and write JSON (timings are reported,
never asserted: machines are noisy)."""

from __future__ import annotations

import json

import pytest

import tensorflow  # noqa: E402,F401 - a hard dependency: an import failure must fail

from conftest import CliRunner  # noqa: E402

from normbench import data, grid, norms  # noqa: E402
from normbench.bench import cli as bench_cli, layers as bench_layers, memory, startup  # noqa: E402
from normbench.bench import train as bench_train  # noqa: E402
from normbench.bench.common import CONFIGS  # noqa: E402
from normbench.cli import app  # noqa: E402
from normbench.models import build_model  # noqa: E402

runner = CliRunner()


def test_flops_per_sample_of_the_tutorial_model_by_hand():
    spec = grid.load(CONFIGS / "groupnorm.yaml")
    made = norms.make(spec.model.norm)
    model = build_model(spec.model, made.norm, made.conv)
    conv = 2 * 26 * 26 * 10 * 3 * 3 * 1
    dense = 2 * 26 * 26 * 10 * 128 + 2 * 128 * 10
    assert bench_train.train_flops_per_sample(model) == 3 * (conv + dense) == 5_564_400


def test_sgemm_peak_is_a_plausible_rate():
    assert 0.1 < bench_train.sgemm_peak(n=256, repeats=2) < 1e5


@pytest.mark.slow
def test_tutorial_recipe_with_each_stand_in_for_tfa(tmp_path):
    spec = grid.load(CONFIGS / "groupnorm.yaml", ["train.epochs=2"])
    ds = data.load("mnist-10k", smoke=True)
    for gn in ("keras", "native"):
        found = bench_train.tutorial_recipe(spec, ds, gn)
        assert found["samples_per_s"] > 0 and 0.5 < found["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_bench_layers_times_every_implementation_and_the_floor():
    rows = bench_layers.bench_layers(repeats=3, shapes=[((2, 6, 6, 8), 2)], log=lambda line: None)
    assert [(r["norm"], r["mode"]) for r in rows] == [("group", "graph"), ("group", "xla"),
                                                      ("instance", "graph"), ("instance", "xla")]
    for r in rows:
        assert set(r["ms"]) >= {"native", "keras", "floor"} and min(r["ms"].values()) > 0
        assert r["keras_over_native"] == pytest.approx(r["ms"]["keras"] / r["ms"]["native"])
    assert rows[2]["groups"] == 8  # instance: one group per channel


@pytest.mark.slow
def test_bench_cli_command_writes_json_and_never_imports_tensorflow(tmp_path):
    out = tmp_path / "cli.json"
    result = runner.invoke(app, ["bench", "cli", "--records", "30", "--repeats", "1",
                                 "--scale", "100,300", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["command"] for r in rows][:4] == [
        "normbench --help", "normbench --version", "normbench validate configs/*.yaml",
        "normbench compare (30 records)"]
    assert not any(r["imports_tensorflow"] for r in rows)
    assert "normbench compare (30 records)" in result.output
    scale = json.loads(out.read_text())["scale"]
    assert [r["records"] for r in scale["rows"]] == [100, 300]
    assert all(r["bookkeeping_ms_per_run"] > 0 and r["dry_run_s"] > 0 for r in scale["rows"])


def test_scale_records_are_the_sweeps_own_finished_runs(tmp_path):
    """The fake records of the scale bench are exactly the scale sweep's runs: a dry run finds
    them all finished (else the bench would time planning, not resuming)."""
    from normbench import executors, grid

    spec_file = bench_cli.fake_records(tmp_path, 200)
    planned = executors.plan(grid.load_runs(spec_file), False, tmp_path)
    assert len(planned) == 200 and all(p.done for p in planned)
    assert bench_cli.bookkeeping(tmp_path, spec_file, runs=5) > 0
    assert len(list((tmp_path / "runs").glob("scale-*"))) == 205
    assert bench_cli.parse_sizes("none") == () and bench_cli.parse_sizes("1,10") == (1, 10)


@pytest.mark.slow
def test_imports_tensorflow_tells_the_two_apart():
    assert bench_cli.imports_tensorflow(["-c", "import tensorflow"]) is True
    assert bench_cli.imports_tensorflow(["-m", "normbench", "norms"]) is False


@pytest.mark.slow
def test_bench_memory_reports_a_child_runs_peak(tmp_path):
    row = memory.bench_memory(dataset="mnist-10k", epochs=1, log=lambda line: None)
    assert 100 < row["peak_rss_mib"] < 8192


def test_bench_train_refuses_a_single_epoch():
    result = runner.invoke(app, ["bench", "train", "--epochs", "1"])
    said = result.stdout + result.stderr  # click 8.1 and 8.2 word it differently
    assert result.exit_code == 2 and "--epochs" in said and "2" in said


@pytest.mark.slow
def test_bench_floor_times_every_kernel_of_the_step(tmp_path):
    out = tmp_path / "floor.json"
    result = runner.invoke(app, ["bench", "floor", "--batch-size", "4", "--repeats", "1",
                                 "-s", "dataset=mnist-10k", "--json", str(out)])
    assert result.exit_code == 0, result.stdout + result.stderr
    found = json.loads(out.read_text())
    row = found["rows"][0]
    kernels = [r["kernel"] for r in row["rows"]]
    # every layer of the tutorial CNN, the loss and the optimizer, each with a positive time
    for name in ("Conv2D", "GroupNormalization", "Flatten", "Dense", "Dropout", "loss (softmax",
                 "optimizer update (adam, 866,818 parameters)"):
        assert any(name in k for k in kernels), (name, kernels)
    assert all(r["ms"] > 0 for r in row["rows"]) and row["batch_size"] == 4
    assert row["kernels_ms"] == pytest.approx(sum(r["ms"] for r in row["rows"]))
    assert row["ratio"] == pytest.approx(row["step_ms"] / row["kernels_ms"])
    assert "step / sum of kernels" in result.stdout
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "torch_rows" not in row
    else:  # the tuned peer's kernels beside normbench's: its GroupNorm, Linear layers and Adam
        peer = [r["kernel"] for r in row["torch_rows"]]
        assert any(k.startswith("GroupNorm") for k in peer) and any("Linear" in k for k in peer)
        assert "optimizer update (adam, 866,818 parameters)" in peer
        assert row["torch_kernels_ms"] == pytest.approx(sum(r["ms"] for r in row["torch_rows"]))


@pytest.mark.slow
def test_bench_startup_measures_fresh_processes(tmp_path):
    found = startup.bench_startup(repeats=1, log=lambda line: None)
    assert 0 < found["smoke_s"] < 300 and found["runs"]["smoke_s"] == [found["smoke_s"]]
    assert -5 < found["first_epoch_extra_s"] < 60


def test_bench_train_of_another_model_needs_a_peer():
    result = runner.invoke(app, ["bench", "train", "--config",
                                 str(CONFIGS / "bench" / "vgg_sgd.yaml")])
    assert result.exit_code == 2 and "--peers torch" in result.stderr
