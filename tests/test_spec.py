"""Spec loading and validation: every rule, its message and the resolved values."""

from __future__ import annotations

from pathlib import Path

import pytest

from normbench import grid, identity, norms, spec as specs
from normbench.errors import NormbenchError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, *overrides: str) -> specs.Spec:
    return grid.load(write(tmp_path, text), overrides)


def test_defaults_reproduce_the_tutorial():
    s = specs.Spec(name="t")
    assert (s.dataset, s.model.conv_filters, s.model.dense_units, s.model.dropout) == ("mnist", 10, 128, 0.2)
    n = s.model.norm
    assert (n.type, n.groups, n.axis, n.epsilon, n.center, n.scale) == ("group", 5, -1, 1e-3, True, True)
    assert (n.beta_initializer, n.gamma_initializer, n.impl) == ("zeros", "ones", "auto")
    t = s.train
    assert (t.epochs, t.batch_size, t.optimizer, t.learning_rate, t.seed) == (1, 32, "adam", 1e-3, 0)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_are_valid_and_named_after_their_file(path):
    runs = grid.load_runs(path)
    assert {r.name for r in runs} == {path.stem}
    if "sweep" in path.stem:  # the shipped sweeps: 5 norms x 6 batch sizes, or 4 group counts, x 3 seeds
        assert len(runs) in (90, 12) and {r.train.seed for r in runs} == {0, 1, 2}


def test_shipped_tutorial_configs():
    gn = grid.load(CONFIGS[0].parent / "groupnorm.yaml")
    assert (gn.model.norm.type, gn.model.norm.groups) == ("group", 5)
    inorm = grid.load(CONFIGS[0].parent / "instancenorm.yaml")
    assert inorm.model.norm.type == "instance" and inorm.model.norm.groups is None
    assert inorm.model.norm.beta_initializer == inorm.model.norm.gamma_initializer == "random_uniform"


def test_spec_is_frozen():
    s = specs.Spec(name="t")
    with pytest.raises(Exception):
        s.name = "other"


def test_name_defaults_to_the_file_stem(tmp_path):
    assert grid.load(write(tmp_path, "dataset: mnist-10k\n", "my-exp.yaml")).name == "my-exp"


def test_scientific_notation_is_a_float(tmp_path):
    s = load_text(tmp_path, "name: a\nmodel: {norm: {epsilon: 1e-5}}\ntrain: {learning_rate: 3E-4}\n")
    assert s.model.norm.epsilon == 1e-5 and s.train.learning_rate == 3e-4


def test_overrides_apply_and_are_validated(tmp_path):
    s = load_text(tmp_path, "name: a\n", "train.epochs=3", "model.norm.groups=2",
                  "model.norm.type=GN", "dataset=mnist-10k")
    assert (s.train.epochs, s.model.norm.groups, s.model.norm.type, s.dataset) == (3, 2, "group", "mnist-10k")
    with pytest.raises(NormbenchError, match=r"train\.epochs: Input should be greater than or equal to 1, got 0"):
        load_text(tmp_path, "name: a\n", "train.epochs=0")


def test_groups_resolution(tmp_path):
    assert load_text(tmp_path, "name: a\n", "model.norm.groups=-1").model.norm.groups == 10
    assert load_text(tmp_path, "name: a\n", "model.norm.type=layer").model.norm.groups is None
    # axis 1 of the (N, 26, 26, C) conv output has size 26
    assert load_text(tmp_path, "name: a\n", "model.norm.axis=1", "model.norm.groups=13").model.norm.groups == 13


def test_groups_follow_conv_filters_override(tmp_path):
    s = load_text(tmp_path, "name: a\n", "model.conv_filters=12", "model.norm.groups=4")
    assert s.model.norm.groups == 4


def test_hashes(tmp_path):
    a = load_text(tmp_path, "name: a\n")
    b = load_text(tmp_path, "name: a\n", "train.seed=1")
    assert identity.spec_hash(a) != identity.spec_hash(b)
    assert identity.spec_hash(a, without_seed=True) == identity.spec_hash(b, without_seed=True)
    assert identity.spec_hash(a) == identity.spec_hash(load_text(tmp_path, "name: a\n"))


def test_resolved_yaml_round_trips(tmp_path):
    s = load_text(tmp_path, "name: a\nmodel: {norm: {type: in, epsilon: 1e-5}}\n")
    again = grid.load(write(tmp_path, specs.to_yaml(s), "r.yaml"))
    assert again == s
    assert "epsilon: 1.0e-05" in specs.to_yaml(s)


def test_smoke_spec_trains_one_epoch(tmp_path):
    s = load_text(tmp_path, "name: a\ntrain: {epochs: 5}\n")
    assert specs.for_smoke(s).train.epochs == 1 and s.train.epochs == 5


def test_initializer_names_exist_in_keras_and_fit_1d_weights():
    import keras
    for name in specs.INITIALIZERS:
        assert keras.initializers.get(name)(shape=(4,)).shape == (4,)


