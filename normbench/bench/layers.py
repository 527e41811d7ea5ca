"""`normbench bench layers`: GroupNorm and InstanceNorm forward+backward per implementation
(normbench's, Keras's, tfa's where it imports), in graph mode and under XLA, against the floor
every norm pays: a per-channel affine layer's forward+backward."""

from __future__ import annotations

import time
from typing import Any, Callable

from normbench import console
from normbench.bench.common import Option, median


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
            ms = {name: 1e3 * median(ts) for name, ts in times.items()}
            row = {"norm": norm, "shape": list(shape), "groups": shape[-1] if g == -1 else g,
                   "mode": "xla" if xla else "graph", "ms": ms,
                   "keras_over_native": ms["keras"] / ms["native"],
                   "native_over_floor": ms["native"] / ms["floor"]}
            rows.append(row)
            log(f"{norm:8s} {'x'.join(map(str, shape)):14s} {row['mode']:5s} "
                + "  ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
                + f"  keras/native {row['keras_over_native']:.2f}x  native/floor {row['native_over_floor']:.2f}x")
    return rows


def show(found: dict[str, Any]) -> None:
    rows = found["rows"]
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



HELP = """GroupNorm and InstanceNorm forward+backward (ms, median) per implementation, in graph
mode and under XLA, against the floor: a per-channel affine layer's forward+backward."""

OPTIONS = (Option("repeats", "int", 15, min=3, max=1000, help="Timed calls per implementation."),)


def run(*, repeats: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    return {"rows": bench_layers(repeats=repeats, log=log)}
