"""Run by tests on the legacy stack (TF <= 2.15 + tensorflow-addons): saves tfa-era models.

Usage: python legacy_save_models.py OUT_DIR. Writes seq.{h5,keras}, fn.{h5,keras}, bn.{h5,keras}
(tf.keras 2's BatchNormalization with virtual_batch_size), x.npy and
<model>_y.npy (the predictions to reproduce), and <model>_gamma.npy (trained, not all ones).
"""

import os
import sys

# The channels_first Conv2D below trains only through oneDNN's kernels on CPU (TF's own gradient
# kernel is NHWC-only), and TF 2.15 turns oneDNN on by default on recent Intel CPUs alone: on an
# AMD EPYC it was off and fit() failed.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_addons as tfa  # noqa: E402

out = sys.argv[1]
tf.keras.utils.set_random_seed(0)
layers = tf.keras.layers


def sequential():
    return tf.keras.Sequential([
        layers.Reshape((28, 28, 1), input_shape=(28, 28)),  # as the tfa tutorial wrote it
        layers.Conv2D(10, 3), tfa.layers.GroupNormalization(groups=5, axis=3),
        tfa.layers.InstanceNormalization(axis=3, beta_initializer="random_uniform",
                                         gamma_initializer="random_uniform"),
        layers.Flatten(), layers.Dense(16, activation="relu"), layers.Dense(10, activation="softmax")])


def functional():
    inputs = tf.keras.Input((28, 28))
    x = layers.Reshape((28, 28, 1))(inputs)
    x = layers.Conv2D(8, 3)(x)
    x = tfa.layers.GroupNormalization(groups=2, epsilon=1e-5, gamma_regularizer="l2")(x)
    x = layers.Conv2D(8, 3, data_format="channels_first")(layers.Permute((3, 1, 2))(x))
    x = tfa.layers.InstanceNormalization(axis=1, center=False)(x)
    return tf.keras.Model(inputs, layers.Dense(10)(layers.Flatten()(x)))


def ghost_bn():
    """tf.keras 2's own BatchNormalization(virtual_batch_size=...): Keras 3 has no such argument."""
    return tf.keras.Sequential([
        layers.Reshape((28, 28, 1), input_shape=(28, 28)), layers.Conv2D(4, 3),
        layers.BatchNormalization(virtual_batch_size=4, momentum=0.5),
        layers.Flatten(), layers.Dense(10, activation="softmax")])


x = np.random.default_rng(0).random((16, 28, 28)).astype("float32")
y = np.arange(16) % 10
np.save(f"{out}/x.npy", x)
for name, build in (("seq", sequential), ("fn", functional), ("bn", ghost_bn)):
    model = build()
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=name == "fn"))
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)  # trained: weights moved from their start
    if name != "bn":
        gn = next(l for l in model.layers if isinstance(l, tfa.layers.GroupNormalization))
        np.save(f"{out}/{name}_gamma.npy", gn.gamma.numpy())
    np.save(f"{out}/{name}_y.npy", model.predict(x, verbose=0))
    model.save(f"{out}/{name}.h5")
    model.save(f"{out}/{name}.keras")
print("saved")
