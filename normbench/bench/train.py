"""`normbench bench train`: the tfa tutorial's recipe (Sequential + model.fit) against normbench's
default training path on the same data, seeds and epochs; with `--peers torch`, the same model in
PyTorch too (peers.py), eager and tuned."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

from normbench import grid, spec as specs
from normbench.bench.common import CONFIGS, SETS, Option, median
from normbench.errors import NormbenchError
from normbench import console


def sgemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 matrix-multiply rate (GFLOP/s) NumPy reaches here: the hardware's ceiling
    for the dense layers that dominate the tutorial model's arithmetic."""
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def train_flops_per_sample(model) -> float:
    """Multiply-adds x2 of the conv and dense layers for one sample, x3 for forward, input
    gradient and weight gradient (norm, activation and optimizer arithmetic are not counted)."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2.0 * h * w * c_out * kh * kw * layer.kernel.shape[2]
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return 3.0 * total


def tutorial_recipe(spec: specs.Spec, ds, gn: str) -> dict[str, Any]:
    """The tfa "Normalizations" tutorial's GroupNorm cell, unchanged but for tfa: images as
    x / 255.0 (float64, 28x28), Sequential(Reshape, Conv2D(10, 3x3), GN(groups=5, axis=3),
    Flatten, Dense(128, relu), Dropout(0.2), Dense(10, softmax)), compile('adam'), model.fit
    with Keras's defaults (batch 32; here the spec's batch size and epochs), then evaluate.
    tfa no longer imports on this TensorFlow; `gn` picks the stand-in: "keras" (Keras's
    GroupNormalization, tfa's formula: what porting the tutorial gives) or "native" (normbench's)."""
    import keras
    import numpy as np

    from normbench import layers

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    times: list[float] = []
    t = spec.train
    keras.utils.set_random_seed(t.seed)
    norm = keras.layers.GroupNormalization if gn == "keras" else layers.GroupNormalization
    model = keras.Sequential([
        keras.Input(shape=(28, 28)),
        keras.layers.Reshape((28, 28, 1)),
        keras.layers.Conv2D(filters=10, kernel_size=(3, 3), data_format="channels_last"),
        norm(groups=5, axis=3),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(t.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    def tutorial_images(x: np.ndarray) -> np.ndarray:  # the original bytes, / 255.0 in float64
        return np.rint(x[..., 0].astype(np.float64) * 255.0) / 255.0

    model.fit(tutorial_images(ds.x_train), ds.y_train, batch_size=t.batch_size, epochs=t.epochs,
              verbose=0, callbacks=[Clock()])
    _, accuracy = model.evaluate(tutorial_images(ds.x_test), ds.y_test, verbose=0)
    n = len(ds.y_train)
    return {"samples_per_s": n * (len(times) - 1) / sum(times[1:]), "first_epoch_s": times[0],
            "test_accuracy": float(accuracy), "flops_per_sample": train_flops_per_sample(model)}


def normbench_path(spec: specs.Spec) -> dict[str, Any]:
    from normbench import train

    record = train.run_one(spec, quiet=True)
    return {"samples_per_s": record.steady_samples_per_s, "first_epoch_s": record.first_epoch_s,
            "test_accuracy": record.test_accuracy, "compiled": record.compiled}


PEER_TARGETS = {8: 1.5, 32: 1.2}  # normbench / tuned PyTorch on the tutorial model, by batch


STUDY_PEER_TARGET = 1.0  # the study model (vgg, BN or GN, batch 64, SGD momentum)


def bench_train(*, epochs: int = 3, seeds: int = 3, dataset: str = "mnist-10k",
                batch_size: int = 32, config: Path = CONFIGS / "groupnorm.yaml",
                overrides: tuple[str, ...] = (), peers: tuple[str, ...] = (),
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per seed, the tutorial recipe and normbench's default path (and, with peers=("torch",),
    the same model in PyTorch, eager and tuned) on the same data and epochs, rotating which goes
    first; steady samples/s are epochs 2.. of each. A `config` whose model is not the tutorial
    CNN (the study model: configs/bench/vgg_sgd.yaml) is measured against the peers only."""
    if epochs < 2:
        raise NormbenchError("bench train: --epochs must be >= 2 (epoch 1 includes compilation)")
    from normbench import data, stats

    for peer in peers:
        if peer != "torch":
            raise NormbenchError(f"--peers {peer!r}: the peer is torch")
        from normbench.bench import peers as torch_peer

        why = torch_peer.missing()
        if why:
            log(f"skipping the PyTorch peer: {why}")
            peers = ()

    base = grid.load(config, [*overrides, f"dataset={dataset}", f"train.epochs={epochs}",
                               f"train.batch_size={batch_size}"])
    if peers:  # a model, norm or optimizer without a peer fails now, not after minutes of runs
        from normbench.bench import peers as torch_peer

        norm = base.model.norm
        torch_peer.build(base.model, norm.type, norm.groups, norm.epsilon, norm.momentum)
        torch_peer.check_training(base.train)
    tutorial = base.model.arch == "tutorial"
    if not tutorial and not peers:
        raise NormbenchError(f"bench train --config {config}: a model other than the tutorial CNN "
                             "is measured against a peer only: add --peers torch")
    ds = data.load(base.dataset)
    peak = sgemm_peak()
    paths = {"tutorial": lambda spec: tutorial_recipe(spec, ds, "keras"),
             "tutorial + normbench GN": lambda spec: tutorial_recipe(spec, ds, "native"),
             "normbench": normbench_path} if tutorial else {"normbench": normbench_path}
    if peers:
        from normbench.bench import peers as torch_peer

        for style in torch_peer.STYLES:
            paths[f"torch {style}"] = (lambda style: lambda spec: torch_peer.train(spec, ds, style))(style)
    runs: dict[str, list[dict]] = {path: [] for path in paths}
    for seed in range(seeds):
        spec = base.model_copy(update={"train": base.train.model_copy(update={"seed": seed})})
        order = list(paths)[seed % len(paths):] + list(paths)[:seed % len(paths)]  # rotate
        for path in order:
            result = paths[path](spec)
            runs[path].append({"seed": seed, **result})
            log(f"seed {seed} {path:23s} {result['samples_per_s']:9,.0f} samples/s  first epoch "
                f"{result['first_epoch_s']:.2f} s  test acc {100 * result['test_accuracy']:.2f}%")
    flops = model_flops(base, ds)
    versus = {}
    if peers:
        for style in ("eager", "tuned"):
            ratio = (median([r["samples_per_s"] for r in runs["normbench"]])
                     / median([r["samples_per_s"] for r in runs[f"torch {style}"]]))
            versus[style] = ratio
    summary = {}
    for path, rs in runs.items():
        rate = median([r["samples_per_s"] for r in rs])
        acc = [r["test_accuracy"] for r in rs]
        summary[path] = {"samples_per_s": rate, "first_epoch_s": median([r["first_epoch_s"] for r in rs]),
                         "test_accuracy_mean": statistics.fmean(acc),
                         "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                         "gflops": rate * flops / 1e9, "fraction_of_peak": rate * flops / 1e9 / peak}
    found = {"dataset": ds.provenance["name"], "config": str(config), "overrides": list(overrides),
             "model": _model_label(base), "epochs": epochs, "batch_size": batch_size,
             "seeds": seeds, "flops_per_sample": flops, "sgemm_peak_gflops": peak, "runs": runs,
             "summary": summary, "compiled": runs["normbench"][0]["compiled"],
             "versus_torch": versus, "torch_version": _torch_version() if versus else None,
             "torch_target": (PEER_TARGETS.get(batch_size) if tutorial else STUDY_PEER_TARGET)
             if versus else None}
    if tutorial:
        acc_t = [r["test_accuracy"] for r in runs["tutorial"]]
        acc_n = [r["test_accuracy"] for r in runs["normbench"]]
        found.update(
            ratio=summary["normbench"]["samples_per_s"] / summary["tutorial"]["samples_per_s"],
            ratio_same_layer=summary["normbench"]["samples_per_s"]
            / summary["tutorial + normbench GN"]["samples_per_s"],
            ratio_per_seed=[b["samples_per_s"] / a["samples_per_s"]
                            for a, b in zip(runs["tutorial"], runs["normbench"])],
            accuracy_difference=statistics.fmean(acc_n) - statistics.fmean(acc_t),
            accuracy_p_value=stats.welch(acc_n, acc_t)[1] if seeds > 1 else None)
    return found


def _torch_version() -> str:
    import torch

    return torch.__version__


def _model_label(spec: specs.Spec) -> str:
    m = spec.model
    if m.arch == "tutorial":
        return f"tutorial CNN, {m.norm.type} norm"
    return f"{m.arch} {'-'.join(map(str, m.widths))}, {m.norm.type} norm, {spec.train.optimizer}"


def model_flops(spec: specs.Spec, ds) -> float:
    """Training FLOPs per sample of the spec's model (conv and dense layers, x3)."""
    from normbench import train

    model, _ = train.initial_model(spec, ds.input_shape, ds.num_classes)
    return train_flops_per_sample(model)


def show(found: dict[str, Any]) -> None:
    peak = found["sgemm_peak_gflops"]
    rows = [(path, f"{s['samples_per_s']:,.0f}", f"{s['first_epoch_s']:.2f}",
             f"{100 * s['test_accuracy_mean']:.2f} ± {100 * s['test_accuracy_std']:.2f}",
             f"{s['gflops']:.1f}", f"{100 * s['fraction_of_peak']:.1f}%")
            for path, s in found["summary"].items()]
    console.plain_table(
        f"bench train: {found.get('model', 'tutorial CNN')}, {found['dataset']}, batch "
        f"{found['batch_size']}, {found['epochs']} epochs x "
        f"{found['seeds']} seed(s); {found['flops_per_sample'] / 1e6:.2f} MFLOP/sample; "
        f"sgemm peak {peak:.0f} GFLOP/s; normbench compiled: {found['compiled']}",
        ("path", "samples/s", "1st epoch s", "test acc % (mean ± std)", "GFLOP/s", "of peak"), rows)
    if "ratio" in found:
        p = found["accuracy_p_value"]
        console.say(f"ratio normbench / tutorial: {found['ratio']:.2f}x (per seed "
                    + ", ".join(f"{r:.2f}" for r in found["ratio_per_seed"]) + "; target >= 3.0); "
                    f"normbench / tutorial + normbench GN (the training loop alone): "
                    f"{found['ratio_same_layer']:.2f}x; test accuracy normbench - tutorial "
                    f"{100 * found['accuracy_difference']:+.2f} points"
                    + (f" (Welch p = {p:.2f})" if p is not None else ""))
    versus, target = found.get("versus_torch") or {}, found.get("torch_target")
    if versus:
        verdict = "" if target is None else (
            f"; target >= {target:g}x: " + ("met" if versus["tuned"] >= target else "MISSED"))
        console.say(f"normbench / PyTorch eager: {versus['eager']:.2f}x; normbench / PyTorch "
                    f"tuned (flushed denormals, fused optimizer): {versus['tuned']:.2f}x{verdict}")



HELP = """The tutorial's recipe (Sequential + model.fit) vs normbench's default training path:
steady samples/s, the ratio, first-epoch time, test accuracy, GFLOP/s vs sgemm peak; with
--peers torch, the same model in PyTorch too."""

OPTIONS = (
    Option("epochs", "int", 3, min=2, max=100, help="Epochs per run (>= 2)."),
    Option("seeds", "int", 3, min=1, max=20, help="Seeds (runs per path)."),
    Option("dataset", "str", "mnist-10k", help="mnist, mnist-10k or fashion-mnist."),
    Option("batch_size", "int", 32, min=1, max=4096),
    Option("peers", "List[str]", [], ("--peers",),
           help="torch: the same model in PyTorch, eager and tuned (normbench[bench])."),
    Option("config", "Optional[Path]", None,
           help="The spec to measure (default: the tutorial CNN with GroupNorm); another model, "
                "e.g. configs/bench/vgg_sgd.yaml, needs --peers."),
    SETS,
)


def run(*, epochs: int, seeds: int, dataset: str, batch_size: int, peers: list[str],
        config: Path | None, sets: list[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    return bench_train(epochs=epochs, seeds=seeds, dataset=dataset, batch_size=batch_size,
                       peers=tuple(peers), log=log, overrides=tuple(sets),
                       **({"config": config} if config is not None else {}))
