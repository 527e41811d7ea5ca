"""run_one(spec) -> RunRecord: seed, build, fit, evaluate and time one experiment.

Reading order: `run_one` (at the end: data, model, optimizer, fit, evaluate, the record) calls
`Fit.run`, the epoch loop in Python (shuffle, one graph call per `steps_per_execution` steps, the
per-epoch history), whose graph is `_Loop.steps` (gather, forward, backward, update, inside one
tf.while_loop). `Fit._call` only stands between them to retry a first call that XLA cannot
compile. The optimizer comes from optim.py, evaluation and PreciseBN from evaluate.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import platform
import time
from pathlib import Path

from normbench.console import EpochProgress  # noqa: E402
from normbench.tf_runtime import quiet_tensorflow  # noqa: E402

tf = quiet_tensorflow()  # before Keras, which imports it with its C++ log lines
import keras  # noqa: E402
import numpy as np  # noqa: E402

import normbench  # noqa: E402
from normbench import data, identity, layers, norms, spec as specs  # noqa: E402
from normbench.errors import NormbenchError  # noqa: E402
from normbench.evaluate import (EVAL_BATCH, bn_evaluation, diverged_reason, evaluate,  # noqa: E402
                                precise_statistics)
from normbench.models import build_model  # noqa: E402
from normbench.optim import current_rate, make_optimizer, native_update  # noqa: E402
from normbench.store import RunRecord, run_id, write_atomic  # noqa: E402

log = logging.getLogger("normbench")


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
            "platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "host": platform.node(), "pid": os.getpid()}


def _write_status(path: Path | None, text: str) -> None:
    """'epoch E/N' for a sweep's progress display (atomic: the display never reads half)."""
    if path is not None:
        write_atomic(path, text, durable=False)


# ---------------------------------------------------------------------------------------------
# The train loop: `steps_per_execution` optimizer steps per call, inside one TF graph

COMPILE_MODES = ("step", "kernels", "none")


def compile_mode(jit_compile: bool | str) -> str:
    """'step': the whole train step under XLA; 'kernels': a TF graph whose norm layers and
    optimizer update are XLA-compiled; 'none': no XLA. `auto` picks by device: on a CPU, XLA's
    own convolution and dense-with-dropout kernels are 2-3x slower than TF's oneDNN ones, so
    'kernels' beats 'step' (tutorial model at batch 32: 14.7k vs 10.8k samples/s; the convnet:
    2-12x). Only tiny batches of the tutorial model train faster as 'step' (jit_compile: true)."""
    if jit_compile == "auto":
        return "step" if tf.config.list_physical_devices("GPU") else "kernels"
    return "step" if jit_compile else "none"


class _Loop:
    """steps(x, y, order, start, count) runs optimizer steps start..start+count-1 of an epoch
    whose batches are the rows of `order` (sample indices), and returns (sum of per-sample
    losses, correct predictions) over them: one host sync per call, not per step."""

    def __init__(self, model: keras.Model, optimizer, mode: str, weight_decay: float = 0.0,
                 decayed: list | None = None):
        variables = model.trainable_variables
        loss_fn = keras.losses.SparseCategoricalCrossentropy()
        decayed = list(decayed if decayed is not None else variables) if weight_decay else []

        def penalty():  # coupled L2, as PyTorch's SGD(weight_decay) and the GN paper
            return 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])

        def apply(grads):
            optimizer.apply_gradients(zip(grads, variables))

        native = native_update(optimizer, variables) if mode == "kernels" else None
        if native is not None:
            apply = native
        elif mode == "kernels":
            apply = tf.function(apply, jit_compile=True, autograph=False)

        def steps(x, y, order, start, count):
            def body(i, loss_sum, correct):
                index = order[start + i]
                xb, yb = tf.gather(x, index), tf.gather(y, index)
                with tf.GradientTape() as tape:
                    probs = model(xb, training=True)
                    loss = loss_fn(yb, probs)
                    if model.losses:
                        loss += tf.add_n(model.losses)
                    objective = loss + penalty() if decayed else loss
                apply(tape.gradient(objective, variables))
                # argmax of the logits where Keras kept them (the loss uses them too): the
                # softmax itself is then never computed in training
                scores = getattr(probs, "_keras_logits", probs)
                hits = tf.equal(tf.argmax(scores, axis=-1, output_type=yb.dtype), yb)
                return (i + 1, loss_sum + loss * tf.cast(tf.shape(index)[0], loss.dtype),
                        correct + tf.reduce_sum(tf.cast(hits, tf.float32)))

            zero = tf.constant(0.0)
            _, loss_sum, correct = tf.while_loop(lambda i, *_: i < count, body,
                                                 (tf.constant(0), zero, zero))
            return loss_sum, correct

        self.apply = apply  # one optimizer update (bench floor times it alone)
        self.steps = tf.function(steps, jit_compile=mode == "step", autograph=False)


