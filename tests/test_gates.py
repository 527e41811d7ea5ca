"""--fail-under, --fail-over and --junit-xml: thresholds in the right direction, groups with
nothing finished or with diverged runs, bad input (and the same through the CLI)."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from normbench import columns, gates, store
from normbench.errors import NormbenchError


def test_parse_refuses_unknown_columns_and_non_numbers():
    assert gates.parse(["test_acc_mean=0.9"], columns.GROUP_COLUMNS) == [gates.Gate("test_acc_mean", 0.9)]
    assert gates.parse([], columns.GROUP_COLUMNS, ["test_err_mean=0.1"]) == [
        gates.Gate("test_err_mean", 0.1, under=False)]
    for bad, why in (("nope=1", "unknown column"), ("test_acc_mean", "COLUMN=VALUE"),
                     ("test_acc_mean=high", "not a number"), ("test_acc_mean=nan", "finite")):
        with pytest.raises(NormbenchError, match=why):
            gates.parse([bad], columns.GROUP_COLUMNS)


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
    assert verdict.failures == ("test_accuracy: no finished run (needs test_accuracy >= 0)",)


@pytest.mark.parametrize("under, over, said", [
    (["test_err_mean=0.1"], [], "lower test_err_mean is better: use --fail-over test_err_mean=0.1"),
    (["test_loss_mean=0.3"], [], "use --fail-over"),
    ([], ["test_acc_mean=0.9"], "higher test_acc_mean is better: use --fail-under"),
    (["name=1"], [], "'name' is not a number"),
    ([], ["config=1"], "'config' is not a number"),
])
def test_a_gate_in_the_wrong_direction_or_on_text_names_the_right_option(under, over, said):
    with pytest.raises(NormbenchError, match=re.escape(said)):
        gates.parse(under, columns.GROUP_COLUMNS, over)


def test_lower_is_better_columns_fail_above_and_counts_take_either_direction():
    rows = [{"name": "a", "config": "", "runs": 3, "test_err_mean": 0.05},
            {"name": "b", "config": "", "runs": 3, "test_err_mean": 0.20}]
    over = gates.parse([], columns.GROUP_COLUMNS, ["test_err_mean=0.1"])
    assert [bool(v.failures) for v in gates.judge(rows, over, runs=False)] == [False, True]
    assert gates.parse(["runs=3"], columns.GROUP_COLUMNS, ["runs=5"])  # at least 3, at most 5


def test_an_experiment_with_diverged_runs_fails_unless_allowed():
    row = {"name": "a", "config": "", "runs": 2, "diverged": 2, "test_acc_mean": 0.97}
    (verdict,) = gates.judge([row], [gates.Gate("test_acc_mean", 0.13)], runs=False)
    assert verdict.failures == ("2 of 4 run(s) diverged (--allow-diverged gates the finished ones only)",)
    (allowed,) = gates.judge([row], [gates.Gate("test_acc_mean", 0.13)], runs=False,
                             allow_diverged=True)
    assert allowed.failures == ()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_the_gates_through_the_cli_with_two_of_four_seeds_diverged(tmp_path, make_record):
    spec = {"name": "g", "dataset": "mnist-10k", "train": {"seed": 0}}
    for seed in range(4):
        diverged = seed >= 2
        store.save(make_record(run_id=f"g-{seed:012x}", name="g", seed=seed, spec={**spec, "train": {"seed": seed}},
                               status="diverged" if diverged else "finished",
                               diverged_reason="the training loss became nan" if diverged else None,
                               test_accuracy=0.1 if diverged else 0.97), "x\n", tmp_path)
    gate = _cli("compare", "--results", tmp_path, "--fail-under", "test_acc_mean=0.13")
    assert gate.returncode == 1 and "2 of 4 run(s) diverged" in gate.stderr, gate.stderr
    assert "gates: test_acc_mean >= 0.13 over 1 experiment(s)" in gate.stderr
    allowed = _cli("compare", "--results", tmp_path, "--fail-under", "test_acc_mean=0.13",
                   "--allow-diverged")
    assert allowed.returncode == 0 and "passed: 1 experiment(s)" in allowed.stderr, allowed.stderr
    over = _cli("compare", "--results", tmp_path, "--fail-over", "test_err_mean=0.01", "--allow-diverged")
    assert over.returncode == 1 and "test_err_mean = 0.03 > 0.01 (needs test_err_mean <= 0.01)" in over.stderr
    for bad, said in ((["--fail-under", "test_err_mean=0.1"], "use --fail-over"),
                      (["--fail-under", "name=1"], "is not a number")):
        done = _cli("compare", "--results", tmp_path, *bad)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr
