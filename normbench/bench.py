"""Benchmarks that measure side by side in one process and report ratios: train, layers, cli,
memory, workers. Machines are noisy; only numbers taken in the same invocation are compared."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from normbench import console, grid, spec as specs
from normbench.errors import NormbenchError

def _configs() -> Path:
    """The shipped specs: package data normbench.configs (configs/ in a checkout)."""
    import importlib.resources

    return Path(str(importlib.resources.files("normbench.configs")))


CONFIGS = _configs()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# bench train: the tutorial's recipe vs normbench's default path


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
        from normbench import peers as torch_peer

        why = torch_peer.missing()
        if why:
            log(f"skipping the PyTorch peer: {why}")
            peers = ()

    base = grid.load(config, [*overrides, f"dataset={dataset}", f"train.epochs={epochs}",
                               f"train.batch_size={batch_size}"])
    if peers:  # a model, norm or optimizer without a peer fails now, not after minutes of runs
        from normbench import peers as torch_peer

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
        from normbench import peers as torch_peer

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
            ratio = (_median([r["samples_per_s"] for r in runs["normbench"]])
                     / _median([r["samples_per_s"] for r in runs[f"torch {style}"]]))
            versus[style] = ratio
    summary = {}
    for path, rs in runs.items():
        rate = _median([r["samples_per_s"] for r in rs])
        acc = [r["test_accuracy"] for r in rs]
        summary[path] = {"samples_per_s": rate, "first_epoch_s": _median([r["first_epoch_s"] for r in rs]),
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


# ---------------------------------------------------------------------------------------------
# bench layers: GroupNorm / InstanceNorm forward+backward per implementation, graph and XLA

LAYER_SHAPES = (((32, 26, 26, 10), 5), ((8, 56, 56, 64), 32), ((2, 128, 128, 256), 32))


def _layer_impls(groups: int) -> dict[str, Callable[[], Any]]:
    import keras

    from normbench import layers, norms

    impls = {"native": lambda: layers.GroupNormalization(groups=groups),
             "keras": lambda: keras.layers.GroupNormalization(groups=groups)}
    if norms.tfa_status()[0]:
        import tensorflow_addons as tfa

        impls["tfa"] = (tfa.layers.InstanceNormalization if groups == -1
                        else lambda: tfa.layers.GroupNormalization(groups=groups))
    return impls


class _Affine:
    """The floor: y = x * gamma + beta per channel, forward and backward. Every norm layer
    does this much elementwise work; what it costs beyond this is its statistics."""

    def __init__(self, channels: int):
        import tensorflow as tf

        self.gamma = tf.Variable(tf.ones([channels]))
        self.beta = tf.Variable(tf.zeros([channels]))
        self.trainable_weights = [self.gamma, self.beta]

    def __call__(self, x):
        return x * self.gamma + self.beta


def _step(layer, weights, xla: bool):
    import tensorflow as tf

    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return tape.gradient(y, [x] + list(weights), output_gradients=dy)

    return tf.function(step, jit_compile=xla)


def bench_layers(*, repeats: int = 15, shapes=LAYER_SHAPES, log: Callable[[str], None] = print
                 ) -> list[dict[str, Any]]:
    """Median ms of forward+backward per (norm, shape, mode, impl), implementations alternating
    within each repetition, with ratios to Keras's layer and to the affine floor."""
    import tensorflow as tf

    rows = []
    for (shape, groups), norm in [(s, n) for s in shapes for n in ("group", "instance")]:
        g = groups if norm == "group" else -1
        x = tf.random.stateless_normal(shape, (1, 2), mean=2.0, stddev=3.0)
        dy = tf.random.stateless_normal(shape, (3, 4))
        for xla in (False, True):
            steps = {}
            for name, make in _layer_impls(g).items():
                layer = make()
                layer.build(shape)
                steps[name] = _step(layer, layer.trainable_weights, xla)
            floor = _Affine(shape[-1])
            steps["floor"] = _step(floor, floor.trainable_weights, xla)
            times: dict[str, list[float]] = {name: [] for name in steps}
            for fn in steps.values():  # trace and compile outside the timing
                for _ in range(2):
                    [t.numpy() for t in fn(x, dy)]
            for _ in range(repeats):
                for name, fn in steps.items():
                    start = time.perf_counter()
                    [t.numpy() for t in fn(x, dy)]
                    times[name].append(time.perf_counter() - start)
            ms = {name: 1e3 * _median(ts) for name, ts in times.items()}
            row = {"norm": norm, "shape": list(shape), "groups": shape[-1] if g == -1 else g,
                   "mode": "xla" if xla else "graph", "ms": ms,
                   "keras_over_native": ms["keras"] / ms["native"],
                   "native_over_floor": ms["native"] / ms["floor"]}
            rows.append(row)
            log(f"{norm:8s} {'x'.join(map(str, shape)):14s} {row['mode']:5s} "
                + "  ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
                + f"  keras/native {row['keras_over_native']:.2f}x  native/floor {row['native_over_floor']:.2f}x")
    return rows


# ---------------------------------------------------------------------------------------------
# bench cli: start-up paths that must not import TensorFlow


SCALE_NORMS = ["batch", "group", "layer", "instance", "none"]
SCALE_BATCHES = [2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640,
                 768, 1024]  # 5 norms x 20 batch sizes = 100 runs per seed


def scale_spec(path: Path, records: int) -> Path:
    """A sweep of `records` runs (5 norms x 20 batch sizes x records/100 seeds)."""
    seeds = max(1, records // 100)
    path.write_text("name: scale\ndataset: mnist-10k\n"
                    f"seeds: {seeds}\nsweep:\n  model.norm.type: {SCALE_NORMS}\n"
                    f"  train.batch_size: {SCALE_BATCHES}\n")
    return path


def _template_record() -> dict[str, Any]:
    return {"status": "finished", "smoke": False, "impl_requested": "auto",
            "impl_used": "native", "params": 866_848, "epochs": 3, "test_loss": 0.2,
            "train_accuracy": 0.95, "train_loss": 0.15, "epoch_times_s": [1.4, 0.6, 0.6],
            "first_epoch_s": 1.4, "steady_epoch_s": 0.6, "steady_samples_per_s": 13_000.0,
            "steady_basis": "epochs 2-3", "total_s": 3.0, "started": "2026-01-01T00:00:00",
            "finished": "2026-01-01T00:00:03", "env": {"tensorflow": "2.21.0"},
            "dataset": {"requested": "mnist-10k", "name": "mnist-10k", "n_train": 8000,
                        "n_test": 2000, "sha256": "0" * 64},
            "history": [{"epoch": e, "loss": 0.3 / e, "accuracy": 0.9, "time_s": 0.6}
                        for e in (1, 2, 3)]}


def fake_record(spec: specs.Spec, i: int):
    """The record a finished run of `spec` would leave (numbers made up; shapes real)."""
    from normbench import norms, store

    h = specs.spec_hash(spec)
    return store.RunRecord.model_validate({
        **_template_record(), "run_id": store.run_id(spec.name, h, False), "name": spec.name,
        "spec_hash": h, "config_hash": specs.spec_hash(spec, without_seed=True),
        "norm_type": spec.model.norm.type,
        "norm_groups": norms.effective_groups(spec.model.norm.type, spec.model.norm.groups, 10),
        "batch_size": spec.train.batch_size, "seed": spec.train.seed,
        "test_accuracy": 0.9 + 0.001 * (i % 7), "spec": specs.to_dict(spec)})


def _fake_records(results_dir: Path, count: int) -> Path:
    """`count` finished runs of the scale sweep, written as a sweep writes them (without the
    fsyncs, which only make the set-up slow); returns the sweep's spec file."""
    from normbench import store

    spec_file = scale_spec(results_dir / "scale.yaml", count)
    runs = grid.load_runs(spec_file)[:count]
    root = results_dir / "runs"
    root.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(runs):
        record = fake_record(spec, i)
        run = root / record.run_id
        run.mkdir()
        (run / "spec.yaml").write_text(specs.to_yaml(spec))
        (run / "history.csv").write_text(store.history_csv(record))
        (run / "metrics.json").write_text(record.model_dump_json(indent=2) + "\n")
    return spec_file


def bookkeeping(results_dir: Path, spec_file: Path, runs: int = 100) -> float:
    """Median seconds per finished run of what a sweep does around training (claim, the
    finished check, the atomic save with its fsyncs, the summary row, release) in a results
    directory that already holds the scale sweep's records; new runs are new seeds."""
    from normbench import store, tables

    fresh = grid.load_runs(spec_file, ["seeds=1"])
    specs_new = [s.model_copy(update={"train": s.train.model_copy(update={"seed": 5000 + k})})
                 for k, s in enumerate((fresh * (runs // len(fresh) + 1))[:runs])]
    times = []
    for k, spec in enumerate(specs_new):
        record = fake_record(spec, k)
        start = time.perf_counter()
        lock = store.claim(results_dir, record.run_id)
        assert lock is not None and store.finished(results_dir, record.run_id) is None
        store.save(record, specs.to_yaml(spec), results_dir)
        tables.append_summary(results_dir, record)
        lock.release()
        times.append(time.perf_counter() - start)
    return _median(times)


def bench_scale(*, sizes=(100, 1000, 10_000), repeats: int = 3,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per results-directory size: bookkeeping per finished run (in process), and `run
    --dry-run`, `compare` and `plot` over all records (fresh interpreters, median)."""
    exe = [sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "normbench"]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "results"
            results.mkdir()
            spec_file = _fake_records(results, n)
            row = {"records": n,
                   "bookkeeping_ms_per_run": 1000 * bookkeeping(results, spec_file),
                   "dry_run_s": _time_command(exe + ["run", str(spec_file), "--dry-run",
                                                     "--results", str(results)], repeats),
                   "compare_s": _time_command(exe + ["compare", "--results", str(results)],
                                              repeats)}
            plots = _try_plot(exe, results, repeats)
            if plots is not None:
                row["plot_s"] = plots
            rows.append(row)
            log(f"{n:6d} records: bookkeeping {row['bookkeeping_ms_per_run']:.2f} ms/run, "
                f"dry-run {row['dry_run_s']:.2f} s, compare {row['compare_s']:.2f} s"
                + (f", plot {row['plot_s']:.2f} s" if "plot_s" in row else ""))
    by = {r["records"]: r for r in rows}
    ratios = {}
    if 100 in by and 10_000 in by:
        ratios["bookkeeping_10000_over_100"] = (by[10_000]["bookkeeping_ms_per_run"]
                                                / by[100]["bookkeeping_ms_per_run"])
    if 1000 in by and 10_000 in by:
        for key in ("dry_run_s", "compare_s", "plot_s"):
            if key in by[1000] and key in by[10_000]:
                ratios[f"{key[:-2]}_10000_over_1000"] = by[10_000][key] / by[1000][key]
    return {"rows": rows, "ratios": ratios,
            "targets": {"bookkeeping_10000_over_100": 1.2, "dry_run_10000_over_1000": 12.0,
                        "compare_10000_over_1000": 12.0, "plot_10000_over_1000": 12.0,
                        "dry_run_s_at_10000": 2.0, "compare_s_at_10000": 2.0}}


def _try_plot(exe: list[str], results: Path, repeats: int) -> float | None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return None
    return _time_command(exe + ["plot", "--results", str(results), "--out", str(results / "p")],
                         repeats)


def _time_command(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise NormbenchError(f"bench cli: {' '.join(args[2:])} failed: "
                                 f"{(done.stderr or done.stdout).strip()[-300:]}")
    return _median(times)


def imports_tensorflow(args: list[str]) -> bool:
    """Whether `python ARGS` imports TensorFlow (from -X importtime's report)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True)
    return any(line.rstrip().endswith("| tensorflow") for line in done.stderr.splitlines())


def bench_cli(*, records: int = 1000, repeats: int = 5, log: Callable[[str], None] = print
              ) -> list[dict[str, Any]]:
    """Median wall time of each command in a fresh interpreter, as a user runs it."""
    exe = [sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "normbench"]
    with tempfile.TemporaryDirectory() as tmp:
        _fake_records(Path(tmp), records)
        commands = {"normbench --help": ["--help"], "normbench --version": ["--version"],
                    "normbench validate configs/*.yaml": ["validate", *map(str, sorted(CONFIGS.glob("*.yaml")))],
                    f"normbench compare ({records} records)": ["compare", "--results", tmp]}
        rows = []
        for label, args in commands.items():
            seconds = _time_command(exe + args, repeats)
            tf_imported = imports_tensorflow(exe[1:] + args)
            rows.append({"command": label, "seconds": seconds, "target_s": 0.5,
                         "imports_tensorflow": tf_imported})
            log(f"{label:40s} {seconds:.3f} s" + ("  (imports TensorFlow)" if tf_imported else ""))
    python = _time_command([sys.executable, "-c", "pass"], repeats)
    rows.append({"command": "python -c pass (interpreter start)", "seconds": python,
                 "target_s": None, "imports_tensorflow": False})
    return rows


# ---------------------------------------------------------------------------------------------
# bench floor: each kernel of a step alone vs the step; bench startup: tracing and process start


def bench_floor(*, batch_sizes: tuple[int, ...] = (32, 8), config: Path = CONFIGS / "groupnorm.yaml",
                overrides: tuple[str, ...] = (), repeats: int = 5, dataset: str = "mnist-10k",
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per batch size, the spec's step and the sum of its kernels timed alone (normbench.floor)."""
    from normbench import floor, peers

    why = peers.missing()
    if why:
        log(f"without PyTorch's kernels beside normbench's: {why}")
    rows = []
    for batch in batch_sizes:
        spec = grid.load(config, [*overrides, f"dataset={dataset}", f"train.batch_size={batch}"])
        log(f"batch {batch}:")
        rows.append(floor.measure(spec, repeats=repeats, peer=why is None, log=log))
    return {"config": str(config), "overrides": list(overrides), "rows": rows,
            "target": floor.TARGET}


STARTUP_TARGETS = {"first_epoch_extra_s": 1.0, "smoke_s": 6.0}


def bench_startup(*, repeats: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    """In fresh processes, as a user starts them: the first epoch's extra time over a steady one
    (tracing, compilation, warm-up) of `normbench run configs/groupnorm.yaml` on mnist-10k, and
    the wall time of `normbench run configs/groupnorm.yaml --smoke` from process start to exit
    (median of `repeats`)."""
    from normbench import store

    extra, smoke, imports = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tensorflow, keras"], capture_output=True)
        imports.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            base = [sys.executable, "-m", "normbench", "run", str(CONFIGS / "groupnorm.yaml"),
                    "--quiet"]
            start = time.perf_counter()
            done = subprocess.run([*base, "--smoke", "--results", f"{tmp}/smoke"],
                                  capture_output=True, text=True)
            smoke.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise NormbenchError(f"bench startup: the smoke run failed: {done.stderr.strip()[-300:]}")
            done = subprocess.run([*base, "-s", "dataset=mnist-10k", "-s", "train.epochs=3",
                                   "--results", f"{tmp}/full"], capture_output=True, text=True)
            if done.returncode != 0:
                raise NormbenchError(f"bench startup: the run failed: {done.stderr.strip()[-300:]}")
            record = store.load_records(Path(tmp) / "full")[0][0]
            extra.append(record.first_epoch_s - record.steady_epoch_s)
        log(f"import tensorflow, keras {imports[-1]:.2f} s; --smoke end to end {smoke[-1]:.2f} s; first epoch {record.first_epoch_s:.2f} s, "
            f"steady {record.steady_epoch_s:.2f} s: extra {extra[-1]:.2f} s")
    return {"first_epoch_extra_s": _median(extra), "smoke_s": _median(smoke),
            "import_s": _median(imports),
            "runs": {"first_epoch_extra_s": extra, "smoke_s": smoke, "import_s": imports},
            "targets": STARTUP_TARGETS}


# ---------------------------------------------------------------------------------------------
# bench memory: peak RSS of a whole `normbench run`


def bench_memory(*, dataset: str = "fashion-mnist", epochs: int = 1,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Peak resident memory of `normbench run configs/groupnorm.yaml` in a child process."""
    # A fresh parent whose only child is the run: RUSAGE_CHILDREN is the max over all children.
    probe = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-c", probe, sys.executable, "-m", "normbench", "run",
                str(CONFIGS / "groupnorm.yaml"), "-s", f"dataset={dataset}",
                "-s", f"train.epochs={epochs}", "--results", tmp, "--quiet"]
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise NormbenchError(f"bench memory: the run failed: {done.stderr.strip()[-300:]}")
    peak_kib = int(done.stdout.strip().splitlines()[-1])  # Linux reports KiB
    row = {"dataset": dataset, "epochs": epochs, "peak_rss_mib": peak_kib / 1024,
           "target_mib": 2048, "seconds": seconds}
    log(f"normbench run on {dataset}, {epochs} epoch(s): peak RSS {row['peak_rss_mib']:.0f} MiB "
        f"in {seconds:.1f} s")
    return row


# ---------------------------------------------------------------------------------------------
# bench workers: sweep throughput with 1 vs 2 local worker processes


def bench_workers(*, runs: int = 8, batch_size: int = 4, reps: int = 1, jobs: int = 2,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """The same sweep (GN tutorial model, mnist-10k, 1 epoch, seeds 0..runs-1) from an empty
    results directory with 1 worker and with `jobs`, order alternating between repetitions."""
    from normbench import executors

    base = grid.load(CONFIGS / "groupnorm.yaml", ["dataset=mnist-10k", f"train.batch_size={batch_size}"])
    planned = [base.model_copy(update={"train": base.train.model_copy(update={"seed": s})})
               for s in range(runs)]
    rates: dict[int, list[float]] = {1: [], jobs: []}
    for rep in range(reps):
        for n in ((1, jobs) if rep % 2 == 0 else (jobs, 1)):
            with tempfile.TemporaryDirectory() as tmp:
                todo = executors.plan(planned, False, Path(tmp))
                start = time.perf_counter()
                pool = executors.LocalPool(executors.Options(Path(tmp), smoke=False, jobs=n))
                outcome = executors.Driver(Path(tmp), False, executors.now(), False).drive(pool, todo)
                seconds = time.perf_counter() - start
            if len(outcome.ran) != runs or outcome.failed:
                raise NormbenchError(f"bench workers: a run failed: {outcome.failed}")
            rates[n].append(runs / seconds * 60.0)
            log(f"rep {rep + 1} jobs={n}: {rates[n][-1]:.2f} runs/min")
    one, many = _median(rates[1]), _median(rates[jobs])
    return {"runs": runs, "batch_size": batch_size, "reps": reps, "jobs": jobs,
            "runs_per_min": {"1": one, str(jobs): many}, "ratio": many / one,
            "runs_per_min_each": {str(n): rs for n, rs in rates.items()}}


def write_json(path: Path | None, payload: Any) -> None:
    """Write the measurements (after their table is printed: minutes of measuring are never lost
    to a bad path, whose error is one line)."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        raise NormbenchError(f"--json {path}: cannot write ({exc.strerror or exc}); the "
                             "measurements are printed above") from None
    console.say(f"wrote {path}")


# ---------------------------------------------------------------------------------------------
# Printing each benchmark's table (the CLI calls these; they print, then the JSON is written)


def print_train(found: dict[str, Any]) -> None:
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


def print_floor(found: dict[str, Any]) -> None:
    for row in found["rows"]:
        console.plain_table(
            f"bench floor: {row['model']}, batch {row['batch_size']} ({row['compiled']}): each "
            "kernel timed alone, ms per step (median)", ("kernel", "ms"),
            [(r["kernel"], f"{r['ms']:.3f}") for r in row["rows"]]
            + [("sum of the kernels", f"{row['kernels_ms']:.3f}"),
               ("normbench's step", f"{row['step_ms']:.3f}")])
        if "torch_rows" in row:
            console.plain_table(
                f"the tuned PyTorch peer's kernels, batch {row['batch_size']}, each timed alone, ms",
                ("kernel", "ms"), [(r["kernel"], f"{r['ms']:.3f}") for r in row["torch_rows"]]
                + [("sum of the kernels", f"{row['torch_kernels_ms']:.3f}")])
        console.say(f"batch {row['batch_size']}: step / sum of kernels {row['ratio']:.2f}x "
                    f"(target <= {row['target']:g}x: "
                    f"{'met' if row['ratio'] <= row['target'] else 'MISSED'})")


def print_startup(found: dict[str, Any]) -> None:
    for key, label in (("first_epoch_extra_s", "first epoch's extra time over a steady one"),
                       ("smoke_s", "`run --smoke`, process start to exit")):
        target = found["targets"][key]
        console.say(f"{label}: {found[key]:.2f} s (target <= {target:g} s: "
                    f"{'met' if found[key] <= target else 'MISSED'})")
    console.say(f"(`python -c 'import tensorflow, keras'` alone: {found['import_s']:.2f} s)")


def print_layers(rows: list[dict[str, Any]]) -> None:
    impls = [k for k in rows[0]["ms"] if k != "floor"]
    console.plain_table(
        "bench layers: forward+backward ms (median); floor = x*gamma+beta fwd+bwd",
        ("norm", "shape", "mode", *impls, "floor", "keras/native", "native/floor"),
        [(r["norm"] if r["norm"] != "group" else f"group g={r['groups']}",
          "x".join(map(str, r["shape"])), r["mode"], *(f"{r['ms'][k]:.2f}" for k in impls),
          f"{r['ms']['floor']:.2f}", f"{r['keras_over_native']:.2f}x",
          f"{r['native_over_floor']:.2f}x") for r in rows])
    console.say("targets: graph keras/native >= 1.5x; xla keras/native >= 1.0x and native/floor "
                "<= 1.5x on the two larger shapes")


def print_cli(rows: list[dict[str, Any]], scale: dict[str, Any] | None = None) -> None:
    console.plain_table("bench cli: median wall time, fresh interpreter",
                        ("command", "seconds", "target", "imports TF"),
                        [(r["command"], f"{r['seconds']:.3f}",
                          "-" if r["target_s"] is None else f"< {r['target_s']}",
                          "yes" if r["imports_tensorflow"] else "no") for r in rows])
    if not scale:
        return
    console.plain_table(
        "bench cli, scale: bookkeeping per finished run (claim, check, save, summary row) and "
        "whole commands over every record",
        ("records", "bookkeeping ms/run", "run --dry-run s", "compare s", "plot s"),
        [(f"{r['records']:,}", f"{r['bookkeeping_ms_per_run']:.2f}", f"{r['dry_run_s']:.2f}",
          f"{r['compare_s']:.2f}", f"{r['plot_s']:.2f}" if "plot_s" in r else "-")
         for r in scale["rows"]])
    for key, value in scale["ratios"].items():
        target = scale["targets"].get(key)
        console.say(f"{key}: {value:.2f}x (target <= {target}x: "
                    f"{'met' if target is not None and value <= target else 'MISSED'})")


def parse_sizes(text: str) -> tuple[int, ...]:
    """'100,1000,10000' -> (100, 1000, 10000); 'none' or '' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise NormbenchError(f"--scale {text!r}: expected sizes such as 100,1000,10000 or none") from None
    if any(not 1 <= n <= 100_000 for n in sizes):
        raise NormbenchError(f"--scale {text!r}: each size must be 1..100000")
    return sizes


def print_memory(row: dict[str, Any]) -> None:
    console.say(f"peak RSS {row['peak_rss_mib']:.0f} MiB (target < {row['target_mib']} MiB)")


def print_workers(found: dict[str, Any]) -> None:
    rate, jobs = found["runs_per_min"], found["jobs"]
    console.say(f"{found['runs']} runs of batch {found['batch_size']} (8,000 images, 1 epoch): "
                f"1 worker {rate['1']:.2f} runs/min, {jobs} workers {rate[str(jobs)]:.2f} "
                f"runs/min, ratio {found['ratio']:.2f}x")


def environment() -> dict[str, Any]:
    from normbench import train

    return {**train.environment(), "load_average": os.getloadavg()}
