"""A run's identity: the spec fields that make a run what it is (every field off its default,
less those declared `spec.OUTSIDE_IDENTITY`), their sha256 (`spec_hash`, the hash in a run id),
and what a spec names outside itself that enters the hash by content (npz data, a model
factory's source)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from normbench import spec as specs
from normbench.errors import NormbenchError


@functools.lru_cache(maxsize=None)
def _identity_fields(cls: type[BaseModel]) -> tuple[tuple[str, Any], ...]:
    """(name, default) of each field of `cls` that belongs to a run's identity."""
    fields = []
    for name, field in cls.model_fields.items():
        extra = field.json_schema_extra
        if not (isinstance(extra, dict) and extra.get("identity") is False):
            fields.append((name, field.get_default(call_default_factory=True)))
    return tuple(fields)


def of(model: BaseModel) -> dict:
    """The fields of `model` (recursively) that make a run what it is: every field that differs
    from its declared default, less those declared OUTSIDE_IDENTITY. A new field added at its
    default therefore leaves every existing run id unchanged (it must default to the value that
    reproduces the old behaviour, resolved, e.g. None for 'off')."""
    out = {}
    for name, default in _identity_fields(type(model)):
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            nested = of(value)
            if nested:
                out[name] = nested
        elif not (value == default and type(value) is type(default)):  # True == 1, not alike
            out[name] = value
    return out


def spec_hash(spec: specs.Spec, *, without_seed: bool = False) -> str:
    """sha256 of the spec's identity (optionally without the seed): the experiment's identity.
    A user's data file (npz:PATH) and model factory enter it by content: the file's sha256 and
    the factory module's source sha256 (editing either makes new runs)."""
    data = of(spec)
    if without_seed and "train" in data:
        data["train"].pop("seed", None)
        if not data["train"]:
            del data["train"]
    content = contents(spec)
    if content:
        data["content"] = content
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def contents(spec: specs.Spec) -> dict[str, str]:
    """sha256 of what a spec names outside itself: {"dataset": ..., "factory": ...}."""
    out = {}
    if spec.dataset.startswith(specs.NPZ_PREFIX):
        out["dataset"] = _file_sha256(Path(spec.dataset[len(specs.NPZ_PREFIX):]).expanduser())
    if spec.model.arch == "custom":
        out["factory"] = _file_sha256(factory_source(spec.model.factory))
    return out


def factory_source(factory: str) -> Path:
    """The file defining a factory's module, found without importing the module itself (the
    current directory is searched too, as `python -m` does)."""
    import importlib.util
    import sys

    module = factory.partition(":")[0]
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise NormbenchError(f"model.factory {factory!r}: cannot find module {module!r} ({exc})") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    if found is None or not found.origin or not os.path.isfile(found.origin):
        raise NormbenchError(f"model.factory {factory!r}: no module {module!r} on the Python path "
                             "(or in the current directory)")
    return Path(found.origin)


@functools.lru_cache(maxsize=64)
def _file_sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    """sha256 of a file a spec names: a link to it is fine, but it must be a regular file (a FIFO
    would block, /dev/zero never end)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise NormbenchError(f"{path}: not a regular file")
        return _file_sha256_cached(str(path.resolve()), info.st_mtime_ns, info.st_size)
    except OSError as exc:
        raise NormbenchError(f"{path}: cannot read it ({exc.strerror or exc})") from None
