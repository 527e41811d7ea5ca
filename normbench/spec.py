"""The experiment schema: frozen, validated pydantic models, and a run's identity. No TensorFlow.

Reading YAML files, `-s` overrides and sweep expansion live in `grid.py`."""

from __future__ import annotations

import difflib
import math
import re
import struct
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from normbench import norms
from normbench.errors import NormbenchError

DATASETS = ("mnist", "mnist-10k", "fashion-mnist")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
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


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value in choices:
        return value
    close = difflib.get_close_matches(value, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown {what} {value!r}; {hint}choose from {', '.join(choices)}")


def Choice(choices: tuple[str, ...], what: str):  # noqa: N802 - a type, spelled as one
    """A string field that is one of `choices`, read case-insensitively: `impl: Choice(IMPLS,
    "impl") = "auto"`. A bad value names the field's kind, suggests the closest choice and lists
    them all; a value that is not a string says what was expected."""
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return _choice(value.lower(), choices, what)

    return Annotated[str, BeforeValidator(check)]


FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32: below it values flush to 0


def _float32(value: float) -> float:
    """`value` as the float32 the model computes with."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.inf


def _positive_finite(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a finite number > 0, got {value!r}")
    if value < FLOAT32_TINY or not math.isfinite(_float32(value)):
        raise ValueError(f"{value!r} is not representable in float32, the compute dtype "
                         f"(it becomes {_float32(value)!r}); use a value in "
                         f"[{FLOAT32_TINY:.3g}, 3.4e38]")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


EVAL_STATS = ("moving", "precise", "batch")
Initializer = Choice(INITIALIZERS, "initializer")
Impl = Choice(norms.IMPLS, "impl")
EvalStats = Choice(EVAL_STATS, "eval_stats")


class NormSpec(_Frozen):
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
        if value is not None and _float32(value) >= 1.0:  # the moving statistics would freeze
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
        return _positive_finite(value)

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
        if self.impl == "tfa" and not _tfa_installed():
            raise ValueError("impl 'tfa' needs tensorflow-addons, which is not installed "
                             "(it runs only on TF 2.13-2.15); use 'native' or 'auto'")
        return self


def _tfa_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow_addons") is not None


ARCHS = ("tutorial", "convnet", "vgg", "custom")
Arch = Choice(ARCHS, "arch")
FACTORY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
NPZ_PREFIX = "npz:"
BATCH_NORMS = ("batch", "batch_renorm")  # norms with batch statistics: ghost batches, eval_stats
POOL = "M"  # in vgg widths: a 2x2 max pool


class ModelSpec(_Frozen):
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


LR_SCALINGS = ("none", "linear", "sqrt")
SCHEDULES = ("constant", "step", "cosine")
Optimizer = Choice(OPTIMIZERS, "optimizer")
LrScaling = Choice(LR_SCALINGS, "lr_scaling")
Schedule = Choice(SCHEDULES, "schedule")


class TrainSpec(_Frozen):
    epochs: int = Field(1, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1 << 20)
    optimizer: Optimizer = "adam"
    learning_rate: float = 1e-3
    lr_scaling: LrScaling = "none"  # linear: learning_rate * batch_size / base_batch_size (Goyal 2017)
    base_batch_size: int = Field(32, ge=1, le=1 << 20)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    # How the train step is compiled: true = the whole step under XLA; false = plain TF graph;
    # auto = the fastest measured per device (CPU: graph with XLA-compiled norm and optimizer
    # kernels, 1.5x the whole-step XLA here; GPU: whole step). Falls back to graph if XLA fails.
    jit_compile: bool | Literal["auto"] = "auto"
    # Train steps per call into TensorFlow (an in-graph loop): fewer Python round trips, no
    # per-step host syncs. Progress and NaN checks happen between calls.
    steps_per_execution: int = Field(64, ge=1, le=1_000_000)
    # SGD's momentum and Nesterov (ignored by adam/rmsprop: validated against them)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    # L2 weight decay added to the loss (coupled, as PyTorch's SGD and the GN paper: 1e-4);
    # decay_norm_params also decays the norm layers' gamma and beta (the paper does)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    decay_norm_params: bool = True
    # learning-rate schedule over the whole run (in optimizer steps): constant, step (x lr_decay
    # at each milestone, a fraction of training) or cosine (to 0); linear warmup first
    schedule: Schedule = "constant"
    milestones: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field([0.5, 0.75], max_length=16)
    lr_decay: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0, le=1000.0)
    # a fixed number of optimizer steps instead of `epochs` (the equal-steps protocol)
    steps: int | None = Field(None, ge=1, le=100_000_000)
    # held-out validation (the last fraction of a seeded shuffle of the training set) and test
    # error recorded every `eval_every` epochs; None = only at the end
    eval_every: int | None = Field(None, ge=1, le=100_000)
    validation_split: float = Field(0.0, ge=0.0, lt=0.5)
    # the held-out images: false, the last fraction of a shuffle drawn from the seed (each seed
    # holds out its own); true, a fixed class-stratified draw, the same for every seed (a tuning
    # stage and every study seed then hold out the same images)
    validation_fixed: bool = False
    # train on a fixed, class-stratified subset of this many training images, the same for every
    # seed (its sha256 is in the record); null: all of them. Held-out images come from the subset
    train_subset: int | None = Field(None, ge=10, le=1 << 30)
    # write the trained model as model.keras into the run directory (not part of the run id)
    save_model: bool = Field(False, json_schema_extra={"identity": False})

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, value: list[float]) -> list[float]:
        if value != sorted(set(value)):
            raise ValueError(f"milestones must increase strictly, got {value}")
        return value

    @model_validator(mode="after")
    def _optimizer_options(self) -> TrainSpec:
        if self.optimizer != "sgd" and (self.momentum or self.nesterov):
            raise ValueError(f"momentum and nesterov are SGD's options; optimizer is "
                             f"{self.optimizer!r}")
        if self.nesterov and not self.momentum:
            raise ValueError("nesterov needs momentum > 0")
        if self.validation_fixed and not self.validation_split:
            raise ValueError("validation_fixed needs validation_split > 0 (the fraction held out)")
        return self

    @field_validator("jit_compile", mode="before")
    @classmethod
    def _jit_compile(cls, value: Any) -> bool | str:
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() == "auto"):
            return value if isinstance(value, bool) else "auto"
        raise ValueError(f"expected true, false or auto, got {value!r}")

    @property
    def effective_learning_rate(self) -> float:
        """The peak learning rate after lr_scaling (linear: Goyal et al. 2017, for SGD; sqrt:
        the usual rule for Adam)."""
        ratio = self.batch_size / self.base_batch_size
        if self.lr_scaling == "linear":
            return self.learning_rate * ratio
        if self.lr_scaling == "sqrt":
            return self.learning_rate * math.sqrt(ratio)
        return self.learning_rate

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, value: float) -> float:
        return _positive_finite(value)


class SlurmSpec(_Frozen):
    """Where `--executor slurm` submits (not part of the run id; --slurm-* options override)."""

    partition: str | None = Field(None, pattern=r"^[A-Za-z0-9_.,-]{1,128}$")
    time_min: int = Field(60, ge=1, le=60 * 24 * 30)  # per run
    cpus_per_task: int = Field(2, ge=1, le=1024)
    mem_gb: float = Field(8.0, gt=0.0, le=16384.0)
    array_parallelism: int = Field(32, ge=1, le=10_000)  # runs queued or running at once
    # a job pending only because its nodes are down or drained (or its partition is down) is
    # cancelled after this many minutes and reported not done; its run stays to do
    unavailable_min: float = Field(10.0, gt=0.0, le=60.0 * 24 * 30)


class StudySpec(_Frozen):
    """What a study declares before its runs, for `normbench report` (not part of the run id;
    each run's saved spec keeps it, which is how the report knows it came first)."""

    # |difference| in points of test error below which two cells count as equivalent (two
    # one-sided tests at the report's multiplicity-adjusted level); none: no equivalence verdict
    equivalence_margin: float | None = Field(None, gt=0.0, le=100.0)
    # the study's metric: the mean test error over the evaluations made in the last this
    # fraction of training steps (e.g. 0.25; the final evaluation is always among them); null:
    # the GN paper's median of the last 5 evaluations (or the final test error without
    # periodic evaluations)
    metric_last: float | None = Field(None, gt=0.0, le=1.0)


class TuneSpec(_Frozen):
    """A study's tuning stage (`normbench tune`): the learning-rate grid each group of runs
    chooses from on held-out data, before any study run (not part of the run id; the rate it
    chooses is). The selection rule: the lowest held-out error at the final evaluation, ties to
    the smaller rate; a best rate at an edge of the grid adds the next rate past it (the ratio of
    the two grid values at that edge), up to `extend` times."""

    learning_rate: list[Annotated[float, Field(gt=0.0, le=1e6)]] = Field([], max_length=32)
    by: list[str] = Field(["model.norm.type"], min_length=1, max_length=8)  # a rate per value
    seed: int = Field(1000, ge=0, le=2**32 - 1)  # the tuning runs' seed: none of the study's
    extend: int = Field(1, ge=0, le=8)
    # cells (field path -> value) tuned on their own and reported, never applied to the study's
    # runs: e.g. {model.norm.virtual_batch_size: 2} for BN at its smallest v
    sensitivity: list[dict[str, Any]] = Field([], max_length=8)
    # set by normbench when it applies the frozen choice: the sha256 of the tuning records
    records_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("learning_rate")
    @classmethod
    def _grid(cls, value: list[float]) -> list[float]:
        if value != sorted(set(value)):
            raise ValueError(f"the grid must increase strictly, got {value}")
        if len(value) == 1:
            raise ValueError(f"a grid of one rate ({value[0]:g}) chooses nothing; give two or "
                             "more (or none: no tuning)")
        return [_positive_finite(v) for v in value]


class Spec(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    dataset: str = "mnist"
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    # labels for finding runs again (--where tags=x, normbench rm); not part of the run id
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]] = Field(
        [], max_length=32, json_schema_extra={"identity": False})
    slurm: SlurmSpec = Field(default_factory=SlurmSpec, json_schema_extra={"identity": False})
    study: StudySpec = Field(default_factory=StudySpec, json_schema_extra={"identity": False})
    tune: TuneSpec = Field(default_factory=TuneSpec, json_schema_extra={"identity": False})

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if value.startswith(NPZ_PREFIX):  # a user's arrays: x_train, y_train, x_test, y_test
            path = value[len(NPZ_PREFIX):]
            if not path.strip() or len(path) > 4096 or "\0" in path:
                raise ValueError("npz:PATH needs the path of a .npz file")
            return value
        return _choice(value.lower(), DATASETS, "dataset")

    @model_validator(mode="after")
    def _virtual_batch(self) -> Spec:
        v, batch = self.model.norm.virtual_batch_size, self.train.batch_size
        if v is not None and batch % v:
            raise ValueError(f"model.norm.virtual_batch_size: {v} does not divide "
                             f"train.batch_size={batch}; use a divisor of it")
        return self


def _valid_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] | None = Spec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model else None
        model = field.annotation if field and isinstance(field.annotation, type) else None
    return list(model.model_fields) if model and issubclass(model, BaseModel) else []


