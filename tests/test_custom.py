"""Your own model (model.arch: custom, model.factory) and data (dataset: npz:PATH)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """Three classes of the embedded digits, cut to 20x20 RGB-like images, as a user's file."""
    from normbench import data

    ds = data.load("mnist-10k")
    folder = tmp_path_factory.mktemp("npz")
    arrays = {}
    for split, (x, y) in {"train": (ds.x_train, ds.y_train), "test": (ds.x_test, ds.y_test)}.items():
        keep = np.flatnonzero(y < 3)[:600 if split == "train" else 300]
        images = (x[keep, 4:24, 4:24, 0] * 255).astype(np.uint8)
        arrays[f"x_{split}"] = np.repeat(images[..., None], 3, axis=-1)
        arrays[f"y_{split}"] = y[keep].astype(np.int64)
    path = folder / "digits3.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
def test_a_custom_factory_trains_on_a_users_npz(npz, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: mine\ndataset: 'npz:{npz}'\nmodel: {{arch: custom, factory: "
                    "'examples.custom_model:build', norm: {type: group, groups: 8}}\n"
                    "train: {epochs: 2, batch_size: 32}\n")
    done = cli("run", spec, "-q", "--results", tmp_path / "r")
    assert done.returncode == 0, done.stderr[-2000:]
    (metrics,) = (tmp_path / "r" / "runs").glob("mine-*/metrics.json")
    record = json.loads(metrics.read_text())
    assert record["dataset"]["n_train"] == 600 and record["dataset"]["n_test"] == 300
    assert record["test_accuracy"] > 0.6  # 3 classes: chance is 33%
    source = (ROOT / "examples" / "custom_model.py").read_bytes()
    import hashlib

    assert record["contents"]["factory"] == hashlib.sha256(source).hexdigest()
    assert record["contents"]["dataset"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    # editing the data file makes a new run id
    before = cli("run", spec, "--dry-run", "--results", tmp_path / "r").stdout
    assert "0 to run, 1 finished" in before
    with np.load(npz) as f:
        arrays = dict(f)
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][0] = (arrays["y_test"][0] + 1) % 3
    edited = tmp_path / "edited.npz"
    np.savez(edited, **arrays)
    spec.write_text(spec.read_text().replace(str(npz), str(edited)))
    after = cli("run", spec, "--dry-run", "--results", tmp_path / "r").stdout
    assert "1 to run, 0 finished" in after


BROKEN = {
    "raises": "def build(norm, shape, classes):\n    raise ValueError('no such layer')\n",
    "returns a list": "def build(norm, shape, classes):\n    return [1]\n",
    "wrong output": ("import keras\ndef build(norm, shape, classes):\n"
                     "    i = keras.Input(shape)\n"
                     "    return keras.Model(i, keras.layers.Dense(3)(keras.layers.Flatten()(i)))\n"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_factory_is_one_error_line(tmp_path, case):
    (tmp_path / "userfactory.py").write_text(BROKEN[case])
    spec = tmp_path / "s.yaml"
    spec.write_text("name: b\ndataset: mnist-10k\nmodel: {arch: custom, factory: 'userfactory:build'}\n")
    done = cli("run", spec, "--smoke", "-q", "--results", tmp_path / "r", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "model.factory 'userfactory:build'" in done.stderr.strip().splitlines()[-1]


def test_bad_factories_and_files_fail_validation(tmp_path):
    spec = tmp_path / "s.yaml"
    for text, fragment in (
            ("model: {arch: custom}", "needs 'package.module:function'"),
            ("model: {arch: custom, factory: 'no.such.module:f'}", "no.such.module"),
            ("model: {factory: 'a:b'}", "arch 'custom' only"),
            ("dataset: 'npz:/no/such.npz'", "such.npz")):
        spec.write_text(f"name: b\n{text}\n")
        done = cli("run", spec, "--smoke", "--results", tmp_path / "r")
        assert done.returncode == 2 and fragment in done.stderr, (text, done.stderr)
        assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("change,fragment", [
    (lambda a: a.pop("y_test"), "missing array(s) y_test"),
    (lambda a: a.update(y_train=a["y_train"].astype(np.float32)), "integer class ids"),
    (lambda a: a.update(x_train=a["x_train"][:, :, :10]), "differ in shape"),
    (lambda a: a.update(y_train=a["y_train"][:5]), "one label per image"),
    (lambda a: a.update(x_test=np.full(a["x_test"].shape, np.nan, np.float32)), "NaN"),
    (lambda a: a.update(x_test=np.array([object()] * 3, dtype=object)), "npz"),
])
def test_a_bad_npz_is_one_error_line(npz, tmp_path, change, fragment):
    with np.load(npz) as f:
        arrays = dict(f)
    change(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: b\ndataset: 'npz:{bad}'\n")
    done = cli("run", spec, "--smoke", "-q", "--results", tmp_path / "r")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert fragment in done.stderr, done.stderr


SWAPPING = '''import os
import sys

import numpy as np

sys.path.insert(0, {examples!r})
from custom_model import build as real_build


def build(norm, shape, classes):
    """Called after the data is loaded and hashed: the file is replaced under the running run
    (or, with SWAP_SOURCE, this module's own source is edited)."""
    if os.environ.get("SWAP_SOURCE"):
        with open(__file__, "a") as f:
            f.write("\\n# edited while the run trained\\n")
    else:
        with np.load(os.environ["SWAP_NPZ"]) as f:
            arrays = dict(f)
        arrays["y_test"] = (arrays["y_test"] + 1) % 3
        np.savez(os.environ["SWAP_NPZ"], **arrays)
    return real_build(norm, shape, classes)
'''


@pytest.mark.slow
@pytest.mark.parametrize("swap", ["npz", "source"])
def test_a_file_replaced_while_a_run_trains_fails_the_run_and_saves_nothing(npz, tmp_path, swap):
    """The run id is the plan's, hashed once: a data file or factory module changed under a
    running run fails it (saved under another experiment's id, a dry run would call it done)."""
    data = tmp_path / "data.npz"
    data.write_bytes(npz.read_bytes())
    (tmp_path / "swapper.py").write_text(SWAPPING.format(examples=str(ROOT / "examples")))
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: swap\ndataset: 'npz:{data}'\nmodel: {{arch: custom, factory: "
                    "'swapper:build', norm: {type: group, groups: 8}}\ntrain: {epochs: 1}\n")
    env = {**__import__("os").environ, "SWAP_NPZ": str(data), **({"SWAP_SOURCE": "1"} if swap == "source" else {})}
    planned = cli("run", spec, "--dry-run", "--results", tmp_path / "r", cwd=tmp_path).stdout
    done = subprocess.run([sys.executable, "-m", "normbench", "run", str(spec), "-q", "--results",
                           str(tmp_path / "r")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 1 and "changed while the run trained" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "r" / "runs").glob("swap-*/metrics.json"))
    again = cli("run", spec, "--dry-run", "--results", tmp_path / "r", cwd=tmp_path).stdout
    assert "1 to run, 0 finished" in again and "1 to run, 0 finished" in planned
