"""The `normbench` command line: parse, call the library, print. TensorFlow loads only to train.

`app` holds the Typer app and `main`; each other file registers one group of commands, in the
order `normbench --help` lists them."""

from normbench.cli import runs, results, tools  # noqa: F401 - registers the commands, in order
from normbench.cli.app import app, main
from normbench.cli.runs import Executor

__all__ = ["Executor", "app", "main"]
