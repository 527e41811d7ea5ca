"""The norm registry: name -> what it normalizes over, its implementations, and a layer factory.

Importing this module is light (no TensorFlow): the same table feeds spec validation, the CLI's
help and the parametrized tests. TensorFlow is imported only by `make`, on the training path.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

IMPLS = ("auto", "native", "tfa", "keras")


@dataclass(frozen=True)
class Norm:
    name: str
    summary: str
    impls: tuple[str, ...]  # concrete implementations, in the order `auto` prefers them
    uses_groups: bool = False  # whether the spec's `groups` applies


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
    )
}
ALIASES = {"bn": "batch", "ln": "layer", "gn": "group", "in": "instance", "identity": "none"}


def canonical(name: str) -> str:
    """The registry name for `name` (case-insensitive, aliases allowed); ValueError if unknown."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose from {', '.join(NORMS)} "
                         f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return key


def allowed_impls(norm_type: str) -> tuple[str, ...]:
    return ("auto",) + NORMS[norm_type].impls


def effective_groups(norm_type: str, groups: int | None, channels: int) -> int | None:
    """How many groups a GroupNorm-family norm uses over `channels` channels (None: not GN)."""
    return {"layer": 1, "instance": channels, "group": groups}.get(norm_type)


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
    return requested


def make(norm: Any) -> tuple[Callable[[], Any] | None, str]:
    """(factory making a NEW layer per call, or None for 'none'; the implementation used).

    `norm` is a validated `spec.NormSpec`. A layer object used twice would share weights, so
    model code gets the factory, never a layer.
    """
    impl = resolve_impl(norm.type, norm.impl)
    if impl == "none":
        return None, impl
    kwargs = dict(axis=norm.axis, epsilon=norm.epsilon, center=norm.center, scale=norm.scale,
                  beta_initializer=norm.beta_initializer,
                  gamma_initializer=norm.gamma_initializer)
    if norm.type == "batch":
        import keras

        return functools.partial(keras.layers.BatchNormalization, **kwargs), impl
    if impl == "native":
        from normbench import layers as module
    elif impl == "tfa":
        import tensorflow_addons as tfa

        module = tfa.layers
    else:
        import keras

        module = keras.layers
    if norm.type == "instance" and impl != "keras":
        return functools.partial(module.InstanceNormalization, **kwargs), impl
    groups = {"group": norm.groups, "layer": 1, "instance": -1}[norm.type]
    return functools.partial(module.GroupNormalization, groups=groups, **kwargs), impl
