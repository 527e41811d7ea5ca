"""Models saved by earlier code, with every normbench layer, load and predict the same: the
layers' Keras names and the module saved files record (`normbench.layers`) never move."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from normbench import layers
from normbench.layers import keras

SAVED = Path(__file__).parent / "data" / "saved"
STACK = f"keras{keras.__version__.split('.')[0]}"
LAYERS = ("WSConv2D", "GroupNormalization", "InstanceNormalization", "FilterResponseNormalization",
          "RMSNormalization", "BatchNormalization")


def _files():
    return sorted(p for p in SAVED.glob(f"{STACK}.*") if p.suffix in (".keras", ".h5"))


def test_this_stack_has_saved_files():
    assert [p.suffix for p in _files()] == [".h5", ".keras"]


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
@pytest.mark.parametrize("loader", ["keras", "normbench"])
def test_a_model_saved_by_earlier_code_loads_and_predicts_the_same(path, loader):
    load = keras.models.load_model if loader == "keras" else layers.load_model
    model = load(path, compile=False)
    found = {type(layer).__name__ for layer in model.layers}
    assert set(LAYERS) <= found
    assert all(type(layer).__module__.startswith("normbench.layers") for layer in model.layers
               if type(layer).__name__ in LAYERS)
    x = np.load(SAVED / f"{STACK}_x.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), np.load(SAVED / f"{STACK}_y.npy"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(STACK != "keras3", reason="tf.keras 2's .keras config names no module")
def test_new_saves_record_the_module_normbench_layers(tmp_path):
    inputs = keras.Input((6, 6, 4))
    x = layers.GroupNormalization(groups=2)(inputs)
    x = layers.InstanceNormalization()(x)
    x = layers.FilterResponseNormalization()(x)
    x = layers.RMSNormalization()(x)
    x = layers.WSConv2D(4, 3)(x)
    x = layers.BatchNormalization(virtual_batch_size=2)(x)
    keras.Model(inputs, x).save(tmp_path / "m.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    ours = [l for l in config["config"]["layers"] if l["class_name"] in LAYERS]
    assert len(ours) == 6
    assert {l["module"] for l in ours} == {"normbench.layers"}
    assert {l["registered_name"] for l in ours} == {f"normbench>{l['class_name']}" for l in ours}


@pytest.mark.skipif(STACK != "keras3", reason="Keras 3 files do not load on tf.keras 2")
def test_a_tf_keras_2_hdf5_file_loads_on_keras_3_through_normbench():
    model = layers.load_model(SAVED / "keras2.h5")
    x = np.load(SAVED / "keras2_x.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), np.load(SAVED / "keras2_y.npy"),
                               rtol=1e-5, atol=1e-5)
