"""The norm registry: name -> what it normalizes over, its implementations, and a layer factory.

Importing this module is light (no TensorFlow): the same table feeds spec validation, the CLI's
help and the parametrized tests. TensorFlow is imported only by `make`, on the training path.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Any, Callable

IMPLS = ("auto", "native", "tfa", "keras")


@dataclass(frozen=True)
class Norm:
    name: str
    summary: str
    impls: tuple[str, ...]  # concrete implementations, in the order `auto` prefers them
    uses_groups: bool = False  # whether the spec's `groups` applies
    channels_last_only: bool = False  # axis must be the channel axis (-1 == 3)
    ws_conv: bool = False  # the conv before it uses Weight Standardization


NORMS: dict[str, Norm] = {
    n.name: n
    for n in (
        Norm("none", "no normalization layer", ()),
        Norm("batch", "BatchNormalization: per channel over (N, H, W); moving statistics at test",
             ("keras",)),
        Norm("layer", "LayerNorm as in the GN paper: per sample over (H, W, C) = GroupNorm(groups=1)",
             ("tfa", "native", "keras")),
        Norm("group", "GroupNorm (Wu & He 2018): per sample over (H, W, C/G) for each of G groups",
             ("tfa", "native", "keras"), uses_groups=True),
        Norm("instance", "InstanceNorm: per sample and channel over (H, W) = GroupNorm(groups=C)",
             ("tfa", "native", "keras")),
        Norm("layer_channels", "Keras LayerNormalization(axis=-1): each pixel over its channels",
             ("keras",)),
        Norm("frn", "Filter Response Norm + TLU (Singh & Krishnan 2019): per sample and channel, "
             "x / RMS over (H, W), then max(., tau)", ("native",), channels_last_only=True),
        Norm("rms", "RMSNorm (Zhang & Sennrich 2019): each pixel divided by the RMS of its channels",
             ("native", "keras")),
        Norm("batch_renorm", "Batch Renormalization (Ioffe 2017): BN pulled toward its moving "
             "statistics in training", ("keras",)),
        Norm("ws_group", "Weight-standardized conv + GroupNorm (Qiao et al. 2019)",
             ("tfa", "native", "keras"), uses_groups=True, ws_conv=True),
    )
}
ALIASES = {"bn": "batch", "ln": "layer", "gn": "group", "in": "instance", "identity": "none",
           "brn": "batch_renorm", "ws_gn": "ws_group", "rmsnorm": "rms"}


def canonical(name: str) -> str:
    """The registry name for `name` (case-insensitive, aliases allowed); ValueError if unknown."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in NORMS:
        close = difflib.get_close_matches(key, [*NORMS, *ALIASES], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown norm {name!r}; {hint}choose from {', '.join(NORMS)} "
                         f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return key


def allowed_impls(norm_type: str) -> tuple[str, ...]:
    return ("auto",) + NORMS[norm_type].impls


def effective_groups(norm_type: str, groups: int | None, channels: int) -> int | None:
    """How many groups a GroupNorm-family norm uses over `channels` channels (None: not GN)."""
    return {"layer": 1, "instance": channels, "group": groups, "ws_group": groups}.get(norm_type)


@functools.lru_cache(maxsize=1)
def tfa_status() -> tuple[bool, str]:
    """(usable, reason): whether tensorflow-addons imports and runs its GroupNorm here."""
    if importlib.util.find_spec("tensorflow_addons") is None:
        return False, "tensorflow-addons is not installed (it needs TF 2.13-2.15 with Keras 2)"
    import keras
    import tensorflow as tf

    if int(keras.__version__.split(".")[0]) >= 3:
        return False, (f"tensorflow-addons needs Keras 2 (TF 2.13-2.15); this is TF {tf.__version__}"
                       f" with Keras {keras.__version__}")
    try:
        with warnings.catch_warnings():  # tfa's end-of-life notice: the README says it once
            warnings.simplefilter("ignore")
            import tensorflow_addons as tfa

        tfa.layers.GroupNormalization(groups=1)(tf.zeros((1, 2, 2, 2)))
    except Exception as exc:  # tfa fails in many ways on stacks it does not support
        first = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"tensorflow-addons does not work with TF {tf.__version__}: " \
                      f"{type(exc).__name__}: {first}"
    return True, f"tensorflow-addons {tfa.__version__}"


def resolve_impl(norm_type: str, requested: str) -> str:
    """The implementation that will be used; NormbenchError when `requested` cannot be had."""
    from normbench.errors import NormbenchError

    impls = NORMS[norm_type].impls
    if not impls:
        return "none"
    if requested == "auto":
        for impl in impls:
            if impl != "tfa" or tfa_status()[0]:
                return impl
    if requested == "tfa" and not tfa_status()[0]:
        raise NormbenchError(f"model.norm.impl: 'tfa' is unusable here: {tfa_status()[1]}; "
                             "use impl 'native' (the in-repo drop-in) or 'auto'")
    if requested not in impls:
        raise NormbenchError(f"model.norm.impl: norm {norm_type!r} has no {requested!r} "
                             f"implementation; choose from {', '.join(allowed_impls(norm_type))}")
    if norm_type == "rms" and requested == "keras":
        import keras

        if not hasattr(keras.layers, "RMSNormalization"):
            raise NormbenchError(f"model.norm.impl: Keras {keras.__version__} has no "
                                 "RMSNormalization (Keras >= 3.9 does); use impl 'native'")
    return requested


@dataclass(frozen=True)
class Made:
    """What model code needs for one norm: factories that make NEW layers per call."""

    norm: Callable[[], Any] | None  # None for 'none'
    conv: Callable[..., Any]  # called as conv(filters, kernel_size)
    impl: str


def make(norm: Any) -> Made:
    """Layer factories for a validated `spec.NormSpec`, and the implementation they use.

    A layer object used twice would share weights, so model code gets factories, never layers.
    """
    import keras

    group_size = getattr(norm, "group_size", None)
    # channels per group is normbench's own layer's option (the spec refuses tfa and keras)
    impl = "native" if group_size is not None else resolve_impl(norm.type, norm.impl)
    entry = NORMS[norm.type]
    if entry.ws_conv:
        from normbench.layers import WSConv2D as conv
    else:
        conv = keras.layers.Conv2D
    if impl == "none":
        return Made(None, conv, impl)
    affine = dict(epsilon=norm.epsilon, center=norm.center, scale=norm.scale,
                  beta_initializer=norm.beta_initializer, gamma_initializer=norm.gamma_initializer)
    kwargs = dict(axis=norm.axis, **affine)
    if norm.type in ("batch", "batch_renorm"):  # Keras's layer, through normbench's subclass:
        # ghost batches and the test-time statistics modes; with virtual_batch_size null it
        # computes exactly Keras's
        from normbench.layers import BatchNormalization

        v = getattr(norm, "virtual_batch_size", None)
        return Made(functools.partial(BatchNormalization, momentum=norm.momentum,
                                      virtual_batch_size=v, renorm=norm.type == "batch_renorm",
                                      **kwargs), conv,
                    impl if v is None else "native")
    if norm.type == "layer_channels":
        return Made(functools.partial(keras.layers.LayerNormalization, **kwargs), conv, impl)
    if impl == "native":
        from normbench import layers as module
    elif impl == "tfa":
        import tensorflow_addons as tfa

        module = tfa.layers
    else:
        module = keras.layers
    if norm.type == "frn":  # over the spatial axes of NHWC; the spec's axis is the channel axis
        return Made(functools.partial(module.FilterResponseNormalization, axis=[1, 2], **affine),
                    conv, impl)
    if norm.type == "rms":
        if impl == "keras":  # Keras's layer: a scale only, no center option
            return Made(functools.partial(keras.layers.RMSNormalization, axis=norm.axis,
                                          epsilon=norm.epsilon), conv, impl)
        return Made(functools.partial(module.RMSNormalization, **kwargs), conv, impl)
    if norm.type == "instance" and impl != "keras":
        return Made(functools.partial(module.InstanceNormalization, **kwargs), conv, impl)
    if group_size is not None:
        return Made(functools.partial(module.GroupNormalization, group_size=group_size, **kwargs),
                    conv, impl)
    groups = {"layer": 1, "instance": -1}.get(norm.type, norm.groups)
    return Made(functools.partial(module.GroupNormalization, groups=groups, **kwargs), conv, impl)
