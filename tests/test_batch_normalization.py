"""normbench's BatchNormalization: Keras's layer with per-group (ghost) statistics whose moving
statistics are the whole batch's, trained through TensorFlow's fused op where it can be (groups
folded into the channel axis), batch renorm per group, and BN's test-time statistics (moving,
PreciseBN, batch)."""

from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from normbench import evaluate as evaluation, layers  # noqa: E402
from layer_contract import run_layer_contract  # noqa: E402

KERAS_3 = layers.KERAS_3


@pytest.mark.parametrize("kwargs", [{}, {"virtual_batch_size": 2}, {"virtual_batch_size": 4,
                                                                    "renorm": True}])
def test_the_layer_contract(kwargs, tmp_path):
    run_layer_contract(layers.BatchNormalization, kwargs, (8, 5, 5, 3), tmp_path,
                       trainable_weights=2, non_trainable_weights=5 if kwargs.get("renorm") else 2)


def ghost_reference(x, v, gamma, beta, eps):
    """float64 NumPy: each group of v samples normalized over (group, H, W) per channel."""
    x = x.astype(np.float64)
    g = x.reshape(x.shape[0] // v, v, *x.shape[1:])
    mean = g.mean(axis=(1, 2, 3), keepdims=True)
    var = g.var(axis=(1, 2, 3), keepdims=True)
    y = (g - mean) / np.sqrt(var + eps) * gamma + beta
    return y.reshape(x.shape), mean, var


@pytest.mark.parametrize("v", [1, 2, 4, 8])
def test_ghost_batches_match_a_float64_reference(v):
    rng = np.random.default_rng(v)
    x = rng.normal(2.0, 3.0, (8, 5, 5, 3)).astype("float32")
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    bn = layers.BatchNormalization(virtual_batch_size=v, momentum=0.0, epsilon=1e-3)
    bn.build(x.shape)
    bn.gamma.assign(gamma.astype("float32"))
    bn.beta.assign(beta.astype("float32"))
    y = bn(x, training=True).numpy()
    want, _, _ = ghost_reference(x, v, gamma, beta, 1e-3)
    assert np.abs(y - want).max() < 1e-5 * np.abs(want).max()
    # momentum 0: the moving statistics ARE the whole batch's (not the mean of group variances)
    whole = x.astype(np.float64)
    assert np.allclose(bn.moving_mean.numpy(), whole.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    assert np.allclose(bn.moving_variance.numpy(), whole.var(axis=(0, 1, 2)), rtol=1e-5)
    groups_only = x.reshape(8 // v, v, 5, 5, 3).var(axis=(1, 2, 3)).mean(axis=0)
    if v < 8:
        assert not np.allclose(bn.moving_variance.numpy(), groups_only, rtol=1e-3)  # the bias avoided


def test_ghost_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 3, 2))
    gamma, beta = rng.normal(size=2), rng.normal(size=2)
    dy = rng.normal(size=x.shape)
    bn = layers.BatchNormalization(virtual_batch_size=2, epsilon=1e-3, dtype="float64")
    bn.build(x.shape)
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(bn(xt, training=True) * dy)
    dx, dgamma, dbeta = tape.gradient(loss, [xt, bn.gamma, bn.beta])

    def f(xv, g, b):
        return float((ghost_reference(xv, 2, g, b, 1e-3)[0] * dy).sum())

    h = 1e-6
    num_dx = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        num_dx[idx] = (f(up, gamma, beta) - f(down, gamma, beta)) / (2 * h)
    num_dg = np.array([(f(x, gamma + h * e, beta) - f(x, gamma - h * e, beta)) / (2 * h)
                       for e in np.eye(2)])
    num_db = np.array([(f(x, gamma, beta + h * e) - f(x, gamma, beta - h * e)) / (2 * h)
                       for e in np.eye(2)])
    assert np.abs(dx.numpy() - num_dx).max() < 1e-5
    assert np.abs(dgamma.numpy() - num_dg).max() < 1e-5 and np.abs(dbeta.numpy() - num_db).max() < 1e-5


def test_without_virtual_batch_size_it_is_keras_to_float_rounding():
    x = np.random.default_rng(1).normal(1, 2, (8, 4, 4, 3)).astype("float32")
    ours, theirs = layers.BatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for layer in (ours, theirs):
        layer.build(x.shape)
    for _ in range(3):  # on Keras 3 ours trains through TF's fused op: same formula, other sums
        assert np.abs(ours(x, training=True).numpy() - theirs(x, training=True).numpy()).max() < 1e-5
    assert np.abs(ours.moving_variance.numpy() - theirs.moving_variance.numpy()).max() < 1e-6
    assert np.abs(ours.moving_mean.numpy() - theirs.moving_mean.numpy()).max() < 1e-6
    assert np.abs(ours(x, training=False).numpy() - theirs(x, training=False).numpy()).max() < 1e-5
    xt = tf.constant(x)
    grads = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(layer(xt, training=True) * tf.sin(xt))
        grads.append(tape.gradient(loss, [xt, *layer.trainable_variables]))
    for a, b in zip(*grads):
        assert np.abs(a.numpy() - b.numpy()).max() < 1e-4 * np.abs(b.numpy()).max()


def test_the_fused_path_is_taken_only_where_it_is_keras():
    x = np.zeros((4, 3, 3, 2), np.float32)
    plain = layers.BatchNormalization()
    plain.build(x.shape)
    assert plain._fusable(tf.constant(x), None) == layers.KERAS_3
    for layer in (layers.BatchNormalization(virtual_batch_size=2), layers.BatchNormalization(axis=1),
                  layers.BatchNormalization(renorm=True)):
        layer.build(x.shape)
        assert not layer._fusable(tf.constant(x), None)
    ghost = layers.BatchNormalization(virtual_batch_size=2)
    ghost.build(x.shape)
    assert ghost._fusable_ghost(tf.constant(x), None)  # its own fused path (groups as channels)
    for layer in (layers.BatchNormalization(virtual_batch_size=2, axis=1),
                  layers.BatchNormalization(virtual_batch_size=2, renorm=True)):
        layer.build(x.shape)
        assert not layer._fusable_ghost(tf.constant(x), None)
    assert not ghost._fusable_ghost(tf.constant(x, tf.float64), None)
    assert not plain._fusable(tf.constant(x, tf.float64), None)
    assert not plain._fusable(tf.constant(x[:, :, 0]), None)


@pytest.mark.parametrize("v, n", [(2, 8), (4, 16), (16, 16)])
def test_ghost_batches_through_the_fused_op_equal_the_unfused_path(v, n):
    """Ghost BN with its groups folded into the channel axis of TF's fused op: outputs,
    gradients (input, gamma, beta) and moving statistics equal the per-group formula's, eagerly
    and compiled whole by XLA."""
    rng = np.random.default_rng(v)
    x = tf.constant(rng.normal(2, 3, size=(n, 5, 5, 6)).astype("float32"))
    gamma = np.linspace(0.5, 2, 6).astype("float32")
    got = {}
    for fused, compiled in ((False, False), (True, False), (True, True)):
        layers.FUSED_BN = fused
        try:
            layer = layers.BatchNormalization(virtual_batch_size=v, momentum=0.5)
            layer.build(x.shape)
            layer.gamma.assign(gamma)
            assert layer._fusable_ghost(x, None) == fused

            def step(x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x, training=True)
                    loss = tf.reduce_sum(y * tf.sin(y))
                return (y, *tape.gradient(loss, [x, layer.gamma, layer.beta]))

            out = tf.function(step, jit_compile=True)(x) if compiled else step(x)
            got[(fused, compiled)] = [t.numpy() for t in out] + [
                layer.moving_mean.numpy(), layer.moving_variance.numpy()]
        finally:
            layers.FUSED_BN = True
    for key in ((True, False), (True, True)):
        for a, b in zip(got[key], got[(False, False)]):
            assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max()), key


