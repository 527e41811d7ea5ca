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


def _archive_like(tmp_path, name, members):
    """A copy of this stack's .keras file with members replaced or added."""
    (source,) = [p for p in _files() if p.suffix == ".keras"]
    out = tmp_path / name
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename not in members:
                dst.writestr(item, src.read(item))
        for member, data in members.items():
            dst.writestr(member, data)
    return out


def test_a_decompression_bomb_is_refused_before_it_is_inflated(tmp_path):
    """A 200 MiB member of zeros (0.2 MB in the archive) is refused from its header, in one line,
    without being read into memory (it was: 3 GiB of zeros took 3.8 GB)."""
    import resource

    bomb = _archive_like(tmp_path, "bomb.keras", {"padding.bin": bytes(200 << 20)})
    assert bomb.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="padding.bin.*decompression bomb"):
        layers.load_model(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 << 10  # KiB: < 100 MiB


@pytest.mark.parametrize("config, said", [(b"{not json", "not valid JSON"),
                                          (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")])
def test_a_config_that_is_not_json_or_nested_too_deeply_is_one_clear_error(tmp_path, config, said):
    bad = _archive_like(tmp_path, "bad.keras", {"config.json": config})
    with pytest.raises(ValueError, match=said) as info:
        layers.load_model(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
