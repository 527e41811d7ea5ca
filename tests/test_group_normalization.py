"""GroupNormalization / InstanceNormalization: the layer contract, a float64 NumPy reference, and
Keras."""

from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from normbench import layers  # noqa: E402
from normbench.layers import GroupNormalization, InstanceNormalization  # noqa: E402
from normbench.verify import reference, reference_grads  # noqa: E402
from layer_contract import run_layer_contract  # noqa: E402


@pytest.mark.parametrize("cls,kwargs", [(GroupNormalization, {"groups": 3}),
                                        (GroupNormalization, {"group_size": 2}),
                                        (GroupNormalization, {"groups": 1, "center": False}),
                                        (InstanceNormalization, {})])
def test_the_layer_contract(cls, kwargs, tmp_path):
    run_layer_contract(cls, kwargs, (4, 5, 5, 6), tmp_path,
                       trainable_weights=2 - (kwargs.get("center") is False))


CASES = [  # (shape, axis, groups)
    ((2, 5, 5, 6), -1, 1), ((2, 5, 5, 6), -1, 3), ((2, 5, 5, 6), -1, 6), ((2, 5, 5, 6), 3, 2),
    ((2, 6, 5, 5), 1, 3), ((2, 6, 5, 5), 1, -1), ((4, 6), -1, 2), ((3, 7, 6), -1, 3),
    ((2, 3, 3, 3, 4), -1, 2), ((1, 4, 4, 8), -1, 4), ((2, 5, 6, 4), 2, 3),
]


def _layer(shape, axis, groups, center=True, scale=True, eps=1e-3, dtype="float32", seed=0):
    layer = GroupNormalization(groups=groups, axis=axis, epsilon=eps, center=center, scale=scale,
                               dtype=dtype)
    layer.build(shape)
    rng = np.random.default_rng(seed)
    weights = [rng.normal(1.0, 0.5, w.shape) for w in layer.weights]  # non-default gamma/beta
    layer.set_weights(weights)
    gamma = weights[0] if scale else None
    beta = weights[-1] if center else None
    return layer, gamma, beta


@pytest.mark.parametrize("shape,axis,groups", CASES)
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_output_matches_float64_reference(shape, axis, groups, center, scale, eps):
    layer, gamma, beta = _layer(shape, axis, groups, center, scale, eps)
    x = np.random.default_rng(1).normal(2.0, 3.0, shape).astype(np.float32)
    got = np.asarray(layer(x))
    want = reference(x, groups, axis, gamma, beta, eps)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _grads(layer, x, w):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt) * w)
    return tape.gradient(loss, [xt] + list(layer.trainable_weights))


def _numeric_grads(x, w, groups, axis, gamma, beta, eps, h=1e-6):
    """Central differences of sum(reference * w) in float64, w.r.t. x, gamma and beta."""
    def loss(xx, gg, bb):
        return float(np.sum(reference(xx, groups, axis, gg, bb, eps) * w))

    out = []
    for which, value in enumerate((x, gamma, beta)):
        if value is None:
            continue
        grad = np.zeros_like(value, dtype=np.float64)
        flat = grad.reshape(-1)
        for i in range(flat.size):
            args = [np.array(x, np.float64), None if gamma is None else np.array(gamma),
                    None if beta is None else np.array(beta)]
            args[which].reshape(-1)[i] += h
            up = loss(*args)
            args[which].reshape(-1)[i] -= 2 * h
            flat[i] = (up - loss(*args)) / (2 * h)
        out.append(grad)
    return out


@pytest.mark.parametrize("shape,axis,groups", [((2, 3, 3, 4), -1, 2), ((2, 4, 3, 3), 1, 2),
                                               ((2, 3, 4), -1, -1), ((3, 6), -1, 1)])
