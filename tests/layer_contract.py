"""The contract every normbench layer keeps, checked by one helper (as Keras's `run_layer_test`
in keras/src/testing/test_case.py): each layer's tests call `run_layer_contract` first.

It builds the layer, calls it in training and inference, round-trips its config, saves and
reloads it inside a model, runs it under a mixed-precision policy, and checks a float64 layer
against the float32 one. Every step names the layer and what broke."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from normbench import layers
from normbench.layers import keras, tf


def run_layer_contract(cls: type, kwargs: dict[str, Any], input_shape: tuple[int, ...],
                       tmp_path: Path, *, expected_output_shape: tuple[int, ...] | None = None,
                       trainable_weights: int | None = None, non_trainable_weights: int = 0,
                       float64_atol: float = 1e-4, seed: int = 0) -> None:
    name = cls.__name__
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 2.0, input_shape).astype("float32")

    # build and call: shapes, weights, training and inference both finite
    layer = cls(**kwargs)
    y_train = np.asarray(layer(x, training=True))
    y_infer = np.asarray(layer(x, training=False))
    want = expected_output_shape or input_shape
    assert y_train.shape == want and y_infer.shape == want, f"{name}: output shape {y_train.shape}"
    assert np.isfinite(y_train).all() and np.isfinite(y_infer).all(), f"{name}: non-finite output"
    if trainable_weights is not None:
        assert len(layer.trainable_weights) == trainable_weights, \
            f"{name}: {len(layer.trainable_weights)} trainable weights"
    assert len(layer.non_trainable_weights) == non_trainable_weights, \
        f"{name}: {len(layer.non_trainable_weights)} non-trainable weights"
    assert tuple(layer.compute_output_shape(input_shape)) == want, f"{name}: compute_output_shape"

    # config round trip: from_config(get_config()) is the same layer, with the same outputs
    config = layer.get_config()
    again = cls.from_config(config)
    assert again.get_config() == config, f"{name}: config changed in a round trip"
    again(x)
    again.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(again(x, training=False)), y_infer, rtol=1e-6, atol=1e-6,
                               err_msg=f"{name}: from_config(get_config()) computes otherwise")

    # save and load inside a model: same outputs, no custom_objects needed
    inputs = keras.Input(input_shape[1:])
    model = keras.Model(inputs, cls(**kwargs)(inputs))
    model.layers[-1].set_weights(layer.get_weights())
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = layers.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), y_infer, rtol=1e-5,
                               atol=1e-5, err_msg=f"{name}: save/load changed the outputs")

    # mixed precision: float16 compute, float32 variables, output in the compute dtype
    mixed = cls(**kwargs, dtype="mixed_float16")
    out = mixed(x.astype("float16"), training=True)
    assert out.dtype == tf.float16, f"{name}: mixed_float16 output is {out.dtype}"
    assert all(w.dtype == tf.float32 for w in mixed.weights), f"{name}: mixed weights not float32"
    assert np.isfinite(np.asarray(out, dtype="float32")).all(), f"{name}: mixed output not finite"

    # float64: the same layer in float64 agrees with float32 (and runs: no float32-only path)
    wide = cls(**kwargs, dtype="float64")
    wide(x.astype("float64"))
    wide.set_weights([w.astype("float64") for w in layer.get_weights()])
    y64 = np.asarray(wide(x.astype("float64"), training=False))
    assert y64.dtype == np.float64, f"{name}: float64 output is {y64.dtype}"
    np.testing.assert_allclose(y64, y_infer, rtol=float64_atol, atol=float64_atol,
                               err_msg=f"{name}: float64 and float32 disagree")