def test_inference_is_unchanged_and_config_round_trips(tmp_path):
    x = np.random.default_rng(2).normal(size=(8, 4, 4, 3)).astype("float32")
    bn = layers.BatchNormalization(virtual_batch_size=4, momentum=0.5)
    bn(x, training=True)
    want = (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    assert np.abs(bn(x, training=False).numpy() - want).max() < 1e-5
    again = layers.BatchNormalization.from_config(bn.get_config())
    assert again.ghost_batch_size == 4 and again.momentum == 0.5
    model = keras.Sequential([keras.Input((4, 4, 3)), layers.BatchNormalization(virtual_batch_size=2)])
    model(x, training=True)
    path = tmp_path / ("m.keras" if KERAS_3 else "m.h5")
    model.save(path)
    loaded = layers.load_model(path)
    assert loaded.layers[-1].ghost_batch_size == 2
    assert np.allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_a_batch_that_is_not_a_multiple_is_refused():
    bn = layers.BatchNormalization(virtual_batch_size=3)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        bn(np.zeros((4, 2, 2, 1), "float32"), training=True)


def test_precise_and_batch_statistics_on_a_model_with_a_known_answer():
    """A model that is one BN layer: PreciseBN's statistics are the data's population moments,
    and 'batch' mode normalizes each batch in groups of v as training does."""
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 2.0, (64, 3, 3, 2)).astype("float32")
    bn = layers.BatchNormalization(virtual_batch_size=4, center=False, scale=False)
    model = keras.Sequential([keras.Input((3, 3, 2)), bn])
    model(x[:8], training=True)  # moving statistics move a little away from 0 / 1
    used = evaluation.precise_statistics(model, x, batch=16, samples=48)
    assert used == 48
    population = x[:48].astype(np.float64)
    assert np.allclose(bn.moving_mean.numpy(), population.mean(axis=(0, 1, 2)), atol=1e-5)
    assert np.allclose(bn.moving_variance.numpy(), population.var(axis=(0, 1, 2)), rtol=1e-5)
    with layers.bn_statistics("batch"):
        y = model(x[:8], training=False).numpy()
    want, _, _ = ghost_reference(x[:8], 4, 1.0, 0.0, bn.epsilon)
    assert np.abs(y - want).max() < 1e-4



