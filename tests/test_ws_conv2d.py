"""WSConv2D: the layer contract, a float64 reference in value and gradient, and the ws_group
norm that pairs it with GroupNorm."""

from __future__ import annotations

import numpy as np
import pytest

import tensorflow as tf
import reference_checks as checks
from layer_contract import run_layer_contract
from normbench import norms, spec as specs
from normbench.layers import WSConv2D


def test_the_layer_contract(tmp_path):
    run_layer_contract(WSConv2D, {"filters": 4, "kernel_size": 3, "padding": "same"}, checks.SHAPE,
                       tmp_path, expected_output_shape=(2, 5, 5, 4), trainable_weights=2)


def ws_ref(x, w, eps=1e-5):
    k = w["kernel"]
    k = (k - k.mean(axis=(0, 1, 2))) / np.sqrt(k.var(axis=(0, 1, 2)) + eps)
    out = tf.nn.conv2d(x, k, strides=1, padding="VALID").numpy()
    return out + w["bias"]


CASES = {"wsconv": (lambda d: WSConv2D(4, 3, dtype=d), ws_ref)}


@pytest.mark.parametrize("name", list(CASES))
def test_output_matches_float64_reference(name):
    checks.check_output(*CASES[name])


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_finite_differences(name):
    checks.check_gradients(*CASES[name])


@pytest.mark.parametrize("name", list(CASES))
def test_config_round_trip_and_save_load(tmp_path, name):
    checks.check_round_trip(CASES[name][0], tmp_path)


def _spec(norm_type, **norm):
    return specs.Spec.model_validate({"name": "t", "model": {"norm": {"type": norm_type, **norm}}})


def test_ws_group_pairs_a_standardized_conv_with_group_norm():
    made = norms.make(_spec("ws_group", groups=2).model.norm)
    conv, norm = made.conv(10, 3), made.norm()
    assert isinstance(conv, WSConv2D) and norm.get_config()["groups"] == 2
