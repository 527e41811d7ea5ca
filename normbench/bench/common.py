"""What every benchmark shares: the shipped specs, the median, the `--json` writer, the
environment recorded with the measurements, and `Option`, a CLI option declared as data."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbench import console
from normbench.errors import NormbenchError


@dataclass(frozen=True)
class Option:
    """One option of a benchmark's command, as data: `normbench bench NAME` is generated from
    these (plus `--json`), so a benchmark module needs no Typer."""

    name: str  # the keyword its `run` takes
    type: str  # as the CLI annotates it: "int", "str", "List[int]", "Optional[Path]"
    default: Any
    decls: tuple[str, ...] = ()  # flags, when not the name's (e.g. ("--batch-size",))
    min: float | None = None
    max: float | None = None
    help: str | None = None
    metavar: str | None = None


SETS = Option("sets", "List[str]", [], ("-s", "--set"), metavar="PATH=VALUE",
              help="Override a spec field for every spec, e.g. -s train.epochs=3 "
                   "-s model.norm.groups=2 (value read as YAML).")


def _configs() -> Path:
    """The shipped specs: package data normbench.configs (configs/ in a checkout)."""
    import importlib.resources

    return Path(str(importlib.resources.files("normbench.configs")))


CONFIGS = _configs()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_json(path: Path | None, payload: Any) -> None:
    """Write the measurements (after their table is printed: minutes of measuring are never lost
    to a bad path, whose error is one line)."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        raise NormbenchError(f"--json {path}: cannot write ({exc.strerror or exc}); the "
                             "measurements are printed above") from None
    console.say(f"wrote {path}")


def environment() -> dict[str, Any]:
    from normbench import train

    return {**train.environment(), "load_average": os.getloadavg()}