def test_tfa_impl_rejected_when_tfa_is_absent(tmp_path):
    if specs.tfa_installed():
        pytest.skip("tensorflow-addons is installed on this stack")
    with pytest.raises(NormbenchError, match="impl 'tfa' needs tensorflow-addons"):
        load_text(tmp_path, "name: a\n", "model.norm.impl=tfa")


BAD = [  # (document, overrides, expected fragment of the one-line message)
    ("", (), "empty spec"),
    ("- a\n- b\n", (), "must be a mapping"),
    ("just text\n", (), "must be a mapping"),
    ("name: [unclosed\n", (), "invalid YAML (line 2"),
    ("name: a\n\tdataset: mnist\n", (), "invalid YAML"),
    ("name: a\nname: b\n", (), "duplicate key 'name'"),
    ("name: a\nepochs: 3\n", (), "epochs: unknown key"),
    ("name: a\nmodel: {filters: 3}\n", (), "valid keys here: arch, conv_filters, dense_units, dropout, widths, factory, norm"),
    ("name: a\nmodel: {norm: {group: 2}}\n", (), "model.norm.group: unknown key; did you mean 'groups'?"),
    ("name: a\ntrain: {epoch: 2}\n", (), "train.epoch: unknown key; did you mean 'epochs'?"),
    ("name: a\ntrain: {epochs: three}\n", (), "train.epochs: Input should be a valid integer, got 'three'"),
    ("name: a\ntrain: {epochs: 2.5}\n", (), "train.epochs: Input should be a valid integer"),
    ("name: a\ntrain: {epochs: true}\n", (), "train.epochs: Input should be a valid integer"),
    ("name: a\ntrain: {epochs: 0}\n", (), "train.epochs: Input should be greater than or equal to 1"),
    ("name: a\ntrain: {batch_size: -4}\n", (), "train.batch_size: Input should be greater than or equal to 1"),
    ("name: a\ntrain: {learning_rate: 0}\n", (), "train.learning_rate: must be a finite number > 0"),
    ("name: a\ntrain: {learning_rate: .inf}\n", (), "train.learning_rate: must be a finite number > 0"),
    ("name: a\nmodel: {norm: {epsilon: .nan}}\n", (), "model.norm.epsilon: must be a finite number > 0"),
    ("name: a\nmodel: {norm: {epsilon: -1e-3}}\n", (), "model.norm.epsilon: must be a finite number > 0"),
    ("name: a\nmodel: {dropout: 1.0}\n", (), "model.dropout: Input should be less than 1"),
    ("name: a\ntrain: {seed: -1}\n", (), "train.seed: Input should be greater than or equal to 0"),
    ("name: a\nmodel: {norm: {center: maybe}}\n", (), "model.norm.center: Input should be a valid boolean"),
    ("name: a\nmodel: {norm: {type: grp}}\n", (), "unknown norm 'grp'; did you mean 'group'? choose from none, batch"),
    ("name: a\ndataset: cifar\n", (), "dataset: unknown dataset 'cifar'; choose from mnist, mnist-10k"),
    ("name: a\ntrain: {optimizer: adamw}\n", (), "unknown optimizer 'adamw'; did you mean 'adam'?"),
    ("name: a\nmodel: {norm: {gamma_initializer: onez}}\n", (), "unknown initializer 'onez'"),
    ("name: a\nmodel: {norm: {impl: pytorch}}\n", (), "unknown impl 'pytorch'; choose from auto, native, tfa, keras"),
    ("name: a\nmodel: {norm: {type: batch, impl: native}}\n", (), "impl 'native' does not exist for norm 'batch'"),
    ("name: a\nmodel: {norm: {groups: 3}}\n", (), "model.norm.groups: 3 does not divide the 10 channels"),
    ("name: a\nmodel: {norm: {groups: 20}}\n", (), "choose from 1, 2, 5, 10"),
    ("name: a\nmodel: {norm: {groups: 0}}\n", (), "model.norm.groups: 0 does not divide"),
    ("name: a\nmodel: {norm: {axis: 0}}\n", (), "model.norm.axis: axis 0 is not a feature axis"),
    ("name: a\nmodel: {norm: {axis: 4}}\n", (), "model.norm.axis: axis 4"),
    ("name: ../evil\n", (), "name: use 1-64 letters, digits"),
    ("name: a/b\n", (), "name: use 1-64 letters"),
    ("name: 12\n", (), "name: Input should be a valid string"),
    ("name: a\nmodel: 3\n", (), "model: Input should be a valid dictionary"),
    ("name: !!python/object/apply:os.system ['touch /tmp/normbench-pwned']\n", (), "invalid YAML"),
    ("name: a\n", ("train.epochs",), "expected PATH=VALUE"),
    ("name: a\n", ("=3",), "expected PATH=VALUE"),
    ("name: a\n", ("name.x=3",), "name is not a section"),
    ("name: a\n", ("train.epochs=[1",), "invalid YAML"),
]


