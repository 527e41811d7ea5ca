"""optim: learning-rate schedules, the optimizer a spec asks for, the training plan, weight
decay."""

from __future__ import annotations

from conftest import spec_from_yaml

import math

import pytest

import keras  # noqa: E402

from normbench import layers, optim, train  # noqa: E402

KERAS_3 = layers.KERAS_3



def test_schedules_give_the_learning_rate_at_each_step():
    step = optim.LearningRate(0.1, total_steps=100, kind="step", milestones=(0.3, 0.6), decay=0.1)
    assert [round(float(step(s)), 6) for s in (0, 29, 30, 59, 60, 99)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    cosine = optim.LearningRate(0.1, total_steps=100, warmup_steps=10, kind="cosine")
    assert float(cosine(0)) == pytest.approx(0.01)  # warmup: (0 + 1) / 10 of the peak
    assert float(cosine(9)) == pytest.approx(0.1)
    assert float(cosine(55)) == pytest.approx(0.05, rel=1e-5)  # half way from 10 to 100
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-7)
    constant = optim.LearningRate(0.2, total_steps=50, warmup_steps=4)
    assert [round(float(constant(s)), 6) for s in (0, 1, 3, 40)] == [0.05, 0.1, 0.2, 0.2]




def test_optimizer_and_plan_follow_the_spec(tmp_path):
    spec = spec_from_yaml(tmp_path, "train: {optimizer: sgd, momentum: 0.9, nesterov: true, "
                           "learning_rate: 0.1, batch_size: 64, lr_scaling: linear, "
                           "base_batch_size: 32, schedule: step, steps: 300}\n")
    optimizer = optim.make_optimizer(spec.train, 300, 125)
    assert optimizer.momentum == pytest.approx(0.9) and optimizer.nesterov
    rate = optimizer.learning_rate
    assert isinstance(optimizer._learning_rate, optim.LearningRate) if KERAS_3 else True
    fit = train.Fit(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), None, spec.train)
    assert fit.plan(8000) == (3, 300, 0)  # 125 steps an epoch: 3 epochs, the last cut short
    sqrt = spec_from_yaml(tmp_path, "train: {lr_scaling: sqrt, batch_size: 128}\n")
    assert sqrt.train.effective_learning_rate == pytest.approx(0.001 * 2)
    del rate



@pytest.mark.slow
def test_weight_decay_shrinks_the_weights(tmp_path):
    plain = spec_from_yaml(tmp_path, "model: {norm: {type: none}}\ntrain: {optimizer: sgd, learning_rate: 0.05}\n")
    decayed = spec_from_yaml(tmp_path, "model: {norm: {type: none}}\ntrain: {optimizer: sgd, "
                              "learning_rate: 0.05, weight_decay: 0.05}\n")
    norms_of = []
    for spec in (plain, decayed):
        record = train.run_one(spec, smoke=True, quiet=True)
        assert record.status == "finished"
        norms_of.append(record)
    # same seed and data: the decayed run's final training loss differs (L2 pulls the weights)
    assert not math.isclose(norms_of[0].train_loss, norms_of[1].train_loss, rel_tol=1e-6)

