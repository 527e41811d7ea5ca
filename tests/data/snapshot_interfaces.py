"""Writes tests/data/interfaces.json: every CLI command's options (name, type, default) and the
names `normbench` and `normbench.layers` export. tests/test_interfaces.py compares the live
interfaces against it, so a refactor (generated bench and executor commands included) cannot
change them silently. Re-run it only for a change meant to be seen: python tests/data/snapshot_interfaces.py
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("interfaces.json")


def _value(v):
    v = getattr(v, "value", v)  # an Enum's value
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def cli_options() -> dict:
    """command -> its parameters as the Typer functions declare them (the same on typer 0.12
    and later, whatever click they use)."""
    import typer

    from normbench import cli

    def walk(app: typer.Typer, path: list[str]) -> dict:
        out = {}
        for info in app.registered_commands:
            name = info.name or info.callback.__name__.replace("_", "-")
            params = []
            for p in inspect.signature(info.callback).parameters.values():
                default = p.default
                decls = getattr(default, "param_decls", None) or ()
                annotation = p.annotation if isinstance(p.annotation, str) else getattr(
                    p.annotation, "__name__", str(p.annotation))
                params.append({
                    "name": p.name, "type": str(annotation).replace("typing.", ""),
                    "decls": list(decls),
                    "kind": type(default).__name__,
                    "default": _value(getattr(default, "default", default)),
                    "min": getattr(default, "min", None), "max": getattr(default, "max", None)})
            out[" ".join([*path, name])] = params
        for group in app.registered_groups:
            out.update(walk(group.typer_instance, [*path, group.name]))
        return out

    return walk(cli.app, ["normbench"])


def exports() -> dict:
    import normbench
    import normbench.layers as layers

    names = sorted(n for n, v in vars(layers).items()
                   if not n.startswith("_") and n != "annotations"
                   and (not inspect.ismodule(v) or n in ("tf", "keras")))
    return {"normbench": sorted(normbench.__all__), "normbench.layers": names}


def snapshot() -> dict:
    return {"cli": cli_options(), "exports": exports()}


if __name__ == "__main__":
    OUT.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
