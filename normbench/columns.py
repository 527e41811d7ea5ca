"""Columns: every column's name, its header in a terminal table, its unit and number format, which
columns each view shows, and the md/csv/json writers. The one home of what a column is; `tables`
builds the rows, `console` draws them, and both read the columns from here.

Column names are documented in results/README.md (a test keeps the two in step). Accuracies are
fractions in the data (csv/json) and percent with units in the views; a difference of two
accuracies is in percentage points.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Any, Iterable

RUN_COLUMNS = ("run_id", "name", "status", "diverged_reason", "dataset", "dataset_requested",
               "smoke", "n_train", "n_test", "norm", "groups", "impl_requested", "impl_used",
               "params", "epochs", "batch_size", "seed", "test_accuracy", "test_loss",
               "train_accuracy", "train_loss", "test_error_median5", "test_acc_moving",
               "test_acc_precise", "test_acc_batch", "first_epoch_s", "steady_epoch_s",
               "steady_samples_per_s", "total_s", "tensorflow", "keras", "started", "model")

GROUP_COLUMNS = ("name", "config", "dataset", "smoke", "norm", "impl", "runs", "diverged",
                 "test_acc_mean", "test_acc_std", "test_acc_ci95", "test_acc_best",
                 "test_err_mean", "test_err_ci95", "test_loss_mean", "first_epoch_s",
                 "steady_epoch_s", "samples_per_s", "best", "note")

# The terminal shows the columns people read; md/csv/json (and summary files) carry them all.
TERMINAL_GROUP_COLUMNS = ("name", "config", "dataset", "smoke", "norm", "impl", "runs", "diverged",
                          "test_acc_mean", "test_acc_ci95", "test_err_mean", "test_loss_mean",
                          "first_epoch_s", "steady_epoch_s", "samples_per_s", "note")
TERMINAL_RUN_COLUMNS = ("run_id", "status", "dataset", "smoke", "norm", "impl_used", "epochs",
                        "batch_size", "seed", "test_accuracy", "test_loss", "first_epoch_s",
                        "steady_samples_per_s", "diverged_reason", "model")

# Columns shown only when some row needs them.
OPTIONAL_COLUMNS = {"diverged": lambda v: bool(v), "note": lambda v: bool(v),
                    "test_error_median5": lambda v: v is not None,
                    "test_acc_moving": lambda v: v is not None,
                    "test_acc_precise": lambda v: v is not None,
                    "test_acc_batch": lambda v: v is not None,
                    "smoke": lambda v: bool(v), "config": lambda v: bool(v),
                    "diverged_reason": lambda v: bool(v), "model": lambda v: bool(v)}

HEADERS = {"test_acc_mean": "acc %", "test_acc_std": "std (pts)", "test_acc_best": "best acc %",
           "test_acc_ci95": "± 95% CI (pts)", "test_err_mean": "error %",
           "test_err_ci95": "± 95% CI (pts)", "delta_acc": "Δ acc (pts)",
           "test_loss_mean": "loss", "first_epoch_s": "1st epoch s", "steady_epoch_s": "s/epoch",
           "samples_per_s": "samples/s", "steady_samples_per_s": "samples/s", "impl_used": "impl",
           "batch_size": "batch", "test_accuracy": "acc %", "test_loss": "loss",
           "p_value": "p (Welch)"}
TEXT_COLUMNS = ("name", "config", "dataset", "norm", "impl", "impl_used", "run_id", "baseline",
                "note", "diverged_reason", "what", "state", "path")
# Dropped in this order when the terminal is too narrow; accuracy, error and CI columns never are.
DROP_ORDER = ("first_epoch_s", "steady_epoch_s", "samples_per_s", "steady_samples_per_s",
              "test_loss_mean", "test_loss", "impl", "impl_used", "smoke", "dataset", "epochs",
              "seed", "note", "baseline")


def fmt(column: str, value: Any) -> str:
    """Human formatting (Markdown and the terminal table): accuracies and errors in percent,
    their CIs and differences in percentage points."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if column.startswith("delta_"):
        return f"{100 * value:+.2f} pts"
    if column.endswith("_ci95") or column == "test_acc_std":
        return f"{100 * value:.2f} pts"
    if column.startswith(("test_acc", "train_acc", "test_err")) or column == "test_accuracy":
        return f"{100 * value:.2f}%"
    if column == "p_value":
        return f"{value:.3g}"
    if column in ("samples_per_s", "steady_samples_per_s"):
        return f"{value:,.0f}"
    if column.endswith("_s"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# Data formats (csv, json) keep a stable schema: only the failure columns come and go.
DATA_OPTIONAL = ("diverged", "note", "diverged_reason")  # csv/json: the rest always present


def shown_columns(rows: list[dict], columns: Iterable[str], *, data: bool = False) -> list[str]:
    """`columns` less the optional ones no row needs (diverged when none did, ...); for the data
    formats only the failure columns are optional."""
    optional = DATA_OPTIONAL if data else OPTIONAL_COLUMNS
    return [c for c in columns
            if c not in optional or any(OPTIONAL_COLUMNS[c](row.get(c)) for row in rows)]


# C0 and C1 control characters (ESC starts terminal sequences) and the Unicode bidi controls
# (an override reorders what a reader sees): record text never reaches a terminal or a document raw.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, newlines: bool = True) -> str:
    """`text` with control and bidi characters shown as escapes (ESC as `\\x1b`, U+202E as
    `\\u202e`); tabs kept, and newlines unless `newlines` is False (a table cell)."""
    def escape(match: re.Match) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    text = _UNSAFE.sub(escape, text)
    return text if newlines else text.replace("\n", "\\n")


def _md_cell(text: str) -> str:
    return printable(text, newlines=False).replace("|", "\\|")


def to_markdown(rows: list[dict], columns: Iterable[str]) -> str:
    columns = list(columns)
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_md_cell(fmt(c, row.get(c))) for c in columns]
        if row.get("best"):
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def json_safe(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers, and strict parsers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cell(column: str, value: Any) -> str:
    """A terminal table cell: fmt() without the unit its header already names."""
    text = printable(fmt(column, value), newlines=False)
    if column in ("test_acc_mean", "test_acc_best", "test_err_mean", "test_accuracy"):
        return text.rstrip("%")  # the header says %
    if column.endswith("_ci95") or column == "test_acc_std":
        return text.removesuffix(" pts")
    if column == "delta_acc":
        return text.removesuffix(" pts")
    return text


def render(rows: list[dict], columns: Iterable[str], fmt_name: str) -> str:
    """rows as md, csv or json text (the terminal table is drawn by console.py)."""
    columns = shown_columns(rows, columns, data=fmt_name != "md")
    if fmt_name == "md":
        return to_markdown(rows, columns)
    if fmt_name == "csv":
        return to_csv(rows, columns)
    if fmt_name == "json":
        return json.dumps([{c: json_safe(row.get(c)) for c in columns} for row in rows],
                          indent=2, allow_nan=False) + "\n"
    raise ValueError(f"unknown format {fmt_name!r}")
