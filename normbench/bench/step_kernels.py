"""The kernels one training step needs, each timed alone, against the step itself (for `normbench
bench floor`). Each layer's forward and backward pass (the gradients its place in the model
needs), the loss, and the optimizer's update over all parameters run in their own TF graph loop,
as the trainer runs them; their sum is what a step could cost if nothing else did. normbench's
step is reported as a multiple of that sum."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from normbench import data, layers, optim, spec as specs, train
from normbench.train import tf

LOOP = 50  # steps per timed call: one host sync per call, as the trainer has


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median milliseconds per iteration of a loop function running LOOP iterations."""
    fn()  # trace, compile, warm the caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) / LOOP * 1e3)
    return statistics.median(times)


def _loop(body: Callable[[], list]) -> Callable[[], Any]:
    """A tf.function running `body` LOOP times; every output is reduced to one of its values and
    carried, so nothing is pruned and no iteration overlaps the next's start."""

    def run():
        def step(i, acc):
            with tf.control_dependencies([acc]):
                outputs = body()
            return i + 1, acc + tf.add_n([tf.reshape(o, [-1])[0] * 0.0 for o in outputs])

        return tf.while_loop(lambda i, _: i < LOOP, step, (tf.constant(0), tf.constant(0.0)))[1]

    function = tf.function(run, autograph=False)
    return lambda: function().numpy()


def _layer_kernel(layer, shape, first: bool, rng) -> Callable[[], list]:
    """Forward and backward of one layer on a batch of `shape`: the gradients of its weights
    and, unless it is the first layer, of its input (the first's input needs none)."""
    x = tf.Variable(rng.normal(size=shape).astype("float32"), trainable=False)
    out_shape = layer.compute_output_shape(shape)
    dy = tf.Variable(rng.normal(size=out_shape).astype("float32"), trainable=False)
    weights = layer.trainable_variables

    def body():
        xv = x.read_value()
        with tf.GradientTape() as tape:
            if not first:
                tape.watch(xv)
            y = layer(xv, training=True)
            y = getattr(y, "_keras_logits", y)  # the step never computes a softmax
        sources = weights if first else [xv, *weights]
        if not sources:
            return [y]
        return [y, *tape.gradient(y, sources, output_gradients=dy.read_value())]

    return body


def measure(spec: specs.Spec, *, repeats: int = 5, peer: bool = False,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """The per-kernel times and normbench's step (ms) for the spec's model and batch; with
    `peer`, the tuned PyTorch peer's kernels too (bench/peers.py)."""
    rng = np.random.default_rng(0)
    ds = data.load(spec.dataset)
    t = spec.train
    model, _ = train.initial_model(spec, ds.input_shape, ds.num_classes)
    fit = train.Fit(model, None, t)
    epochs, total, _ = fit.plan(len(ds.y_train))
    fit.attach(optim.make_optimizer(t, total, max(1, total // epochs)))
    batch = t.batch_size
    rows = []
    with layers.xla_kernels(fit.mode == "kernels"):
        shape = (batch, *ds.input_shape)
        for i, layer in enumerate(model.layers):
            ms = _timed(_loop(_layer_kernel(layer, shape, i == 0, rng)), repeats)
            rows.append({"kernel": f"{type(layer).__name__} (layer {i + 1}) forward + backward",
                         "ms": ms})
            log(f"  {rows[-1]['kernel']}: {ms:.3f} ms")
            shape = layer.compute_output_shape(shape)
        logits = tf.Variable(rng.normal(size=(batch, ds.num_classes)).astype("float32"))
        labels = tf.constant(rng.integers(0, ds.num_classes, batch).astype("int32"))

        def loss_body():
            value = logits.read_value()
            with tf.GradientTape() as tape:
                tape.watch(value)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, value))
            return [loss, tape.gradient(loss, value)]

        rows.append({"kernel": "loss (softmax cross-entropy) forward + backward",
                     "ms": _timed(_loop(loss_body), repeats)})
        grads = [tf.Variable(1e-3 * rng.normal(size=v.shape).astype("float32"), trainable=False)
                 for v in model.trainable_variables]

        def update_body():
            fit.loop.apply([g.read_value() for g in grads])
            return [tf.convert_to_tensor(model.trainable_variables[0])]

        params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        rows.append({"kernel": f"optimizer update ({t.optimizer}, {params:,} parameters)",
                     "ms": _timed(_loop(update_body), repeats)})
        log(f"  {rows[-2]['kernel']}: {rows[-2]['ms']:.3f} ms; {rows[-1]['kernel']}: "
            f"{rows[-1]['ms']:.3f} ms")
        step = _step_ms(fit, ds, batch, repeats)
    total = sum(r["ms"] for r in rows)
    found = {"model": model.name, "batch_size": batch, "compiled": fit.mode, "rows": rows,
             "kernels_ms": total, "step_ms": step, "ratio": step / total, "target": TARGET}
    if peer:
        from normbench.bench import peers
        from normbench.errors import NormbenchError

        try:
            torch_rows = peers.kernel_times(spec, ds.input_shape, repeats=repeats)
        except NormbenchError as exc:  # a model or norm without a peer: normbench's side stands
            log(f"without PyTorch's kernels: {exc}")
            found["torch_skipped"] = str(exc)
        else:
            found.update(torch_rows=torch_rows, torch_kernels_ms=sum(r["ms"] for r in torch_rows))
    return found


TARGET = 1.5  # normbench's step / the sum of its kernels


def _step_ms(fit, ds, batch: int, repeats: int) -> float:
    """normbench's own step (the trainer's loop: gather, forward, backward, update), ms."""
    x, y = tf.convert_to_tensor(ds.x_train), tf.convert_to_tensor(ds.y_train)
    full = min(len(ds.y_train) // batch, 200)
    order = tf.constant(np.random.default_rng(0).permutation(len(ds.y_train))[:full * batch]
                        .reshape(full, batch).astype(np.int32))
    args = (x, y, order, tf.constant(0), tf.constant(full))
    fit.loop.steps(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(fit.loop.steps(*args)[0])
        times.append((time.perf_counter() - start) / full * 1e3)
    return statistics.median(times)

