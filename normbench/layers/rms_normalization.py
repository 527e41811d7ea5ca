"""RMSNorm: rescaling by the root mean square, without centering (Zhang & Sennrich, 2019,
https://arxiv.org/abs/1910.07467)."""

from __future__ import annotations

from normbench.layers.base import (affine_config, affine_init, affine_weights,
                                   feature_norm_setup, keras, stats_input, tf)


@keras.utils.register_keras_serializable(package="normbench")
class RMSNormalization(keras.layers.Layer):
    """RMSNorm (Zhang & Sennrich, 2019, https://arxiv.org/abs/1910.07467).

    `y = x / sqrt(mean(x^2 over axis) + epsilon) * gamma (+ beta if center)`: LayerNorm over
    `axis` without re-centering. In a CNN with axis=-1 each pixel is scaled by the RMS of its
    channels. The paper has no beta, hence center=False by default.

    Args:
        axis: the axis the root mean square is taken over (-1: the channels).
        epsilon: added to the mean square before the square root.
        center: whether to add a learned offset `beta` (not in the paper).
        scale: whether to multiply by the learned per-channel scale `gamma`.
        beta_initializer: initializer of `beta` (a Keras initializer or its name).
        gamma_initializer: initializer of `gamma`.
        beta_regularizer: optional regularizer of `beta`.
        gamma_regularizer: optional regularizer of `gamma`.
        beta_constraint: optional constraint on `beta`.
        gamma_constraint: optional constraint on `gamma`.
        **kwargs: Keras layer arguments (`name`, `dtype`, `trainable`, ...).

    Reference:
        Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019,
        https://arxiv.org/abs/1910.07467.
    """

    def __init__(self, axis=-1, epsilon=1e-6, center=False, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, **kwargs):
        super().__init__(**kwargs)
        feature_norm_setup(self, axis, epsilon)
        affine_init(self, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                     gamma_regularizer, beta_constraint, gamma_constraint)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if not -len(shape) <= self.axis < len(shape) or shape[self.axis] is None:
            raise ValueError(f"axis {self.axis} must be a feature axis of known size; got shape {shape}")
        weight_shape = [1] * len(shape)
        weight_shape[self.axis] = shape[self.axis]
        affine_weights(self, (shape[self.axis],))
        self._weight_shape = weight_shape
        super().build(input_shape)

    def call(self, inputs):
        x = stats_input(inputs)
        ms = tf.reduce_mean(tf.square(x), axis=self.axis, keepdims=True)
        normalized = x * tf.math.rsqrt(ms + tf.cast(self.epsilon, x.dtype))
        if self.scale:
            normalized = normalized * tf.reshape(tf.cast(self.gamma, x.dtype), self._weight_shape)
        if self.center:
            normalized = normalized + tf.reshape(tf.cast(self.beta, x.dtype), self._weight_shape)
        return tf.cast(normalized, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon,
                **affine_config(self)}
