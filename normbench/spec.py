"""YAML experiment specs -> frozen, validated pydantic models. Never imports TensorFlow."""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
MAX_SPEC_BYTES = 1 << 20


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


def _positive_finite(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a finite number > 0, got {value!r}")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NormSpec(_Frozen):
    type: str = "group"
    groups: int | None = 5
    axis: int = -1
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    beta_initializer: str = "zeros"
    gamma_initializer: str = "ones"
    impl: str = "auto"
    momentum: float | None = 0.99  # batch, batch_renorm: moving statistics' update rate

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {value!r}")
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

    @field_validator("beta_initializer", "gamma_initializer")
    @classmethod
    def _initializer(cls, value: str) -> str:
        return _choice(value.lower(), INITIALIZERS, "initializer")

    @field_validator("impl")
    @classmethod
    def _impl(cls, value: str) -> str:
        return _choice(value.lower(), norms.IMPLS, "impl")

    @model_validator(mode="after")
    def _impl_for_type(self) -> NormSpec:
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


ARCHS = ("tutorial", "convnet")


class ModelSpec(_Frozen):
    arch: str = "tutorial"
    conv_filters: int | None = Field(10, ge=1, le=4096)  # tutorial
    dense_units: int | None = Field(128, ge=1, le=65536)  # tutorial
    dropout: float | None = Field(0.2, ge=0.0, lt=1.0)  # tutorial
    widths: list[Annotated[int, Field(ge=1, le=1024)]] | None = Field(
        [16, 32, 32, 64], min_length=1, max_length=8)  # convnet: one conv-norm-ReLU block each
    norm: NormSpec = NormSpec()

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        return _choice(value.lower(), ARCHS, "arch")

    @model_validator(mode="after")
    def _resolve(self) -> ModelSpec:
        """Null what the arch does not use; resolve groups against every normalized width."""
        norm = self.norm
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
                raise ValueError("model.widths: arch 'convnet' needs a list of block widths")
            if norm.axis not in (-1, 3):
                raise ValueError(f"model.norm.axis: arch 'convnet' normalizes the channel axis "
                                 f"only: use -1 (or 3), got {norm.axis}")
            self._set(conv_filters=None, dense_units=None, dropout=None)
            dims = list(self.widths)
            what, source = f"every width in {dims}", f"model.widths={dims}"
        updates = {"groups": None}
        if norms.NORMS[norm.type].uses_groups:
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
        if norm.type not in ("batch", "batch_renorm"):
            updates["momentum"] = None
        self._set(norm=norm.model_copy(update=updates))
        return self

    def _set(self, **fields) -> None:
        # The instance is still being validated and is frozen only to users.
        for name, value in fields.items():
            object.__setattr__(self, name, value)


LR_SCALINGS = ("none", "linear")


class TrainSpec(_Frozen):
    epochs: int = Field(1, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1 << 20)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_scaling: str = "none"  # linear: learning_rate * batch_size / base_batch_size (Goyal 2017)
    base_batch_size: int = Field(32, ge=1, le=1 << 20)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    # How the train step is compiled: true = the whole step under XLA; false = plain TF graph;
    # auto = the fastest measured per device (CPU: graph with XLA-compiled norm and optimizer
    # kernels, 1.5x the whole-step XLA here; GPU: whole step). Falls back to graph if XLA fails.
    jit_compile: bool | Literal["auto"] = "auto"
    # Train steps per call into TensorFlow (an in-graph loop): fewer Python round trips, no
    # per-step host syncs. Progress and NaN checks happen between calls.
    steps_per_execution: int = Field(64, ge=1, le=1_000_000)

    @field_validator("jit_compile", mode="before")
    @classmethod
    def _jit_compile(cls, value: Any) -> bool | str:
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() == "auto"):
            return value if isinstance(value, bool) else "auto"
        raise ValueError(f"expected true, false or auto, got {value!r}")

    @field_validator("lr_scaling")
    @classmethod
    def _lr_scaling(cls, value: str) -> str:
        return _choice(value.lower(), LR_SCALINGS, "lr_scaling")

    @property
    def effective_learning_rate(self) -> float:
        if self.lr_scaling == "linear":
            return self.learning_rate * self.batch_size / self.base_batch_size
        return self.learning_rate

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, value: str) -> str:
        return _choice(value.lower(), OPTIMIZERS, "optimizer")

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, value: float) -> float:
        return _positive_finite(value)


