"""The Typer app every command registers with: its options (--version, --verbose), the
arguments and options commands share, `friendly` (bad input and unusable environments as one line
and exit code 2) and `main`, the console script."""

from __future__ import annotations

import functools
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List

import typer

import normbench
from normbench import console, grid, norms
from normbench.bench import common as bench_common
from normbench.console import say
from normbench.errors import NormbenchError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is printed as written: `normbench[ray]` is not markup
    help="Which normalization layer should your CNN use, and why: train YAML specs (GroupNorm, "
         "BatchNorm, ghost BN, LayerNorm, ...) on MNIST, Fashion-MNIST or your own data and "
         "model; tune learning rates on held-out data; compare runs and report studies with "
         "their statistics.",
    epilog="Norms: " + ", ".join(f"{n.name} ({n.summary})" for n in norms.NORMS.values()))

SPECS = typer.Argument(..., metavar="SPEC", help="YAML spec file(s); see configs/.", show_default=False)
SETS = typer.Option(bench_common.SETS.default, *bench_common.SETS.decls,
                    metavar=bench_common.SETS.metavar, help=bench_common.SETS.help)
RESULTS = typer.Option(Path("results"), "--results", help="Results directory.")


class Format(str, Enum):
    table = "table"
    md = "md"
    csv = "csv"
    json = "json"


class FigureFormat(str, Enum):
    png = "png"
    svg = "svg"


class _WarningHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        console.warning(record.getMessage())


def friendly(command):
    """Bad input and unusable environments become one line on stderr and exit code 2. The help
    text is the docstring's first paragraph, joined into one line (the terminal wraps it)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NormbenchError as exc:
            console.error(str(exc))
            raise typer.Exit(2) from None
        except BrokenPipeError:  # `normbench ... | head`: the reader left; what ran is saved
            console.reader_gone()
            raise typer.Exit(141) from None  # as a shell reports a process ended by SIGPIPE
        except OSError as exc:  # an unwritable --out, a read-only results directory, a full disk
            where = f"{exc.filename}: " if exc.filename else ""
            console.error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(2) from None

    if command.__doc__:
        paragraphs = command.__doc__.strip().split("\n\n")
        wrapper.__doc__ = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    return wrapper


def _version(value: bool) -> None:
    if value:
        say(f"normbench {normbench.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Also show TensorFlow's own log lines."),
) -> None:
    if verbose:
        os.environ["NORMBENCH_VERBOSE"] = "1"  # read where TensorFlow is imported (workers too)
    logger = logging.getLogger("normbench")
    if not any(isinstance(h, _WarningHandler) for h in logger.handlers):
        logger.addHandler(_WarningHandler())
    logger.propagate = False


def load_all(spec_files: List[Path], sets: List[str], sweeps: List[str]) -> list[grid.Grid]:
    """Every grid of every spec file; all invalid grid points of all files reported at once."""
    grids, errors = [], []
    for path in spec_files:
        try:
            grids.append(grid.load_grid(path, sets, sweeps))
        except NormbenchError as exc:
            errors.append(str(exc))
    if errors:
        raise NormbenchError("\n".join(errors))
    return grids


def summary(spec) -> str:
    """One line for people: what a spec trains (the spec module loads only when needed)."""
    from normbench import spec as specs

    return specs.summary(spec)


def main() -> None:
    """The console script. Usage errors (unknown command or option, a bad option value) are one
    line on stderr and exit code 2, like every other bad input."""
    console.tolerate_any_encoding()
    # click's exceptions, wherever this Typer keeps them (its own copy of click, or click)
    click = sys.modules[typer.BadParameter.__module__]
    no_args = getattr(click, "NoArgsIsHelpError", None)  # click >= 8.2; 8.1 exits 0 by itself
    try:
        code = app(standalone_mode=False)
    except BrokenPipeError:  # `normbench ... | head`: the reader left; what ran is saved
        console.reader_gone()
        code = 141  # as a shell reports a process ended by SIGPIPE
    except click.UsageError as exc:
        if no_args is not None and isinstance(exc, no_args):  # the help has printed itself
            code = 2
        else:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
            console.error(f"{' '.join(exc.format_message().split())}{where}")
            code = 2
    except (typer.Abort, getattr(click, "Abort", typer.Abort)):
        code = 130
    except click.ClickException as exc:
        console.error(" ".join(exc.format_message().split()))
        code = exc.exit_code
    code = code if isinstance(code, int) else 0
    try:
        if sys.stdout is not None:  # None: started with stdout closed, nothing to flush
            sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        console.reader_gone()
        code = code or 141
    sys.exit(code)
