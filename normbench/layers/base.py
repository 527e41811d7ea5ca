"""What every normbench layer shares: TensorFlow and Keras (quiet), the Keras version, exact
reductions, and the gamma/beta plumbing of the feature-wise norms."""

from __future__ import annotations

from normbench.tf_runtime import quiet_tensorflow

tf = quiet_tensorflow()  # first, so TF's C++ start-up lines stay quiet
import keras  # noqa: E402

LOW_PRECISION = (tf.float16, tf.bfloat16)
KERAS_3 = int(keras.__version__.split(".")[0]) >= 3


def no_input_autocast(layer: keras.layers.Layer) -> None:
    """Let float32 inputs reach call() uncast under a mixed policy (Keras 3 and Keras 2 spell it
    differently): statistics of values beyond float16's range must not overflow on the way in."""
    if KERAS_3:
        layer.autocast = False
    else:
        layer._autocast = False


def mean_over(t: tf.Tensor, axes: list[int]) -> tf.Tensor:
    """Mean over `axes`, one axis at a time: every float32 sum stays as short as one dimension.

    One reduction over a whole 600x400x8 group can be off by 3e-5 (relative), and by how much
    depends on the batch size TensorFlow sees (tfa issue 2745); means of means are exact here.
    """
    for axis in sorted(axes, reverse=True):
        t = tf.reduce_mean(t, axis=axis, keepdims=True)
    return t


def sum_over(t: tf.Tensor, axes: list[int]) -> tf.Tensor:
    """Sum over `axes`, one axis at a time (see mean_over)."""
    for axis in sorted(axes, reverse=True):
        t = tf.reduce_sum(t, axis=axis, keepdims=True)
    return t


# Inside a tf.function, GN's arithmetic runs as one XLA-compiled kernel per direction: TF graph

def feature_norm_setup(layer, axis: int, epsilon: float) -> None:
    if axis == 0:
        raise ValueError(f"axis=0 is the batch axis: {type(layer).__name__} normalizes features "
                         "of each sample; use BatchNormalization to normalize over the batch")
    layer.supports_masking = True
    no_input_autocast(layer)
    layer.axis = int(axis)
    layer.epsilon = float(epsilon)


def affine_weights(layer, shape) -> None:
    """gamma/beta (when scale/center) of `shape`, with the layer's initializers and the rest."""
    layer.gamma = layer.beta = None
    if layer.scale:
        layer.gamma = layer.add_weight(name="gamma", shape=shape, initializer=layer.gamma_initializer,
                                       regularizer=layer.gamma_regularizer,
                                       constraint=layer.gamma_constraint)
    if layer.center:
        layer.beta = layer.add_weight(name="beta", shape=shape, initializer=layer.beta_initializer,
                                      regularizer=layer.beta_regularizer,
                                      constraint=layer.beta_constraint)


def affine_config(layer) -> dict:
    return {"center": layer.center, "scale": layer.scale,
            "beta_initializer": keras.initializers.serialize(layer.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(layer.gamma_initializer),
            "beta_regularizer": keras.regularizers.serialize(layer.beta_regularizer),
            "gamma_regularizer": keras.regularizers.serialize(layer.gamma_regularizer),
            "beta_constraint": keras.constraints.serialize(layer.beta_constraint),
            "gamma_constraint": keras.constraints.serialize(layer.gamma_constraint)}


def affine_init(layer, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                 gamma_regularizer, beta_constraint, gamma_constraint) -> None:
    layer.center, layer.scale = bool(center), bool(scale)
    layer.beta_initializer = keras.initializers.get(beta_initializer)
    layer.gamma_initializer = keras.initializers.get(gamma_initializer)
    layer.beta_regularizer = keras.regularizers.get(beta_regularizer)
    layer.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
    layer.beta_constraint = keras.constraints.get(beta_constraint)
    layer.gamma_constraint = keras.constraints.get(gamma_constraint)


def apply_affine(layer, normalized: tf.Tensor) -> tf.Tensor:
    if layer.scale:
        normalized = normalized * tf.cast(layer.gamma, normalized.dtype)
    if layer.center:
        normalized = normalized + tf.cast(layer.beta, normalized.dtype)
    return normalized


def stats_input(inputs) -> tf.Tensor:
    x = tf.convert_to_tensor(inputs)
    return tf.cast(x, tf.float32) if x.dtype in LOW_PRECISION else x