def _snapshot(variables) -> list:
    return [v.numpy() for v in variables]


def _restore(variables, values) -> None:
    for v, value in zip(variables, values):
        v.assign(value)


class Fit:
    """Trains `model` on (x, y) for `t.epochs` epochs, shuffling with the spec's seed, and keeps
    what it measured: per-epoch loss, accuracy and wall time, and per-call timestamps."""

    def __init__(self, model, optimizer, t: specs.TrainSpec, *, drop_rest: bool = False,
                 decayed: list | None = None):
        self.model, self.optimizer, self.t = model, optimizer, t
        self.drop_rest = drop_rest
        self.decayed = decayed
        self.samples: list[int] = []  # samples trained per epoch
        self.done_steps = 0
        self.mode = compile_mode(t.jit_compile)
        self.fallback: str | None = None
        self.history: list[dict] = []
        self.first_calls: list[tuple[float, int]] = []  # epoch 1: (seconds, samples) per call
        self.first_loss: float | None = None  # mean loss over the first call's steps
        self.nonfinite: str | None = None  # where the loss became NaN/Inf
        if optimizer is not None:
            self.attach(optimizer)

    def attach(self, optimizer) -> None:
        """The optimizer (made once the step count is known: schedules need it)."""
        self.optimizer = optimizer
        optimizer.build(self.model.trainable_variables)  # slots exist before the graph is traced
        self.loop = _Loop(self.model, optimizer, self.mode, self.t.weight_decay, self.decayed)

    def _call(self, *args):
        if self.fallback is not None or self.mode == "none" or self.history or self.first_calls:
            return self.loop.steps(*args)
        state = self.model.variables + self.optimizer.variables
        saved = _snapshot(state)
        try:
            return self.loop.steps(*args)
        except (tf.errors.OpError, NotImplementedError) as exc:  # XLA cannot compile something
            if self.t.jit_compile is True:
                raise NormbenchError(f"train.jit_compile: XLA could not compile this model "
                                     f"({str(exc).strip().splitlines()[0][:200]}); "
                                     "set jit_compile: auto or false") from None
            self.fallback = f"XLA ({self.mode}) failed, trained without it: " \
                            f"{str(exc).strip().splitlines()[0][:200]}"
            _restore(state, saved)
            self.mode = "none"
            self.loop = _Loop(self.model, self.optimizer, "none", self.t.weight_decay, self.decayed)
            return self.loop.steps(*args)

    def plan(self, n: int) -> tuple[int, int, int]:
        """(epochs, optimizer steps in all, samples dropped per epoch). A spec with
        virtual_batch_size drops each epoch's last, smaller batch (its BN groups would differ);
        otherwise it is trained, as Keras's fit does. With train.steps, the epochs are as many as
        those steps need, the last one cut short."""
        t = self.t
        full, rest = divmod(n, t.batch_size)
        drop = rest if self.drop_rest else 0
        per_epoch = full + (1 if rest and not drop else 0)
        if t.steps is None:
            return t.epochs, t.epochs * per_epoch, drop
        return math.ceil(t.steps / per_epoch), t.steps, drop

    def run(self, x: np.ndarray, y: np.ndarray, progress: EpochProgress | None,
            status_path: Path | None, evaluate=None) -> bool:
        """Train; False if the loss became NaN/Inf (training stops at the end of that call;
        `nonfinite` says where). `evaluate(epoch)`, if given, returns metrics to add to that
        epoch's history entry (held-out and test error)."""
        t = self.t
        n, rng = len(y), np.random.default_rng(t.seed)
        full, rest = divmod(n, t.batch_size)
        epochs, budget, drop = self.plan(n)
        x_t, y_t = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        done_steps = 0
        with layers.xla_kernels(self.mode == "kernels"):
            for epoch in range(epochs):
                _write_status(status_path, f"epoch {epoch + 1}/{epochs}")
                if progress:
                    progress.epoch_begin(epoch)
                start = time.perf_counter()
                order = rng.permutation(n).astype(np.int32)
                left = budget - done_steps
                batches = tf.constant(order[:full * t.batch_size].reshape(full, t.batch_size))
                calls = [(batches, s, min(t.steps_per_execution, full - s, left - s), t.batch_size)
                         for s in range(0, min(full, left), t.steps_per_execution)]
                if rest and not drop and left > full:  # the last, smaller batch, as fit has it
                    calls.append((tf.constant(order[full * t.batch_size:][None]), 0, 1, rest))
                loss_sum = correct = seen = steps = 0
                for rows, first, count, size in calls:
                    called = time.perf_counter()
                    l_sum, hits = self._call(x_t, y_t, rows, tf.constant(first), tf.constant(count))
                    loss_sum, correct = loss_sum + float(l_sum), correct + float(hits)
                    seen, steps = seen + count * size, steps + count
                    if self.first_loss is None:
                        self.first_loss = float(l_sum) / (count * size)
                    if epoch == 0 and size == t.batch_size:
                        self.first_calls.append((time.perf_counter() - called, count * size))
                    if progress:
                        progress.steps_done(steps)
                    if not math.isfinite(loss_sum):
                        break
                done_steps += steps
                self.done_steps = done_steps
                seconds = time.perf_counter() - start
                self.samples.append(seen)
                entry = {"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": correct / seen,
                         "time_s": seconds, "learning_rate": current_rate(self.optimizer, done_steps)}
                if evaluate is not None and math.isfinite(loss_sum) and (
                        epoch + 1 == epochs or (t.eval_every and (epoch + 1) % t.eval_every == 0)):
                    entry.update(evaluate(epoch))
                self.history.append(entry)
                if progress:
                    progress.epoch_end(epoch, loss_sum / seen, correct / seen, seconds)
                if not math.isfinite(loss_sum):
                    self.nonfinite = f"the training loss became {loss_sum / seen} in epoch {epoch + 1}"
                    return False
        return True

    def steady(self, n_train: int) -> tuple[float, str]:
        """(samples/s without tracing and compilation, how it was measured)."""
        times = [h["time_s"] for h in self.history]
        if len(times) > 1:
            return sum(self.samples[1:]) / sum(times[1:]), f"epochs 2-{len(times)}"
        if len(self.first_calls) > 1:  # the first call traces and compiles; so does a last batch
            seconds, samples = map(sum, zip(*self.first_calls[1:]))
            return samples / seconds, "epoch 1 without its first call (tracing, compilation)"
        return n_train / times[0], "epoch 1, tracing included (a single call)"


