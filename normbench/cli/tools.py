"""The commands about the tool itself: `verify` (the layers' numerics on this stack), `bench NAME`
(generated from each benchmark module's OPTIONS and HELP) and `norms`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import List, Optional  # noqa: F401 - the generated bench commands' types

import typer

from normbench import bench, console, norms
from normbench.bench import common as bench_common
from normbench.cli.app import Format, app, friendly


@app.command()
@friendly
def verify(quick: bool = typer.Option(False, "--quick", help="Every 7th case and a smaller batch test."),
           format: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
           failures_only: bool = typer.Option(False, "--failures", help="Show failed checks only.")
           ) -> None:
    """Check the GN/IN layers' numerics on this stack: vs float64, tfa (if it runs) and Keras."""
    from normbench import verify as checks  # imports TensorFlow

    found = checks.run_all(quick=quick)
    checks.report(found, failures_only=failures_only, fmt=format.value)
    if not all(r.ok for r in found):
        raise typer.Exit(1)


bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Benchmarks: every ratio is measured side by side in one invocation "
                             "(machines are noisy); each prints its table, then writes JSON.")
app.add_typer(bench_app, name="bench")


def _log(line: str) -> None:
    console.note(line)


def _bench_command(name: str) -> None:
    """`normbench bench NAME`, generated from the benchmark module's OPTIONS and HELP: it runs
    the benchmark, prints its table, then writes the measurements as JSON."""
    module = bench.load(name)
    options = [*module.OPTIONS, bench_common.Option(
        "json_path", "Path", Path("results/bench") / f"{name}.json", ("--json",),
        help="Where the measurements go as JSON (written after the table).")]

    def command(**kwargs) -> None:
        json_path = kwargs.pop("json_path")
        found = module.run(**kwargs, log=_log)
        module.show(found)
        bench_common.write_json(json_path, {**found, "env": bench_common.environment()})

    command.__name__ = command.__qualname__ = f"bench_{name}"
    command.__doc__ = module.HELP
    # Typer reads the parameters from the signature and their types from the annotations, which
    # are evaluated in this module (List, Optional and Path are imported above).
    command.__signature__ = inspect.Signature([inspect.Parameter(
        o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=o.type,
        default=typer.Option(o.default, *o.decls, min=o.min, max=o.max, help=o.help,
                             metavar=o.metavar)) for o in options])
    command.__annotations__ = {**{o.name: o.type for o in options}, "return": "None"}
    bench_app.command(name)(friendly(command))


for _name in bench.BENCHMARKS:
    _bench_command(_name)


@app.command("norms")
def list_norms() -> None:
    """List the normalization layers and their implementations."""
    console.plain_table("norms (impl: auto picks the first usable)",
                        ("name", "aliases", "impls", "what it normalizes"),
                        [(n.name, ", ".join(a for a, t in norms.ALIASES.items() if t == n.name),
                          ", ".join(n.impls) or "-", n.summary) for n in norms.NORMS.values()])
