"""Models saved with tensorflow-addons layers on TF <= 2.15 load with normbench.layers.load_model."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tensorflow  # noqa: E402,F401 - a hard dependency: an import failure must fail

from normbench import layers  # noqa: E402
from normbench.verify import rel_error  # noqa: E402

ROOT = Path(__file__).parents[1]
LEGACY_PYTHON = Path(os.environ.get("NORMBENCH_LEGACY_PYTHON", ROOT / ".venv-legacy" / "bin" / "python"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    if not LEGACY_PYTHON.exists():
        pytest.skip(f"no legacy stack at {LEGACY_PYTHON} (make legacy-venv)")
    out = tmp_path_factory.mktemp("tfa-era")
    proc = subprocess.run([str(LEGACY_PYTHON), str(ROOT / "tests" / "legacy_save_models.py"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("model", ["seq", "fn"])
@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_tfa_era_models_load_and_reproduce_outputs(saved, model, fmt):
    loaded = layers.load_model(saved / f"{model}.{fmt}")
    ours = [l for l in loaded.layers if isinstance(l, layers.GroupNormalization)]
    assert {type(l).__name__ for l in ours} == {"GroupNormalization", "InstanceNormalization"}
    gamma = np.load(saved / f"{model}_gamma.npy")
    assert not np.allclose(gamma, 1.0)  # trained weights, not initial ones
    np.testing.assert_allclose(np.asarray(ours[0].gamma), gamma, rtol=0, atol=0)
    x = np.load(saved / "x.npy")
    # TF 2.15 and 2.21 sum the convolutions in different orders: compare relative to the logits
    assert rel_error(loaded.predict(x, verbose=0), np.load(saved / f"{model}_y.npy")) < 1e-5


def test_untranslatable_keras2_archive_says_what_to_do(saved, tmp_path):
    if not layers.KERAS_3:
        pytest.skip("Keras 2 reads its own archives")
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(saved / "seq.keras") as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"]["layers"][2]["class_name"] = "NoSuchLayer"
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(ValueError, match=r"re-save it as HDF5 \(model.save\('model.h5'\)\)"):
        layers.load_model(bad)


def test_loading_leaves_the_file_untouched(saved):
    before = (saved / "seq.h5").read_bytes()
    layers.load_model(saved / "seq.h5")
    assert (saved / "seq.h5").read_bytes() == before


def test_not_a_model_file(tmp_path):
    junk = tmp_path / "m.h5"
    junk.write_text("hello")
    with pytest.raises(ValueError, match="neither a .keras archive nor an HDF5 file"):
        layers.load_model(junk)


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_tf_keras2_batchnorm_with_virtual_batch_size_loads(saved, fmt):
    """tf.keras 2 saved BatchNormalization(virtual_batch_size=4); Keras 3's layer has no such
    argument: it loads as normbench's, with the saved moving statistics and the same predictions."""
    loaded = layers.load_model(saved / f"bn.{fmt}")
    (bn,) = [l for l in loaded.layers if "BatchNormalization" in type(l).__name__]
    if layers.KERAS_3:
        assert isinstance(bn, layers.BatchNormalization) and bn.ghost_batch_size == 4
    x = np.load(saved / "x.npy")
    assert rel_error(loaded.predict(x, verbose=0), np.load(saved / "bn_y.npy")) < 1e-5
