"""Your own model in normbench: a small residual CNN whose every normalization is the spec's.

    model:
      arch: custom
      factory: "examples.custom_model:build"   # package.module:function, on the Python path
      norm: {type: group, groups: 8}             # or from the current directory

normbench calls build(norm, input_shape, num_classes): `norm()` makes one normalization layer
of the spec's kind (None for `type: none`), `input_shape` is the data's (H, W, C) and
`num_classes` counts its labels. It returns a keras.Model whose outputs are class probabilities.
"""

from __future__ import annotations

import keras


def build(norm, input_shape, num_classes, widths=(16, 32)):
    def normalize(x):
        return norm()(x) if norm is not None else x

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=norm is None)(inputs)
    x = keras.layers.ReLU()(normalize(x))
    for width in widths:
        shortcut = keras.layers.Conv2D(width, 1, strides=2, use_bias=False)(x)
        y = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=norm is None)(x)
        y = keras.layers.ReLU()(normalize(y))
        y = keras.layers.Conv2D(width, 3, padding="same", use_bias=norm is None)(y)
        x = keras.layers.ReLU()(keras.layers.Add()([normalize(y), shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="small_resnet")