@pytest.mark.parametrize("center,scale", [(True, True), (False, False)])
def test_gradients_match_numeric_float64(shape, axis, groups, center, scale):
    layer, gamma, beta = _layer(shape, axis, groups, center, scale, dtype="float64")
    rng = np.random.default_rng(2)
    x = rng.normal(0.5, 2.0, shape)
    w = rng.normal(size=shape)
    got = [np.asarray(g) for g in _grads(layer, x, w)]
    want = _numeric_grads(x, w, groups, axis, gamma, beta, 1e-3)
    assert len(got) == len(want)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    closed = reference_grads(x, w, groups, axis, gamma, 1e-3)  # what `normbench verify` uses
    for g, name in zip(want, ["x"] + (["gamma"] if scale else []) + (["beta"] if center else [])):
        np.testing.assert_allclose(closed[name], g, rtol=1e-5, atol=1e-6)


def test_float32_gradients_match_float64_layer():
    shape = (4, 6, 6, 8)
    x = np.random.default_rng(3).normal(size=shape)
    w = np.random.default_rng(4).normal(size=shape)
    l32, _, _ = _layer(shape, -1, 4)
    l64, _, _ = _layer(shape, -1, 4, dtype="float64")
    for g32, g64 in zip(_grads(l32, x.astype(np.float32), w.astype(np.float32)), _grads(l64, x, w)):
        np.testing.assert_allclose(np.asarray(g32), np.asarray(g64), rtol=1e-4, atol=1e-5)


def test_instance_norm_is_group_norm_with_one_channel_per_group():
    x = np.random.default_rng(5).normal(size=(3, 5, 5, 4)).astype(np.float32)
    inorm = InstanceNormalization(gamma_initializer="random_normal", beta_initializer="random_normal")
    gnorm = GroupNormalization(groups=4)
    inorm.build(x.shape)
    gnorm.build(x.shape)
    gnorm.set_weights(inorm.get_weights())
    np.testing.assert_array_equal(np.asarray(inorm(x)), np.asarray(gnorm(x)))


def test_groups_minus_one_means_one_group_per_channel():
    x = np.random.default_rng(6).normal(size=(2, 4, 4, 6)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(GroupNormalization(groups=-1)(x)),
                                  np.asarray(GroupNormalization(groups=6)(x)))


@pytest.mark.parametrize("batch", [4, 64])
def test_batch_independence(batch):
    """A sample's output and input gradient do not depend on the rest of its batch."""
    shape = (batch, 12, 10, 6)
    x = np.random.default_rng(7).normal(3.0, 2.0, shape).astype(np.float32)
    layer, _, _ = _layer(shape, -1, 3)
    w = np.random.default_rng(8).normal(size=shape).astype(np.float32)
    full_y = np.asarray(layer(x))
    full_dx = np.asarray(_grads(layer, x, w)[0])
    alone_y = np.asarray(layer(x[:1]))
    alone_dx = np.asarray(_grads(layer, x[:1], w[:1])[0])
    np.testing.assert_allclose(alone_y, full_y[:1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(alone_dx, full_dx[:1], rtol=1e-5, atol=1e-5)  # reduction order


def test_large_offset_small_spread_is_stable():
    """mean 1e4, std 1e-2: E[x^2]-E[x]^2 would cancel to noise in float32."""
    shape = (2, 8, 8, 4)
    x = np.random.default_rng(9).normal(1e4, 1e-2, shape).astype(np.float32)
    got = np.asarray(GroupNormalization(groups=2, epsilon=1e-8)(x))
    want = reference(x.astype(np.float64), 2, -1, None, None, 1e-8)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # the naive fold was off by 0.09


def test_float16_inputs_compute_statistics_in_float32():
    x = np.clip(np.random.default_rng(10).normal(0, 2e4, (2, 8, 8, 4)), -6e4, 6e4).astype(np.float16)
    layer = GroupNormalization(groups=2, dtype="float16")
    y = layer(x)
    assert y.dtype == tf.float16
    assert np.isfinite(np.asarray(y, np.float32)).all()  # var ~ 1e9 overflows float16
    want = reference(x.astype(np.float64), 2, -1, None, None, 1e-3)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, atol=1e-2)


@pytest.mark.parametrize("shape,axis,groups", [((2, 5, 5, 6), -1, 3), ((2, 5, 5, 6), -1, 1),
                                               ((2, 6, 5, 5), 1, 2), ((2, 5, 5, 6), -1, -1)])
def test_matches_keras_builtin(shape, axis, groups):
    ours, _, _ = _layer(shape, axis, groups)
    theirs = keras.layers.GroupNormalization(groups=groups, axis=axis)
    theirs.build(shape)
    theirs.set_weights(ours.get_weights())
    x = np.random.default_rng(11).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-5, atol=1e-5)


