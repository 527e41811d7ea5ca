"""Conv2D with Weight Standardization (Qiao et al., 2019, https://arxiv.org/abs/1903.10520),
GroupNorm's usual partner at small batch."""

from __future__ import annotations

from normbench.layers.base import keras, tf


@keras.utils.register_keras_serializable(package="normbench")
class WSConv2D(keras.layers.Conv2D):
    """Conv2D with Weight Standardization (Qiao et al., 2019, https://arxiv.org/abs/1903.10520).

    Each output filter's kernel is standardized over (kh, kw, in_channels) before convolving:
    `W_hat = (W - mean) / sqrt(var + ws_epsilon)`. Paired with GroupNorm it was the GN paper's
    strongest follow-up at small batch sizes. The stored kernel stays unstandardized.

    Args:
        *args: Keras Conv2D's positional arguments (`filters`, `kernel_size`, ...).
        ws_epsilon: added to each filter's variance before the square root.
        **kwargs: Keras Conv2D's keyword arguments (`strides`, `padding`, `use_bias`, ...).

    Reference:
        Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with Batch-Channel Normalization
        and Weight Standardization", 2019, https://arxiv.org/abs/1903.10520.
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
