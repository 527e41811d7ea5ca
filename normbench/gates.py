"""CI gates on compare's rows: `--fail-under` / `--fail-over COLUMN=VALUE` and a JUnit XML report."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbench import store
from normbench.errors import NormbenchError


# Columns where lower is better (gated with --fail-over), and columns that are not numbers.
LOWER_IS_BETTER = ("test_err_mean", "test_err_ci95", "test_acc_ci95", "test_acc_std",
                   "test_loss_mean", "test_loss", "train_loss", "test_error_median5",
                   "first_epoch_s", "steady_epoch_s", "total_s", "diverged", "p_value")
NOT_NUMBERS = ("run_id", "name", "status", "diverged_reason", "dataset", "dataset_requested",
               "smoke", "norm", "impl", "impl_requested", "impl_used", "tensorflow", "keras",
               "started", "model", "config", "best", "note", "baseline")
# Counts and sizes: neither direction is better, so both options take them.
EITHER = ("runs", "n_train", "n_test", "groups", "params", "epochs", "batch_size", "seed")


@dataclass(frozen=True)
class Gate:
    column: str
    threshold: float
    under: bool = True  # fail when the value is below the threshold (--fail-under), else above

    def __str__(self) -> str:
        return f"{self.column} {'>=' if self.under else '<='} {self.threshold:g}"


@dataclass(frozen=True)
class Verdict:
    label: str  # the group (name and config) or the run id
    failures: tuple[str, ...]  # why it fails, one line each; empty when it passes


def _parse_one(option: str, columns: tuple[str, ...], under: bool) -> Gate:
    flag, other = ("--fail-under", "--fail-over") if under else ("--fail-over", "--fail-under")
    column, sep, raw = option.partition("=")
    column = column.strip()
    if not sep or not column or not raw.strip():
        raise NormbenchError(f"{flag} {option!r}: expected COLUMN=VALUE, e.g. "
                             + ("--fail-under test_acc_mean=0.93" if under else
                                "--fail-over test_err_mean=0.07"))
    if column not in columns:
        raise NormbenchError(f"{flag} {option!r}: unknown column {column!r}; choose from "
                             + ", ".join(c for c in columns if c not in NOT_NUMBERS))
    if column in NOT_NUMBERS:
        raise NormbenchError(f"{flag} {option!r}: {column!r} is not a number; gate a numeric "
                             "column, e.g. test_acc_mean or test_err_mean")
    lower = column in LOWER_IS_BETTER
    if column not in EITHER and lower == under:
        better = "lower" if lower else "higher"
        raise NormbenchError(f"{flag} {option!r}: {better} {column} is better: use {other} "
                             f"{column}={raw.strip()} (fails when {'above' if lower else 'below'})")
    try:
        threshold = float(raw)
    except ValueError:
        raise NormbenchError(f"{flag} {option!r}: {raw.strip()!r} is not a number") from None
    if not math.isfinite(threshold):
        raise NormbenchError(f"{flag} {option!r}: the threshold must be finite")
    return Gate(column, threshold, under)


def parse(options: list[str], columns: tuple[str, ...], over: list[str] = ()) -> list[Gate]:
    """`--fail-under COLUMN=VALUE` (higher is better: fails below) and `--fail-over` (lower is
    better, as error and loss: fails above) for compare's numeric columns; NormbenchError else."""
    return ([_parse_one(o, columns, True) for o in options]
            + [_parse_one(o, columns, False) for o in over])


def label(row: dict[str, Any], runs: bool) -> str:
    if runs:
        return row["run_id"]
    return row["name"] + (f" [{row['config']}]" if row.get("config") else "")


def judge(rows: list[dict[str, Any]], gates: list[Gate], runs: bool, *,
          allow_diverged: bool = False) -> list[Verdict]:
    """Each row's verdict: it fails a gate when its value is on the wrong side of the threshold,
    when it has no value because nothing of it finished, and (an experiment) when any of its runs
    diverged, unless `allow_diverged` (then the finished runs alone are gated)."""
    verdicts = []
    for row in rows:
        why = []
        finished = row.get("status") == "finished" if runs else row.get("runs", 0) > 0
        diverged = 0 if runs else row.get("diverged") or 0
        if gates and diverged and not allow_diverged:
            total = diverged + (row.get("runs") or 0)
            why.append(f"{diverged} of {total} run(s) diverged (--allow-diverged gates the "
                       "finished ones only)")
        for gate in gates:
            value = row.get(gate.column)
            if not finished:
                why.append(f"{gate.column}: no finished run (needs {gate})")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                why.append(f"{gate.column}: no value (needs {gate})")
            elif (value < gate.threshold) if gate.under else (value > gate.threshold):
                why.append(f"{gate.column} = {value:.6g} {'<' if gate.under else '>'} "
                           f"{gate.threshold:g} (needs {gate})")
        verdicts.append(Verdict(label(row, runs), tuple(why)))
    return verdicts


def outcome(verdicts: list[Verdict], gates: list[Gate], runs: bool) -> tuple[list[str], bool]:
    """What the gates compared, in which direction, and what failed: (lines to print, passed)."""
    if not gates:
        return [], True
    what = "run(s)" if runs else "experiment(s)"
    lines = [f"gates: {'; '.join(map(str, gates))} over {len(verdicts)} {what}"]
    failed = [v for v in verdicts if v.failures]
    lines += [f"FAIL {v.label}: " + "; ".join(v.failures) for v in failed]
    if not verdicts:
        return lines + ["FAIL: no runs to check (nothing matches)"], False
    if failed:
        return lines, False
    return lines + [f"passed: {len(verdicts)} {what}"], True


def junit_xml(verdicts: list[Verdict], path: Path, suite: str = "normbench") -> None:
    """One <testcase> per group or run (failed ones carry a <failure>), written atomically."""
    failed = sum(bool(v.failures) for v in verdicts)
    root = ET.Element("testsuites", tests=str(len(verdicts)), failures=str(failed))
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(verdicts)),
                         failures=str(failed), errors="0", skipped="0")
    for v in verdicts:
        case = ET.SubElement(node, "testcase", classname=suite, name=v.label)
        if v.failures:
            ET.SubElement(case, "failure", message=v.failures[0]).text = "\n".join(v.failures)
    if path.parent and not path.parent.is_dir():
        raise NormbenchError(f"--junit-xml {path}: no directory {path.parent}")
    if path.is_dir():
        raise NormbenchError(f"--junit-xml {path}: is a directory")
    text = ET.tostring(root, encoding="unicode", xml_declaration=True)
    store.write_atomic(path, text + "\n")
