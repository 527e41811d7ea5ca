"""What every part of the schema is made of: `Frozen` (strict, immutable, unknown keys refused),
`Choice` (one validated type for every named-option field), float32-aware number checks, and
`OUTSIDE_IDENTITY`, the mark of a field that never enters a run id."""

from __future__ import annotations

import difflib
import math
import struct
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


def choice(value: str, choices: tuple[str, ...], what: str) -> str:
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
        return choice(value.lower(), choices, what)

    return Annotated[str, BeforeValidator(check)]


FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32: below it values flush to 0


def float32(value: float) -> float:
    """`value` as the float32 the model computes with."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.inf


def positive_finite(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a finite number > 0, got {value!r}")
    if value < FLOAT32_TINY or not math.isfinite(float32(value)):
        raise ValueError(f"{value!r} is not representable in float32, the compute dtype "
                         f"(it becomes {float32(value)!r}); use a value in "
                         f"[{FLOAT32_TINY:.3g}, 3.4e38]")
    return value


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# A field that changes nothing a run trains (tracking, saving, executor options) is declared with
# Field(..., json_schema_extra=OUTSIDE_IDENTITY) and never enters a run id.
OUTSIDE_IDENTITY = {"identity": False}
