"""The training loop's fast paths compute what Keras computes: TensorFlow's fused optimizer ops
in place of Keras's update, the softmax left out of training, fused BatchNorm (test_batch_normalization)."""

from __future__ import annotations

import numpy as np
import pytest

from normbench import optim, train  # noqa: E402  (imports TensorFlow)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

pytestmark = pytest.mark.skipif(not train.layers.KERAS_3, reason="the fused optimizer path is Keras 3's")


def _variables(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=(5, 3)).astype("float32")),
            keras.Variable(rng.normal(size=(3,)).astype("float32"))]


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-2),
    "adam, schedule": lambda: keras.optimizers.Adam(optim.LearningRate(0.1, 10, 2, "cosine")),
    "sgd": lambda: keras.optimizers.SGD(0.1),
    "sgd, momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "sgd, nesterov": lambda: keras.optimizers.SGD(optim.LearningRate(0.1, 10, 0, "step", (0.5,)),
                                                 momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_fused_update_is_keras_update(name):
    theirs, ours = _variables(), _variables()
    keras_opt, fused_opt = OPTIMIZERS[name](), OPTIMIZERS[name]()
    keras_opt.build(theirs)
    fused_opt.build(ours)
    apply = tf.function(optim.native_update(fused_opt, ours), autograph=False)
    rng = np.random.default_rng(1)
    for _ in range(7):
        grads = [tf.constant(rng.normal(size=v.shape).astype("float32")) for v in theirs]
        keras_opt.apply_gradients(zip(grads, theirs))
        apply(grads)
    assert int(fused_opt.iterations) == int(keras_opt.iterations) == 7
    for a, b in zip(ours, theirs):
        assert np.abs(a.numpy() - b.numpy()).max() < 1e-5 * max(1.0, np.abs(b.numpy()).max())
    for a, b in zip(fused_opt.variables, keras_opt.variables):
        assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: keras.optimizers.Adam(amsgrad=True), lambda: keras.optimizers.Adam(clipnorm=1.0),
    lambda: keras.optimizers.SGD(weight_decay=1e-4), lambda: keras.optimizers.RMSprop(),
    lambda: keras.optimizers.AdamW()])
def test_what_the_fused_ops_lack_keeps_keras_update(make):
    variables = _variables()
    optimizer = make()
    optimizer.build(variables)
    assert optim.native_update(optimizer, variables) is None


def test_training_never_computes_the_softmax():
    from normbench import grid

    spec = grid.load(_config(), ["dataset=mnist-10k"])
    model, _ = train.initial_model(spec)
    fit = train.Fit(model, None, spec.train)
    fit.attach(optim.make_optimizer(spec.train, 10, 10))
    x = tf.zeros([64, 28, 28, 1])
    y = tf.zeros([64], tf.int32)
    order = tf.reshape(tf.range(64, dtype=tf.int32), [2, 32])
    graph = fit.loop.steps.get_concrete_function(x, y, order, tf.constant(0), tf.constant(2)).graph
    nodes = {n.name: n for f in graph.as_graph_def().library.function for n in f.node_def}
    softmax = {name for name, n in nodes.items() if n.op == "Softmax"}
    argmax = [n for n in nodes.values() if n.op == "ArgMax"]
    users = [n.op for n in nodes.values() if any(i.split(":")[0] in softmax for i in n.input)]
    # the loss and the accuracy read the logits: nothing reads the softmax, which the graph's
    # optimizer then prunes, so training never computes it
    assert argmax and all(n.input[0].split(":")[0] not in softmax for n in argmax)
    assert "SparseSoftmaxCrossEntropyWithLogits" in {n.op for n in nodes.values()}
    assert not [op for op in users if op != "Identity"], users


def _config():
    from normbench.bench import common

    return common.CONFIGS / "groupnorm.yaml"