@pytest.mark.parametrize("text,overrides,fragment", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_specs_fail_with_one_line(tmp_path, text, fragment, overrides):
    with pytest.raises(NormbenchError) as info:
        load_text(tmp_path, text, *overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert not Path("/tmp/normbench-pwned").exists()


@pytest.mark.parametrize("make,fragment", [
    (lambda p: p / "missing.yaml", "no such file"),
    (lambda p: p, "is a directory"),
    (lambda p: (p / "b.yaml").write_bytes(b"\x00\x01\x02binary") and p / "b.yaml", "binary file"),
    (lambda p: (p / "l.yaml").write_bytes("name: caf\xe9\n".encode("latin-1")) and p / "l.yaml", "not UTF-8"),
    (lambda p: (p / "h.yaml").write_text("#" * (grid.MAX_SPEC_BYTES + 1)) and p / "h.yaml", "too large"),
])
def test_unreadable_files(tmp_path, make, fragment):
    with pytest.raises(NormbenchError, match=fragment):
        grid.load(make(tmp_path))


def test_every_registry_norm_validates(tmp_path):
    for name in norms.NORMS:
        assert load_text(tmp_path, f"name: a\nmodel: {{norm: {{type: {name}}}}}\n").model.norm.type == name


# ---------------------------------------------------------------------------------------------
# Run ids survive new spec fields


def test_run_ids_are_pinned():
    """Any change to how run ids are computed re-trains every user's finished runs: it must be
    deliberate (and then this literal changes with a note in the README)."""
    from normbench import store

    spec = grid.load(CONFIGS[0].parent / "groupnorm.yaml", ["dataset=mnist-10k", "train.epochs=3"])
    assert store.run_id(spec.name, identity.spec_hash(spec), False) == "groupnorm-af23cbceea5a"
    assert identity.of(spec) == {"name": "groupnorm", "dataset": "mnist-10k",
                                    "model": {"widths": None, "norm": {"momentum": None}},
                                    "train": {"epochs": 3}}


def _newer_schema():
    """The schema as a later normbench might have it: a new training field at its default, and
    a tracking field that changes nothing trained."""
    from pydantic import Field

    class NewTrain(specs.TrainSpec):
        future_option: int = 0
        track_to: str | None = Field(None, json_schema_extra=specs.OUTSIDE_IDENTITY)

    class NewSpec(specs.Spec):
        train: NewTrain = NewTrain()

    return NewSpec


def test_a_new_field_at_its_default_keeps_every_run_id(tmp_path):
    NewSpec = _newer_schema()
    for config in CONFIGS:
        for old in grid.load_runs(config)[:6]:
            new = NewSpec.model_validate(specs.to_dict(old))
            assert identity.spec_hash(new) == identity.spec_hash(old), config.name
            assert identity.spec_hash(new, without_seed=True) == identity.spec_hash(old, without_seed=True)
            tracked = new.model_copy(update={"train": new.train.model_copy(update={"track_to": "x"})})
            assert identity.spec_hash(tracked) == identity.spec_hash(old)  # outside the identity
            changed = new.model_copy(update={"train": new.train.model_copy(update={"future_option": 2})})
            assert identity.spec_hash(changed) != identity.spec_hash(old)


def test_a_results_directory_from_before_a_new_field_resumes_with_nothing_to_do(tmp_path):
    from normbench import executors
    from normbench.bench import cli as bench_cli

    spec_file = bench_cli.fake_records(tmp_path, 100)  # finished runs, written by "this" version
    NewSpec = _newer_schema()
    newer = [NewSpec.model_validate(specs.to_dict(s)) for s in grid.load_runs(spec_file)]
    planned = executors.plan(newer, False, tmp_path)
    assert len(planned) == 100 and sum(not p.done for p in planned) == 0


@pytest.mark.parametrize("doc, field, said", [
    ({"model": {"norm": {"impl": "Nativ"}}}, "model.norm.impl", "did you mean 'native'? choose from auto"),
    ({"train": {"optimizer": 5}}, "train.optimizer", "expected one of adam, sgd, rmsprop, got 5"),
    ({"train": {"schedule": "cosin"}}, "train.schedule", "unknown schedule 'cosin'; did you mean 'cosine'"),
    ({"model": {"norm": {"gamma_initializer": "one"}}}, "model.norm.gamma_initializer", "unknown initializer"),
    ({"model": {"norm": {"type": "batch", "eval_stats": []}}}, "model.norm.eval_stats", "expected one of moving"),
    ({"train": {"lr_scaling": "sqr"}}, "train.lr_scaling", "did you mean 'sqrt'"),
])
def test_every_choice_field_names_itself_suggests_and_lists_the_choices(doc, field, said):
    with pytest.raises(ValueError) as info:
        specs.Spec.model_validate({"name": "c", **doc})
    assert field in str(info.value) and said in str(info.value)


def test_choice_fields_read_any_case_into_the_canonical_value():
    s = specs.Spec.model_validate({"name": "c", "train": {"optimizer": "SGD", "schedule": "Cosine"},
                                   "model": {"norm": {"type": "batch", "eval_stats": "Precise"}}})
    assert (s.train.optimizer, s.train.schedule, s.model.norm.eval_stats) == ("sgd", "cosine", "precise")
