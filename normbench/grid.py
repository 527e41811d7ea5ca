"""Spec files in: YAML (strict, safe), `-s` overrides, `sweep:` x `seeds:` expansion into Specs."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from normbench.errors import NormbenchError
from normbench.identity import spec_hash
from normbench.spec import Spec, for_smoke, validate

MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 32  # levels of nested mappings and lists in a spec or a -s value


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)  # a list or mapping as a key ({[a]: 1}) is not a field name
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
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
        # Nesting is counted on the event stream, before any node is built: a spec nested
        # 10,000 levels deep took half a minute to reach Python's recursion limit.
        depth = 0
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise NormbenchError(f"{where}: YAML alias *{event.anchor} (line {mark.line + 1}):"
                                     " anchors and aliases are not allowed in a spec")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    raise NormbenchError(f"{where}: nested more than {MAX_DEPTH} levels deep "
                                         f"(line {mark.line + 1}); a spec needs a handful")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
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


def _check_axes(axes: Any, where: str) -> dict[str, list]:
    if not isinstance(axes, dict):
        raise NormbenchError(f"{where}: expected a mapping of field paths to lists, e.g. "
                             "{train.batch_size: [2, 8, 32]}")
    for key, values in axes.items():
        if not isinstance(key, str) or not isinstance(values, list) or not values:
            raise NormbenchError(f"{where}.{key}: expected a non-empty list of values")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise NormbenchError(f"{where}.{key}: repeated values in {values}")
        linked = key.split("+")
        if len(linked) > 1 and not all(isinstance(v, list) and len(v) == len(linked)
                                       for v in values):
            raise NormbenchError(f"{where}.{key}: linked paths take one list of {len(linked)} "
                                 f"values per point, e.g. [[256, 32], [16, 2]]")
    return dict(axes)


def _grid(doc: dict, where: str, sweeps: list[tuple[str, list]]) -> tuple[list[dict[str, list]], list]:
    """The sweep's grids (a mapping is one grid; a list of mappings is their union) with the
    --sweep axes added to each, and the seeds. An axis `a+b: [[a1, b1], [a2, b2]]` sets linked
    fields together (e.g. the batch size and the per-replica batch)."""
    sweep = doc.pop("sweep", None)
    seeds = doc.pop("seeds", None)
    if sweep is None:
        sweep = {}
    if isinstance(sweep, list) and sweep:
        grids = [_check_axes(g, f"{where}: sweep[{i}]") for i, g in enumerate(sweep)]
    elif isinstance(sweep, dict):
        grids = [_check_axes(sweep, f"{where}: sweep")]
    else:
        raise NormbenchError(f"{where}: sweep: expected a mapping of field paths to lists, e.g. "
                             "{train.batch_size: [2, 8, 32]}, or a list of such mappings")
    for grid in grids:
        grid.update(sweeps)
        _check_axes(grid, f"{where}: sweep")
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
    return grids, seeds


def _assignments(grids: list[dict[str, list]]):
    """Every point of every grid, as {field path: value} with linked axes split."""
    for grid in grids:
        for point in itertools.product(*grid.values()):
            assignment = {}
            for key, value in zip(grid, point):
                paths = key.split("+")
                assignment.update(zip(paths, value) if len(paths) > 1 else [(key, value)])
            yield assignment


def _short(value: Any, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class Grid:
    """What one spec file describes: the base document (overrides applied), its sweep axes and
    seeds, and every run, validated, in grid order (seed varying fastest)."""

    path: Path
    base: dict
    grids: list[dict[str, list]]  # one per mapping of the sweep (a list is their union)
    seeds: list[int]
    runs: list[Spec]
    hashes: list[str] | None = None  # spec_hash of each run (computed once, for run ids)


def load_grid(path: str | Path, overrides: tuple[str, ...] | list[str] = (),
              sweeps: tuple[str, ...] | list[str] = (), *, doc: dict | None = None,
              axes: list[tuple[str, list]] | tuple = ()) -> Grid:
    """Read one spec file (or take `doc`, a spec document, with `path` naming it), apply
    overrides, sweep options and sweep `axes` ((path, values) pairs), and validate every grid
    point.

    Invalid grid points are all reported at once, one per line, before anything runs; grid points
    that resolve to the same run (aliases such as gn/group, or a value equal to the default) are
    an error too, since a sweep that counts one run three times misleads."""
    path = Path(path)
    where = str(path)
    doc = parse_yaml(read_text(path), where) if doc is None else copy.deepcopy(doc)
    if not isinstance(doc, dict):
        validate(doc, where)  # raises: not a mapping
    for override in overrides:
        apply_override(doc, override)
    doc.setdefault("name", path.stem)
    grids, seeds = _grid(doc, where, [parse_sweep_option(o) for o in sweeps] + list(axes))
    count = sum(math.prod(len(v) for v in g.values()) for g in grids)  # counted, not expanded
    if count * max(1, len(seeds)) > MAX_RUNS:
        raise NormbenchError(f"{where}: the sweep has {count * max(1, len(seeds))} runs "
                             f"(limit {MAX_RUNS})")
    runs, labels, errors = [], [], []
    for assignment in _assignments(grids):
        point_doc = copy.deepcopy(doc)
        for key, value in assignment.items():
            _set_path(point_doc, key.split("."), value, f"{where}: sweep {key}")
        for seed in seeds or [None]:
            label = dict(assignment, **({"train.seed": seed} if seed is not None else {}))
            text = ", ".join(f"{k}={_short(v)}" for k, v in label.items())
            if seed is not None:
                run_doc = {**point_doc, "train": {**(point_doc.get("train") or {}), "seed": seed}} \
                    if isinstance(point_doc.get("train", {}), dict) else point_doc
            else:
                run_doc = point_doc
            try:
                runs.append(validate(run_doc, f"{where}" + (f" [{text}]" if text else "")))
                labels.append(text)
            except NormbenchError as exc:
                errors.append(str(exc))
    if errors:
        raise NormbenchError("\n".join(dict.fromkeys(errors)))
    seen: dict[str, str] = {}
    hashes = []
    for spec, text in zip(runs, labels):
        key = spec_hash(spec)
        hashes.append(key)
        if key in seen:
            raise NormbenchError(f"{where}: sweep points [{seen[key]}] and [{text}] are the same run "
                                 "(aliases or default values resolve alike); remove the repeat")
        seen[key] = text
    return Grid(path, doc, grids, seeds, runs, hashes)


def load_runs(path: str | Path, overrides: tuple[str, ...] | list[str] = (),
              sweeps: tuple[str, ...] | list[str] = ()) -> list[Spec]:
    """Every run one spec file describes: its sweep grid x seeds (or just itself), validated."""
    return load_grid(path, overrides, sweeps).runs


def load(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Spec:
    """Read, override and validate a spec file that describes one run."""
    runs = load_runs(path, overrides)
    if len(runs) != 1:
        raise NormbenchError(f"{path}: describes {len(runs)} runs (a sweep); expected one")
    return runs[0]


def sets_epochs(overrides: tuple[str, ...] | list[str]) -> bool:
    """Whether the `-s` overrides set train.epochs (which then wins over --smoke's one epoch)."""
    return any(o.partition("=")[0].strip() == "train.epochs" for o in overrides)


def smoke(runs: list[Spec], overrides: tuple[str, ...] | list[str] = ()) -> list[Spec]:
    """The specs --smoke trains: one epoch each, unless `-s train.epochs=N` says otherwise."""
    keep = sets_epochs(overrides)
    return [for_smoke(s, keep_epochs=keep) for s in runs]


def describe(grid: Grid) -> str:
    """YAML for people: the base spec (first run, resolved) and the sweep axes and seeds."""
    from normbench.spec import to_dict

    text = yaml.safe_dump(to_dict(grid.runs[0]), sort_keys=False)
    axes = grid.grids[0] if len(grid.grids) == 1 else grid.grids
    if any(grid.grids) or grid.seeds:
        text += yaml.safe_dump({"sweep": axes, **({"seeds": grid.seeds} if grid.seeds else {})},
                               sort_keys=False, default_flow_style=None)
        text += f"# {len(grid.runs)} runs: the product of the axes x seeds; shown: the first\n"
    return text
