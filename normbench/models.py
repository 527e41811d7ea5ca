"""build_model(model_spec, norm_factory) -> the tutorial CNN with the chosen norm after its conv."""

from __future__ import annotations

from typing import Any, Callable

from normbench.tf_runtime import quiet_tensorflow

quiet_tensorflow()
import keras  # noqa: E402
import numpy as np  # noqa: E402

from normbench.errors import NormbenchError  # noqa: E402
from normbench.spec import CONV_KERNEL, IMAGE_SHAPE, ModelSpec

NUM_CLASSES = 10


def build_model(model: ModelSpec, norm_factory: Callable[[], Any] | None,
                conv_factory: Callable[..., Any] = keras.layers.Conv2D,
                input_shape: tuple[int, ...] = IMAGE_SHAPE,
                num_classes: int = NUM_CLASSES) -> keras.Model:
    """Conv2D(F, 3x3) -> norm -> Flatten -> Dense(U, relu) -> Dropout -> Dense(10, softmax).

    The tfa "Normalizations" tutorial's network: the conv has no activation, so the norm sees
    raw filter responses. `norm_factory` is None for no normalization; `conv_factory` is
    called as conv(filters, kernel_size) (a weight-standardized conv for ws_group).
    """
    if model.arch == "custom":
        return custom_model(model.factory, norm_factory, input_shape, num_classes)
    if model.arch == "convnet":
        return _convnet(model, norm_factory, conv_factory, input_shape, num_classes)
    if model.arch == "vgg":
        return _vgg(model, norm_factory, conv_factory, input_shape, num_classes)
    norm = [norm_factory()] if norm_factory is not None else []
    return keras.Sequential(
        [keras.Input(shape=input_shape),
         conv_factory(model.conv_filters, CONV_KERNEL),
         *norm,
         keras.layers.Flatten(),
         keras.layers.Dense(model.dense_units, activation="relu"),
         keras.layers.Dropout(model.dropout),
         keras.layers.Dense(num_classes, activation="softmax")],
        name="tutorial_cnn")


def _block(conv, norm_factory) -> list:
    """conv -> norm (if any) -> ReLU."""
    return [conv, *([norm_factory()] if norm_factory is not None else []), keras.layers.ReLU()]


def _head(layers: list, name: str, num_classes: int) -> keras.Model:
    """... -> global average pool -> Dense(classes, softmax), as one Sequential model."""
    return keras.Sequential(layers + [keras.layers.GlobalAveragePooling2D(),
                                      keras.layers.Dense(num_classes, activation="softmax")],
                            name=name)


def _convnet(model: ModelSpec, norm_factory, conv_factory, input_shape, num_classes) -> keras.Model:
    """[Conv2D(w, 3x3, same) -> norm -> ReLU] per width -> global average pool -> Dense(10).

    Every second block has stride 2 (28 -> 14 -> 7 -> 4 with four blocks), so the norm acts at
    several depths and resolutions, which is where batch statistics start to matter.
    """
    layers = [keras.Input(shape=input_shape)]
    for i, width in enumerate(model.widths):
        layers += _block(conv_factory(width, CONV_KERNEL, strides=2 if i % 2 else 1,
                                      padding="same"), norm_factory)
    return _head(layers, "convnet", num_classes)


def _vgg(model: ModelSpec, norm_factory, conv_factory, input_shape, num_classes) -> keras.Model:
    """A plain deep CNN without residuals: per width, Conv2D(w, 3x3, same, no bias when a norm
    follows) -> norm -> ReLU; "M" is a 2x2 max pool; then global average pool -> Dense(10).

    Depth is the number of widths: BN's small-batch noise compounds with every normalized layer,
    which is what the per-replica studies vary.
    """
    layers = [keras.Input(shape=input_shape)]
    for width in model.widths:
        if width == "M":
            layers.append(keras.layers.MaxPooling2D(2))
        else:
            layers += _block(conv_factory(width, CONV_KERNEL, padding="same",
                                          use_bias=norm_factory is None), norm_factory)
    return _head(layers, "vgg", num_classes)


def load_factory(factory: str) -> Callable[..., Any]:
    """The function a `package.module:function` string names (the current directory is on the
    path, as with `python -m`)."""
    import importlib
    import os
    import sys

    module_name, _, attr = factory.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any error it raises on import
        raise NormbenchError(f"model.factory {factory!r}: importing {module_name!r} failed: "
                             f"{type(exc).__name__}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise NormbenchError(f"model.factory {factory!r}: {module_name!r} has no function {attr!r}")
    return function


def custom_model(factory: str, norm_factory, input_shape: tuple[int, ...],
                 num_classes: int) -> keras.Model:
    """Call a user's factory(norm, input_shape, num_classes) and check what it returns."""
    function = load_factory(factory)
    try:
        model = function(norm_factory, tuple(input_shape), num_classes)
    except Exception as exc:
        raise NormbenchError(f"model.factory {factory!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, keras.Model):
        raise NormbenchError(f"model.factory {factory!r} returned {type(model).__name__}, "
                             "not a keras.Model")
    try:
        out = model(np.zeros((2, *input_shape), np.float32), training=False)
    except Exception as exc:
        raise NormbenchError(f"model.factory {factory!r}: its model fails on a batch of shape "
                             f"{(2, *input_shape)}: {type(exc).__name__}: {exc}") from None
    if tuple(out.shape) != (2, num_classes):
        raise NormbenchError(f"model.factory {factory!r}: its model outputs shape "
                             f"{tuple(out.shape)} for 2 images; expected (2, {num_classes}) "
                             "class probabilities")
    return model
