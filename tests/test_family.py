"""The norms beyond tfa: FRN+TLU, RMSNorm, weight-standardized conv, and the Keras-backed ones."""

from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from normbench import norms, spec as specs  # noqa: E402
from normbench.layers import FilterResponseNormalization, RMSNormalization, WSConv2D  # noqa: E402
from normbench.verify import rel_error  # noqa: E402
from layer_contract import run_layer_contract  # noqa: E402

SHAPE = (2, 5, 5, 6)


@pytest.mark.parametrize("cls,kwargs,weights", [
    (FilterResponseNormalization, {}, 3), (FilterResponseNormalization, {"use_tlu": False}, 2),
    (RMSNormalization, {}, 1), (RMSNormalization, {"center": True}, 2),
    (WSConv2D, {"filters": 4, "kernel_size": 3, "padding": "same"}, 2)])
def test_the_layer_contract(cls, kwargs, weights, tmp_path):
    shape = (2, 5, 5, 6)
    out = (2, 5, 5, 4) if cls is WSConv2D else shape
    run_layer_contract(cls, kwargs, shape, tmp_path, expected_output_shape=out,
                       trainable_weights=weights)


def frn_ref(x, w, eps, use_tlu=True):
    nu2 = (x ** 2).mean(axis=(1, 2), keepdims=True)
    y = w["gamma"] * x / np.sqrt(nu2 + eps) + w["beta"]
    return np.maximum(y, w["tau"]) if use_tlu else y


def rms_ref(x, w, eps, axis=-1):
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    y = x / np.sqrt((x ** 2).mean(axis=axis, keepdims=True) + eps) * w["gamma"].reshape(shape)
    return y + w["beta"].reshape(shape) if "beta" in w else y


def ws_ref(x, w, eps=1e-5):
    k = w["kernel"]
    k = (k - k.mean(axis=(0, 1, 2))) / np.sqrt(k.var(axis=(0, 1, 2)) + eps)
    out = tf.nn.conv2d(x, k, strides=1, padding="VALID").numpy()
    return out + w["bias"]


LAYERS = {  # name: (factory(dtype), reference(x, weights))
    "frn": (lambda d: FilterResponseNormalization(epsilon=1e-3, dtype=d), lambda x, w: frn_ref(x, w, 1e-3)),
    "frn_no_tlu": (lambda d: FilterResponseNormalization(epsilon=1e-3, use_tlu=False, dtype=d),
                   lambda x, w: frn_ref(x, w, 1e-3, use_tlu=False)),
    "rms": (lambda d: RMSNormalization(epsilon=1e-5, dtype=d), lambda x, w: rms_ref(x, w, 1e-5)),
    "rms_centered_axis1": (lambda d: RMSNormalization(axis=1, center=True, dtype=d),
                           lambda x, w: rms_ref(x, w, 1e-6, axis=1)),
    "wsconv": (lambda d: WSConv2D(4, 3, dtype=d), ws_ref),
}


def _build(name, dtype="float32", seed=0):
    layer = LAYERS[name][0](dtype)
    layer.build(SHAPE)
    rng = np.random.default_rng(seed)
    values = [rng.normal(0.5, 0.5, tuple(v.shape)) for v in layer.weights]
    layer.set_weights(values)
    return layer, {v.name.split("/")[-1].split(":")[0]: val for v, val in zip(layer.weights, values)}


def _x(seed=1, dtype=np.float32):
    return np.random.default_rng(seed).normal(0.5, 2.0, SHAPE).astype(dtype)


@pytest.mark.parametrize("name", list(LAYERS))
def test_output_matches_float64_reference(name):
    layer, weights = _build(name)
    x = _x()
    assert rel_error(np.asarray(layer(x)), LAYERS[name][1](x.astype(np.float64), weights)) < 1e-5


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradients_match_finite_differences(name):
    layer, weights = _build(name, "float64")
    x = _x(dtype=np.float64)
    dy = np.random.default_rng(2).normal(size=np.asarray(layer(x)).shape)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt) * dy)
    grads = tape.gradient(loss, [xt] + layer.trainable_weights)
    reference = LAYERS[name][1]
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