def _describe(err: dict) -> str:
    loc = ".".join(str(p) if str(p) else "''" for p in err["loc"])
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(err["loc"])
        close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{loc}: unknown key; {hint}valid keys here: {', '.join(valid)}"
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith(("model.norm.groups:", "model.norm.virtual_batch_size:", "model.widths:",
                       "model.norm.axis:")):  # raised at model level, already names its field
        return msg
    if err["type"] == "string_pattern_mismatch" and err["loc"] == ("name",):
        msg = "use 1-64 letters, digits, '-' or '_' (the name becomes part of file names)"
    shown = repr(err["input"])
    if err["type"] in ("value_error",) or shown in msg:
        return f"{loc}: {msg}"
    return f"{loc}: {msg}, got {shown[:80]}"


def validate(doc: Any, where: str) -> Spec:
    if doc is None:
        raise NormbenchError(f"{where}: empty spec; expected a mapping such as 'name: my-run'")
    if not isinstance(doc, dict):
        raise NormbenchError(f"{where}: a spec must be a mapping of keys to values, "
                             f"got a {type(doc).__name__}")
    try:
        return Spec.model_validate(doc)
    except ValidationError as exc:
        raise NormbenchError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors())) from None



def to_dict(spec: Spec) -> dict:
    return spec.model_dump(mode="json")


