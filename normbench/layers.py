"""In-repo Keras normalization layers: drop-in replacements for tensorflow-addons' GN and IN.

Written against the API common to Keras 2.15 (tf.keras) and Keras 3 with the TensorFlow backend,
so the same class runs beside the real tfa on the legacy stack and without it on current TF.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import shutil
import tempfile
import zipfile
from pathlib import Path

from normbench.tf_runtime import quiet_tensorflow

tf = quiet_tensorflow()  # first, so TF's C++ start-up lines stay quiet
import keras  # noqa: E402

_LOW_PRECISION = (tf.float16, tf.bfloat16)
KERAS_3 = int(keras.__version__.split(".")[0]) >= 3
FUSED_BN = True  # BatchNormalization trains through TensorFlow's fused op where it can


def _no_input_autocast(layer: keras.layers.Layer) -> None:
    """Let float32 inputs reach call() uncast under a mixed policy (Keras 3 and Keras 2 spell it
    differently): statistics of values beyond float16's range must not overflow on the way in."""
    if KERAS_3:
        layer.autocast = False
    else:
        layer._autocast = False


def _mean(t: tf.Tensor, axes: list[int]) -> tf.Tensor:
    """Mean over `axes`, one axis at a time: every float32 sum stays as short as one dimension.

    One reduction over a whole 600x400x8 group can be off by 3e-5 (relative), and by how much
    depends on the batch size TensorFlow sees (tfa issue 2745); means of means are exact here.
    """
    for axis in sorted(axes, reverse=True):
        t = tf.reduce_mean(t, axis=axis, keepdims=True)
    return t


def _sum(t: tf.Tensor, axes: list[int]) -> tf.Tensor:
    """Sum over `axes`, one axis at a time (see _mean)."""
    for axis in sorted(axes, reverse=True):
        t = tf.reduce_sum(t, axis=axis, keepdims=True)
    return t


# Inside a tf.function, GN's arithmetic runs as one XLA-compiled kernel per direction: TF graph
# mode would launch ~20 separate ops over the tensor. Trainers turn it off with xla_kernels(False).
_XLA_KERNELS: contextvars.ContextVar[bool] = contextvars.ContextVar("xla_kernels", default=True)


@contextlib.contextmanager
def xla_kernels(enabled: bool):
    """Within this block, layers traced into a graph use XLA kernels only if `enabled`."""
    token = _XLA_KERNELS.set(enabled)
    try:
        yield
    finally:
        _XLA_KERNELS.reset(token)


def _in_xla_function() -> bool:
    """Whether the graph being traced belongs to a jit_compile'd tf.function (TF's own test)."""
    try:
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TF moved its internals
        return False
    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def group_norm(x, gamma, beta, groups: int, axis: int, epsilon: float):
    """GN of x (float32 or float64) with per-channel gamma and beta, the fastest way for where it
    is traced: eagerly as plain ops; inside a jit_compile'd function inlined in XLA's layout;
    in a TF graph as its own XLA kernel (unless xla_kernels(False)); else as plain graph ops."""
    if tf.executing_eagerly():
        kernel = group_norm_kernel(groups, axis, epsilon)
    elif _in_xla_function():
        kernel = group_norm_kernel(groups, axis, epsilon, xla=True)
    else:
        use = _XLA_KERNELS.get()
        kernel = group_norm_kernel(groups, axis, epsilon, xla=use, jit=use)
    return kernel(x, gamma, beta)


