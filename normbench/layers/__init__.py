"""In-repo Keras normalization layers: drop-in replacements for tensorflow-addons' GN and IN, and
the family around them (BN with ghost batches, FRN, RMSNorm, weight-standardized convolution).

One public layer per file, as Keras lays out its own: the GroupNorm kernel apart
(`group_norm_kernel.py`), tfa-era loading in `legacy.py`. Written against the API common to
Keras 2.15 (tf.keras) and Keras 3 with the TensorFlow backend, so the same class runs beside the
real tfa on the legacy stack and without it on current TF. Every name below was importable from
`normbench.layers` when it was one file, and the layers still record it as their module, so files
saved before and after load alike.
"""

from __future__ import annotations

from pathlib import Path  # noqa: F401 - exported by the one-file module: kept importable

from normbench.tf_runtime import quiet_tensorflow
from normbench.layers.base import KERAS_3, keras, tf
from normbench.layers.group_norm_kernel import group_norm, group_norm_kernel, xla_kernels
from normbench.layers.group_normalization import GroupNormalization, InstanceNormalization
from normbench.layers.filter_response_normalization import FilterResponseNormalization
from normbench.layers.rms_normalization import RMSNormalization
from normbench.layers.ws_conv2d import WSConv2D
from normbench.layers.batch_normalization import BatchNormalization, bn_statistics
from normbench.layers.legacy import CUSTOM_OBJECTS, KERAS2_ONLY_ARGUMENTS, load_model

FUSED_BN = True  # BatchNormalization trains through TensorFlow's fused op where it can

for _layer in (GroupNormalization, InstanceNormalization, FilterResponseNormalization,
               RMSNormalization, WSConv2D, BatchNormalization):
    _layer.__module__ = __name__  # what a saved file records, and where pickle finds the class
del _layer

__all__ = ["BatchNormalization", "CUSTOM_OBJECTS", "FUSED_BN", "FilterResponseNormalization",
           "GroupNormalization", "InstanceNormalization", "KERAS2_ONLY_ARGUMENTS", "KERAS_3",
           "RMSNormalization", "WSConv2D", "bn_statistics", "group_norm", "group_norm_kernel",
           "keras", "load_model", "quiet_tensorflow", "tf", "xla_kernels"]
