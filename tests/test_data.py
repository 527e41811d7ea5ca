"""Datasets: the embedded mnist-10k, MNIST's offline fallback, Fashion-MNIST IDX files."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from normbench import data, spec as specs
from normbench.errors import NormbenchError

ROOT = Path(__file__).parents[1]


def test_registry_matches_spec():
    assert tuple(data.LOADERS) == specs.DATASETS


def test_mnist10k_loads_with_checksums_and_stratified_split():
    ds = data.load("mnist-10k")
    p = ds.provenance
    assert (p["name"], p["n_train"], p["n_test"], p["warning"]) == ("mnist-10k", 8000, 2000, None)
    assert p["sha256"] == data.MNIST10K_CONTENT_SHA256
    assert ds.x_train.shape == (8000, 28, 28, 1) and ds.x_train.dtype == np.float32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.y_train.dtype == np.int32 and set(np.unique(ds.y_test)) == set(range(10))
    train = np.bincount(ds.y_train, minlength=10)
    test = np.bincount(ds.y_test, minlength=10)
    fraction = test / (train + test)
    assert np.all(np.abs(fraction - 0.2) < 0.002)  # every class held out at 20%


def test_smoke_slices_small_balanced_prefixes():
    ds = data.load("mnist-10k", smoke=True)
    assert (len(ds.y_train), len(ds.y_test)) == (data.SMOKE_TRAIN, data.SMOKE_TEST)
    assert ds.provenance["smoke"] and ds.provenance["sha256"] == data.MNIST10K_CONTENT_SHA256
    assert np.bincount(ds.y_train, minlength=10).min() > 50


def test_damaged_embedded_file_is_detected(tmp_path, monkeypatch):
    bad = tmp_path / "mnist10k.npz"
    raw = bytearray(data.MNIST10K_FILE.read_bytes())
    raw[1000] ^= 0xFF
    bad.write_bytes(bytes(raw))
    monkeypatch.setattr(data, "MNIST10K_FILE", bad)
    with pytest.raises(NormbenchError, match="checksum mismatch"):
        data.load("mnist-10k")


def test_mnist_falls_back_to_mnist10k_offline(tmp_path, monkeypatch, caplog):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setenv("NORMBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(data, "_download", offline)
    ds = data.load("mnist")
    p = ds.provenance
    assert (p["requested"], p["name"], p["n_train"]) == ("mnist", "mnist-10k", 8000)
    assert "full MNIST is unavailable" in p["warning"]
    assert "using the embedded mnist-10k" in caplog.text


def test_mnist_uses_keras_download_when_available(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 60, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 10, dtype=np.uint8)}
    path = tmp_path / "mnist.npz"
    np.savez(path, **arrays)
    monkeypatch.setattr(data, "_fetch_mnist", lambda: path)
    ds = data.load("mnist")
    assert (ds.provenance["name"], ds.provenance["n_train"]) == ("mnist", 60)
    assert ds.provenance["sha256"] == data.content_sha256(arrays)
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])


def test_pickled_arrays_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=np.array([object()]), y_train=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1))
    monkeypatch.setattr(data, "_fetch_mnist", lambda: path)
    with pytest.raises(NormbenchError, match="unreadable dataset file.*allow_pickle=False"):
        data.load("mnist")


def _idx(array: np.ndarray) -> bytes:
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_reader_and_truncation():
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    np.testing.assert_array_equal(data._read_idx(_idx(images), "x"), images)
    with pytest.raises(NormbenchError, match="truncated"):
        data._read_idx(_idx(images)[:-5], "x")
    with pytest.raises(NormbenchError, match="not a uint8 IDX"):
        data._read_idx(b"\x00\x00\x0d\x03" + bytes(20), "x")


FASHION = Path(data.FASHION_DEBIAN_DIR)
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed")


@needs_fashion
def test_fashion_mnist_from_debian_package():
    ds = data.load("fashion-mnist")
    assert (ds.provenance["n_train"], ds.provenance["n_test"]) == (60000, 10000)
    assert "dataset-fashion-mnist" in ds.provenance["source"]
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


@needs_fashion
def test_fashion_mnist_corrupted_file_is_reported(tmp_path, monkeypatch):
    for f in FASHION.iterdir():
        shutil.copy(f, tmp_path / f.name)
    name = "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress((tmp_path / name).read_bytes()))
    raw[100] ^= 1
    (tmp_path / name).write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setenv("NORMBENCH_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(NormbenchError, match=f"{name}: checksum mismatch"):
        data.load("fashion-mnist")


def test_fashion_mnist_offline_without_files_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMBENCH_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    import urllib.error

    import keras

    def offline(*args, **kwargs):  # as Keras raises it: a bare Exception, urllib's error inside
        try:
            raise urllib.error.URLError("Name or service not known")
        except urllib.error.URLError:
            raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setenv("NORMBENCH_CACHE_DIR", str(tmp_path))
    with pytest.raises(NormbenchError, match="install Debian's dataset-fashion-mnist"):
        data.load("fashion-mnist")


def test_conversion_script_is_deterministic(tmp_path):
    """scripts/make_mnist10k.py on a fake package: exact bytes back, 20% per class held out."""
    spec = importlib.util.spec_from_file_location("make_mnist10k", ROOT / "scripts" / "make_mnist10k.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_mnist10k"] = module
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    digits_dir = tmp_path / "src" / "digits"
    digits_dir.mkdir(parents=True)
    originals = {}
    for d in range(10):
        images = rng.integers(0, 256, (10 + d, 28, 28), dtype=np.uint8)
        originals[d] = images
        values = [round(v / 255, 3) for v in images.reshape(-1).tolist()]
        (digits_dir / f"{d}.json").write_text(json.dumps({"data": values}))
    digits = module._digits_from_dir(tmp_path)
    for d in range(10):
        np.testing.assert_array_equal(digits[d], originals[d])
    a, b = module.stratified_split(digits), module.stratified_split(digits)
    assert data.content_sha256(a) == data.content_sha256(b)
    assert len(a["y_test"]) == round(sum(10 + d for d in range(10)) * 0.2)


# ---------------------------------------------------------------------------------------------
# Downloads against a real HTTP server on 127.0.0.1: good files, corrupted files, corrupted caches

import functools  # noqa: E402
import http.server  # noqa: E402
import threading  # noqa: E402


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; yields (base URL, directory, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, requests
    httpd.shutdown()
    httpd.server_close()


def _fake_mnist(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {"x_train": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 40, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 20, dtype=np.uint8)}
    np.savez(path, **arrays)
    return arrays


@pytest.fixture
def mnist_server(server, tmp_path, monkeypatch):
    import keras  # noqa: F401 - a hard dependency
    base, root, requests = server
    (root / "good").mkdir()
    (root / "bad").mkdir()
    arrays = _fake_mnist(root / "good" / "mnist.npz")
    corrupted = bytearray((root / "good" / "mnist.npz").read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    (root / "bad" / "mnist.npz").write_bytes(bytes(corrupted))
    monkeypatch.setattr(data, "MNIST_SHA256", data.file_sha256(root / "good" / "mnist.npz"))
    monkeypatch.setenv("NORMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return base, arrays, requests, tmp_path / "cache" / "datasets" / "mnist.npz"


def test_download_is_verified_and_cached(mnist_server, monkeypatch):
    base, arrays, requests, cached = mnist_server
    monkeypatch.setattr(data, "MNIST_ORIGIN", base + "good/mnist.npz")
    ds = data.load("mnist")
    assert ds.provenance["name"] == "mnist" and ds.provenance["sha256"] == data.content_sha256(arrays)
    assert cached.is_file() and requests == ["/good/mnist.npz"]
    data.load("mnist")
    assert requests == ["/good/mnist.npz"]  # the second load reads the verified cache


def test_corrupted_cache_is_reported_and_fetched_again(mnist_server, monkeypatch, caplog):
    base, arrays, requests, cached = mnist_server
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04 truncated download")
    monkeypatch.setattr(data, "MNIST_ORIGIN", base + "good/mnist.npz")
    ds = data.load("mnist")
    assert "cached MNIST fails its sha256 check (corrupted); fetching it again" in caplog.text
    assert requests == ["/good/mnist.npz"] and ds.provenance["sha256"] == data.content_sha256(arrays)
    assert data.file_sha256(cached) == data.MNIST_SHA256


def test_corrupted_download_is_an_error_and_is_removed(mnist_server, monkeypatch):
    base, _, requests, cached = mnist_server
    monkeypatch.setattr(data, "MNIST_ORIGIN", base + "bad/mnist.npz")
    with pytest.raises(NormbenchError, match="fails its sha256 check .* it was removed"):
        data.load("mnist")
    assert requests == ["/bad/mnist.npz"] and not cached.exists()


def test_corrupted_cache_while_offline_falls_back_and_says_why(mnist_server, monkeypatch, caplog):
    base, _, _, cached = mnist_server
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    monkeypatch.setattr(data, "MNIST_ORIGIN", base + "missing/mnist.npz")  # 404: no copy to get
    ds = data.load("mnist")
    assert ds.provenance["name"] == "mnist-10k"
    assert "the cached copy was corrupted and" in ds.provenance["warning"]


def _fake_fashion(root: Path) -> dict[str, str]:
    """Tiny IDX files under root; returns their decompressed sha256 by name."""
    rng = np.random.default_rng(3)
    shapes = {"train-images-idx3-ubyte": (12, 28, 28), "train-labels-idx1-ubyte": (12,),
              "t10k-images-idx3-ubyte": (6, 28, 28), "t10k-labels-idx1-ubyte": (6,)}
    hashes = {}
    for name, shape in shapes.items():
        body = rng.integers(0, 10 if len(shape) == 1 else 256, shape, dtype=np.uint8)
        raw = (0x0800 + len(shape)).to_bytes(4, "big") + b"".join(
            d.to_bytes(4, "big") for d in shape) + body.tobytes()
        (root / f"{name}.gz").write_bytes(gzip.compress(raw))
        hashes[name] = hashlib.sha256(raw).hexdigest()
    return hashes


def test_fashion_download_corrupted_cache_is_fetched_again(server, tmp_path, monkeypatch, caplog):
    import keras  # noqa: F401 - a hard dependency
    base, root, requests = server
    monkeypatch.setattr(data, "FASHION_IDX_SHA256", _fake_fashion(root))
    monkeypatch.setattr(data, "FASHION_ORIGIN", base)
    monkeypatch.setenv("NORMBENCH_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setenv("NORMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    assert len(data.load("fashion-mnist").y_train) == 12 and len(requests) == 4
    cached = tmp_path / "cache" / "datasets" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    cached.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x06" + bytes(6)))  # wrong labels
    ds = data.load("fashion-mnist")
    assert "t10k-labels-idx1-ubyte.gz: fails its sha256 check (corrupted); fetching it again" in caplog.text
    assert requests[4:] == ["/t10k-labels-idx1-ubyte.gz"] and len(ds.y_test) == 6
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")  # the server goes bad
    cached.write_bytes(b"junk")
    with pytest.raises(NormbenchError, match="checksum mismatch .* the server sent a corrupted file"):
        data.load("fashion-mnist")
    assert not cached.exists()


def test_only_network_errors_fall_back(tmp_path, monkeypatch):
    """Connection refused falls back to mnist-10k; an unusable cache directory or a full disk
    is an error naming the path (falling back would hide a problem the user can fix)."""
    import keras  # noqa: F401 - a hard dependency
    monkeypatch.setattr(data, "MNIST_ORIGIN", "http://127.0.0.1:9/mnist.npz")  # discard: refused
    monkeypatch.setenv("NORMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    assert data.load("mnist").provenance["name"] == "mnist-10k"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("NORMBENCH_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(NormbenchError, match=f"cannot download into {blocker}/cache/datasets"):
        data.load("mnist")
    monkeypatch.setenv("NORMBENCH_CACHE_DIR", str(tmp_path / "full"))

    def full_disk(url, filename, *args, **kwargs):
        raise OSError(28, "No space left on device")

    import urllib.request

    monkeypatch.setattr(urllib.request, "urlretrieve", full_disk)
    import importlib

    for where in ("keras.src.utils.file_utils", "keras.src.utils.data_utils"):  # Keras 3, 2
        try:
            monkeypatch.setattr(importlib.import_module(where), "urlretrieve", full_disk,
                                raising=False)
        except ImportError:
            pass
    with pytest.raises(NormbenchError, match="No space left on device"):
        data.load("mnist")


def test_network_error_classification():
    import urllib.error

    try:
        try:
            raise urllib.error.URLError("refused")
        except urllib.error.URLError:
            raise Exception("URL fetch failure")  # what Keras raises, the URLError as context
    except Exception as wrapped:
        assert data.network_error(wrapped)
    assert not data.network_error(PermissionError(13, "Permission denied"))
    assert not data.network_error(OSError(28, "No space left on device"))
    assert data.network_error(TimeoutError())