def test_unknown_batch_dimension_in_a_traced_function():
    layer = GroupNormalization(groups=2)
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, 4, 4, 4), tf.float32)])
    x = np.random.default_rng(12).normal(size=(3, 4, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(fn(x)), reference(x, 2, -1, np.ones(4), np.zeros(4), 1e-3),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [GroupNormalization, InstanceNormalization])
def test_get_config_round_trip(cls):
    kwargs = dict(axis=1, epsilon=1e-5, center=False, beta_initializer="random_uniform",
                  gamma_initializer="he_normal", gamma_regularizer="l2", beta_constraint="non_neg")
    if cls is GroupNormalization:
        kwargs["groups"] = 3
    layer = cls(**kwargs)
    clone = cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    if cls is InstanceNormalization:
        assert "groups" not in layer.get_config()
        assert cls.from_config({**layer.get_config(), "groups": 7}).groups == -1  # tfa configs


def test_defaults_match_tfa():
    layer = GroupNormalization()
    assert (layer.groups, layer.axis, layer.epsilon, layer.center, layer.scale) == (2, -1, 1e-3, True, True)


def test_weights_are_named_gamma_and_beta():
    layer = GroupNormalization(groups=2)
    layer.build((None, 4, 4, 4))
    assert [w.name.split("/")[-1].split(":")[0] for w in layer.weights] == ["gamma", "beta"]


def test_saved_keras_model_reloads_with_same_outputs(tmp_path):
    model = keras.Sequential([keras.Input((6, 6, 4)), GroupNormalization(groups=2),
                              InstanceNormalization(), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.layers[0].set_weights([np.full(4, 1.5), np.full(4, -0.5)])
    x = np.random.default_rng(13).normal(size=(2, 6, 6, 4)).astype(np.float32)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # registered classes: no custom_objects needed
    assert type(loaded.layers[0]) is GroupNormalization
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize("kwargs,shape,message", [
    (dict(groups=4), (None, 5, 5, 6), "groups=4 does not divide the 6 channels"),
    (dict(groups=8), (None, 5, 5, 6), "groups=8 must be between 1 and the 6 channels"),
    (dict(groups=2), (None, 5, 5, None), "must have a known size"),
    (dict(groups=2, axis=4), (None, 5, 5, 6), "axis 4 is not a feature axis"),
])
def test_build_errors_quote_the_numbers(kwargs, shape, message):
    with pytest.raises(ValueError, match=message):
        GroupNormalization(**kwargs).build(shape)


def test_axis_zero_is_rejected_at_construction():
    with pytest.raises(ValueError, match="batch axis"):
        GroupNormalization(axis=0)


@pytest.mark.skipif(not layers.KERAS_3, reason="Keras 3's safe mode")
def test_load_model_refuses_code_in_a_model_file(tmp_path):
    # A Lambda layer stores Python bytecode in the .keras file; safe mode never runs it.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match="could not load it .*(unsafe|safe_mode|Lambda)"):
        layers.load_model(path)
    assert layers.load_model(path, safe_mode=False).predict(np.ones((1, 4)), verbose=0)[0, 0] == 2
