"""Saves a small model holding every normbench layer, as .keras and .h5, with its predictions.

Usage: python tests/data/save_layer_models.py OUT_DIR. Run once per stack (Keras 3 on current TF,
tf.keras 2 on the legacy stack) with the code of the day; the files are committed, and
tests/test_saved_layers.py loads them on every later layout: a model saved before a refactor must
load after it, with the same predictions.
"""

import sys
from pathlib import Path

import numpy as np

from normbench import layers as nb
from normbench.layers import keras

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)
L = keras.layers


def every_layer() -> keras.Model:
    inputs = keras.Input((12, 12, 1))
    x = nb.WSConv2D(8, 3, padding="same")(inputs)
    x = nb.GroupNormalization(groups=2)(x)
    x = nb.InstanceNormalization(beta_initializer="random_uniform")(x)
    x = nb.FilterResponseNormalization()(x)
    x = nb.RMSNormalization()(x)
    x = nb.BatchNormalization(virtual_batch_size=4, momentum=0.5)(x)
    x = nb.BatchNormalization(renorm=True, virtual_batch_size=4, momentum=0.5)(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x))


x = np.random.default_rng(0).random((16, 12, 12, 1)).astype("float32")
y = np.arange(16) % 10
model = every_layer()
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, epochs=2, batch_size=8, verbose=0)  # moved weights and moving statistics
stack = f"keras{keras.__version__.split('.')[0]}"
np.save(out / f"{stack}_x.npy", x)
np.save(out / f"{stack}_y.npy", model.predict(x, verbose=0))
model.save(out / f"{stack}.keras")
model.save(out / f"{stack}.h5")
print("saved", stack)
