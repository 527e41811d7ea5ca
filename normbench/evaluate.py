"""Evaluating a trained model: test loss and accuracy with the BN statistics asked for (moving
averages, the batch at hand, or PreciseBN's exact moments), and whether a run diverged."""

from __future__ import annotations

import math
import weakref

from normbench import layers, spec as specs
from normbench.tf_runtime import quiet_tensorflow

tf = quiet_tensorflow()  # before Keras, which imports it with its C++ log lines
import keras  # noqa: E402


EVAL_BATCH = 512  # evaluation batch size changes speed only: no layer here mixes test samples


CHANCE_ACCURACY = 0.12  # 10 classes: a model at or below this learned nothing


LOSS_BLOWUP = 100.0  # final training loss above this multiple of the first call's: diverged


_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {mode: function}


def _predictor(model, mode: str):
    """One traced inference function per model and BN mode (the mode is read while tracing), so
    evaluating every epoch does not trace again."""
    table = _PREDICTORS.setdefault(model, {})
    if mode not in table:
        ref = weakref.ref(model)  # the entry must not keep its own key alive
        table[mode] = tf.function(lambda xb: ref()(xb, training=False), autograph=False,
                                  reduce_retracing=True)
    return table[mode]


def evaluate(model, x, y, batch: int = EVAL_BATCH, *, mode: str = "moving") -> dict:
    """Test-set loss and accuracy with the BN statistics of `mode`; 'batch' normalizes the test
    images in batches of `batch` (groups of virtual_batch_size inside), so only the largest
    multiple of `batch` is evaluated (`n` says how many)."""
    n = len(y) - (len(y) % batch if mode == "batch" else 0)
    if n == 0:
        return {"loss": float("nan"), "accuracy": 0.0, "n": 0}
    with layers.bn_statistics(mode):
        predict = _predictor(model, mode)
        loss_sum = correct = 0.0
        for i in range(0, n, batch):
            probs = predict(tf.convert_to_tensor(x[i:min(i + batch, n)]))
            yb = y[i:min(i + batch, n)]
            loss_sum += float(tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(yb, probs)))
            correct += float(tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32),
                                                             tf.cast(yb, tf.int32)), tf.float32)))
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": n}


def bn_layers(model) -> list:
    return [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]


def precise_statistics(model, x, batch: int, samples: int) -> int:
    """PreciseBN (Wu & Johnson 2021): replace every BN layer's moving mean and variance by the
    exact population moments of its inputs over `samples` training images, computed with the
    final weights in batches of `batch` (normalized as in training). Returns the images used."""
    n = min(samples, len(x)) // batch * batch
    bns = bn_layers(model)
    for layer in bns:
        layer.prepare_collect()
        layer.reset_collected()
    with layers.bn_statistics("collect"):
        forward = tf.function(lambda xb: model(xb, training=False), autograph=False)
        for i in range(0, n, batch):
            forward(tf.convert_to_tensor(x[i:i + batch]))
    for layer in bns:
        mean, variance = layer.precise_statistics()
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
    return n


def bn_evaluation(model, ds, x_train, spec: specs.Spec, moving: dict) -> dict:
    """Test loss and accuracy three ways (moving averages, PreciseBN, batch statistics)."""
    t, norm = spec.train, spec.model.norm
    found = {"moving": moving}
    bns = bn_layers(model)
    saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in bns]
    used = precise_statistics(model, x_train, t.batch_size, norm.precise_samples)
    found["precise"] = {**evaluate(model, ds.x_test, ds.y_test), "samples": used}
    for layer, (mean, variance) in zip(bns, saved):
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
    found["batch"] = evaluate(model, ds.x_test, ds.y_test, t.batch_size, mode="batch")
    return found


def diverged_reason(nonfinite: str | None, first_loss: float | None, final_loss: float,
                    test_loss: float, test_accuracy: float, classes: int = 10) -> str | None:
    """Why a run that trained to the end still failed, or None. A diverged run is kept (and not
    retried on every invocation, as a failed one would be) but never averaged into means.
    Chance is judged for `classes` classes (10: 12% accuracy, a uniform guess's loss ln 10)."""
    uniform_loss = math.log(classes)
    chance = CHANCE_ACCURACY * 10 / classes
    if nonfinite:
        return nonfinite
    if not math.isfinite(test_loss):
        return f"the test loss is {test_loss}"
    if first_loss is not None and math.isfinite(first_loss) and first_loss > 0 \
            and final_loss > LOSS_BLOWUP * first_loss:
        return (f"the final training loss {final_loss:.4g} is more than {LOSS_BLOWUP:g}x the "
                f"first call's {first_loss:.4g}")
    if final_loss > LOSS_BLOWUP * uniform_loss:  # it blew up within the first call already
        return (f"the final training loss {final_loss:.4g} is more than {LOSS_BLOWUP:g}x that "
                f"of a uniform guess over {classes} classes ({uniform_loss:.3f})")
    if test_accuracy < chance:
        return f"test accuracy {100 * test_accuracy:.1f}% is at chance (< {100 * chance:.3g}%)"
    return None

