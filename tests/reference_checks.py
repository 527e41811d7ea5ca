"""Checks shared by the tests of the norms beyond tfa (FRN, RMSNorm, WSConv2D): a layer built
with non-default weights, against its float64 NumPy reference, in value and in gradient
(finite differences), and through a config round trip and a save/load."""

from __future__ import annotations

import numpy as np

import keras
import tensorflow as tf

from normbench.verify import rel_error

SHAPE = (2, 5, 5, 6)


def build(factory, dtype="float32", seed=0):
    """The layer `factory(dtype)` builds, with random weights; (layer, {weight name: value})."""
    layer = factory(dtype)
    layer.build(SHAPE)
    rng = np.random.default_rng(seed)
    values = [rng.normal(0.5, 0.5, tuple(v.shape)) for v in layer.weights]
    layer.set_weights(values)
    return layer, {v.name.split("/")[-1].split(":")[0]: val for v, val in zip(layer.weights, values)}


def sample_x(seed=1, dtype=np.float32):
    return np.random.default_rng(seed).normal(0.5, 2.0, SHAPE).astype(dtype)


def check_output(factory, reference):
    layer, weights = build(factory)
    x = sample_x()
    assert rel_error(np.asarray(layer(x)), reference(x.astype(np.float64), weights)) < 1e-5


def check_gradients(factory, reference):
    layer, weights = build(factory, "float64")
    x = sample_x(dtype=np.float64)
    dy = np.random.default_rng(2).normal(size=np.asarray(layer(x)).shape)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt) * dy)
    grads = tape.gradient(loss, [xt] + layer.trainable_weights)
    targets = [("x", x)] + [(n, weights[n]) for n in (w.name.split("/")[-1].split(":")[0]
                                                       for w in layer.trainable_weights)]
    h = 1e-6
    for (which, value), got in zip(targets, grads):
        numeric = np.zeros_like(value)
        for i in range(value.size):
            def f(delta):
                args = {k: v.copy() for k, v in weights.items()}
                xx = x.copy()
                (xx if which == "x" else args[which]).reshape(-1)[i] += delta
                return float(np.sum(reference(xx, args) * dy))
            numeric.reshape(-1)[i] = (f(h) - f(-h)) / (2 * h)
        assert rel_error(np.asarray(got), numeric) < 1e-5, which


def check_round_trip(factory, tmp_path):
    layer, _ = build(factory)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    model = keras.Sequential([keras.Input(SHAPE[1:]), layer])
    path = tmp_path / "m.keras"
    model.save(path)
    x = sample_x()
    np.testing.assert_array_equal(np.asarray(keras.models.load_model(path)(x)), np.asarray(model(x)))


def check_mixed_float16_large_inputs(cls):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = cls()
        y = layer(np.random.default_rng(3).uniform(-1e5, 1e5, SHAPE).astype(np.float32))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert y.dtype == tf.float16 and np.isfinite(np.asarray(y, np.float32)).all()
