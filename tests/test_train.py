"""The training loop: same semantics as Keras's model.fit, XLA modes and their fallback,
divergence, honest timing, and thread/core assignment for sweep workers."""

from __future__ import annotations

from conftest import spec_from_yaml

import os
import subprocess
import sys

import pytest

import tensorflow  # noqa: E402,F401 - a hard dependency: an import failure must fail

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from normbench import data, executors, grid, layers, norms, spec as specs, train  # noqa: E402
from normbench.errors import NormbenchError  # noqa: E402
from normbench.models import build_model  # noqa: E402


def _spec(tmp_path, *overrides):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ndataset: mnist-10k\nmodel: {norm: {type: group, groups: 5}}\n")
    return grid.load(path, list(overrides))


def _model(spec):
    keras.utils.set_random_seed(0)
    made = norms.make(spec.model.norm)
    return build_model(spec.model, made.norm, made.conv)


@pytest.mark.slow
@pytest.mark.parametrize("mode", train.COMPILE_MODES)
def test_loop_trains_exactly_like_model_fit(tmp_path, mode):
    # Same batches in the same order and no dropout: normbench's in-graph loop must leave the
    # same weights as Keras's fit (the tutorial's recipe) after 30 Adam steps.
    spec = _spec(tmp_path, "model.dropout=0.0")
    ds = data.load("mnist-10k", smoke=True)
    x, y = ds.x_train[:960], ds.y_train[:960]
    initial = _model(spec).get_weights()
    reference = _model(spec)
    reference.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    fitted = reference.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history
    model = _model(spec)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    loop = train._Loop(model, optimizer, mode)
    order = tf.constant(np.arange(960, dtype=np.int32).reshape(30, 32))
    with layers.xla_kernels(mode == "kernels"):
        loss_sum = correct = 0.0
        for start in (0, 16):  # two calls, as steps_per_execution=16 makes them
            ls, hits = loop.steps(tf.constant(x), tf.constant(y), order, tf.constant(start),
                                  tf.constant(min(16, 30 - start)))
            loss_sum, correct = loss_sum + float(ls), correct + float(hits)
    # Adam turns float32 noise in near-zero gradients into +-lr steps, so single weights may
    # differ by ~1e-4; the average gap must be tiny against how far training moved them.
    ours, theirs = np.concatenate([w.ravel() for w in model.get_weights()]), \
        np.concatenate([w.ravel() for w in reference.get_weights()])
    moved = np.concatenate([w.ravel() for w in reference.get_weights()]) - \
        np.concatenate([w.ravel() for w in initial])
    assert np.abs(ours - theirs).mean() < 1e-2 * np.abs(moved).mean()
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(moved).max()
    assert loss_sum / 960 == pytest.approx(fitted["loss"][-1], rel=1e-4)
    assert correct / 960 == pytest.approx(fitted["accuracy"][-1], abs=1.5 / 960)


@pytest.mark.slow
def test_run_records_how_it_compiled_and_its_timing_basis(tmp_path):
    spec = _spec(tmp_path, "train.epochs=2", "train.steps_per_execution=5")
    record = train.run_one(specs.for_smoke(spec).model_copy(update={"train": spec.train}),
                           smoke=True, quiet=True)
    assert record.compiled == ("step" if tf.config.list_physical_devices("GPU") else "kernels")
    assert record.steady_basis == "epochs 2-2" and len(record.history) == 2
    assert record.steady_samples_per_s == pytest.approx(1000 / record.epoch_times_s[1])
    # 1,000 images at batch 32: 31 full batches and one of 8, as Keras's fit would have it
    assert record.status == "finished" and record.spec["train"]["steps_per_execution"] == 5


@pytest.mark.slow
def test_one_epoch_timing_leaves_out_the_compiling_call(tmp_path):
    spec = specs.for_smoke(_spec(tmp_path, "train.steps_per_execution=10"))
    record = train.run_one(spec, smoke=True, quiet=True)
    assert record.steady_basis.startswith("epoch 1 without its first call")
    assert record.steady_samples_per_s > 1000 / record.first_epoch_s


class _HostOnly(keras.layers.Layer):
    """An identity whose op XLA cannot compile (a host Python callback)."""

    def call(self, x):
        y = tf.numpy_function(lambda a: a, [x], x.dtype, stateful=False)
        return tf.ensure_shape(y, x.shape)


def _with_host_layer(monkeypatch):
    real = train.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        return keras.Sequential([keras.Input(model.input_shape[1:]), _HostOnly(), *model.layers])

    monkeypatch.setattr(train, "build_model", build)


@pytest.mark.slow
def test_a_host_op_outside_the_xla_kernels_trains_in_kernels_mode(tmp_path, monkeypatch):
    _with_host_layer(monkeypatch)
    spec = specs.for_smoke(_spec(tmp_path, "train.jit_compile=auto"))
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("auto picks 'step' on a GPU")
    record = train.run_one(spec, smoke=True, quiet=True)
    # 'kernels' compiles only the norm and the optimizer: the host op is outside them
    assert record.compiled == "kernels" and record.status == "finished"


@pytest.mark.slow
def test_whole_step_xla_failure_falls_back_under_auto_and_fails_under_true(tmp_path, monkeypatch):
    _with_host_layer(monkeypatch)
    spec = specs.for_smoke(_spec(tmp_path))
    monkeypatch.setattr(train, "compile_mode", lambda jit: "step" if jit else "none")
    record = train.run_one(spec, smoke=True, quiet=True)  # auto -> 'step' (patched) -> fails
    assert record.compiled == "none" and record.status == "finished"
    assert any(w.startswith("XLA (step) failed, trained without it") for w in record.warnings)
    strict = spec.model_copy(update={"train": spec.train.model_copy(update={"jit_compile": True})})
    with pytest.raises(NormbenchError, match="train.jit_compile: XLA could not compile this model"):
        train.run_one(strict, smoke=True, quiet=True)


