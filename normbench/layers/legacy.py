"""Loading models saved in the tensorflow-addons era (and tf.keras 2's ghost BN) on today's Keras:
configs are translated in a copy; the file itself is never modified."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from normbench.layers.base import KERAS_3, keras
from normbench.layers.batch_normalization import BatchNormalization
from normbench.layers.group_normalization import GroupNormalization, InstanceNormalization

MODULE = "normbench.layers"  # what saved files record as the layers' module (today and before)


CUSTOM_OBJECTS = {
    "Addons>GroupNormalization": GroupNormalization,
    "Addons>InstanceNormalization": InstanceNormalization,
}
# tf.keras 2 layers whose config Keras 3's own class cannot read: a BatchNormalization saved with
# tf.keras 2's virtual_batch_size becomes normbench's (same argument, an unbiased moving variance
# from then on; the saved moving statistics load unchanged).
KERAS2_ONLY_ARGUMENTS = {"BatchNormalization": ("virtual_batch_size", BatchNormalization)}


def _translate_config(node, reshaped: set | None = None):
    """tfa's class names -> normbench's, and (on Keras 3) what Keras 3 cannot read of Keras 2.
    Names of layers whose saved weights must be flattened are added to `reshaped`."""
    reshaped = set() if reshaped is None else reshaped
    if isinstance(node, list):
        return [_translate_config(n, reshaped) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _translate_config(v, reshaped) for k, v in node.items()}
    if node.get("class_name") in CUSTOM_OBJECTS:  # HDF5 configs name the registered class
        node["class_name"] = f"normbench>{CUSTOM_OBJECTS[node['class_name']].__name__}"
    if node.get("registered_name") in CUSTOM_OBJECTS:  # .keras configs: module + registered name
        node["module"] = MODULE
        node["registered_name"] = f"normbench>{node['class_name']}"
    config = node.get("config")
    special = KERAS2_ONLY_ARGUMENTS.get(node.get("class_name"))
    if str(node.get("registered_name") or "").startswith("normbench>"):
        special = None  # normbench's own layer, saved with its own (unshifted) axis
    if special and isinstance(config, dict) and config.get(special[0]) is not None:
        # tf.keras 2 inserted a virtual-batch dimension at index 1 when it built the layer and
        # saved that shifted axis, which it cannot load itself: the axis is one lower
        axis = config.get("axis")
        axis = axis if isinstance(axis, list) else [axis]
        if len(axis) == 1 and isinstance(axis[0], int) and axis[0] > 0:
            config["axis"] = axis[0] - 1 if KERAS_3 else [axis[0] - 1]
        if KERAS_3:  # Keras 3's BN has no such argument, an int axis and (C,) weights
            node["class_name"] = f"normbench>{special[1].__name__}"
            if "module" in node:  # .keras archive
                node["module"] = MODULE
                node["registered_name"] = f"normbench>{special[1].__name__}"
            for keras2_only in ("adjustment", "fused", "renorm_clipping", "renorm_momentum"):
                if config.get(keras2_only) is None or keras2_only == "fused":
                    config.pop(keras2_only, None)
            reshaped.add(config.get("name"))
    if not KERAS_3:
        return node
    if node.get("module") == "keras.src.engine.functional":  # Keras 2's home of Functional
        node["module"] = "keras.src.models.functional"
    config = node.get("config")
    if isinstance(config, dict) and "batch_input_shape" in config and "module" in node:
        shape = config.pop("batch_input_shape")  # Keras 3 keeps input shapes on InputLayer only
        if node.get("class_name") == "InputLayer":
            config["batch_shape"] = shape
            config.pop("ragged", None)
    return node


# Untrusted files: a member that inflates past MAX_MEMBER_BYTES at more than MAX_RATIO times its
# compressed size is a decompression bomb (3 MB of zeros became 3 GiB); config.json is parsed
# whole, so it has a cap of its own.
MAX_CONFIG_BYTES = 64 << 20
MAX_MEMBER_BYTES = 64 << 20
MAX_RATIO = 100


def _config_of(path, raw) -> dict | None:
    """The parsed model config, or ValueError saying in one line why it cannot be read."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(f"{path}: its model config is nested too deeply to read") from None
    except ValueError as exc:
        raise ValueError(f"{path}: its model config is not valid JSON ({exc})") from None


