"""RMSNormalization: the layer contract, a float64 reference in value and gradient, mixed
precision, and when Keras's own layer stands in for it."""

from __future__ import annotations

import numpy as np
import pytest

import keras
import reference_checks as checks
from layer_contract import run_layer_contract
from normbench import norms, spec as specs
from normbench.layers import RMSNormalization


@pytest.mark.parametrize("kwargs,weights", [({}, 1), ({"center": True}, 2)])
def test_the_layer_contract(kwargs, weights, tmp_path):
    run_layer_contract(RMSNormalization, kwargs, checks.SHAPE, tmp_path, trainable_weights=weights)


def rms_ref(x, w, eps, axis=-1):
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    y = x / np.sqrt((x ** 2).mean(axis=axis, keepdims=True) + eps) * w["gamma"].reshape(shape)
    return y + w["beta"].reshape(shape) if "beta" in w else y


CASES = {  # name: (factory(dtype), reference(x, weights))
    "rms": (lambda d: RMSNormalization(epsilon=1e-5, dtype=d), lambda x, w: rms_ref(x, w, 1e-5)),
    "rms_centered_axis1": (lambda d: RMSNormalization(axis=1, center=True, dtype=d),
                           lambda x, w: rms_ref(x, w, 1e-6, axis=1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_output_matches_float64_reference(name):
    checks.check_output(*CASES[name])


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_finite_differences(name):
    checks.check_gradients(*CASES[name])


@pytest.mark.parametrize("name", list(CASES))
def test_config_round_trip_and_save_load(tmp_path, name):
    checks.check_round_trip(CASES[name][0], tmp_path)


def test_mixed_float16_large_inputs_stay_finite():
    checks.check_mixed_float16_large_inputs(RMSNormalization)


def _spec(norm_type, **norm):
    return specs.Spec.model_validate({"name": "t", "model": {"norm": {"type": norm_type, **norm}}})


def test_rms_keras_impl_rules():
    if hasattr(keras.layers, "RMSNormalization"):
        made = norms.make(_spec("rms", impl="keras", center=False).model.norm)
        assert made.impl == "keras" and type(made.norm()).__module__.startswith("keras")
    with pytest.raises(Exception, match="center: false"):
        _spec("rms", impl="keras")
