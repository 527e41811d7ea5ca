"""build_model(model_spec, norm_factory) -> the tutorial CNN with the chosen norm after its conv."""

from __future__ import annotations

from typing import Any, Callable

import keras

from normbench.spec import CONV_KERNEL, IMAGE_SHAPE, ModelSpec

NUM_CLASSES = 10


def build_model(model: ModelSpec, norm_factory: Callable[[], Any] | None,
                conv_factory: Callable[..., Any] = keras.layers.Conv2D,
                input_shape: tuple[int, ...] = IMAGE_SHAPE) -> keras.Model:
    """Conv2D(F, 3x3) -> norm -> Flatten -> Dense(U, relu) -> Dropout -> Dense(10, softmax).

    The tfa "Normalizations" tutorial's network: the conv has no activation, so the norm sees
    raw filter responses. `norm_factory` is None for no normalization; `conv_factory` is
    called as conv(filters, kernel_size) (a weight-standardized conv for ws_group).
    """
    norm = [norm_factory()] if norm_factory is not None else []
    return keras.Sequential(
        [keras.Input(shape=input_shape),
         conv_factory(model.conv_filters, CONV_KERNEL),
         *norm,
         keras.layers.Flatten(),
         keras.layers.Dense(model.dense_units, activation="relu"),
         keras.layers.Dropout(model.dropout),
         keras.layers.Dense(NUM_CLASSES, activation="softmax")],
        name="tutorial_cnn")
