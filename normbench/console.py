"""Terminal output shared by the CLI, sweeps, training and benchmarks (rich), printed literally.

Text that comes from users, files or libraries (paths, spec names, warnings, error messages) may
hold `[...]` or `:name:`; it is never read as rich markup or emoji. Styles are applied by code.
Control and bidi characters in it (a record's ESC sequences) are printed as escapes
(`columns.printable`), never raw.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from normbench.columns import (DROP_ORDER, GROUP_COLUMNS, HEADERS, RUN_COLUMNS, TEXT_COLUMNS,
                               cell, printable, shown_columns)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """rich's own handling exits 1 in silence; the CLI reports a closed pipe as a shell does
        (exit 141), so the BrokenPipeError goes on to it (rich < 13.4 never catches it)."""
        self.quiet = True
        raise BrokenPipeError("stdout's reader has gone")


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream is None:  # started with the stream closed (`normbench compare >&-`): discard
        return _Console(file=open(os.devnull, "w"), highlight=False, markup=False, emoji=False,
                       soft_wrap=True, width=200)
    # Piped or captured output is not cut to 80 columns: it is read by programs and in files.
    width = None if stderr or stream.isatty() else 200
    return _Console(stderr=stderr, highlight=False, markup=False, emoji=False, soft_wrap=True,
                    width=width)


def reader_gone() -> None:
    """stdout's reader has gone (a closed pipe): send what is left to /dev/null, so that Python's
    final flush does not fail again, and say nothing more there."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):
        pass
    finally:
        os.close(devnull)


out = _console(stderr=False)
err = _console(stderr=True)


def tolerate_any_encoding() -> None:
    """With PYTHONIOENCODING=ascii (or a C locale) print '?' for what the terminal cannot show
    instead of dying with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass


def _text(text: str, **kwargs) -> Text:
    return Text(printable(str(text)), **kwargs)


def say(text: str) -> None:
    """A line on stdout, literally."""
    out.print(_text(text), soft_wrap=True)


def note(text: str) -> None:
    """A line on stderr, literally."""
    err.print(_text(text), soft_wrap=True)


def error(text: str) -> None:
    err.print(_text(f"error: {text}"), soft_wrap=True)


def warning(text: str) -> None:
    err.print(Text.assemble(("warning:", "yellow"), " ", _text(text)), soft_wrap=True)


def raw(text: str) -> None:
    """Ready-made output (csv, json, md) on stdout, as it is but for control characters."""
    out.file.write(printable(text))
    out.file.flush()


# ---------------------------------------------------------------------------------------------
# Tables: numbers stay whole; text columns wrap; whole columns are dropped (least useful first)
# only when even that does not fit the terminal.

def _is_text(column: str, rows: list[dict]) -> bool:
    return column in TEXT_COLUMNS or (column not in GROUP_COLUMNS + RUN_COLUMNS
                                      and not any(isinstance(r.get(column), (int, float))
                                                  for r in rows))


def _build(rows: list[dict], columns: list[str], cells: dict[str, list[str]], title: str) -> Table:
    table = Table(title=_text(title), title_justify="left", box=box.SIMPLE_HEAD,
                  safe_box=True)
    for column in columns:
        text = _is_text(column, rows)
        table.add_column(_text(HEADERS.get(column, column)), justify="left" if text else "right",
                         no_wrap=not text, overflow="fold")
    for i, row in enumerate(rows):
        table.add_row(*(Text(cells[c][i]) for c in columns),
                      style="bold green" if row.get("best") else None)
    return table


def _min_width(rows: list[dict], columns: list[str], cells: dict[str, list[str]]) -> int:
    """The narrowest the table can be: numbers and headers whole, text wrapped at its longest
    word (what rich itself would need), plus one space of padding each side of a column."""
    width = 0
    for column in columns:
        header = HEADERS.get(column, column)
        if _is_text(column, rows):
            words = [w for text in cells[column] + [header] for w in text.split()]
            width += max((len(w) for w in words), default=1)
        else:
            width += max([len(header)] + [len(text) for text in cells[column]])
    return width + 2 * len(columns)


def table(rows: list[dict], columns: Iterable[str], title: str, console: Console = out):
    """A table of `rows` that fits the console: optional columns nobody needs are left out;
    when still too wide, text columns wrap, then columns in DROP_ORDER go."""
    shown = shown_columns(rows, columns)
    cells = {c: [cell(c, row.get(c)) for row in rows] for c in shown}
    width = console.width
    every = list(shown)
    for column in DROP_ORDER:
        if _min_width(rows, shown, cells) <= width:
            break
        if column in shown:
            shown = [c for c in shown if c != column]
    if _min_width(rows, shown, cells) > width:
        return _vertical(rows, every, cells, title)
    return _build(rows, shown, cells, title)


def _vertical(rows: list[dict], columns: list[str], cells: dict[str, list[str]], title: str):
    """Too narrow for columns side by side (a 60-column terminal): one block per row, each value
    after its label on a line of its own, never cut (the terminal wraps a long line whole)."""
    from rich.console import Group

    lines = [_text(title)]
    for i in range(len(rows)):
        lines.append(Text(""))
        lines += [_text(f"{HEADERS.get(c, c)}: {cells[c][i]}")
                  for c in columns]
    return Group(*lines)


def show(rows: list[dict], columns: Iterable[str], title: str) -> None:
    out.print(table(rows, columns, title))


MAX_TABLE_ROWS = 500  # beyond this, listings are plain lines: rich lays tables out in O(rows)


def lines(title: str, body: list[str]) -> None:
    """A long listing, written as plain lines (literal text, no layout)."""
    out.file.write(printable("\n".join([title, *(line.replace("\n", " ") for line in body)]))
                   + "\n")
    out.file.flush()


def plain_table(title: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """A table of ready-made strings (benchmarks): first column text, the rest numbers."""
    built = Table(title=_text(title), title_justify="left", box=box.SIMPLE_HEAD, safe_box=True)
    for i, column in enumerate(columns):
        built.add_column(_text(column), justify="left" if i == 0 else "right", no_wrap=i != 0,
                         overflow="fold")
    for row in rows:
        built.add_row(*(_text(c) for c in row))
    out.print(built)


# ---------------------------------------------------------------------------------------------
# Progress


class EpochProgress:
    """A progress bar per epoch on stderr, and one line per finished epoch (training)."""

    def __init__(self, title: str, epochs: int, steps: int):
        self.title, self.epochs, self.steps = title, epochs, steps
        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True)

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def epoch_begin(self, epoch: int) -> None:
        self.task = self.bar.add_task(f"{self.title} epoch {epoch + 1}/{self.epochs}",
                                      total=self.steps)

    def steps_done(self, steps: int) -> None:
        self.bar.update(self.task, completed=steps)

    def epoch_end(self, epoch: int, loss: float, accuracy: float, seconds: float) -> None:
        self.bar.remove_task(self.task)
        note(f"  epoch {epoch + 1}/{self.epochs}  loss {loss:.4f}  "
             f"accuracy {100 * accuracy:.2f}%  {seconds:.1f} s")


def sweep_progress(total: int, title: str, disable: bool) -> tuple[Progress, Any]:
    """A bar for a sweep: runs done / total, and what each worker is doing."""
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[running]}", markup=False), console=err, disable=disable)
    task = bar.add_task(title, total=total, running="")
    return bar, task
