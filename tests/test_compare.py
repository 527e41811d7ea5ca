"""compare's views (filters, pivots, baselines with Welch's test) and plot files, on synthetic runs."""

from __future__ import annotations

import json
import math

import pytest
from conftest import CliRunner

from normbench import stats, store, tables
from normbench.cli import app
from normbench.errors import NormbenchError

ACC = {("batch", 2): [0.90, 0.92, 0.91], ("batch", 32): [0.97, 0.96, 0.98],
       ("group", 2): [0.95, 0.96, 0.94], ("group", 32): [0.96, 0.97, 0.96]}


def _spec(norm: str, batch: int, seed: int) -> dict:
    return {"name": "bs", "dataset": "mnist-10k",
            "model": {"arch": "tutorial", "norm": {"type": norm, "groups": 5 if norm == "group" else None}},
            "train": {"batch_size": batch, "seed": seed, "epochs": 2}}


@pytest.fixture
def sweep_dir(tmp_path, make_record):
    for (norm, batch), accs in ACC.items():
        for seed, acc in enumerate(accs):
            spec = _spec(norm, batch, seed)
            store.save(make_record(
                run_id=f"bs-{norm}-{batch}-{seed:012x}", name="bs", norm_type=norm, batch_size=batch,
                seed=seed, test_accuracy=acc, config_hash=f"{norm}{batch}", spec=spec,
                history=[{"epoch": 1, "loss": 1.0 - acc, "accuracy": acc, "time_s": 1.0},
                         {"epoch": 2, "loss": 0.5 - acc / 2, "accuracy": acc, "time_s": 1.0}]),
                "x\n", tmp_path)
    return tmp_path


def test_group_rows_carry_ci_and_config(sweep_dir):
    rows = tables.group_rows(store.load_records(sweep_dir)[0])
    row = next(r for r in rows if r["config"] == "model.norm.type=batch, train.batch_size=2")
    mean, std, half = stats.mean_ci(ACC[("batch", 2)])
    assert row["runs"] == 3 and row["test_acc_mean"] == pytest.approx(0.91)
    assert row["test_acc_ci95"] == pytest.approx(4.302652730 * 0.01 / math.sqrt(3), rel=1e-8) == pytest.approx(half)
    assert row["test_err_mean"] == pytest.approx(0.09)


def test_where_filters_and_unknown_fields(sweep_dir):
    records = store.load_records(sweep_dir)[0]
    assert len(tables.where(records, ["model.norm.type=group"])) == 6
    assert len(tables.where(records, ["model.norm.type=group", "train.batch_size=2"])) == 3
    with pytest.raises(NormbenchError, match="unknown field 'model.norm.typo'"):
        tables.where(records, ["model.norm.typo=group"])


def test_pivot_by_batch_size(sweep_dir):
    rows = tables.group_rows(store.load_records(sweep_dir)[0])
    table, columns = tables.pivot(rows, "train.batch_size")
    assert columns[-2:] == ["2", "32"]
    batch = next(r for r in table if "type=batch" in r["config"])
    assert batch["2"].startswith("9.00% ± 2.48 (n=3)")  # 1 - 0.91; 4.3027 * 0.01 / sqrt(3) = 2.48%


def test_baseline_pairs_each_experiment_with_its_batch_size(sweep_dir):
    rows = tables.with_baseline(tables.group_rows(store.load_records(sweep_dir)[0]),
                                 "model.norm.type=batch")
    gn2 = next(r for r in rows if "type=group" in r["config"] and "batch_size=2" in r["config"])
    assert "train.batch_size=2" in gn2["baseline"]
    assert gn2["delta_acc"] == pytest.approx(0.95 - 0.91)
    assert gn2["p_value"] == pytest.approx(stats.welch(ACC[("group", 2)], ACC[("batch", 2)])[1])
    bn2 = next(r for r in rows if "type=batch" in r["config"] and "batch_size=2" in r["config"])
    assert bn2["delta_acc"] == 0.0 and bn2["p_value"] is None
    with pytest.raises(NormbenchError, match="matches no experiment"):
        tables.with_baseline(rows, "model.norm.type=frn")


def test_cli_compare_views(sweep_dir):
    runner = CliRunner()
    pivot = runner.invoke(app, ["compare", "--results", str(sweep_dir), "--by", "train.batch_size",
                                "--format", "json"])
    assert pivot.exit_code == 0, pivot.output
    assert len(json.loads(pivot.stdout)) == 2
    base = runner.invoke(app, ["compare", "--results", str(sweep_dir), "--baseline",
                               "model.norm.type=batch", "--format", "csv"])
    assert "p_value" in base.stdout.splitlines()[0]
    bad = runner.invoke(app, ["compare", "--results", str(sweep_dir), "--where", "nope"])
    assert bad.exit_code == 2 and "expected FIELD=VALUE" in bad.stderr


def test_plot_writes_pngs(sweep_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    result = CliRunner().invoke(app, ["plot", "--results", str(sweep_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bs-batch_size.png", "bs-learning.png"]
    assert all((out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / f).stat().st_size > 10_000
               for f in files)


def test_baseline_never_pairs_runs_that_differ_in_another_field(tmp_path, make_record):
    """GN at lr 0.003 has no BN baseline when BN ran at lr 0.001 only, nor when BN at 0.003 is
    another spec's; once BN at lr 0.003 of the same spec exists, that is the one it is compared
    with."""
    def save(where, name, norm, lr, seed, acc):
        spec = {"name": name, "dataset": "mnist-10k",
                "model": {"arch": "tutorial", "norm": {"type": norm, "groups": 5 if norm == "group" else None}},
                "train": {"batch_size": 32, "seed": seed, "learning_rate": lr}}
        rid = f"{name}-{abs(hash((norm, lr, seed))) % 16 ** 12:012x}"
        store.save(make_record(run_id=rid, name=name, norm_type=norm, seed=seed, test_accuracy=acc,
                               spec=spec, config_hash=f"{name}{norm}{lr}"), "x\n", where)

    def gn_row(where):
        done = CliRunner().invoke(app, ["compare", "--results", str(where), "--baseline",
                                        "model.norm.type=batch", "--format", "json"])
        assert done.exit_code == 0, done.output
        return next(r for r in json.loads(done.stdout) if r["norm"] == "group")

    other_lr, other_name = tmp_path / "lr", tmp_path / "name"
    for seed in range(2):
        save(other_lr, "lr", "group", 0.003, seed, 0.95 + seed / 100)
        save(other_lr, "lr", "batch", 0.001, seed, 0.90)
        save(other_name, "lr", "group", 0.003, seed, 0.95 + seed / 100)
        save(other_name, "other", "batch", 0.003, seed, 0.80)
    for where in (other_lr, other_name):
        gn = gn_row(where)
        assert gn["baseline"] is None and gn["delta_acc"] is None, where.name
    for seed in range(2):
        save(other_lr, "lr", "batch", 0.003, seed, 0.93)
    gn = gn_row(other_lr)
    assert gn["delta_acc"] == pytest.approx(0.955 - 0.93) and "learning_rate=0.003" in gn["baseline"]