class Spec(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    dataset: str = "mnist"
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        return _choice(value.lower(), DATASETS, "dataset")


# ---------------------------------------------------------------------------------------------
# YAML in, YAML out


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            try:
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def parse_yaml(text: str, where: str) -> Any:
    try:
        # A few lines of nested aliases ("billion laughs") expand to gigabytes; a spec has
        # nothing to repeat, so anchors and aliases are refused outright.
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise NormbenchError(f"{where}: YAML alias *{event.anchor} (line {mark.line + 1}):"
                                     " anchors and aliases are not allowed in a spec")
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except RecursionError:
        raise NormbenchError(f"{where}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise NormbenchError(f"{where}: invalid YAML{at}: {problem}") from None


def read_text(path: Path) -> str:
    """The file's text, or a NormbenchError saying in one line why it cannot be a spec."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise NormbenchError(f"{path}: is a directory, not a spec file")
        if not path.is_file():  # a FIFO or device would block or never end
            raise NormbenchError(f"{path}: not a regular file")
        if size > MAX_SPEC_BYTES:
            raise NormbenchError(f"{path}: {size} bytes is too large for a spec (limit {MAX_SPEC_BYTES})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise NormbenchError(f"{path}: no such file") from None
    except PermissionError:
        raise NormbenchError(f"{path}: permission denied") from None
    except OSError as exc:
        raise NormbenchError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if b"\0" in data:
        raise NormbenchError(f"{path}: binary file, not a YAML spec")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NormbenchError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def apply_override(doc: dict, override: str) -> None:
    """Apply one `-s path=value` (value parsed as YAML) to the raw spec mapping, in place."""
    path, sep, raw = override.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(k.strip() for k in keys):
        raise NormbenchError(f"-s {override!r}: expected PATH=VALUE, e.g. -s train.epochs=3")
    value = parse_yaml(raw, f"-s {override!r}") if raw.strip() else raw
    if keys[0] == "sweep" and len(keys) > 1:  # sweep axes are dotted paths themselves
        keys = ["sweep", ".".join(keys[1:])]
    _set_path(doc, keys, value, f"-s {override!r}")


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
    if msg.startswith("model.norm.groups:"):  # raised at model level, already names its field
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


MAX_RUNS = 10_000


def _set_path(doc: dict, keys: list[str], value: Any, what: str) -> None:
    node = doc
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise NormbenchError(f"{what}: {'.'.join(keys[:depth + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def parse_sweep_option(option: str) -> tuple[str, list]:
    """`--sweep path=a,b,c` -> (path, [a, b, c]), each value read as YAML."""
    path, sep, raw = option.partition("=")
    if not sep or not path.strip() or not raw.strip():
        raise NormbenchError(f"--sweep {option!r}: expected PATH=V1,V2,..., e.g. "
                             "--sweep train.batch_size=2,8,32")
    return path.strip(), [parse_yaml(v, f"--sweep {option!r}") for v in raw.split(",")]


def _grid(doc: dict, where: str, sweeps: list[tuple[str, list]]) -> tuple[dict[str, list], list]:
    sweep = doc.pop("sweep", None)
    seeds = doc.pop("seeds", None)
    if sweep is None:
        sweep = {}
    if not isinstance(sweep, dict):
        raise NormbenchError(f"{where}: sweep: expected a mapping of field paths to lists, e.g. "
                             "{train.batch_size: [2, 8, 32]}")
    sweep = dict(sweep)
    sweep.update(sweeps)
    for key, values in sweep.items():
        if not isinstance(key, str) or not isinstance(values, list) or not values:
            raise NormbenchError(f"{where}: sweep.{key}: expected a non-empty list of values")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise NormbenchError(f"{where}: sweep.{key}: repeated values in {values}")
    if seeds is None:
        seeds = []
    elif isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
        raise NormbenchError(f"{where}: seeds: expected a count (e.g. 3) or a list of seeds")
    elif isinstance(seeds, int):
        if not 1 <= seeds <= 1000:
            raise NormbenchError(f"{where}: seeds: a count must be 1..1000, got {seeds}")
        seeds = list(range(seeds))
    elif not seeds or len(set(map(str, seeds))) != len(seeds) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in seeds):
        raise NormbenchError(f"{where}: seeds: a list must hold distinct integers >= 0, got {seeds}")
    return sweep, seeds


def _short(value: Any, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_runs(path: str | Path, overrides: tuple[str, ...] | list[str] = (),
              sweeps: tuple[str, ...] | list[str] = ()) -> list[Spec]:
    """Every run one spec file describes: its sweep grid x seeds (or just itself), validated.

    Overrides apply to every run; `sweeps` (`path=a,b,c`) add or replace sweep axes. Invalid
    grid points are all reported at once, one per line, before anything runs.
    """
    path = Path(path)
    where = str(path)
    doc = parse_yaml(read_text(path), where)
    if not isinstance(doc, dict):
        return [validate(doc, where)]
    for override in overrides:
        apply_override(doc, override)
    doc.setdefault("name", path.stem)
    axes, seeds = _grid(doc, where, [parse_sweep_option(o) for o in sweeps])
    points = list(itertools.product(*axes.values()))
    if len(points) * max(1, len(seeds)) > MAX_RUNS:
        raise NormbenchError(f"{where}: the sweep has {len(points) * max(1, len(seeds))} runs "
                             f"(limit {MAX_RUNS})")
    runs, errors = [], []
    for point in points:
        for seed in seeds or [None]:
            run_doc = copy.deepcopy(doc)
            assignment = dict(zip(axes, point))
            if seed is not None:
                assignment["train.seed"] = seed
            label = ", ".join(f"{k}={_short(v)}" for k, v in assignment.items())
            for key, value in assignment.items():
                _set_path(run_doc, key.split("."), value, f"{where}: sweep {key}")
            try:
                runs.append(validate(run_doc, f"{where}" + (f" [{label}]" if label else "")))
            except NormbenchError as exc:
                errors.append(str(exc))
    if errors:
        raise NormbenchError("\n".join(dict.fromkeys(errors)))
    return runs


def load(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Spec:
    """Read, override and validate a spec file that describes one run."""
    runs = load_runs(path, overrides)
    if len(runs) != 1:
        raise NormbenchError(f"{path}: describes {len(runs)} runs (a sweep); expected one")
    return runs[0]


def to_dict(spec: Spec) -> dict:
    return spec.model_dump(mode="json")


def to_yaml(spec: Spec) -> str:
    return yaml.safe_dump(to_dict(spec), sort_keys=False)


def spec_hash(spec: Spec, *, without_seed: bool = False) -> str:
    """sha256 of the resolved spec (optionally ignoring the seed): the experiment's identity."""
    data = to_dict(spec)
    if without_seed:
        data["train"].pop("seed")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def first_norm_channels(model: ModelSpec) -> int:
    """Size of the axis the (first) norm layer splits: conv filters, or the first width."""
    if model.arch == "convnet":
        return model.widths[0]
    return conv_output_shape(model.conv_filters)[model.norm.axis]


def for_smoke(spec: Spec) -> Spec:
    """The spec a --smoke run trains: one epoch (data.load slices the data)."""
    return spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 1})})


def summary(spec: Spec) -> str:
    """One line for people: what this spec trains."""
    norm = spec.model.norm
    detail = f" (groups={norm.groups})" if norm.groups is not None else ""
    t = spec.train
    arch = f" in a convnet {spec.model.widths}" if spec.model.arch == "convnet" else ""
    return (f"{spec.name}: {norm.type} norm{detail}{arch}, impl {norm.impl}, on {spec.dataset}, "
            f"{t.epochs} epoch(s) x batch {t.batch_size}, {t.optimizer} "
            f"lr={t.effective_learning_rate:g}, "
            f"seed {t.seed}")