@pytest.mark.parametrize("name", list(LAYERS))
def test_config_round_trip_and_save_load(tmp_path, name):
    layer, _ = _build(name)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    model = keras.Sequential([keras.Input(SHAPE[1:]), layer])
    path = tmp_path / "m.keras"
    model.save(path)
    x = _x()
    np.testing.assert_array_equal(np.asarray(keras.models.load_model(path)(x)), np.asarray(model(x)))


@pytest.mark.parametrize("cls", [FilterResponseNormalization, RMSNormalization])
def test_mixed_float16_large_inputs_stay_finite(cls):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = cls()
        y = layer(np.random.default_rng(3).uniform(-1e5, 1e5, SHAPE).astype(np.float32))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert y.dtype == tf.float16 and np.isfinite(np.asarray(y, np.float32)).all()


def test_frn_axis_and_shape_errors():
    with pytest.raises(ValueError, match=r"spatial axes \[1, 2\]"):
        FilterResponseNormalization(axis=[1, 3])
    with pytest.raises(ValueError, match="known H, W, C"):
        FilterResponseNormalization().build((None, None, 5, 3))


def test_tlu_keeps_outputs_above_tau():
    layer, weights = _build("frn")
    assert (np.asarray(layer(_x())) >= weights["tau"].astype(np.float32) - 1e-7).all()


def test_frn_without_tlu_matches_real_tfa():
    if not norms.tfa_status()[0]:
        pytest.skip(norms.tfa_status()[1])
    import tensorflow_addons as tfa

    ours, weights = _build("frn_no_tlu")
    theirs = tfa.layers.FilterResponseNormalization(epsilon=1e-3)
    theirs.build(SHAPE)
    theirs.set_weights([weights["gamma"], weights["beta"]])
    x = _x()
    assert rel_error(np.asarray(ours(x)), np.asarray(theirs(x))) < 1e-5


def _spec(norm_type, **norm):
    return specs.Spec.model_validate({"name": "t", "model": {"norm": {"type": norm_type, **norm}}})


def test_layer_channels_normalizes_each_pixel_over_channels():
    layer = norms.make(_spec("layer_channels").model.norm).norm()
    x = _x()
    y = np.asarray(layer(x))
    xd = x.astype(np.float64)
    want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-3)
    assert rel_error(y, want) < 1e-5


def test_batch_renorm_is_keras_bn_with_renorm():
    layer = norms.make(_spec("batch_renorm").model.norm).norm()
    assert type(layer).__name__ == "BatchNormalization" and layer.get_config()["renorm"] is True
    x = _x()
    layer.build(x.shape)
    y = np.asarray(layer(x, training=False))  # inference: moving statistics (0, 1) at start
    assert rel_error(y, x / np.sqrt(1 + 1e-3)) < 1e-5
    # Training: (x - mu_B)/sigma_B * r + d with r = sigma_B/sigma, d = (mu_B - mu)/sigma (no
    # clipping) equals (x - mu)/sigma in value, the point of renorm (only gradients differ). The
    # moving stddev starts at 1 and the batch epsilon cancels, so the output is x itself.
    yt = np.asarray(layer(x, training=True))
    assert rel_error(yt, x) < 1e-5
    plain = keras.layers.BatchNormalization()
    assert rel_error(np.asarray(plain(x, training=True)), yt) > 0.1  # plain BN: batch statistics


def test_ws_group_pairs_a_standardized_conv_with_group_norm():
    made = norms.make(_spec("ws_group", groups=2).model.norm)
    conv, norm = made.conv(10, 3), made.norm()
    assert isinstance(conv, WSConv2D) and norm.get_config()["groups"] == 2


def test_rms_keras_impl_rules():
    if hasattr(keras.layers, "RMSNormalization"):
        made = norms.make(_spec("rms", impl="keras", center=False).model.norm)
        assert made.impl == "keras" and type(made.norm()).__module__.startswith("keras")
    with pytest.raises(Exception, match="center: false"):
        _spec("rms", impl="keras")


def test_frn_needs_the_channel_axis():
    with pytest.raises(Exception, match="axis must be -1"):
        _spec("frn", axis=1)
