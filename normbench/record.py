"""The run record: what `metrics.json` holds, as a strict pydantic schema, and the checks every
record read back passes (plain JSON values, bounded text and nesting, finite numbers).

A record on disk is untrusted input: `RunRecord.model_validate_json` refuses one that fails any
field, and `store` skips it with the reason. Free-form fields (spec, env) are checked without a
Python walk over every scalar when their raw bytes show none can fail (`scalars_fit`). Disk
operations (reading, claiming, saving) are `store.py`'s.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

NAME = r"[A-Za-z0-9_-]{1,64}"  # a spec name (spec.Spec.name): safe as part of a file name
RUN_ID = re.compile(rf"({NAME})-[0-9a-f]{{12}}")  # run_id(): spec name, content hash
FINAL = ("finished", "diverged")  # statuses that count as done: a sweep does not run them again

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "time_s", "val_loss", "val_accuracy",
                   "test_loss", "test_accuracy", "learning_rate")
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# Readers add these up: finite and below 1e12 (31,700 years, or samples/s no machine reaches)
Seconds = Annotated[float, Field(ge=0.0, le=1e12)]
Count = Annotated[int, Field(ge=0, le=2 ** 63)]  # what JSON readers and MLflow can hold
MAX_TEXT = 1 << 16  # characters of any string in a record (a 10 MB one took rich minutes to lay out)
MAX_DEPTH = 32  # nesting of the free-form spec and env


def _fault(value: Any) -> str | None:
    """What makes one JSON value unfit for readers (too long a string, too big an integer), or
    None."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            return f"a string of {len(value):,} characters"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2 ** 63:
        return f"an integer of {len(str(abs(value)))} digits"
    return None


def _plain(value: Any, where: str) -> None:
    """A free-form record field (spec, env) holds JSON values readers can handle, or ValueError.

    One pass without recursion or per-key text (it runs on every record a reader loads: 10,000 of
    them in `compare`); the location is worked out only for the value that fails."""
    stack = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        kind = type(item)
        if kind is dict or kind is list:
            if depth >= MAX_DEPTH:
                deep = _where(value, where, lambda v, d: d >= MAX_DEPTH and isinstance(v, (dict, list)))
                raise ValueError(f"{deep}: nested deeper than {MAX_DEPTH}")
            for child in (item if kind is list else (*item, *item.values())):
                if type(child) in (dict, list):
                    push((child, depth + 1))
                elif type(child) in (str, int) and _fault(child):
                    at = _where(value, where, lambda v, d: v is child)
                    raise ValueError(f"{at}: {_fault(child)}")
        elif _fault(item):
            raise ValueError(f"{where}: {_fault(item)}")


