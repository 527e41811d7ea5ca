"""tables: experiment rows grouped by seed with their statistics, and the summary files rebuilt
from every record."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from normbench import columns, store, tables


def test_group_statistics_by_hand(make_record):
    recs = [make_record(run_id=f"gn-00000000000{i}", seed=i, test_accuracy=a, steady_samples_per_s=s)
            for i, (a, s) in enumerate([(0.90, 1000.0), (0.92, 2000.0), (0.97, 3000.0)])]
    other = make_record(run_id="bn-0000000000aa", name="bn", config_hash="d" * 64, norm_type="batch", test_accuracy=0.95)
    smoke = make_record(run_id="gn-0000000000bb", smoke=True, test_accuracy=0.5)
    rows = tables.group_rows(recs + [other, smoke])
    gn = next(r for r in rows if r["name"] == "gn" and not r["smoke"])
    assert gn["runs"] == 3
    assert gn["test_acc_mean"] == pytest.approx(0.93)
    assert gn["test_acc_std"] == pytest.approx(statistics.stdev([0.90, 0.92, 0.97]))
    assert gn["test_acc_std"] == pytest.approx(0.036055512754639925)
    assert gn["test_acc_best"] == 0.97 and gn["samples_per_s"] == pytest.approx(2000.0)
    bn = next(r for r in rows if r["name"] == "bn")
    assert bn["runs"] == 1 and bn["test_acc_std"] is None
    assert bn["best"] and not gn["best"]  # best mean accuracy per dataset
    assert next(r for r in rows if r["smoke"])["best"]  # smoke runs are ranked apart


def test_summaries_rebuilt_from_records(tmp_path, make_record):
    store.save(make_record(run_id="a-00000000000a"), "x\n", tmp_path)
    store.save(make_record(run_id="b-00000000000b", seed=1, test_accuracy=0.8), "x\n", tmp_path)
    (tmp_path / "runs" / "junk").mkdir()
    skipped = tables.write_summaries(tmp_path)
    assert skipped == [("junk", "no metrics.json")]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["run_id"] for r in rows] == ["a-00000000000a", "b-00000000000b"] and list(rows[0]) == list(columns.RUN_COLUMNS)
    md = (tmp_path / "summary.md").read_text()
    assert "2 run(s)" in md and "85.00%" in md and "`junk`: no metrics.json" in md


def test_diverged_runs_are_counted_not_averaged(make_record):
    ok = [make_record(run_id=f"gn-00000000000{i}", seed=i, test_accuracy=a)
          for i, a in enumerate([0.90, 0.92])]
    bad = make_record(run_id="gn-00000000000f", seed=5, status="diverged", test_accuracy=0.10,
                      diverged_reason="the training loss became nan in epoch 1",
                      test_loss=float("nan"))
    (row,) = tables.group_rows(ok + [bad])
    assert row["runs"] == 2 and row["diverged"] == 1
    assert row["test_acc_mean"] == pytest.approx(0.91) and row["accuracies"] == [0.90, 0.92]
    for fmt in ("md", "csv", "json"):
        assert "diverged" in columns.render([row], columns.GROUP_COLUMNS, fmt).splitlines()[0] \
            or fmt == "json"
    data = json.loads(columns.render([row], columns.GROUP_COLUMNS, "json"))
    assert data[0]["diverged"] == 1
    (alone,) = tables.group_rows([bad])
    assert alone["runs"] == 0 and alone["test_acc_mean"] is None
    assert alone["note"] == "all 1 run(s) diverged"
    assert "all 1 run(s) diverged" in columns.render([alone], columns.GROUP_COLUMNS, "md")

