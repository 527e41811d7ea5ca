"""BatchNormalization with per-replica ("ghost") batch statistics, and the statistics BN uses
at test time (moving averages, the batch at hand, or PreciseBN's collected moments)."""

from __future__ import annotations

import contextlib
import contextvars

from normbench.layers.base import KERAS_3, keras, tf


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

    Speed (2026-12, 2 cores, TF 2.21, `normbench bench studynorms`): training takes TensorFlow's
    fused BN op, ghost groups folded into the channel axis; ghost v=64 ran at 0.94x plain BN's
    samples/s on the study model at batch 64, v=2 at 0.63x.

    Args:
        virtual_batch_size: samples per group whose statistics normalize them in training (a
            divisor of the batch size); None (the default) is plain BatchNormalization.
        **kwargs: Keras's BatchNormalization arguments, unchanged: `axis` (-1), `momentum`
            (0.99) of the moving statistics, `epsilon` (1e-3), `center`, `scale`, the
            initializers of `beta`, `gamma`, `moving_mean` and `moving_variance`, the
            regularizers and constraints of `beta` and `gamma`, `synchronized`, and Keras layer
            arguments (`name`, `dtype`, `trainable`, ...).

    Reference:
        Ioffe & Szegedy, "Batch Normalization", ICML 2015, https://arxiv.org/abs/1502.03167;
        Hoffer, Hubara & Soudry, "Train longer, generalize better" (ghost batches), NeurIPS
        2017, https://arxiv.org/abs/1705.08741; Wu & He, "Group Normalization", ECCV 2018,
        https://arxiv.org/abs/1803.08494 (BN per GPU, Sec. 4.1).
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
        # which training computation was traced last: fused (TF's fused BN op, ghost batches
        # folded into channels), per-group (the ghost formula) or keras (Keras's own); records
        # say which ran
        self._trained_with = _Untracked()

    @property
    def training_path(self) -> str | None:
        return self._trained_with.value

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
            self._trained_with.value = "fused"
            return self._fused_train(inputs)
        if mode == "train" and self._fusable_ghost(inputs, mask):
            self._trained_with.value = "fused"
            return self._fused_ghost_train(inputs)
        if mode == "moving" or (mode == "train" and (self.ghost_batch_size is None
                                                     or not self.trainable)):
            if mode == "train":
                self._trained_with.value = "keras"
            return super().call(inputs, training=training, mask=mask)
        if mode == "train":
            self._trained_with.value = "per-group"
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
        import normbench.layers as package  # the switch is the package's: layers.FUSED_BN = False

        return (package.FUSED_BN and KERAS_3 and self.trainable and self.ghost_batch_size is None
                and not self.renorm and mask is None and not getattr(self, "synchronized", False)
                and inputs.dtype == tf.float32 and self.compute_dtype == "float32"
                and inputs.shape.rank == 4 and self._channel_axis(4) == 3)

    def _fusable_ghost(self, inputs, mask) -> bool:
        """Whether ghost batches can run through the fused op (their groups folded into the
        channel axis); the same conditions as `_fusable`, on either Keras."""
        import normbench.layers as package

        return (package.FUSED_BN and self.trainable and self.ghost_batch_size is not None
                and not self.renorm and mask is None and not getattr(self, "synchronized", False)
                and inputs.dtype == tf.float32 and self.compute_dtype == "float32"
                and inputs.shape.rank == 4 and self._channel_axis(4) == 3
                and None not in tuple(inputs.shape[1:]))

    def _fused_ghost_train(self, x):
        """Ghost batches through TensorFlow's fused BN op: the k groups of v samples are folded
        into the channel axis, (k*v, H, W, C) -> (v, H, W, k*C), so that the op's per-channel
        statistics are each group's per-channel statistics; gamma and beta are tiled k times,
        and the result is unfolded. Two transposes each way replace the ~15 separate ops of the
        unfused path. The moving statistics are the whole batch's, as in `_whole_moments`."""
        v = self.ghost_batch_size
        _, h, w, c = x.shape
        n = tf.shape(x)[0]
        tf.debugging.assert_equal(n % v, 0, message=(
            f"BatchNormalization: the batch size must be a multiple of virtual_batch_size={v}"))
        k = n // v
        folded = tf.reshape(tf.transpose(tf.reshape(x, [k, v, h, w, c]), [1, 2, 3, 0, 4]),
                            [v, h, w, k * c])
        gamma = self.gamma if self.scale else tf.ones([c], tf.float32)
        beta = self.beta if self.center else tf.zeros([c], tf.float32)
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=folded, scale=tf.tile(tf.convert_to_tensor(gamma), [k]),
            offset=tf.tile(tf.convert_to_tensor(beta), [k]),
            mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32),
            epsilon=float(self.epsilon), data_format="NHWC", is_training=True)
        y = tf.reshape(tf.transpose(tf.reshape(y, [v, h, w, k, c]), [3, 0, 1, 2, 4]),
                       tf.shape(x))
        count = float(v * h * w)  # the op's variance has Bessel's correction: undone here
        means = tf.reshape(mean, [k, c])
        variances = tf.reshape(variance, [k, c]) * (max(count - 1.0, 0.0) / count)
        whole = tf.reduce_mean(means, axis=0)
        spread = tf.reduce_mean(tf.square(means - whole), axis=0)
        self._update_moving(whole, tf.reduce_mean(variances, axis=0) + spread)
        return y

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
