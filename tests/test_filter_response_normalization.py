"""FilterResponseNormalization (+TLU): the layer contract, a float64 reference in value and
gradient, tfa's layer (without the TLU), and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import reference_checks as checks
from layer_contract import run_layer_contract
from normbench import norms, spec as specs
from normbench.layers import FilterResponseNormalization
from normbench.verify import rel_error

SHAPE = checks.SHAPE


@pytest.mark.parametrize("kwargs,weights", [({}, 3), ({"use_tlu": False}, 2)])
def test_the_layer_contract(kwargs, weights, tmp_path):
    run_layer_contract(FilterResponseNormalization, kwargs, SHAPE, tmp_path,
                       trainable_weights=weights)


def frn_ref(x, w, eps, use_tlu=True):
    nu2 = (x ** 2).mean(axis=(1, 2), keepdims=True)
    y = w["gamma"] * x / np.sqrt(nu2 + eps) + w["beta"]
    return np.maximum(y, w["tau"]) if use_tlu else y


CASES = {  # name: (factory(dtype), reference(x, weights))
    "frn": (lambda d: FilterResponseNormalization(epsilon=1e-3, dtype=d), lambda x, w: frn_ref(x, w, 1e-3)),
    "frn_no_tlu": (lambda d: FilterResponseNormalization(epsilon=1e-3, use_tlu=False, dtype=d),
                   lambda x, w: frn_ref(x, w, 1e-3, use_tlu=False)),
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
    checks.check_mixed_float16_large_inputs(FilterResponseNormalization)


def test_frn_axis_and_shape_errors():
    with pytest.raises(ValueError, match=r"spatial axes \[1, 2\]"):
        FilterResponseNormalization(axis=[1, 3])
    with pytest.raises(ValueError, match="known H, W, C"):
        FilterResponseNormalization().build((None, None, 5, 3))


def test_tlu_keeps_outputs_above_tau():
    layer, weights = checks.build(CASES["frn"][0])
    assert (np.asarray(layer(checks.sample_x())) >= weights["tau"].astype(np.float32) - 1e-7).all()


def test_frn_without_tlu_matches_real_tfa():
    if not norms.tfa_status()[0]:
        pytest.skip(norms.tfa_status()[1])
    import tensorflow_addons as tfa

    ours, weights = checks.build(CASES["frn_no_tlu"][0])
    theirs = tfa.layers.FilterResponseNormalization(epsilon=1e-3)
    theirs.build(SHAPE)
    theirs.set_weights([weights["gamma"], weights["beta"]])
    x = checks.sample_x()
    assert rel_error(np.asarray(ours(x)), np.asarray(theirs(x))) < 1e-5


def test_frn_needs_the_channel_axis():
    with pytest.raises(Exception, match="axis must be -1"):
        specs.Spec.model_validate({"name": "t", "model": {"norm": {"type": "frn", "axis": 1}}})