@functools.lru_cache(maxsize=None)
def group_norm_kernel(groups: int, axis: int, epsilon: float, *, xla: bool = False,
                      jit: bool = False):
    """f(x, gamma, beta) -> GN(x): statistics per sample and group, in x's dtype, with an
    analytic gradient (two reduction passes and one elementwise pass, instead of the ~30 ops
    autodiff makes of the forward pass). Shared by every layer with the same settings.

    xla: lay the sums out for XLA on CPU, whose fused multi-input reductions run at a tenth of
    its matrix-vector speed: channels-last sums become one batched ones-vector matmul.
    jit: compile the kernel with XLA (forward and gradient each one cluster)."""

    def kernel(x, gamma, beta):
        rank = x.shape.rank
        ax = axis % rank
        dim = x.shape[ax]
        dynamic = tf.shape(x)
        sizes = [d if d is not None else dynamic[i] for i, d in enumerate(x.shape)]
        grouped_shape = sizes[:ax] + [groups, dim // groups] + sizes[ax + 1:]
        inner = [i for i in range(1, rank + 1) if i not in (ax, ax + 1)]  # per sample, channel
        weight_shape = [1] * (rank + 1)
        weight_shape[ax:ax + 2] = [groups, dim // groups]
        first = tuple(slice(None) if i in (0, ax) else slice(0, 1) for i in range(rank + 1))
        known = [x.shape[i] for i in range(1, rank) if i != ax]
        spatial = (tf.reduce_prod([sizes[i] for i in range(1, rank) if i != ax])
                   if None in known else math.prod(known))
        count = (tf.cast(spatial, x.dtype) if None in known else float(spatial)) * (dim // groups)
        # Sums as matmuls pay off from ~64k values per sample; below, XLA's reductions win.
        as_matmul = xla and ax == rank - 1 and rank > 2 and None not in known \
            and spatial * dim >= 1 << 16
        summed_shape = [sizes[0]] + [1] * len(inner) + [groups, dim // groups]
        block = max((d for d in range(1, 257) if spatial % d == 0), default=1) if as_matmul else 1

        def channel_sums(*tensors, matmul=False):  # per sample and channel, keeping dims
            if not matmul:
                return [_sum(t, inner) for t in tensors]
            # Blocks of `block` values summed by a matmul, then the block sums: two short float32
            # sums (one dot over 65,536 values was 25x less accurate than the reductions).
            rows = sizes[0] * (spatial // block)
            flat = tf.concat([tf.reshape(t, [rows, block, dim]) for t in tensors], axis=-1)
            partial = tf.matmul(tf.ones([rows, 1, block], x.dtype), flat)
            sums = tf.reduce_sum(tf.reshape(partial, [sizes[0], spatial // block, -1]), axis=1)
            return [tf.reshape(t, summed_shape) for t in tf.split(sums, len(tensors), axis=-1)]

        def group_sum(t):  # per sample and group, keeping dims
            return tf.reduce_sum(channel_sums(t, matmul=as_matmul)[0], axis=ax + 1, keepdims=True)

        @tf.custom_gradient
        def normalize(grouped, gamma, beta):
            # Shift each group by one of its own values before averaging: the float32 sum of
            # values with a large common offset (mean 1e4, std 1e-2) would lose the spread.
            centered = grouped - grouped[first]
            xc = centered - group_sum(centered) / count
            inv = tf.math.rsqrt(group_sum(tf.square(xc)) / count + tf.cast(epsilon, x.dtype))
            # xc * (inv * gamma), not tfa's fold x * inv - mean * inv, which with a large mean
            # subtracts two large products and keeps only a few bits of the result.
            outputs = xc * (inv * gamma) + beta

            def grad(dy):
                dy_sum, dy_xc = channel_sums(dy, dy * xc, matmul=as_matmul)
                d_gamma = tf.reduce_sum(dy_xc * inv, axis=0, keepdims=True)
                d_beta = tf.reduce_sum(dy_sum, axis=0, keepdims=True)
                mean_g = tf.reduce_sum(dy_sum * gamma, axis=ax + 1, keepdims=True) / count
                mean_gx = tf.reduce_sum(dy_xc * gamma, axis=ax + 1, keepdims=True) * (inv / count)
                return (dy * gamma - mean_g - xc * (inv * mean_gx)) * inv, d_gamma, d_beta

            return outputs, grad

        outputs = normalize(tf.reshape(x, grouped_shape), tf.reshape(gamma, weight_shape),
                            tf.reshape(beta, weight_shape))
        return tf.reshape(outputs, dynamic)

    return tf.function(kernel, jit_compile=True, autograph=False) if jit else kernel


def _feature_norm_setup(layer, axis: int, epsilon: float) -> None:
    if axis == 0:
        raise ValueError(f"axis=0 is the batch axis: {type(layer).__name__} normalizes features "
                         "of each sample; use BatchNormalization to normalize over the batch")
    layer.supports_masking = True
    _no_input_autocast(layer)
    layer.axis = int(axis)
    layer.epsilon = float(epsilon)


def _affine_weights(layer, shape) -> None:
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


def _affine_config(layer) -> dict:
    return {"center": layer.center, "scale": layer.scale,
            "beta_initializer": keras.initializers.serialize(layer.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(layer.gamma_initializer),
            "beta_regularizer": keras.regularizers.serialize(layer.beta_regularizer),
            "gamma_regularizer": keras.regularizers.serialize(layer.gamma_regularizer),
            "beta_constraint": keras.constraints.serialize(layer.beta_constraint),
            "gamma_constraint": keras.constraints.serialize(layer.gamma_constraint)}


def _affine_init(layer, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                 gamma_regularizer, beta_constraint, gamma_constraint) -> None:
    layer.center, layer.scale = bool(center), bool(scale)
    layer.beta_initializer = keras.initializers.get(beta_initializer)
    layer.gamma_initializer = keras.initializers.get(gamma_initializer)
    layer.beta_regularizer = keras.regularizers.get(beta_regularizer)
    layer.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
    layer.beta_constraint = keras.constraints.get(beta_constraint)
    layer.gamma_constraint = keras.constraints.get(gamma_constraint)


def _apply_affine(layer, normalized: tf.Tensor) -> tf.Tensor:
    if layer.scale:
        normalized = normalized * tf.cast(layer.gamma, normalized.dtype)
    if layer.center:
        normalized = normalized + tf.cast(layer.beta, normalized.dtype)
    return normalized


def _stats_input(inputs) -> tf.Tensor:
    x = tf.convert_to_tensor(inputs)
    return tf.cast(x, tf.float32) if x.dtype in _LOW_PRECISION else x


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

    Arguments and defaults are tensorflow-addons' (groups=2, epsilon=1e-3); weights are named
    `gamma` and `beta`. Under a mixed-precision policy, inputs are not cast down on the way in,
    statistics are computed in float32 (float64 for float64 inputs) and the output has the
    layer's compute dtype.
    """

    def __init__(self, groups=2, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, **kwargs):
        super().__init__(**kwargs)
        _feature_norm_setup(self, axis, epsilon)
        self.groups = int(groups)
        _affine_init(self, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
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
        groups = dim if self.groups == -1 else self.groups
        if groups < 1 or groups > dim:
            raise ValueError(f"groups={self.groups} must be between 1 and the {dim} channels on "
                             f"axis {self.axis} (or -1 for one group per channel)")
        if dim % groups:
            raise ValueError(f"groups={groups} does not divide the {dim} channels on axis "
                             f"{self.axis}; {dim} % {groups} = {dim % groups}")
        self._num_groups = groups
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self.axis: dim})
        _affine_weights(self, (dim,))
        super().build(input_shape)

    def call(self, inputs):
        x = _stats_input(inputs)  # float16 statistics overflow (tfa issue 2550)
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
            **_affine_config(self),
        }


@keras.utils.register_keras_serializable(package="normbench")
class InstanceNormalization(GroupNormalization):
    """Instance Normalization (Ulyanov et al., 2016, https://arxiv.org/abs/1607.08022).

    GroupNormalization with one channel per group: each sample's channel is normalized over its
    spatial axes. A `groups` argument is accepted and ignored so that configs saved by
    tensorflow-addons (which store the resolved group count) load unchanged.
    """

    def __init__(self, **kwargs):
        kwargs.pop("groups", None)
        super().__init__(groups=-1, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["groups"]
        return config


@keras.utils.register_keras_serializable(package="normbench")
class FilterResponseNormalization(keras.layers.Layer):
    """Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan, 2019,
    https://arxiv.org/abs/1911.09737).

    Per sample and channel: `nu2 = mean(x^2)` over the spatial axes (no mean is subtracted),
    `y = max(gamma * x / sqrt(nu2 + |eps|) + beta, tau)` with a learned per-channel threshold tau.
    Like InstanceNorm it never mixes samples; unlike it, it keeps each channel's mean.

    Arguments are tensorflow-addons' (epsilon=1e-6, axis=[1, 2] on NHWC, learned_epsilon, ...),
    whose layer lacked the TLU: `use_tlu=False` reproduces it exactly (weights gamma, beta of shape
    (1, 1, 1, C) as there); center/scale may drop beta/gamma.
    """

    def __init__(self, epsilon=1e-6, axis=(1, 2), beta_initializer="zeros", gamma_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, learned_epsilon=False, learned_epsilon_constraint=None,
                 use_tlu=True, tau_initializer="zeros", center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        if sorted(axis) != [1, 2]:
            raise ValueError(f"axis must be the spatial axes [1, 2] of an NHWC input, got {list(axis)}")
        self.supports_masking = True
        _no_input_autocast(self)
        self.epsilon = float(epsilon)
        self.axis = [1, 2]
        self.learned_epsilon = bool(learned_epsilon)
        self.learned_epsilon_constraint = keras.constraints.get(learned_epsilon_constraint)
        self.use_tlu = bool(use_tlu)
        self.tau_initializer = keras.initializers.get(tau_initializer)
        _affine_init(self, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                     gamma_regularizer, beta_constraint, gamma_constraint)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4 or None in shape[1:]:
            raise ValueError(f"FilterResponseNormalization needs NHWC inputs with known H, W, C; "
                             f"got shape {shape}")
        weight_shape = (1, 1, 1, shape[-1])
        _affine_weights(self, weight_shape)
        self.tau = self.eps_learned = None
        if self.use_tlu:
            self.tau = self.add_weight(name="tau", shape=weight_shape, initializer=self.tau_initializer)
        if self.learned_epsilon:
            self.eps_learned = self.add_weight(name="learned_epsilon", shape=(1,),
                                               initializer=keras.initializers.Constant(1e-4),
                                               constraint=self.learned_epsilon_constraint)
        super().build(input_shape)

    def call(self, inputs):
        x = _stats_input(inputs)
        epsilon = tf.abs(tf.cast(self.epsilon, x.dtype))
        if self.learned_epsilon:
            epsilon = epsilon + tf.abs(tf.cast(self.eps_learned, x.dtype))
        nu2 = _mean(tf.square(x), self.axis)
        outputs = _apply_affine(self, x * tf.math.rsqrt(nu2 + epsilon))
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
                **_affine_config(self)}


@keras.utils.register_keras_serializable(package="normbench")
class RMSNormalization(keras.layers.Layer):
    """RMSNorm (Zhang & Sennrich, 2019, https://arxiv.org/abs/1910.07467).

    `y = x / sqrt(mean(x^2 over axis) + epsilon) * gamma (+ beta if center)`: LayerNorm over
    `axis` without re-centering. In a CNN with axis=-1 each pixel is scaled by the RMS of its
    channels. The paper has no beta, hence center=False by default.
    """

    def __init__(self, axis=-1, epsilon=1e-6, center=False, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, **kwargs):
        super().__init__(**kwargs)
        _feature_norm_setup(self, axis, epsilon)
        _affine_init(self, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                     gamma_regularizer, beta_constraint, gamma_constraint)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if not -len(shape) <= self.axis < len(shape) or shape[self.axis] is None:
            raise ValueError(f"axis {self.axis} must be a feature axis of known size; got shape {shape}")
        weight_shape = [1] * len(shape)
        weight_shape[self.axis] = shape[self.axis]
        _affine_weights(self, (shape[self.axis],))
        self._weight_shape = weight_shape
        super().build(input_shape)

    def call(self, inputs):
        x = _stats_input(inputs)
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
                **_affine_config(self)}


@keras.utils.register_keras_serializable(package="normbench")
class WSConv2D(keras.layers.Conv2D):
    """Conv2D with Weight Standardization (Qiao et al., 2019, https://arxiv.org/abs/1903.10520).

    Each output filter's kernel is standardized over (kh, kw, in_channels) before convolving:
    `W_hat = (W - mean) / sqrt(var + ws_epsilon)`. Paired with GroupNorm it was the GN paper's
    strongest follow-up at small batch sizes. The stored kernel stays unstandardized.
    """

    def __init__(self, *args, ws_epsilon=1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_epsilon = float(ws_epsilon)

    def convolution_op(self, inputs, kernel):
        kernel = tf.convert_to_tensor(kernel)
        mean, variance = tf.nn.moments(kernel, axes=[0, 1, 2], keepdims=True)
        standardized = (kernel - mean) * tf.math.rsqrt(variance + tf.cast(self.ws_epsilon, kernel.dtype))
        return super().convolution_op(inputs, standardized)

    def get_config(self):
        return {**super().get_config(), "ws_epsilon": self.ws_epsilon}


# ---------------------------------------------------------------------------------------------
# BatchNorm with per-replica ("ghost") batch statistics, and the statistics BN uses at test time

# How BatchNormalization layers of this module normalize when called with training=False:
# "moving" (Keras's moving averages), "batch" (statistics of the batch at hand, in groups of
# virtual_batch_size as in training, nothing updated), or "collect" (as "batch", and also
# accumulating each layer's exact input moments, for PreciseBN).
_BN_EVAL: contextvars.ContextVar[str] = contextvars.ContextVar("bn_eval", default="moving")


@contextlib.contextmanager
def bn_statistics(mode: str):
    """Within this block, normbench's BatchNormalization layers traced or called with
    training=False use `mode` ('moving', 'batch' or 'collect') for their statistics."""
    if mode not in ("moving", "batch", "collect"):
        raise ValueError(f"unknown BN statistics mode {mode!r}")
    token = _BN_EVAL.set(mode)
    try:
        yield
    finally:
        _BN_EVAL.reset(token)


class _Untracked:
    """A box Keras does not look into: what it holds is never tracked as a layer's weights."""

    __slots__ = ("value",)

    def __init__(self, value=None):
        self.value = value


@keras.utils.register_keras_serializable(package="normbench")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization, with statistics per group of `virtual_batch_size` samples.

    In training, each consecutive group of `virtual_batch_size` samples of a batch is normalized
    with its own mean and variance: BN as computed per GPU without synchronization (Wu & He 2018,
    Sec. 4.1), or "ghost batch norm" (Hoffer et al. 2017). The moving mean and variance estimate
    the *whole batch's* statistics, as stock BN records them: mean of the groups' means, and mean
    of the groups' variances plus the variance of their means (averaging the groups' variances
    alone, as tf.keras 2's `virtual_batch_size` did, is biased low). With
    `virtual_batch_size=None` the layer is exactly Keras's. Inference uses the moving statistics
    (or, inside `bn_statistics('batch')`, those of the batch at hand, in groups of the same size).
    The batch size must be a multiple of `virtual_batch_size`; the layer keeps it as
    `ghost_batch_size` (tf.keras 2's base class owns an attribute of the other name).
    """

    def __init__(self, virtual_batch_size=None, **kwargs):
        # tf.keras 2 has an argument (and attribute) of this name with a biased moving variance
        # and 5-D weights: it is never passed on, and the value lives in `ghost_batch_size`
        super().__init__(**kwargs)
        if virtual_batch_size is not None and int(virtual_batch_size) < 1:
            raise ValueError(f"virtual_batch_size must be >= 1, got {virtual_batch_size}")
        self.ghost_batch_size = None if virtual_batch_size is None else int(virtual_batch_size)
        # (sum, sum of squares, count) variables of 'collect' mode, held where Keras does not
        # track them: tf.keras 2 would make them weights, and saved models would not load
        self._collect_state = _Untracked()

    @property
    def collected(self):
        return self._collect_state.value

    def _channel_axis(self, rank: int) -> int:
        axis = self.axis[0] if isinstance(self.axis, (list, tuple)) else self.axis
        return axis % rank

    def _group_moments(self, x):
        """x regrouped as (groups, v, ...) and each group's mean and variance (keepdims)."""
        rank = x.shape.rank
        channel = self._channel_axis(rank)
        v = self.ghost_batch_size
        shape = tf.shape(x)
        if v is None:
            grouped = x[None]
        else:
            tf.debugging.assert_equal(shape[0] % v, 0, message=(
                f"BatchNormalization: the batch size must be a multiple of virtual_batch_size={v}"))
            grouped = tf.reshape(x, tf.concat([[shape[0] // v, v], shape[1:]], 0))
        axes = [1] + [a + 1 for a in range(1, rank) if a != channel]
        mean, variance = tf.nn.moments(grouped, axes, keepdims=True)
        return grouped, mean, variance

    def _normalize_in_groups(self, x):
        grouped, mean, variance = self._group_moments(x)
        rank = x.shape.rank
        shape = [1] * (rank + 1)
        shape[self._channel_axis(rank) + 1] = -1
        y = (grouped - mean) * tf.math.rsqrt(variance + tf.cast(self.epsilon, x.dtype))
        if self.scale:
            y = y * tf.reshape(tf.cast(self.gamma, x.dtype), shape)
        if self.center:
            y = y + tf.reshape(tf.cast(self.beta, x.dtype), shape)
        return tf.reshape(y, tf.shape(x)), mean, variance

    def prepare_collect(self) -> None:
        """Create the accumulators for 'collect' mode (eagerly, before any tf.function traces)."""
        channels = int(self.moving_mean.shape[0])
        if self.collected is None:
            zeros = lambda: tf.Variable(tf.zeros([channels], tf.float64), trainable=False)  # noqa: E731
            self._collect_state.value = (zeros(), zeros(),
                                         tf.Variable(tf.zeros([], tf.float64), trainable=False))

    def reset_collected(self) -> None:
        if self.collected is not None:
            for variable in self.collected:
                variable.assign(tf.zeros_like(variable))

    def call(self, inputs, training=None, mask=None):
        mode = "train" if training else _BN_EVAL.get()
        if mode == "train" and self._fusable(inputs, mask):
            return self._fused_train(inputs)
        if mode == "moving" or (mode == "train" and (self.ghost_batch_size is None
                                                     or not self.trainable)):
            return super().call(inputs, training=training, mask=mask)
        # statistics in float32 at least (float16 overflows), float64 kept as float64
        x = tf.cast(inputs, tf.float64 if inputs.dtype == tf.float64 else tf.float32)
        if mode == "train" and self.renorm:
            return tf.cast(self._renormalize_in_groups(x), self.compute_dtype)
        y, mean, variance = self._normalize_in_groups(x)
        if mode == "train":
            self._update_moving(*self._whole_moments(mean, variance))
        elif mode == "collect":  # exact moments of every input this layer sees
            rank = x.shape.rank
            channels = x.shape[self._channel_axis(rank)]
            axes = [a for a in range(rank) if a != self._channel_axis(rank)]
            x64 = tf.cast(x, tf.float64)
            total, squares, count = self.collected
            total.assign_add(tf.reduce_sum(x64, axis=axes))
            squares.assign_add(tf.reduce_sum(tf.square(x64), axis=axes))
            count.assign_add(tf.cast(tf.size(x64) // channels, tf.float64))
        return tf.cast(y, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        """Whether a training call can run as TensorFlow's fused BN op (Keras 3 computes BN as
        ~15 separate ops, each a pass over the activations; tf.keras 2 fuses on its own)."""
        return (FUSED_BN and KERAS_3 and self.trainable and self.ghost_batch_size is None
                and not self.renorm and mask is None and not getattr(self, "synchronized", False)
                and inputs.dtype == tf.float32 and self.compute_dtype == "float32"
                and inputs.shape.rank == 4 and self._channel_axis(4) == 3)

    def _fused_train(self, x):
        """Keras's training-mode BN in two fused ops (forward, gradient): the batch's biased
        moments per channel, y = (x - mean) * rsqrt(var + epsilon) * gamma + beta, and the
        moving averages updated as Keras does (TensorFlow's op returns the variance with Bessel's
        correction, undone here)."""
        channels = x.shape[3]
        gamma = self.gamma if self.scale else tf.ones([channels], tf.float32)
        beta = self.beta if self.center else tf.zeros([channels], tf.float32)
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.convert_to_tensor(gamma), offset=tf.convert_to_tensor(beta),
            mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32),
            epsilon=float(self.epsilon), data_format="NHWC", is_training=True)
        shape = tf.shape(x)
        n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        self._update_moving(mean, variance * tf.maximum(n - 1.0, 0.0) / n)
        return y

    def _whole_moments(self, mean, variance):
        """The whole batch's (mean, variance) per channel from its groups' keepdims moments:
        the mean of the means, and E[var_g] + Var[mean_g] (every group holds the same count)."""
        rank = mean.shape.rank - 1
        keep = [0] + [a + 1 for a in range(rank) if a != self._channel_axis(rank)]
        whole_mean = tf.reduce_mean(mean, axis=keep)
        spread = tf.reduce_mean(tf.square(mean - tf.reduce_mean(mean, axis=0, keepdims=True)),
                                axis=keep)
        return whole_mean, tf.reduce_mean(variance, axis=keep) + spread

    def _update_moving(self, mean, variance):
        dtype = self.moving_mean.dtype
        momentum = tf.cast(self.momentum, dtype)
        self.moving_mean.assign(self.moving_mean * momentum
                                + tf.cast(mean, dtype) * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum
                                    + tf.cast(variance, dtype) * (1.0 - momentum))

    def _renormalize_in_groups(self, x):
        """Batch Renormalization (Ioffe 2017) per group of v samples: each group's normalized
        values are corrected by its own r = sigma_g / sigma and d = (mu_g - mu) / sigma (against
        the layer's renorm averages, clipped, no gradient), so every group sees the same affine
        map in value. The renorm and moving averages then take the whole batch's moments, with
        Keras's update rules (moving variance from the moving standard deviation)."""
        grouped, mean, variance = self._group_moments(x)
        rank = x.shape.rank
        shape = [1] * (rank + 1)
        shape[self._channel_axis(rank) + 1] = -1
        eps = tf.cast(self.epsilon, x.dtype)
        stddev = tf.sqrt(variance + eps)
        renorm_mean = tf.reshape(tf.cast(self.renorm_mean, x.dtype), shape)
        renorm_stddev = tf.maximum(tf.reshape(tf.cast(self.renorm_stddev, x.dtype), shape),
                                   tf.sqrt(eps))
        r, d = stddev / renorm_stddev, (mean - renorm_mean) / renorm_stddev
        clipping = self.renorm_clipping or {}
        if clipping.get("rmin") is not None:
            r = tf.maximum(r, tf.cast(clipping["rmin"], x.dtype))
        if clipping.get("rmax") is not None:
            r = tf.minimum(r, tf.cast(clipping["rmax"], x.dtype))
        if clipping.get("dmax") is not None:
            dmax = tf.cast(clipping["dmax"], x.dtype)
            d = tf.clip_by_value(d, -dmax, dmax)
        y = (grouped - mean) / stddev * tf.stop_gradient(r) + tf.stop_gradient(d)
        if self.scale:
            y = y * tf.reshape(tf.cast(self.gamma, x.dtype), shape)
        if self.center:
            y = y + tf.reshape(tf.cast(self.beta, x.dtype), shape)
        whole_mean, whole_variance = self._whole_moments(mean, variance)
        whole_stddev = tf.sqrt(whole_variance + eps)
        average = lambda var, value, m: var.assign(  # noqa: E731
            var * tf.cast(m, var.dtype) + tf.cast(value, var.dtype) * (1.0 - tf.cast(m, var.dtype)))
        average(self.renorm_mean, whole_mean, self.renorm_momentum)
        average(self.renorm_stddev, whole_stddev, self.renorm_momentum)
        average(self.moving_mean, whole_mean, self.momentum)
        moving_stddev = average(self.moving_stddev, whole_stddev, self.momentum)
        self.moving_variance.assign(tf.nn.relu(tf.square(moving_stddev)
                                               - tf.cast(self.epsilon, moving_stddev.dtype)))
        return tf.reshape(y, tf.shape(x))

    def precise_statistics(self):
        """(mean, variance) of everything collected since the last reset (population moments)."""
        total, squares, count = self.collected
        mean = total / count
        return tf.cast(mean, tf.float32), tf.cast(squares / count - tf.square(mean), tf.float32)

    def get_config(self):
        config = super().get_config()
        config["virtual_batch_size"] = self.ghost_batch_size
        return config


# ---------------------------------------------------------------------------------------------
# Loading models saved in the tensorflow-addons era

CUSTOM_OBJECTS = {
    "Addons>GroupNormalization": GroupNormalization,
    "Addons>InstanceNormalization": InstanceNormalization,
}
# tf.keras 2 layers whose config Keras 3's own class cannot read: a BatchNormalization saved with
# tf.keras 2's virtual_batch_size becomes normbench's (same argument, an unbiased moving variance
# from then on; the saved moving statistics load unchanged).
KERAS2_ONLY_ARGUMENTS = {"BatchNormalization": ("virtual_batch_size", BatchNormalization)}


def _translate_config(node, reshaped: set | None = None):
    """tfa's class names -> normbench's, and (on Keras 3) what Keras 3 cannot read of Keras 2.
    Names of layers whose saved weights must be flattened are added to `reshaped`."""
    reshaped = set() if reshaped is None else reshaped
    if isinstance(node, list):
        return [_translate_config(n, reshaped) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _translate_config(v, reshaped) for k, v in node.items()}
    if node.get("class_name") in CUSTOM_OBJECTS:  # HDF5 configs name the registered class
        node["class_name"] = f"normbench>{CUSTOM_OBJECTS[node['class_name']].__name__}"
    if node.get("registered_name") in CUSTOM_OBJECTS:  # .keras configs: module + registered name
        node["module"] = __name__
        node["registered_name"] = f"normbench>{node['class_name']}"
    config = node.get("config")
    special = KERAS2_ONLY_ARGUMENTS.get(node.get("class_name"))
    if str(node.get("registered_name") or "").startswith("normbench>"):
        special = None  # normbench's own layer, saved with its own (unshifted) axis
    if special and isinstance(config, dict) and config.get(special[0]) is not None:
        # tf.keras 2 inserted a virtual-batch dimension at index 1 when it built the layer and
        # saved that shifted axis, which it cannot load itself: the axis is one lower
        axis = config.get("axis")
        axis = axis if isinstance(axis, list) else [axis]
        if len(axis) == 1 and isinstance(axis[0], int) and axis[0] > 0:
            config["axis"] = axis[0] - 1 if KERAS_3 else [axis[0] - 1]
        if KERAS_3:  # Keras 3's BN has no such argument, an int axis and (C,) weights
            node["class_name"] = f"normbench>{special[1].__name__}"
            if "module" in node:  # .keras archive
                node["module"] = __name__
                node["registered_name"] = f"normbench>{special[1].__name__}"
            for keras2_only in ("adjustment", "fused", "renorm_clipping", "renorm_momentum"):
                if config.get(keras2_only) is None or keras2_only == "fused":
                    config.pop(keras2_only, None)
            reshaped.add(config.get("name"))
    if not KERAS_3:
        return node
    if node.get("module") == "keras.src.engine.functional":  # Keras 2's home of Functional
        node["module"] = "keras.src.models.functional"
    config = node.get("config")
    if isinstance(config, dict) and "batch_input_shape" in config and "module" in node:
        shape = config.pop("batch_input_shape")  # Keras 3 keeps input shapes on InputLayer only
        if node.get("class_name") == "InputLayer":
            config["batch_shape"] = shape
            config.pop("ragged", None)
    return node


def _translated_copy(path, directory):
    """A copy of the saved model at `path` whose config names normbench's layers."""
    import h5py  # Keras's own dependency; only this path needs it

    copy = Path(directory) / Path(path).name
    reshaped: set = set()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            items = [(item, archive.read(item)) for item in archive.infolist()]
        config = next((json.loads(d) for i, d in items if i.filename == "config.json"), None)
        translated = _translate_config(config, reshaped) if config is not None else None
        with zipfile.ZipFile(copy, "w") as out:
            for item, data in items:
                if item.filename == "config.json":
                    data = json.dumps(translated).encode()
                elif item.filename.endswith(".h5") and reshaped:
                    weights = Path(directory) / "weights.h5"
                    weights.write_bytes(data)
                    with h5py.File(weights, "r+") as f:
                        _flatten_weights(f, reshaped)
                    data = weights.read_bytes()
                out.writestr(item, data)
    elif h5py.is_hdf5(path):
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            if "model_config" in f.attrs:
                raw = f.attrs["model_config"]
                config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
                f.attrs["model_config"] = json.dumps(_translate_config(config, reshaped))
                _flatten_weights(f, reshaped)
    else:
        raise ValueError(f"{path}: neither a .keras archive nor an HDF5 file")
    return copy


def _flatten_weights(f, names: set) -> None:
    """Datasets under a group named after one of `names`: (1, ..., 1, C) becomes (C,)."""
    if not names:
        return
    found = []
    f.visititems(lambda key, item: found.append(key) if hasattr(item, "shape")
                 and set(key.split("/")) & names and len(item.shape) > 1 else None)
    for key in found:
        data = f[key][()]
        attrs = dict(f[key].attrs)
        del f[key]
        f.create_dataset(key, data=data.reshape(-1))
        f[key].attrs.update(attrs)


def load_model(path, *, compile: bool = False, safe_mode: bool = True):
    """Load a Keras model whose GroupNormalization/InstanceNormalization came from tfa.

    `Addons>GroupNormalization` and `Addons>InstanceNormalization` become normbench's layers
    (same arguments, weights and outputs), also where tfa itself is installed. Works for HDF5
    (`.h5`) files and `.keras` archives; a `.keras` archive written by Keras 2 (TF <= 2.15) has its
    config translated for Keras 3. The file itself is never modified. Compiling is off by default:
    tfa-era optimizer states rarely restore across Keras versions.
    """
    kwargs = {"safe_mode": safe_mode} if KERAS_3 else {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = _translated_copy(path, tmp)
        try:
            return keras.models.load_model(copy, custom_objects=CUSTOM_OBJECTS, compile=compile,
                                           **kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: Keras {keras.__version__} could not load it ({str(exc).splitlines()[0]});"
                " if it is a Keras 2 .keras archive, on TF <= 2.15 re-save it as HDF5 "
                "(model.save('model.h5')) and load that instead") from None