def _depth(value: Any, where: str) -> None:
    """Only the nesting check of _plain, for values whose scalars are known to be fine."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth >= MAX_DEPTH:
            deep = _where(value, where, lambda v, d: d >= MAX_DEPTH and isinstance(v, (dict, list)))
            raise ValueError(f"{deep}: nested deeper than {MAX_DEPTH}")
        for child in (item if type(item) is list else item.values()):
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))


# A JSON number of 19 digits or more (an integer above 2**63 needs 19). scalars_fit() looks for 19
# digits in a row first (bytes.translate and `in`: ~3 us for a 4 KB record, where this regex alone
# took 85 us), and only then for a number token.
_LONG_NUMBER = re.compile(rb"[:,[]\s*-?[0-9]{19}")
_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))


def scalars_fit(raw: bytes) -> bool:
    """Whether no string or integer in the JSON text `raw` can be one _fault refuses: a string of
    n characters takes at least n bytes, so a text of at most MAX_TEXT bytes holds no string too
    long, and an integer above 2**63 is a number token of 19 digits or more."""
    if len(raw) > MAX_TEXT:
        return False
    return b"0" * 19 not in raw.translate(_DIGITS) or _LONG_NUMBER.search(raw) is None


def _where(value: Any, where: str, hit: Callable[[Any, int], bool]) -> str:
    """The dotted path to the first item of `value` for which hit(item, depth) holds."""
    def walk(item: Any, path: str, depth: int) -> str | None:
        if hit(item, depth):
            return path
        children = item.items() if isinstance(item, dict) else \
            ((None, c) for c in item) if isinstance(item, list) else ()
        for key, child in children:
            if key is not None and hit(key, depth + 1):
                return path
            found = walk(child, path if key is None else f"{path}.{key}", depth + 1)
            if found is not None:
                return found
        return None
    return walk(value, where, 0) or where


class _Strict(BaseModel):
    # Unknown keys are ignored (newer versions may add fields); known ones must have their type:
    # no strings for numbers, no booleans for accuracies. NaN losses round-trip as NaN.
    model_config = ConfigDict(extra="ignore", strict=True, ser_json_inf_nan="constants",
                              str_max_length=MAX_TEXT)


class DatasetInfo(_Strict):
    """Which data a run used: asked for (`requested`) and actually loaded (`name`)."""

    model_config = ConfigDict(extra="allow", strict=True)
    requested: str
    name: str
    n_train: Annotated[int, Field(ge=1)]
    n_test: Annotated[int, Field(ge=1)]
    sha256: str
    source: str = ""
    warning: str | None = None

    @property
    def fallback(self) -> bool:
        """Whether the run trained on other data than its spec asked for (offline mnist)."""
        return self.name != self.requested


class Epoch(_Strict):
    epoch: Annotated[int, Field(ge=1)]
    loss: float  # NaN/Inf when the run diverged
    accuracy: Fraction
    time_s: Seconds
    # with train.eval_every (and at the last epoch): held-out and test metrics, moving statistics
    val_loss: float | None = None
    val_accuracy: Fraction | None = None
    test_loss: float | None = None
    test_accuracy: Fraction | None = None
    learning_rate: Annotated[float, Field(ge=0.0)] | None = None  # at the epoch's last step


class EvalResult(_Strict):
    loss: float
    accuracy: Fraction
    n: Count
    samples: Count | None = None  # PreciseBN: training images whose statistics were used


class Selection(_Strict):
    """Which training images a run used (spec's train.train_subset, validation_split and
    validation_fixed): the fixed subset and the held-out images, as sha256 of their indices."""

    train_subset: Count | None = None
    subset_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    validation: Literal["per-seed", "fixed"] | None = None
    n_validation: Count = 0
    validation_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class Provenance(_Strict):
    """The spec file's git commit and dirty flag (None outside a repository), and the installed
    packages (sorted name==version, and their sha256)."""

    spec_file: str | None = None
    git_commit: Annotated[str, Field(pattern=r"^[0-9a-f]{7,64}$")] | None = None
    git_dirty: bool | None = None
    packages: list[str] = []
    packages_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class RunRecord(_Strict):
    """Everything one finished run measured; saved as runs/<run_id>/metrics.json."""

    run_id: str
    name: Annotated[str, Field(pattern=rf"^{NAME}$")]
    status: Literal["finished", "diverged"]
    diverged_reason: str | None = None  # why a run counts as diverged (non-finite loss, ...)
    spec_hash: str
    config_hash: str  # spec_hash without the seed: runs that differ only by seed share it
    smoke: bool
    dataset: DatasetInfo
    norm_type: str
    norm_groups: Annotated[int, Field(ge=1)] | None
    impl_requested: str
    impl_used: str
    params: Count
    epochs: Annotated[int, Field(ge=1)]  # epochs actually trained (fewer when it diverged)
    batch_size: Annotated[int, Field(ge=1)]
    seed: Count
    test_accuracy: Fraction
    test_loss: float
    train_accuracy: Fraction
    train_loss: float
    epoch_times_s: list[Seconds]
    first_epoch_s: Seconds
    steady_epoch_s: Seconds
    steady_samples_per_s: Seconds
    steady_basis: str
    total_s: Seconds
    started: str
    finished: str
    env: dict[str, Any]
    warnings: list[str] = []
    history: Annotated[list[Epoch], Field(min_length=1)]
    spec: dict[str, Any] = {}  # the resolved spec, for --where/--by and plots
    learning_rate: float | None = None  # after train.lr_scaling
    compiled: str | None = None  # XLA use: step (whole train step), kernels (norm, optimizer), none
    # BN runs: test metrics with each kind of statistics: moving, precise (PreciseBN), batch
    bn_eval: dict[Literal["moving", "precise", "batch"], EvalResult] | None = None
    test_error_median5: Fraction | None = None  # median test error of the last 5 evaluations
    dropped_per_epoch: Count = 0  # virtual_batch_size: images of each epoch's last smaller batch
    optimizer_steps: Count | None = None
    saved_model: Literal["model.keras"] | None = None  # a file in the run directory
    provenance: Provenance | None = None
    # sha256 of what the spec names outside itself (npz data file, custom model factory's module
    # source); they are part of the run id
    contents: dict[Literal["dataset", "factory"], Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] | None = None
    selection: Selection | None = None  # train_subset / validation split: which images
    # BatchNorm's training computation: fused (TF's fused op; ghost batches folded into the
    # channel axis), per-group (the ghost formula, its fallback), keras (Keras's own)
    bn_path: Literal["fused", "per-group", "keras", "mixed"] | None = None

    @field_validator("started", "finished")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not an ISO date and time") from None
        return value

    @field_validator("spec", "env")
    @classmethod
    def _free_form(cls, value: dict, info: ValidationInfo) -> dict:
        if info.context and info.context.get("scalars_fit"):  # inspect() read the bytes
            _depth(value, "")
        else:
            _plain(value, "")
        return value

    @field_validator("spec")
    @classmethod
    def _spec_fields_readers_use(cls, value: dict) -> dict:
        """The spec fields compare, plot, rm and the trackers read by name have their types."""
        tags = value.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("tags: expected a list of strings")
        for section, fields in (("train", ("batch_size", "seed", "epochs")), ("model", ())):
            part = value.get(section, {})
            if not isinstance(part, dict):
                raise ValueError(f"{section}: expected a mapping")
            for name in fields:
                item = part.get(name, 0)
                if not isinstance(item, int) or isinstance(item, bool):
                    raise ValueError(f"{section}.{name}: expected an integer, got {item!r:.40}")
        norm = value.get("model", {}).get("norm", {})
        if not isinstance(norm, dict) or not isinstance(norm.get("type", ""), str):
            raise ValueError("model.norm: expected a mapping with a type name")
        return value

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str) -> str:
        if not RUN_ID.fullmatch(value):
            raise ValueError(f"{value[:80]!r} is not of the form NAME-HASH12")
        return value
