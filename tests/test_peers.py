"""The PyTorch peer of bench train: the same model (same parameter count), and it learns."""

from __future__ import annotations

import pytest

from normbench import data, grid, peers
from normbench.errors import NormbenchError

pytest.importorskip("torch", reason="PyTorch is not installed (make test installs a CPU wheel "
                                    "when one is at hand)")


@pytest.mark.parametrize("style", peers.STYLES)
@pytest.mark.parametrize("config,overrides", [
    ("groupnorm.yaml", []),
    ("studies/gn_paper_ghost.yaml", ["sweep={}", "seeds=1", "train.steps=null", "train.epochs=2",
                                     "model.widths=[8, M, 16]", "model.norm.type=group",
                                     "model.norm.groups=4", "model.norm.momentum=null"]),
    ("studies/gn_paper_ghost.yaml", ["sweep={}", "seeds=1", "train.steps=null", "train.epochs=2",
                                     "model.widths=[8, M, 16]"]),
])
def test_the_peer_has_normbenchs_parameter_count_and_learns(config, overrides, style):
    from normbench import train
    from normbench.bench import CONFIGS

    spec = grid.load(CONFIGS / config, ["dataset=mnist-10k", "train.epochs=2", *overrides])
    ds = data.load(spec.dataset, smoke=True)
    model, _ = train.initial_model(spec)
    trainable = sum(int(w.shape.num_elements()) for w in model.trainable_weights)
    found = peers.train(spec, ds, style)
    assert found["params"] == trainable
    assert found["losses"][-1] < found["losses"][0] and found["samples_per_s"] > 0
    assert 0.0 <= found["test_accuracy"] <= 1.0


def test_norms_without_a_peer_are_refused():
    spec = grid.load(__import__("normbench.bench", fromlist=["CONFIGS"]).CONFIGS / "groupnorm.yaml",
                     ["model.norm.type=instance"])
    with pytest.raises(NormbenchError, match="no PyTorch peer"):
        peers.build(spec.model, "instance", None, 1e-3)