RENORM = dict(renorm=True, renorm_clipping={"rmin": 0.5, "rmax": 2.0, "dmax": 1.0},
              renorm_momentum=0.5, momentum=0.6)
RENORM_STATE = ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev")


def test_ghost_renorm_with_one_group_is_exactly_keras_renorm():
    """v = the batch: one group, so normbench's per-group renorm must equal Keras's own renorm,
    outputs, gradients and all five statistics, over steps that make r and d clip."""
    rng = np.random.default_rng(5)
    stock = keras.layers.BatchNormalization(**RENORM)
    ghost = layers.BatchNormalization(virtual_batch_size=8, **RENORM)
    for step in range(3):
        x = tf.constant(rng.normal(2.0 * step, 1.0 + step, (8, 3, 3, 4)).astype("float32"))
        outs, grads = [], []
        for layer in (stock, ghost):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * y * 0.5 + y * tf.cast(tf.range(4), y.dtype))
            outs.append(y.numpy())
            grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
        assert np.abs(outs[0] - outs[1]).max() < 1e-4, step
        for a, b in zip(*grads):
            assert np.abs(a.numpy() - b.numpy()).max() < 1e-3, step
        for name in RENORM_STATE:
            assert np.allclose(getattr(stock, name).numpy(), getattr(ghost, name).numpy(),
                               rtol=1e-5, atol=1e-6), (step, name)


def test_ghost_renorm_matches_a_float64_reference():
    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 3.0, (8, 2, 2, 3)).astype("float32")
    layer = layers.BatchNormalization(virtual_batch_size=4, **RENORM)
    layer.build(x.shape)
    layer.renorm_mean.assign([0.5, -0.5, 0.0])
    layer.renorm_stddev.assign([2.0, 4.0, 1.0])
    y = layer(x, training=True).numpy()
    x64 = x.astype(np.float64)
    g = x64.reshape(2, 4, 2, 2, 3)
    mean, var = g.mean(axis=(1, 2, 3), keepdims=True), g.var(axis=(1, 2, 3), keepdims=True)
    std = np.sqrt(var + layer.epsilon)
    r = np.clip(std / np.array([2.0, 4.0, 1.0]), 0.5, 2.0)
    d = np.clip((mean - np.array([0.5, -0.5, 0.0])) / np.array([2.0, 4.0, 1.0]), -1.0, 1.0)
    want = ((g - mean) / std * r + d).reshape(x.shape)
    assert np.abs(y - want).max() < 1e-5
    whole_std = np.sqrt(x64.var(axis=(0, 1, 2)) + layer.epsilon)
    assert np.allclose(layer.renorm_mean.numpy(), 0.5 * np.array([0.5, -0.5, 0.0])
                       + 0.5 * x64.mean(axis=(0, 1, 2)), atol=1e-5)
    assert np.allclose(layer.renorm_stddev.numpy(), 0.5 * np.array([2.0, 4.0, 1.0]) + 0.5 * whole_std,
                       atol=1e-5)
    moving_std = 0.6 * 1.0 + 0.4 * whole_std
    assert np.allclose(layer.moving_stddev.numpy(), moving_std, atol=1e-5)
    assert np.allclose(layer.moving_variance.numpy(), moving_std ** 2 - layer.epsilon, atol=1e-5)

