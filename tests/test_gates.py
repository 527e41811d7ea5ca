"""--fail-under and --junit-xml: thresholds, groups with nothing finished, bad input."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from normbench import gates, tables
from normbench.errors import NormbenchError


def test_parse_refuses_unknown_columns_and_non_numbers():
    assert gates.parse(["test_acc_mean=0.9"], tables.GROUP_COLUMNS) == [gates.Gate("test_acc_mean", 0.9)]
    for bad, why in (("nope=1", "unknown column"), ("test_acc_mean", "COLUMN=VALUE"),
                     ("test_acc_mean=high", "not a number"), ("test_acc_mean=nan", "finite")):
        with pytest.raises(NormbenchError, match=why):
            gates.parse([bad], tables.GROUP_COLUMNS)


def test_a_group_below_or_with_nothing_finished_fails(tmp_path):
    rows = [{"name": "a", "config": "x=1", "runs": 3, "test_acc_mean": 0.95},
            {"name": "a", "config": "x=2", "runs": 3, "test_acc_mean": 0.90},
            {"name": "a", "config": "x=3", "runs": 0, "test_acc_mean": None}]
    verdicts = gates.judge(rows, [gates.Gate("test_acc_mean", 0.93)], runs=False)
    assert [bool(v.failures) for v in verdicts] == [False, True, True]
    assert "0.9 < 0.93" in verdicts[1].failures[0] and "no finished run" in verdicts[2].failures[0]
    gates.junit_xml(verdicts, tmp_path / "j.xml")
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("tests") == "3" and root.get("failures") == "2"
    assert [c.get("name") for c in root.iter("testcase")] == ["a [x=1]", "a [x=2]", "a [x=3]"]


def test_a_diverged_run_fails_the_run_gate():
    rows = [{"run_id": "a-000000000001", "status": "diverged", "test_accuracy": 0.1}]
    (verdict,) = gates.judge(rows, [gates.Gate("test_accuracy", 0.0)], runs=True)
    assert verdict.failures == ("test_accuracy: no finished run (needs >= 0)",)
