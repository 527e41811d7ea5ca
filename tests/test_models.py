"""The tutorial CNN, built for each norm."""

from __future__ import annotations

from conftest import spec_from_yaml

import numpy as np
import pytest

import tensorflow  # noqa: E402,F401 - a hard dependency: an import failure must fail

from normbench import layers, norms, spec as specs  # noqa: E402
from normbench.models import build_model  # noqa: E402


@pytest.mark.parametrize("norm_type,norm_params", [
    ("none", 0), ("group", 20), ("instance", 20), ("layer", 20), ("batch", 40),
    ("layer_channels", 20), ("frn", 30), ("rms", 20), ("batch_renorm", 40 + 30), ("ws_group", 20)])  # renorm: 3 more statistics per channel
def test_tutorial_architecture(norm_type, norm_params):
    spec = specs.Spec.model_validate({"name": "t", "model": {"norm": {"type": norm_type}}})
    made = norms.make(spec.model.norm)
    model = build_model(spec.model, made.norm, made.conv)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[0] == ("WSConv2D" if norm_type == "ws_group" else "Conv2D") and kinds[-4:] == ["Flatten", "Dense", "Dropout", "Dense"]
    assert len(kinds) == (5 if norm_type == "none" else 6)
    # conv 3*3*1*10+10, dense 26*26*10*128+128, out 128*10+10 (BN adds moving mean/variance)
    assert model.count_params() == 100 + 865_408 + 1_290 + norm_params
    out = model(np.zeros((2, 28, 28, 1), np.float32))
    assert out.shape == (2, 10)
    np.testing.assert_allclose(np.asarray(out).sum(axis=1), 1.0, rtol=1e-5)


def test_models_do_not_share_norm_layers():
    spec = specs.Spec(name="t")
    made = norms.make(spec.model.norm)
    a, b = build_model(spec.model, made.norm, made.conv), build_model(spec.model, made.norm, made.conv)
    assert a.layers[1] is not b.layers[1]





def test_vgg_puts_the_norm_after_every_conv(tmp_path):
    from normbench import norms
    from normbench.models import build_model

    spec = spec_from_yaml(tmp_path, "model: {arch: vgg, widths: [8, 8, M, 16, 16, M, 32], "
                           "norm: {type: batch, virtual_batch_size: 4}}\n")
    made = norms.make(spec.model.norm)
    model = build_model(spec.model, made.norm, made.conv)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds.count("Conv2D") == 5 and kinds.count("BatchNormalization") == 5
    assert kinds.count("MaxPooling2D") == 2 and made.impl == "native"
    assert all(layer.ghost_batch_size == 4 for layer in model.layers
               if isinstance(layer, layers.BatchNormalization))
    assert model.output_shape == (None, 10)