def _translate(path, config, reshaped: set):
    try:
        return _translate_config(config, reshaped)
    except RecursionError:
        raise ValueError(f"{path}: its model config is nested too deeply to read") from None


def _check_members(path, infos) -> None:
    for info in infos:
        if info.filename == "config.json" and info.file_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: config.json is {info.file_size >> 20} MiB; a model config "
                             f"is at most {MAX_CONFIG_BYTES >> 20} MiB")
        if info.file_size > MAX_MEMBER_BYTES and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise ValueError(f"{path}: member {info.filename!r} inflates {info.compress_size:,} "
                             f"bytes to {info.file_size:,} (a decompression bomb?); not loaded")


def _translated_copy(path, directory):
    """A copy of the saved model at `path` whose config names normbench's layers. Members are
    streamed, never read whole into memory (but config.json, which is capped)."""
    import h5py  # Keras's own dependency; only this path needs it

    copy = Path(directory) / Path(path).name
    reshaped: set = set()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive, zipfile.ZipFile(copy, "w") as out:
            infos = archive.infolist()
            _check_members(path, infos)
            names = [i.filename for i in infos]
            config = _config_of(path, archive.read("config.json")) if "config.json" in names else None
            translated = _translate(path, config, reshaped) if config is not None else None
            for item in infos:
                if item.filename == "config.json":
                    out.writestr(item, json.dumps(translated).encode())
                elif item.filename.endswith(".h5") and reshaped:
                    weights = Path(directory) / "weights.h5"
                    with archive.open(item) as src, open(weights, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    with h5py.File(weights, "r+") as f:
                        _flatten_weights(f, reshaped)
                    out.write(weights, item.filename, compress_type=item.compress_type)
                else:
                    with archive.open(item) as src, out.open(item, "w") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
    elif h5py.is_hdf5(path):
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            if "model_config" in f.attrs:
                raw = f.attrs["model_config"]
                config = _config_of(path, raw.decode() if isinstance(raw, bytes) else raw)
                f.attrs["model_config"] = json.dumps(_translate(path, config, reshaped))
                _flatten_weights(f, reshaped)
    else:
        raise ValueError(f"{path}: neither a .keras archive nor an HDF5 file")
    return copy


def _flatten_weights(f, names: set) -> None:
    """Datasets under a group named after one of `names`: (1, ..., 1, C) becomes (C,)."""
    if not names:
        return
    found = []
    f.visititems(lambda key, item: found.append(key) if hasattr(item, "shape")
                 and set(key.split("/")) & names and len(item.shape) > 1 else None)
    for key in found:
        data = f[key][()]
        attrs = dict(f[key].attrs)
        del f[key]
        f.create_dataset(key, data=data.reshape(-1))
        f[key].attrs.update(attrs)


def load_model(path, *, compile: bool = False, safe_mode: bool = True):
    """Load a Keras model whose GroupNormalization/InstanceNormalization came from tfa.

    `Addons>GroupNormalization` and `Addons>InstanceNormalization` become normbench's layers
    (same arguments, weights and outputs), also where tfa itself is installed. Works for HDF5
    (`.h5`) files and `.keras` archives; a `.keras` archive written by Keras 2 (TF <= 2.15) has its
    config translated for Keras 3. The file itself is never modified. Compiling is off by default:
    tfa-era optimizer states rarely restore across Keras versions.
    """
    kwargs = {"safe_mode": safe_mode} if KERAS_3 else {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = _translated_copy(path, tmp)
        try:
            return keras.models.load_model(copy, custom_objects=CUSTOM_OBJECTS, compile=compile,
                                           **kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: Keras {keras.__version__} could not load it ({str(exc).splitlines()[0]});"
                " if it is a Keras 2 .keras archive, on TF <= 2.15 re-save it as HDF5 "
                "(model.save('model.h5')) and load that instead") from None