def configure_threads(cores: int) -> None:
    """Size TensorFlow's intra-op pool to the `cores` a sweep worker owns (before any TF op).
    The inter-op pool stays at its default: capping it made concurrent runs slower here."""
    if cores < (os.cpu_count() or 1):
        tf.config.threading.set_intra_op_parallelism_threads(max(1, cores))


def _bn_warning(spec: specs.Spec, steps: int) -> str | None:
    """BatchNorm's moving averages need about 5 / (1 - momentum) steps to forget their initial
    values (0 and 1); evaluated earlier, the model uses statistics of nothing it has seen (the
    default 0.99 on a 125-step smoke run gave a constant predictor at 10.8%)."""
    momentum = spec.model.norm.momentum
    if spec.model.norm.type not in specs.BATCH_NORMS or momentum is None:
        return None
    needed = math.ceil(5 / (1 - momentum))
    if steps >= needed:
        return None
    text = (f"BatchNorm momentum {momentum:g} needs ~{needed} steps for its moving averages; this "
            f"run takes {steps}: test accuracy will use unsettled statistics (train longer, or "
            f"lower it, e.g. -s model.norm.momentum={max(0.5, round(1 - 5 / steps, 2)):g})")
    log.warning(text)
    return text


def _split(ds: data.Dataset, t: specs.TrainSpec):
    """(x_train, y_train, x_val, y_val, what was chosen): `data.select` over the training labels
    (a fixed subset, and a held-out split either drawn from the seed alone, so every norm and
    batch size of one seed holds out the same images, or fixed for every seed)."""
    if not t.validation_split and t.train_subset is None:
        return ds.x_train, ds.y_train, None, None, None
    subset = t.train_subset
    if subset is not None and ds.provenance.get("smoke"):  # --smoke has sliced the data already
        subset = min(subset, len(ds.y_train))
    keep, held, info = data.select(ds.y_train, seed=t.seed, subset=subset,
                                   validation_split=t.validation_split, fixed=t.validation_fixed)
    if not len(held):
        return ds.x_train[keep], ds.y_train[keep], None, None, info
    return ds.x_train[keep], ds.y_train[keep], ds.x_train[held], ds.y_train[held], info


