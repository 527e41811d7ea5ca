"""GroupNorm's arithmetic as one kernel with an analytic gradient, laid out for where it is
traced (eagerly, in a TF graph as its own XLA kernel, or inlined in a jit_compile'd function)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

from normbench.layers.base import sum_over, tf

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
        # Sums as matmuls pay off from ~64k values per sample; below, XLA's reductions win
        # (measured 2026-11 on a 2-core Xeon VM, TF 2.21, `normbench bench layers`).
        as_matmul = xla and ax == rank - 1 and rank > 2 and None not in known \
            and spatial * dim >= 1 << 16
        summed_shape = [sizes[0]] + [1] * len(inner) + [groups, dim // groups]
        block = max((d for d in range(1, 257) if spatial % d == 0), default=1) if as_matmul else 1

        def channel_sums(*tensors, matmul=False):  # per sample and channel, keeping dims
            if not matmul:
                return [sum_over(t, inner) for t in tensors]
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
