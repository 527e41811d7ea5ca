"""run_one(spec) -> RunRecord: seed, build, fit, evaluate and time one experiment."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ info and warnings (oneDNN, CUDA probes)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

import normbench  # noqa: E402
from normbench import data, norms, spec as specs  # noqa: E402
from normbench.models import build_model  # noqa: E402
from normbench.results import RunRecord, run_id  # noqa: E402

OPTIMIZERS = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
              "rmsprop": keras.optimizers.RMSprop}
EVAL_BATCH = 512  # evaluation batch size changes speed only: no layer here mixes test samples


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    usable, tfa_reason = norms.tfa_status()
    return {"normbench": normbench.__version__, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "tfa": tfa_reason if usable else None, "numpy": data.np.__version__,
            "platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count()}


class _Clock(keras.callbacks.Callback):
    """Wall time per epoch, and per step in the first epoch (to exclude tracing from it)."""

    def __init__(self):
        super().__init__()
        self.epoch_times: list[float] = []
        self.first_epoch_steps: list[float] = []
        self.logs: list[dict[str, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if not self.epoch_times:
            self.first_epoch_steps.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self._end = time.perf_counter()
        self.epoch_times.append(self._end - self._start)
        self.logs.append({k: float(v) for k, v in (logs or {}).items()})

    def steady(self, n_train: int, batch_size: int) -> tuple[float, str]:
        """(samples/s without tracing, how it was measured)."""
        if len(self.epoch_times) > 1:
            mean = sum(self.epoch_times[1:]) / (len(self.epoch_times) - 1)
            return n_train / mean, f"epochs 2-{len(self.epoch_times)}"
        steps = self.first_epoch_steps
        if len(steps) < 2:
            return n_train / self.epoch_times[0], "epoch 1, tracing included (a single step)"
        warm = max(1, math.ceil(0.1 * len(steps)))
        samples = n_train - warm * batch_size
        first_end = self._start + self.epoch_times[0]
        return samples / (first_end - steps[warm - 1]), f"epoch 1 after {warm} warm-up step(s)"


class _Progress(keras.callbacks.Callback):
    """A rich progress bar per epoch on stderr, and one line per finished epoch."""

    def __init__(self, title: str, epochs: int, steps: int):
        super().__init__()
        self.title, self.epochs, self.steps = title, epochs, steps
        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=self.console, transient=True)

    def on_train_begin(self, logs=None):
        self.bar.start()

    def on_epoch_begin(self, epoch, logs=None):
        self.task = self.bar.add_task(f"{self.title} epoch {epoch + 1}/{self.epochs}",
                                      total=self.steps)
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(self.task, completed=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.remove_task(self.task)
        logs = logs or {}
        self.console.print(f"  epoch {epoch + 1}/{self.epochs}  loss {float(logs['loss']):.4f}  "
                           f"accuracy {100 * float(logs['accuracy']):.2f}%  "
                           f"{time.perf_counter() - self._start:.1f} s")

    def on_train_end(self, logs=None):
        self.bar.stop()


class _Status(keras.callbacks.Callback):
    """Writes 'epoch E/N' to a file at each epoch start, for a sweep's progress display."""

    def __init__(self, path: Path, epochs: int):
        super().__init__()
        self.path, self.epochs = path, epochs

    def on_epoch_begin(self, epoch, logs=None):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"epoch {epoch + 1}/{self.epochs}")
        os.replace(tmp, self.path)


def configure_threads(jobs: int) -> None:
    """Split this machine's cores between `jobs` concurrent workers (call before any TF op).

    Only the intra-op pool is capped: capping the inter-op pool too made two concurrent
    small-batch runs up to 1.7x slower here (22 s instead of 13 s per run)."""
    if jobs > 1:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // jobs))


def run_one(spec: specs.Spec, *, smoke: bool = False, quiet: bool = False,
            status_path: Path | None = None) -> RunRecord:
    """Train and evaluate one spec (with smoke=True, pass spec.for_smoke(spec)).

    Training stops at the first NaN/Inf loss; the run is then recorded as 'diverged'."""
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    ds = data.load(spec.dataset, smoke=smoke)
    t = spec.train
    made = norms.make(spec.model.norm)
    keras.utils.set_random_seed(t.seed)
    model = build_model(spec.model, made.norm, made.conv)
    learning_rate = t.effective_learning_rate
    model.compile(optimizer=OPTIMIZERS[t.optimizer](learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    n_train = len(ds.y_train)
    clock = _Clock()
    callbacks = [keras.callbacks.TerminateOnNaN(), clock]
    if status_path is not None:
        callbacks.append(_Status(status_path, t.epochs))
    if not quiet:
        callbacks.append(_Progress(spec.name, t.epochs, math.ceil(n_train / t.batch_size)))
    # NumPy in, Keras's own batching: a tf.data pipeline here made two concurrent sweep
    # workers no faster than one (1.0x against 1.5x, benchmarks/sweep_workers.py).
    model.fit(ds.x_train, ds.y_train, batch_size=t.batch_size, epochs=t.epochs, shuffle=True,
              verbose=0, callbacks=callbacks)
    test_loss, test_accuracy = model.evaluate(ds.x_test, ds.y_test, batch_size=EVAL_BATCH,
                                              verbose=0)
    samples_per_s, basis = clock.steady(n_train, t.batch_size)
    history = [{"epoch": i + 1, "loss": logs["loss"], "accuracy": logs["accuracy"],
                "time_s": seconds} for i, (logs, seconds) in enumerate(zip(clock.logs, clock.epoch_times))]
    finite = all(math.isfinite(h["loss"]) for h in history) and math.isfinite(test_loss)
    spec_hash = specs.spec_hash(spec)
    return RunRecord(
        run_id=run_id(spec.name, spec_hash, smoke), name=spec.name,
        status="finished" if finite else "diverged",
        spec_hash=spec_hash, config_hash=specs.spec_hash(spec, without_seed=True),
        smoke=smoke, dataset=ds.provenance, norm_type=spec.model.norm.type,
        norm_groups=norms.effective_groups(spec.model.norm.type, spec.model.norm.groups,
                                           specs.first_norm_channels(spec.model)),
        impl_requested=spec.model.norm.impl, impl_used=made.impl, params=model.count_params(),
        epochs=t.epochs, batch_size=t.batch_size, seed=t.seed,
        test_accuracy=float(test_accuracy), test_loss=float(test_loss),
        train_accuracy=history[-1]["accuracy"], train_loss=history[-1]["loss"],
        epoch_times_s=clock.epoch_times, first_epoch_s=clock.epoch_times[0],
        steady_epoch_s=n_train / samples_per_s, steady_samples_per_s=samples_per_s,
        steady_basis=basis, total_s=time.perf_counter() - t0, started=started.isoformat(),
        finished=dt.datetime.now(dt.timezone.utc).isoformat(), env=environment(),
        warnings=[w for w in [ds.provenance.get("warning")] if w], history=history,
        spec=specs.to_dict(spec), learning_rate=learning_rate)
