"""A whole spec (`Spec`), read from a YAML document with one-line error messages (`validate`),
written back (`to_dict`, `to_yaml`), made into its --smoke form (`for_smoke`) and described in one
line (`summary`)."""

from __future__ import annotations

import difflib
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from normbench.errors import NormbenchError
from normbench.spec.fields import Frozen, choice
from normbench.spec.model import ModelSpec
from normbench.spec.outside import SlurmSpec, StudySpec, TuneSpec
from normbench.spec.training import TrainSpec

DATASETS = ("mnist", "mnist-10k", "fashion-mnist")
NPZ_PREFIX = "npz:"


class Spec(Frozen):
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
        return choice(value.lower(), DATASETS, "dataset")

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
