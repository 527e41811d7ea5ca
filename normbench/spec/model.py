"""`model:` of a spec: the network (`ModelSpec`: arch, widths, a custom factory) and its norm
layers (`NormSpec`), with every grouping resolved against the widths it normalizes."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from normbench import norms
from normbench.spec.fields import Choice, Frozen, float32, positive_finite

# Keras initializer names that exist in Keras 2.15 and 3 and work on 1-D weights (gamma, beta);
# tests check each against the installed Keras.
INITIALIZERS = ("zeros", "ones", "random_normal", "random_uniform", "truncated_normal",
                "variance_scaling", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
                "lecun_normal", "lecun_uniform")
IMAGE_SHAPE = (28, 28, 1)  # every dataset here is 28x28 grey
CONV_KERNEL = 3


def conv_output_shape(conv_filters: int) -> tuple[int, int, int, int]:
    """(N, H, W, C) after the valid 3x3 convolution: the tensor the norm layer sees (N unknown)."""
    side = IMAGE_SHAPE[0] - CONV_KERNEL + 1
    return (-1, side, side, conv_filters)


EVAL_STATS = ("moving", "precise", "batch")
Initializer = Choice(INITIALIZERS, "initializer")
Impl = Choice(norms.IMPLS, "impl")
EvalStats = Choice(EVAL_STATS, "eval_stats")


class NormSpec(Frozen):
    type: str = "group"
    groups: int | None = 5
    # group, ws_group: channels per group instead of a number of groups (the GN paper's other
    # setting: the same group size at every width); the resolved spec then has groups: null
    # (other norms resolve it to null, as they do groups)
    group_size: int | None = Field(None, ge=1, le=1 << 16)
    axis: int = -1
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    beta_initializer: Initializer = "zeros"
    gamma_initializer: Initializer = "ones"
    impl: Impl = "auto"
    momentum: float | None = 0.99  # batch, batch_renorm: moving statistics' update rate
    # batch: normalize each group of this many samples with its own statistics in training
    # (BN per simulated device / ghost BN); None = the whole batch
    virtual_batch_size: int | None = Field(None, ge=1, le=1 << 20)
    # batch: which statistics the headline test accuracy uses (all three are recorded)
    eval_stats: EvalStats = "moving"
    precise_samples: int = Field(4096, ge=1, le=1 << 24)  # PreciseBN: training images used

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {value!r}")
        if value is not None and float32(value) >= 1.0:  # the moving statistics would freeze
            raise ValueError(f"momentum {value!r} rounds to 1.0 in float32; use at most 0.9999999")
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return norms.canonical(value)

    @field_validator("axis")
    @classmethod
    def _axis(cls, value: int) -> int:
        if value not in (-3, -2, -1, 1, 2, 3):
            raise ValueError(f"axis {value} is not a feature axis of the (N, H, W, C) conv output; "
                             "choose from -1 (channels, == 3), 1, 2, 3, -2, -3 (0 is the batch)")
        return value

    @field_validator("epsilon")
    @classmethod
    def _epsilon(cls, value: float) -> float:
        return positive_finite(value)

    @model_validator(mode="before")
    @classmethod
    def _one_grouping(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("group_size") is not None:
            if data.get("groups") is not None:
                raise ValueError("set groups or group_size (channels per group), not both")
            data = {**data, "groups": None}
        return data

    @model_validator(mode="after")
    def _impl_for_type(self) -> NormSpec:
        if self.group_size is not None and norms.NORMS[self.type].uses_groups \
                and self.impl not in ("auto", "native"):
            raise ValueError(f"group_size is normbench's own GroupNormalization's option: use impl "
                             f"'native' or 'auto', not {self.impl!r}")
        if self.type not in BATCH_NORMS and self.virtual_batch_size is not None:
            raise ValueError("virtual_batch_size applies to norms 'batch' and 'batch_renorm' "
                             f"only, not {self.type!r}")
        if self.type not in BATCH_NORMS and self.eval_stats != "moving":
            raise ValueError("eval_stats applies to norms 'batch' and 'batch_renorm' only, "
                             f"not {self.type!r}")
        if norms.NORMS[self.type].channels_last_only and self.axis not in (-1, 3):
            raise ValueError(f"norm {self.type!r} works on the channel axis of NHWC only: "
                             f"axis must be -1 (or 3), got {self.axis}")
        if self.type == "rms" and self.impl == "keras" and (self.center or not self.scale):
            raise ValueError("Keras's RMSNormalization has a scale and no offset: with impl "
                             "'keras' set center: false and scale: true, or use impl 'native'")
        allowed = norms.allowed_impls(self.type)
        if self.impl not in allowed:
            raise ValueError(f"impl {self.impl!r} does not exist for norm {self.type!r}; "
                             f"choose from {', '.join(allowed)}")
        if self.impl == "tfa" and not tfa_installed():
            raise ValueError("impl 'tfa' needs tensorflow-addons, which is not installed "
                             "(it runs only on TF 2.13-2.15); use 'native' or 'auto'")
        return self


def tfa_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow_addons") is not None


ARCHS = ("tutorial", "convnet", "vgg", "custom")
Arch = Choice(ARCHS, "arch")
FACTORY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
BATCH_NORMS = ("batch", "batch_renorm")  # norms with batch statistics: ghost batches, eval_stats
POOL = "M"  # in vgg widths: a 2x2 max pool


class ModelSpec(Frozen):
    arch: Arch = "tutorial"
    conv_filters: int | None = Field(10, ge=1, le=4096)  # tutorial
    dense_units: int | None = Field(128, ge=1, le=65536)  # tutorial
    dropout: float | None = Field(0.2, ge=0.0, lt=1.0)  # tutorial
    widths: list[Annotated[int, Field(ge=1, le=1024)] | Literal["M"]] | None = Field(
        [16, 32, 32, 64], min_length=1, max_length=32)  # convnet, vgg: one conv-norm-ReLU block
    # each; vgg also takes "M" (2x2 max pool)
    # custom: "package.module:function", called as function(norm, input_shape, num_classes),
    # `norm` a factory of the spec's norm layers (None for none); returns a keras.Model whose
    # outputs are class probabilities
    factory: str | None = Field(None, max_length=300)
    norm: NormSpec = Field(default_factory=NormSpec)  # a factory: a default is not deep-copied

    @model_validator(mode="after")
    def _resolve(self) -> ModelSpec:
        """Null what the arch does not use; resolve groups against every normalized width."""
        norm = self.norm
        if self.arch != "custom" and self.factory is not None:
            raise ValueError(f"model.factory applies to arch 'custom' only, not {self.arch!r}")
        if self.arch == "custom":
            if self.factory is None or not FACTORY.fullmatch(self.factory):
                raise ValueError("model.factory: arch 'custom' needs 'package.module:function' "
                                 f"(got {self.factory!r})")
            self._set(conv_filters=None, dense_units=None, dropout=None, widths=None)
            updates = {}
            if norms.NORMS[norm.type].uses_groups and norm.groups is None \
                    and norm.group_size is None:
                raise ValueError(f"model.norm.groups: norm {norm.type!r} needs groups")
            if not norms.NORMS[norm.type].uses_groups:
                updates.update(groups=None, group_size=None)
            if norm.type not in BATCH_NORMS:
                updates["momentum"] = None
            self._set(norm=norm.model_copy(update=updates))
            return self
        if self.arch == "tutorial":
            for field in ("conv_filters", "dense_units", "dropout"):
                if getattr(self, field) is None:
                    raise ValueError(f"model.{field}: arch 'tutorial' needs a value")
            self._set(widths=None)
            dims = [conv_output_shape(self.conv_filters)[norm.axis]]
            what = f"the {dims[0]} channels" if norm.axis in (-1, 3) \
                else f"the size {dims[0]} of axis {norm.axis}"
            source = f"model.conv_filters={self.conv_filters}"
        else:
            if self.widths is None:
                raise ValueError(f"model.widths: arch {self.arch!r} needs a list of block widths")
            if norm.axis not in (-1, 3):
                raise ValueError(f"model.norm.axis: arch {self.arch!r} normalizes the channel "
                                 f"axis only: use -1 (or 3), got {norm.axis}")
            pools = self.widths.count(POOL)
            if self.arch == "convnet" and pools:
                raise ValueError("model.widths: 'M' (max pool) is for arch 'vgg'; convnet "
                                 "downsamples with strides")
            if pools > 4:
                raise ValueError(f"model.widths: {pools} max pools would shrink 28x28 images "
                                 "below 2x2; use at most 4")
            if not [w for w in self.widths if w != POOL]:
                raise ValueError("model.widths: needs at least one conv width")
            self._set(conv_filters=None, dense_units=None, dropout=None)
            dims = [w for w in self.widths if w != POOL]
            what, source = f"every width in {dims}", f"model.widths={dims}"
        updates = {"groups": None}
        if not norms.NORMS[norm.type].uses_groups:
            updates["group_size"] = None  # as groups: a sweep over norms may set it for GN
        elif norm.group_size is not None:
            bad = [d for d in dims if d % norm.group_size]
            if bad:
                raise ValueError(f"model.norm.group_size: {norm.group_size} channels per group "
                                 f"does not divide {what} ({source}): {bad[0]} % "
                                 f"{norm.group_size} = {bad[0] % norm.group_size}")
        else:
            groups = norm.groups
            if groups is None:
                raise ValueError(f"model.norm.groups: norm {norm.type!r} needs groups dividing {what}")
            if groups == -1 and len(set(dims)) == 1:
                groups = dims[0]
            divisors = [d for d in range(1, min(dims) + 1) if all(n % d == 0 for n in dims)]
            if groups not in divisors:
                raise ValueError(f"model.norm.groups: {norm.groups} does not divide {what} "
                                 f"({source}); choose from {', '.join(map(str, divisors))}"
                                 + (", or -1" if len(set(dims)) == 1 else ""))
            updates["groups"] = groups
        if norm.type not in BATCH_NORMS:
            updates["momentum"] = None
        self._set(norm=norm.model_copy(update=updates))
        return self

    def _set(self, **fields) -> None:
        # The instance is still being validated and is frozen only to users.
        for name, value in fields.items():
            object.__setattr__(self, name, value)


def first_norm_channels(model: ModelSpec) -> int | None:
    """Size of the axis the (first) norm layer splits: conv filters, or the first width (None
    for a custom model: known once it is built)."""
    if model.arch == "custom":
        return None
    if model.arch != "tutorial":
        return next(w for w in model.widths if w != POOL)
    return conv_output_shape(model.conv_filters)[model.norm.axis]
