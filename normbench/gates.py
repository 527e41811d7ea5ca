"""CI gates on compare's rows: `--fail-under COLUMN=VALUE` and a JUnit XML report."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbench import store
from normbench.errors import NormbenchError


@dataclass(frozen=True)
class Gate:
    column: str
    threshold: float


@dataclass(frozen=True)
class Verdict:
    label: str  # the group (name and config) or the run id
    failures: tuple[str, ...]  # why it fails, one line each; empty when it passes


def parse(options: list[str], columns: tuple[str, ...]) -> list[Gate]:
    """`COLUMN=VALUE` options for the shown columns (numeric thresholds); NormbenchError else."""
    gates = []
    for option in options:
        column, sep, raw = option.partition("=")
        column = column.strip()
        if not sep or not column or not raw.strip():
            raise NormbenchError(f"--fail-under {option!r}: expected COLUMN=VALUE, e.g. "
                                 "--fail-under test_acc_mean=0.93")
        if column not in columns:
            raise NormbenchError(f"--fail-under {option!r}: unknown column {column!r}; choose from "
                                 + ", ".join(columns))
        try:
            threshold = float(raw)
        except ValueError:
            raise NormbenchError(f"--fail-under {option!r}: {raw.strip()!r} is not a number") from None
        if not math.isfinite(threshold):
            raise NormbenchError(f"--fail-under {option!r}: the threshold must be finite")
        gates.append(Gate(column, threshold))
    return gates


def label(row: dict[str, Any], runs: bool) -> str:
    if runs:
        return row["run_id"]
    return row["name"] + (f" [{row['config']}]" if row.get("config") else "")


def judge(rows: list[dict[str, Any]], gates: list[Gate], runs: bool) -> list[Verdict]:
    """Each row's verdict: it fails a gate when its value is below the threshold, or when it has
    no value because nothing of it finished (every run diverged)."""
    verdicts = []
    for row in rows:
        why = []
        finished = row.get("status") == "finished" if runs else row.get("runs", 0) > 0
        for gate in gates:
            value = row.get(gate.column)
            if not finished:
                why.append(f"{gate.column}: no finished run (needs >= {gate.threshold:g})")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                why.append(f"{gate.column}: no value (needs >= {gate.threshold:g})")
            elif value < gate.threshold:
                why.append(f"{gate.column} = {value:.6g} < {gate.threshold:g}")
        verdicts.append(Verdict(label(row, runs), tuple(why)))
    return verdicts


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
