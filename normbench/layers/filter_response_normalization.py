"""Filter Response Normalization with its thresholded linear unit (Singh & Krishnan, 2020,
https://arxiv.org/abs/1911.09737)."""

from __future__ import annotations

from normbench.layers.base import (affine_config, affine_init, affine_weights, apply_affine, keras,
                                   mean_over, no_input_autocast, stats_input, tf)


@keras.utils.register_keras_serializable(package="normbench")
class FilterResponseNormalization(keras.layers.Layer):
    """Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan, 2019,
    https://arxiv.org/abs/1911.09737).

    Per sample and channel: `nu2 = mean(x^2)` over the spatial axes (no mean is subtracted),
    `y = max(gamma * x / sqrt(nu2 + |eps|) + beta, tau)` with a learned per-channel threshold tau.
    Like InstanceNorm it never mixes samples; unlike it, it keeps each channel's mean.

    Defaults are tensorflow-addons' (epsilon=1e-6, axis=[1, 2] on NHWC), whose layer lacked the
    TLU: `use_tlu=False` reproduces it exactly (weights gamma, beta of shape (1, 1, 1, C) as
    there).

    Args:
        epsilon: added to `nu2` before the square root (its absolute value is used).
        axis: the spatial axes of an NHWC input; only [1, 2] is accepted.
        beta_initializer: initializer of `beta` (a Keras initializer or its name).
        gamma_initializer: initializer of `gamma`.
        beta_regularizer: optional regularizer of `beta`.
        gamma_regularizer: optional regularizer of `gamma`.
        beta_constraint: optional constraint on `beta`.
        gamma_constraint: optional constraint on `gamma`.
        learned_epsilon: whether epsilon is a trained weight (initialized at `epsilon`).
        learned_epsilon_constraint: optional constraint on the learned epsilon.
        use_tlu: whether to apply the thresholded linear unit `max(y, tau)`.
        tau_initializer: initializer of the threshold `tau`.
        center: whether to add `beta`.
        scale: whether to multiply by `gamma`.
        **kwargs: Keras layer arguments (`name`, `dtype`, `trainable`, ...).

    Reference:
        Singh & Krishnan, "Filter Response Normalization Layer", CVPR 2020,
        https://arxiv.org/abs/1911.09737.
    """

    def __init__(self, epsilon=1e-6, axis=(1, 2), beta_initializer="zeros", gamma_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, learned_epsilon=False, learned_epsilon_constraint=None,
                 use_tlu=True, tau_initializer="zeros", center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        if sorted(axis) != [1, 2]:
            raise ValueError(f"axis must be the spatial axes [1, 2] of an NHWC input, got {list(axis)}")
        self.supports_masking = True
        no_input_autocast(self)
        self.epsilon = float(epsilon)
        self.axis = [1, 2]
        self.learned_epsilon = bool(learned_epsilon)
        self.learned_epsilon_constraint = keras.constraints.get(learned_epsilon_constraint)
        self.use_tlu = bool(use_tlu)
        self.tau_initializer = keras.initializers.get(tau_initializer)
        affine_init(self, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                     gamma_regularizer, beta_constraint, gamma_constraint)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4 or None in shape[1:]:
            raise ValueError(f"FilterResponseNormalization needs NHWC inputs with known H, W, C; "
                             f"got shape {shape}")
        weight_shape = (1, 1, 1, shape[-1])
        affine_weights(self, weight_shape)
        self.tau = self.eps_learned = None
        if self.use_tlu:
            self.tau = self.add_weight(name="tau", shape=weight_shape, initializer=self.tau_initializer)
        if self.learned_epsilon:
            self.eps_learned = self.add_weight(name="learned_epsilon", shape=(1,),
                                               initializer=keras.initializers.Constant(1e-4),
                                               constraint=self.learned_epsilon_constraint)
        super().build(input_shape)

    def call(self, inputs):
        x = stats_input(inputs)
        epsilon = tf.abs(tf.cast(self.epsilon, x.dtype))
        if self.learned_epsilon:
            epsilon = epsilon + tf.abs(tf.cast(self.eps_learned, x.dtype))
        nu2 = mean_over(tf.square(x), self.axis)
        outputs = apply_affine(self, x * tf.math.rsqrt(nu2 + epsilon))
        if self.use_tlu:
            outputs = tf.maximum(outputs, tf.cast(self.tau, x.dtype))
        return tf.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "axis": self.axis,
                "learned_epsilon": self.learned_epsilon,
                "learned_epsilon_constraint": keras.constraints.serialize(self.learned_epsilon_constraint),
                "use_tlu": self.use_tlu,
                "tau_initializer": keras.initializers.serialize(self.tau_initializer),
                **affine_config(self)}