def test_a_nan_loss_stops_training_and_marks_the_run_diverged(tmp_path):
    spec = specs.for_smoke(_spec(tmp_path, "model.norm.type=none", "train.learning_rate=1e30",
                                 "train.optimizer=sgd"))
    record = train.run_one(spec, smoke=True, quiet=True)
    assert record.status == "diverged" and not np.isfinite(record.history[-1].loss)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 cores and CPU affinity")
def test_sweep_workers_get_their_own_cores():
    code = ("import os; from normbench import executors; "
            "n = executors.pin_worker({k}, 2); print(n, sorted(os.sched_getaffinity(0)))")
    cores = sorted(os.sched_getaffinity(0))
    share = len(cores) // 2
    seen = []
    for k in (0, 1):
        out = subprocess.run([sys.executable, "-c", code.format(k=k)], capture_output=True,
                             text=True, check=True).stdout.split(maxsplit=1)
        assert int(out[0]) == share
        seen.append(out[1].strip())
    assert seen == [str(cores[:share]), str(cores[share:2 * share])]
    assert executors.pin_worker(0, 1) == len(cores)  # one worker keeps every core





@pytest.mark.slow
def test_a_ghost_run_drops_the_last_smaller_batch_and_records_three_evaluations(tmp_path):
    spec = spec_from_yaml(tmp_path, "model: {norm: {type: batch, virtual_batch_size: 8, momentum: 0.9, "
                           "precise_samples: 256, eval_stats: precise}}\n"
                           "train: {batch_size: 48, eval_every: 1, validation_split: 0.1}\n")
    record = train.run_one(spec, smoke=True, quiet=True)
    assert record.dropped_per_epoch == 900 % 48  # 1,000 smoke images less the 10% held out
    assert set(record.bn_eval) == {"moving", "precise", "batch"}
    assert record.bn_eval["precise"].samples == 256 // 48 * 48
    assert record.test_accuracy == record.bn_eval["precise"].accuracy  # eval_stats picks it
    assert record.history[-1].val_accuracy is not None and record.test_error_median5 is not None
    assert any("not trained on" in w for w in record.warnings)



def test_virtual_batch_size_must_divide_the_batch(tmp_path):
    with pytest.raises(NormbenchError, match="virtual_batch_size: 5 does not divide train.batch_size=32"):
        spec_from_yaml(tmp_path, "model: {norm: {type: batch, virtual_batch_size: 5}}\n")


def test_a_seed_gives_the_same_initial_weights_for_every_norm_and_batch(tmp_path):
    """Paired seeds: conv and dense kernels depend on the seed only, not on the norm or v."""
    def kernels(text, seed=0):
        spec = spec_from_yaml(tmp_path, "model: {arch: vgg, widths: [8, M, 16], norm: " + text + "}\n"
                               f"train: {{batch_size: 16, seed: {seed}}}\n")
        model, _ = train.initial_model(spec)
        return [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]

    reference = kernels("{type: batch}")
    assert len(reference) == 3  # two convs and the head's dense layer
    for norm in ("{type: batch, virtual_batch_size: 2}", "{type: group, groups: 4}",
                 "{type: layer}", "{type: instance}", "{type: batch_renorm}", "{type: none}"):
        got = kernels(norm)
        assert all(np.array_equal(a, b) for a, b in zip(reference, got, strict=True)), norm
    assert not np.array_equal(kernels("{type: batch}", seed=1)[0], reference[0])



@pytest.mark.slow
def test_batch_renorm_takes_virtual_batch_size_and_eval_stats(tmp_path):
    spec = spec_from_yaml(tmp_path, "model: {norm: {type: batch_renorm, virtual_batch_size: 8, "
                           "momentum: 0.9, precise_samples: 128}}\ntrain: {batch_size: 32}\n")
    record = train.run_one(spec, smoke=True, quiet=True)
    assert record.status == "finished" and set(record.bn_eval) == {"moving", "precise", "batch"}
    assert record.dropped_per_epoch == 1000 % 32


@pytest.mark.slow
def test_the_history_records_the_learning_rate_of_each_epoch(tmp_path):
    spec = spec_from_yaml(tmp_path, "train: {optimizer: sgd, learning_rate: 0.1, schedule: step, "
                           "milestones: [0.5], epochs: 2, batch_size: 100}\n")
    record = train.run_one(spec, smoke=True, quiet=True)
    # 10 steps an epoch (1,000 smoke images): epoch 1 ends before the milestone (step 10)
    assert [round(e.learning_rate, 6) for e in record.history] == [0.1, 0.01]


SPEC = "name: rel\ndataset: mnist-10k\n"


def _file(tmp_path, text: str):
    path = tmp_path / "w.yaml"
    path.write_text(text)
    return path


def test_short_batchnorm_runs_warn(tmp_path):
    import tensorflow  # noqa: F401 - a hard dependency
    from normbench import train

    spec = grid.load_runs(_file(tmp_path, SPEC + "model: {norm: {type: batch}}\n"))[0]
    assert "needs ~500 steps" in train._bn_warning(spec, 125)
    assert train._bn_warning(spec, 600) is None
    gn = grid.load_runs(_file(tmp_path, SPEC))[0]
    assert train._bn_warning(gn, 10) is None