def _bn_path(model) -> str | None:
    """Which training computation normbench's BatchNormalization layers ran (None: no BN)."""
    paths = {getattr(layer, "training_path", None) for layer in model.layers} - {None}
    return None if not paths else paths.pop() if len(paths) == 1 else "mixed"


def _is_norm(layer) -> bool:
    """Whether a layer is a normalization layer (its gamma/beta are what decay_norm_params means)."""
    return "Normalization" in type(layer).__name__


def _changed(contents: dict) -> str:
    """What a spec names outside itself, for a message: 'the npz data or the model factory'."""
    names = {"dataset": "the npz data file", "factory": "the model factory's source"}
    return " or ".join(names[k] for k in contents) or "the spec's files"


def initial_model(spec: specs.Spec, input_shape: tuple[int, ...] = specs.IMAGE_SHAPE,
                  num_classes: int = 10):
    """(model, made norm): the spec's model with its seed's initial weights. Norm layers draw no
    random numbers, so a seed gives the same conv and dense weights for every norm and batch
    (paired seeds)."""
    made = norms.make(spec.model.norm)
    keras.utils.set_random_seed(spec.train.seed)
    return build_model(spec.model, made.norm, made.conv, input_shape, num_classes), made


def run_one(spec: specs.Spec, *, smoke: bool = False, quiet: bool = False,
            status_path: Path | None = None, model_path: Path | None = None,
            planned_hash: str | None = None) -> RunRecord:
    """Train and evaluate one spec (with smoke=True, pass spec.for_smoke(spec)). With
    `model_path`, the trained model is saved there (Keras format) with the BN statistics the
    headline test accuracy used (moving or PreciseBN's).

    Training stops at the first NaN/Inf loss; the run is then recorded as 'diverged'."""
    # What the spec names outside itself (npz data, a model factory) is hashed once, here: the
    # record is saved under this identity, and the run fails if the files change meanwhile.
    contents = identity.contents(spec)
    spec_hash = identity.spec_hash(spec)
    if planned_hash is not None and spec_hash != planned_hash:
        raise RuntimeError(f"{_changed(contents)} changed since the run was planned; run again")
    config_hash = identity.spec_hash(spec, without_seed=True)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    ds = data.load(spec.dataset, smoke=smoke)
    t, norm = spec.train, spec.model.norm
    x_train, y_train, x_val, y_val, selection = _split(ds, t)
    model, made = initial_model(spec, ds.input_shape, ds.num_classes)
    n_train = len(y_train)
    decayed = None
    if t.weight_decay and not t.decay_norm_params:
        norm_vars = {id(v) for layer in model.layers if _is_norm(layer) for v in layer.trainable_variables}
        decayed = [v for v in model.trainable_variables if id(v) not in norm_vars]
    fit = Fit(model, None, t, drop_rest=norm.virtual_batch_size is not None, decayed=decayed)
    epochs, total_steps, dropped = fit.plan(n_train)
    if total_steps < 1:  # e.g. batch 2048 over --smoke's 1,000 images with ghost batches
        raise NormbenchError(f"train.batch_size {t.batch_size} leaves no training step over the "
                             f"{n_train} training images" + (
                                 " (with virtual_batch_size a last smaller batch is dropped)"
                                 if norm.virtual_batch_size else "")
                             + f": use a batch of at most {n_train}")
    per_epoch = math.ceil(total_steps / epochs)
    optimizer = make_optimizer(t, total_steps, per_epoch)
    fit.attach(optimizer)
    warnings = [w for w in [ds.provenance.get("warning"), _bn_warning(spec, total_steps)] if w]
    if dropped:
        warnings.append(f"virtual_batch_size: each epoch's last {dropped} image(s) (a smaller "
                        "batch) were not trained on, so every BN group has the same size")

    def periodic(epoch: int) -> dict:
        with layers.xla_kernels(fit.mode == "kernels"):
            out = {}
            if x_val is not None:
                got = evaluate(model, x_val, y_val)
                out.update(val_loss=got["loss"], val_accuracy=got["accuracy"])
            got = evaluate(model, ds.x_test, ds.y_test)
            out.update(test_loss=got["loss"], test_accuracy=got["accuracy"])
        return out

    hook = periodic if t.eval_every or x_val is not None else None
    if quiet:
        fit.run(x_train, y_train, None, status_path, hook)
    else:
        with EpochProgress(spec.name, epochs, per_epoch) as progress:
            fit.run(x_train, y_train, progress, status_path, hook)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with layers.xla_kernels(fit.mode == "kernels"):
        test_loss, test_accuracy = model.evaluate(ds.x_test, ds.y_test, batch_size=EVAL_BATCH,
                                                  verbose=0)
        bn_eval = None
        if norm.type in specs.BATCH_NORMS and math.isfinite(test_loss):
            bn_eval = bn_evaluation(model, ds, x_train, spec, {
                "loss": float(test_loss), "accuracy": float(test_accuracy), "n": len(ds.y_test)})
            test_loss = bn_eval[norm.eval_stats]["loss"]
            test_accuracy = bn_eval[norm.eval_stats]["accuracy"]
    saved = None
    if model_path is not None:
        if norm.type in specs.BATCH_NORMS and norm.eval_stats == "precise":
            precise_statistics(model, x_train, t.batch_size, norm.precise_samples)
        model.save(model_path)
        saved = "model.keras"
        if norm.type in specs.BATCH_NORMS and norm.eval_stats == "batch":
            warnings.append("model.keras normalizes with the moving statistics; the headline "
                            "test accuracy used batch statistics (eval_stats: batch)")
    samples_per_s, basis = fit.steady(n_train)
    history = fit.history
    epoch_times = [h["time_s"] for h in history]
    evaluated = [h["test_accuracy"] for h in history if "test_accuracy" in h]
    median5 = float(np.median([1.0 - a for a in evaluated[-5:]])) if t.eval_every and evaluated else None
    reason = diverged_reason(fit.nonfinite, fit.first_loss, history[-1]["loss"], float(test_loss),
                             float(test_accuracy), ds.num_classes)
    if reason:
        log.warning(f"{spec.name}: diverged: {reason}")
    if fit.fallback:
        warnings.append(fit.fallback)
    learning_rate = t.effective_learning_rate
    if identity.contents(spec) != contents:
        raise RuntimeError(f"{_changed(contents)} changed while the run trained: not saved (its "
                           "record would name data or code it did not train with); run again")
    return RunRecord(
        run_id=run_id(spec.name, spec_hash, smoke), name=spec.name,
        status="diverged" if reason else "finished", diverged_reason=reason,
        spec_hash=spec_hash, config_hash=config_hash,
        smoke=smoke, dataset=ds.provenance, norm_type=spec.model.norm.type,
        norm_groups=norms.effective_groups(spec.model.norm.type, spec.model.norm.groups,
                                           specs.first_norm_channels(spec.model)),
        impl_requested=spec.model.norm.impl, impl_used=made.impl, params=model.count_params(),
        epochs=len(history), batch_size=t.batch_size, seed=t.seed,
        test_accuracy=float(test_accuracy), test_loss=float(test_loss),
        train_accuracy=history[-1]["accuracy"], train_loss=history[-1]["loss"],
        epoch_times_s=epoch_times, first_epoch_s=epoch_times[0],
        steady_epoch_s=n_train / samples_per_s, steady_samples_per_s=samples_per_s,
        steady_basis=basis, total_s=time.perf_counter() - t0, started=started.isoformat(),
        finished=dt.datetime.now(dt.timezone.utc).isoformat(), env=environment(),
        warnings=warnings, history=history,
        spec=specs.to_dict(spec), learning_rate=learning_rate, compiled=fit.mode,
        bn_eval=bn_eval, test_error_median5=median5, dropped_per_epoch=dropped,
        optimizer_steps=fit.done_steps, saved_model=saved, contents=contents or None,
        selection=selection, bn_path=_bn_path(model))
