"""The PyTorch peer of bench train: the same model (same parameter count), and it learns."""

from __future__ import annotations

import pytest

from normbench import data, grid
from normbench.bench import peers
from normbench.errors import NormbenchError

pytest.importorskip("torch", reason="PyTorch is not installed (make test installs a CPU wheel "
                                    "when one is at hand)")


@pytest.mark.parametrize("style", peers.STYLES)
@pytest.mark.parametrize("config,overrides", [
    ("groupnorm.yaml", []),
    ("studies/gn_paper_ghost.yaml", ["sweep={}", "seeds=1", "train.steps=null", "train.epochs=2",
                                     "train.schedule=constant",
                                     "model.widths=[8, M, 16]", "model.norm.type=group",
                                     "model.norm.groups=4", "model.norm.momentum=null"]),
    ("studies/gn_paper_ghost.yaml", ["sweep={}", "seeds=1", "train.steps=null", "train.epochs=2",
                                     "train.schedule=constant",
                                     "model.widths=[8, M, 16]"]),
])
def test_the_peer_has_normbenchs_parameter_count_and_learns(config, overrides, style):
    from normbench import train
    from normbench.bench.common import CONFIGS

    spec = grid.load(CONFIGS / config, ["dataset=mnist-10k", "train.epochs=2", *overrides])
    ds = data.load(spec.dataset, smoke=True)
    model, _ = train.initial_model(spec)
    trainable = sum(int(w.shape.num_elements()) for w in model.trainable_weights)
    found = peers.train(spec, ds, style)
    assert found["params"] == trainable
    assert found["losses"][-1] < found["losses"][0] and found["samples_per_s"] > 0
    assert 0.0 <= found["test_accuracy"] <= 1.0


def test_norms_without_a_peer_are_refused():
    spec = grid.load(__import__("normbench.bench.common", fromlist=["CONFIGS"]).CONFIGS / "groupnorm.yaml",
                     ["model.norm.type=instance"])
    with pytest.raises(NormbenchError, match="no PyTorch peer"):
        peers.build(spec.model, "instance", None, 1e-3)


@pytest.mark.slow
def test_bench_train_measures_the_study_model_against_the_peer(tmp_path):
    from normbench.bench import common, train as bench_train

    found = bench_train.bench_train(epochs=2, seeds=1, batch_size=64, peers=("torch",),
                              config=common.CONFIGS / "bench" / "vgg_sgd.yaml",
                              overrides=("model.widths=[8, M, 16]",), log=lambda line: None)
    assert set(found["summary"]) == {"normbench", "torch eager", "torch tuned"}
    assert found["torch_target"] == bench_train.STUDY_PEER_TARGET and "ratio" not in found
    assert found["versus_torch"]["tuned"] == pytest.approx(
        found["summary"]["normbench"]["samples_per_s"] / found["summary"]["torch tuned"]["samples_per_s"])


def test_a_batchnorm_peer_keeps_the_specs_momentum():
    from torch import nn

    spec = grid.load(__import__("normbench.bench.common", fromlist=["CONFIGS"]).CONFIGS / "bench" / "vgg_sgd.yaml")
    model = peers.build(spec.model, "batch", None, 1e-3, spec.model.norm.momentum)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == pytest.approx(1 - 0.9) for m in bns)


def test_the_peer_warms_up_as_normbench_and_refuses_other_schedules():
    from normbench import optim
    from normbench.bench.common import CONFIGS

    schedule = optim.LearningRate(0.1, 100, 5)  # normbench's: 5 warmup steps, then constant
    for step in range(8):
        assert 0.1 * peers.warmup_factor(step, 5) == pytest.approx(float(schedule(step)))
    assert peers.warmup_factor(0, 0) == 1.0
    ds = data.load("mnist-10k", smoke=True)
    stepped = grid.load(CONFIGS / "bench" / "vgg_sgd.yaml", ["train.schedule=cosine"])
    with pytest.raises(NormbenchError, match="constant learning rate"):
        peers.train(stepped, ds, "eager")


def test_bench_train_refuses_a_spec_without_a_peer_before_measuring_anything():
    from normbench.bench import train as bench_train

    said = []
    for override in ("model.norm.type=instance", "train.optimizer=rmsprop"):
        with pytest.raises(NormbenchError, match="no PyTorch peer|has no peer"):
            bench_train.bench_train(epochs=2, seeds=1, peers=("torch",), overrides=(override,),
                              log=said.append)
    assert not [line for line in said if line.startswith("seed")]  # no run was started


@pytest.mark.slow
def test_bench_floor_keeps_normbenchs_side_where_the_peer_has_no_such_norm():
    from normbench.bench import floor

    found = floor.bench_floor(batch_sizes=(4,), repeats=1, overrides=("model.norm.type=instance",),
                              log=lambda line: None)
    row = found["rows"][0]
    assert "no PyTorch peer" in row["torch_skipped"] and "torch_rows" not in row
    assert row["kernels_ms"] > 0 and row["step_ms"] > 0