def to_yaml(spec: Spec) -> str:
    return yaml.safe_dump(to_dict(spec), sort_keys=False)


# A field that changes nothing a run trains (tracking, saving, executor options) is declared with
# Field(..., json_schema_extra=OUTSIDE_IDENTITY) and never enters a run id.
OUTSIDE_IDENTITY = {"identity": False}


def first_norm_channels(model: ModelSpec) -> int | None:
    """Size of the axis the (first) norm layer splits: conv filters, or the first width (None
    for a custom model: known once it is built)."""
    if model.arch == "custom":
        return None
    if model.arch != "tutorial":
        return next(w for w in model.widths if w != POOL)
    return conv_output_shape(model.conv_filters)[model.norm.axis]


def for_smoke(spec: Spec, *, keep_epochs: bool = False) -> Spec:
    """The spec a --smoke run trains: one epoch (data.load slices the data), unless the user
    set the epochs explicitly (`-s train.epochs=N` wins over --smoke)."""
    if keep_epochs:
        return spec
    return spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 1})})


def summary(spec: Spec) -> str:
    """One line for people: what this spec trains."""
    norm = spec.model.norm
    detail = (f" (groups={norm.groups})" if norm.groups is not None else
              f" ({norm.group_size} channels per group)" if norm.group_size is not None else "")
    t = spec.train
    arch = {"tutorial": "", "custom": f" in {spec.model.factory}"}.get(
        spec.model.arch, f" in a {spec.model.arch} {spec.model.widths}")
    if norm.virtual_batch_size is not None:
        detail += f" (statistics per {norm.virtual_batch_size} samples)"
    return (f"{spec.name}: {norm.type} norm{detail}{arch}, impl {norm.impl}, on {spec.dataset}, "
            f"{f'{t.steps} steps' if t.steps else f'{t.epochs} epoch(s)'} x batch {t.batch_size}, "
            f"{t.optimizer} "
            f"lr={t.effective_learning_rate:g}, "
            f"seed {t.seed}")
