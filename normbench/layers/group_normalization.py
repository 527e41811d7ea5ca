"""GroupNormalization and InstanceNormalization (GN with one channel per group): drop-in
replacements for tensorflow-addons' layers (Wu & He, 2018, https://arxiv.org/abs/1803.08494)."""

from __future__ import annotations

from normbench.layers.base import (affine_config, affine_init, affine_weights,
                                   feature_norm_setup, keras, stats_input, tf)
from normbench.layers.group_norm_kernel import group_norm


@keras.utils.register_keras_serializable(package="normbench")
class GroupNormalization(keras.layers.Layer):
    """Group Normalization (Wu & He, 2018, https://arxiv.org/abs/1803.08494).

    Splits the channels on `axis` into `groups` groups and, for each sample and group, subtracts
    the mean and divides by the standard deviation taken over the group's channels and every other
    non-batch axis, then applies a per-channel affine map:
    `y = (x - mean) * rsqrt(var + epsilon) * gamma + beta`.

    groups=1 is the GN paper's Layer Normalization (per sample over H, W, C); groups=C (or -1) is
    Instance Normalization (per sample and channel over H, W). No statistic crosses samples, so the
    output of one sample never depends on the rest of its batch, in training or at inference.

    Defaults are tensorflow-addons' (groups=2, epsilon=1e-3) and so are the weights' names
    (`gamma`, `beta`): a model saved with tfa's layer loads into this one. Under a mixed-precision
    policy, inputs are not cast down on the way in, statistics are computed in float32 (float64
    for float64 inputs) and the output has the layer's compute dtype.

    Args:
        groups: number of groups the channels on `axis` are split into; it must divide them.
            -1 means one channel per group (Instance Normalization). Ignored when `group_size`
            is set.
        axis: the channel axis (-1 for channels-last images); every other non-batch axis is
            normalized over.
        epsilon: added to the variance before the square root.
        center: whether to add the learned per-channel offset `beta`.
        scale: whether to multiply by the learned per-channel scale `gamma`.
        beta_initializer: initializer of `beta` (a Keras initializer or its name).
        gamma_initializer: initializer of `gamma`.
        beta_regularizer: optional regularizer of `beta`.
        gamma_regularizer: optional regularizer of `gamma`.
        beta_constraint: optional constraint on `beta`.
        gamma_constraint: optional constraint on `gamma`.
        group_size: channels per group instead of a group count (normbench's, not tfa's): the
            number of groups is then the channel count divided by it, so one layer definition
            keeps the same group size at every width (the GN paper's other setting). None (the
            default) uses `groups`.
        **kwargs: Keras layer arguments (`name`, `dtype`, `trainable`, ...).

    Reference:
        Wu & He, "Group Normalization", ECCV 2018, https://arxiv.org/abs/1803.08494.
    """

    def __init__(self, groups=2, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, group_size=None, **kwargs):
        super().__init__(**kwargs)
        feature_norm_setup(self, axis, epsilon)
        self.groups = int(groups)
        self.group_size = None if group_size is None else int(group_size)
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        affine_init(self, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                     gamma_regularizer, beta_constraint, gamma_constraint)

    def build(self, input_shape):
        shape = tuple(input_shape)
        rank = len(shape)
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ValueError(f"axis {self.axis} is not a feature axis of an input of rank {rank} "
                             f"(shape {shape})")
        dim = shape[self.axis]
        if dim is None:
            raise ValueError(f"axis {self.axis} of the input must have a known size to split it "
                             f"into groups; got shape {shape}")
        if self.group_size is not None:
            if dim % self.group_size:
                raise ValueError(f"group_size={self.group_size} does not divide the {dim} "
                                 f"channels on axis {self.axis}; {dim} % {self.group_size} = "
                                 f"{dim % self.group_size}")
            groups = dim // self.group_size
        else:
            groups = dim if self.groups == -1 else self.groups
        if groups < 1 or groups > dim:
            raise ValueError(f"groups={self.groups} must be between 1 and the {dim} channels on "
                             f"axis {self.axis} (or -1 for one group per channel)")
        if dim % groups:
            raise ValueError(f"groups={groups} does not divide the {dim} channels on axis "
                             f"{self.axis}; {dim} % {groups} = {dim % groups}")
        self._num_groups = groups
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self.axis: dim})
        affine_weights(self, (dim,))
        super().build(input_shape)

    def call(self, inputs):
        x = stats_input(inputs)  # float16 statistics overflow (tfa issue 2550)
        dim = x.shape[self.axis]
        gamma = tf.cast(self.gamma, x.dtype) if self.scale else tf.ones([dim], x.dtype)
        beta = tf.cast(self.beta, x.dtype) if self.center else tf.zeros([dim], x.dtype)
        outputs = group_norm(x, gamma, beta, self._num_groups, self.axis, self.epsilon)
        return tf.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "groups": self.groups,
            "axis": self.axis,
            "epsilon": self.epsilon,
            **affine_config(self),
            # only when set: configs stay tensorflow-addons' own otherwise
            **({"group_size": self.group_size} if self.group_size is not None else {}),
        }


@keras.utils.register_keras_serializable(package="normbench")
class InstanceNormalization(GroupNormalization):
    """Instance Normalization (Ulyanov et al., 2016, https://arxiv.org/abs/1607.08022).

    GroupNormalization with one channel per group: each sample's channel is normalized over its
    spatial axes. A `groups` argument is accepted and ignored so that configs saved by
    tensorflow-addons (which store the resolved group count) load unchanged.

    Args:
        **kwargs: GroupNormalization's arguments (`axis`, `epsilon`, `center`, `scale`, the
            initializers, regularizers and constraints of `beta` and `gamma`) and Keras layer
            arguments; `groups` and `group_size` are fixed at one channel per group.

    Reference:
        Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for Fast
        Stylization", 2016, https://arxiv.org/abs/1607.08022.
    """

    def __init__(self, **kwargs):
        kwargs.pop("groups", None)
        super().__init__(groups=-1, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["groups"]
        return config
