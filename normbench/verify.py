"""Numerics checks of the GN/IN layers on this machine's stack: vs float64, tfa and Keras."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# Relative error of a tensor: max |got - want| / max |want| (elementwise ratios explode near 0).
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    axis: int = -1
    groups: int = 2  # -1: one group per channel
    center: bool = True
    scale: bool = True
    epsilon: float = 1e-3
    instance: bool = False  # InstanceNormalization instead of GroupNormalization
    dynamic_batch: bool = False  # run inside a tf.function whose batch dimension is unknown

    @property
    def name(self) -> str:
        kind = "IN" if self.instance else f"GN g={self.groups}"
        flags = "".join(f for f, on in ((" -center", not self.center), (" -scale", not self.scale),
                                        (" batch=?", self.dynamic_batch)) if on)
        return f"{kind} axis={self.axis} {'x'.join(map(str, self.shape))} eps={self.epsilon:g}{flags}"

    def kwargs(self) -> dict[str, Any]:
        kw = dict(axis=self.axis, epsilon=self.epsilon, center=self.center, scale=self.scale)
        return kw if self.instance else {**kw, "groups": self.groups}


def _matrix() -> list[Case]:
    layouts = [((2, 6, 6, 8), -1), ((2, 6, 6, 8), 3), ((2, 8, 6, 6), 1), ((4, 8), -1),
               ((2, 5, 8), -1), ((2, 3, 4, 4, 8), -1)]
    cases = [Case(shape, axis, groups, flag, flag, eps)
             for (shape, axis), groups, flag, eps in itertools.product(
                 layouts, (1, 2, 4, 8, -1), (True, False), (1e-3, 1e-5))]
    cases += [Case(shape, axis, instance=True, center=flag, scale=flag)
              for (shape, axis), flag in itertools.product(layouts, (True, False))]
    cases += [Case((1, 6, 6, 8), -1, 4), Case((2, 6, 6, 8), -1, 4, center=False),
              Case((2, 6, 6, 8), -1, 4, scale=False), Case((3, 6, 6, 8), -1, 2, dynamic_batch=True),
              Case((3, 8, 5, 5), 1, instance=True, dynamic_batch=True)]
    return cases


CASES = _matrix()


# ---------------------------------------------------------------------------------------------
# float64 reference: tfa's formula, forward and analytic backward


def _grouped(x: np.ndarray, groups: int, axis: int) -> tuple[np.ndarray, int]:
    axis = axis % x.ndim
    c = x.shape[axis]
    g = c if groups == -1 else groups
    moved = np.moveaxis(np.asarray(x, np.float64), axis, 1)
    return moved.reshape(x.shape[0], g, c // g, -1), axis


def _per_channel(v: np.ndarray | None, grouped_shape: tuple[int, ...]) -> np.ndarray:
    if v is None:
        return np.ones((1, grouped_shape[1], grouped_shape[2], 1))
    return np.asarray(v, np.float64).reshape(1, grouped_shape[1], grouped_shape[2], 1)


def _ungroup(a: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved_shape = (shape[0], shape[axis]) + tuple(d for i, d in enumerate(shape) if i not in (0, axis))
    return np.moveaxis(a.reshape(moved_shape), 1, axis)


def reference(x, groups, axis, gamma=None, beta=None, epsilon=1e-3) -> np.ndarray:
    """y = (x - mean) / sqrt(var + eps) * gamma + beta, statistics per sample and group."""
    xg, ax = _grouped(x, groups, axis)
    mean = xg.mean(axis=(2, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(2, 3), keepdims=True)
    y = (xg - mean) / np.sqrt(var + epsilon) * _per_channel(gamma, xg.shape)
    if beta is not None:
        y = y + _per_channel(beta, xg.shape)
    return _ungroup(y, np.shape(x), ax)


def reference_grads(x, dy, groups, axis, gamma=None, epsilon=1e-3) -> dict[str, np.ndarray]:
    """Gradients of sum(y * dy) w.r.t. x, gamma and beta (float64, closed form)."""
    xg, ax = _grouped(x, groups, axis)
    dyg, _ = _grouped(dy, groups, axis)
    mean = xg.mean(axis=(2, 3), keepdims=True)
    rstd = 1.0 / np.sqrt(((xg - mean) ** 2).mean(axis=(2, 3), keepdims=True) + epsilon)
    xhat = (xg - mean) * rstd
    dxhat = dyg * _per_channel(gamma, xg.shape)
    dx = rstd * (dxhat - dxhat.mean(axis=(2, 3), keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=(2, 3), keepdims=True))
    c = np.shape(x)[ax]
    return {"x": _ungroup(dx, np.shape(x), ax),
            "gamma": (dyg * xhat).sum(axis=(0, 3)).reshape(c),
            "beta": dyg.sum(axis=(0, 3)).reshape(c)}


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = float(np.abs(want).max()) if want.size else 0.0
    return float(np.abs(got - want).max() / (scale or 1.0))


# ---------------------------------------------------------------------------------------------
# Running layers


def build(layer, shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Build `layer` and give it random non-default gamma/beta; returns them by name."""
    layer.build(shape)
    rng = np.random.default_rng(seed)
    values = [rng.normal(1.0, 0.5, tuple(w.shape)) for w in layer.weights]
    layer.set_weights(values)
    return {_short(w.name): v for w, v in zip(layer.weights, values)}


def _short(name: str) -> str:
    return name.split("/")[-1].split(":")[0]


def run(layer, x: np.ndarray, dy: np.ndarray, dynamic_batch: bool = False, graph: bool = False
        ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(output, gradients of sum(output * dy) w.r.t. x and each trainable weight by name).

    Eagerly, or (graph=True, or dynamic_batch) inside a tf.function, where normbench's GN runs
    its XLA-compiled kernels: training uses those, so both paths are checked."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the unknown-batch cases trace on purpose

    def step(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
            loss = tf.reduce_sum(tf.cast(y, tf.float64) * tf.cast(dy, tf.float64))
        return y, tape.gradient(loss, [xt] + list(layer.trainable_weights))

    if dynamic_batch:
        step = tf.function(step, input_signature=[tf.TensorSpec((None,) + x.shape[1:], x.dtype)])
    elif graph:
        step = tf.function(step)
    y, grads = step(tf.constant(x))
    names = ["x"] + [_short(w.name) for w in layer.trainable_weights]
    return np.asarray(y, np.float64), {n: np.asarray(g, np.float64) for n, g in zip(names, grads)}


def _native(case: Case):
    from normbench import layers

    return layers.InstanceNormalization(**case.kwargs()) if case.instance \
        else layers.GroupNormalization(**case.kwargs())


def _tfa(case: Case):
    import tensorflow_addons as tfa

    return tfa.layers.InstanceNormalization(**case.kwargs()) if case.instance \
        else tfa.layers.GroupNormalization(**case.kwargs())


def _keras(case: Case):
    import keras

    groups = -1 if case.instance else case.groups
    return keras.layers.GroupNormalization(**{**case.kwargs(), "groups": groups})


def _inputs(case: Case, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(2.0, 3.0, case.shape).astype(np.float32),
            rng.normal(0.0, 1.0, case.shape).astype(np.float32))


@dataclass(frozen=True)
class Result:
    check: str  # what was compared, e.g. "native vs float64"
    case: str
    output_error: float
    grad_error: float | None
    tolerance: float
    # For "native vs X": each side's worst error against float64 (output and gradients).
    native_exact: float | None = None
    other_exact: float | None = None

    @property
    def ok(self) -> bool:
        worst = max(self.output_error, self.grad_error or 0.0)
        if not np.isfinite(worst):
            return False
        if worst <= self.tolerance:
            return True
        # A gap wider than the tolerance passes only when ours is exact to the tolerance and the
        # gap is the other implementation's own error: tfa's folded affine (x*inv + offset) and
        # Keras's E[x^2]-E[x]^2 drift by up to 1e-4 on 2-element groups where ours stays at 4e-7.
        return (self.native_exact is not None and self.other_exact is not None
                and self.native_exact <= self.tolerance
                and worst <= self.other_exact + self.native_exact)


def _exact_errors(case: Case, weights: dict, x: np.ndarray, dy: np.ndarray, y: np.ndarray,
                  grads: dict[str, np.ndarray]) -> tuple[float, float]:
    groups = -1 if case.instance else case.groups
    want = reference(x, groups, case.axis, weights.get("gamma"), weights.get("beta"), case.epsilon)
    ref = reference_grads(x, dy, groups, case.axis, weights.get("gamma"), case.epsilon)
    return rel_error(y, want), max(rel_error(g, ref[n]) for n, g in grads.items())


def against_reference(case: Case, graph: bool = False) -> Result:
    layer = _native(case)
    weights = build(layer, case.shape)
    x, dy = _inputs(case)
    y, grads = run(layer, x, dy, case.dynamic_batch, graph)
    return Result("native (tf.function, XLA kernel) vs float64" if graph else "native vs float64",
                  case.name, *_exact_errors(case, weights, x, dy, y, grads), TOLERANCE)


def against(other: Callable[[Case], Any], label: str, case: Case) -> Result:
    """native vs another implementation, given identical weights and inputs."""
    ours, theirs = _native(case), other(case)
    weights = build(ours, case.shape)
    theirs.build(case.shape)
    theirs.set_weights([weights[_short(w.name)] for w in theirs.weights])
    x, dy = _inputs(case)
    y1, g1 = run(ours, x, dy, case.dynamic_batch)
    y2, g2 = run(theirs, x, dy, case.dynamic_batch)
    return Result(f"native vs {label}", case.name, rel_error(y1, y2),
                  max(rel_error(g1[n], g2[n]) for n in g1), TOLERANCE,
                  max(_exact_errors(case, weights, x, dy, y1, g1)),
                  max(_exact_errors(case, weights, x, dy, y2, g2)))


def batch_independence(shape=(4, 600, 400, 24), groups: int = 3, graph: bool = False) -> Result:
    """tfa issue 2745: a sample's output and gradient alone vs inside its batch."""
    from normbench import layers

    layer = layers.GroupNormalization(groups=groups)
    build(layer, shape)
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    y_all, g_all = run(layer, x, dy, graph=graph)
    y_one, g_one = run(layer, x[:1], dy[:1], graph=graph)
    return Result("batch independence" + (" (tf.function)" if graph else ""),
                  f"GN g={groups} {'x'.join(map(str, shape))}",
                  rel_error(y_one, y_all[:1]), rel_error(g_one["x"], g_all["x"][:1]), TOLERANCE)


def large_input(shape=(2, 256, 256, 16), groups: int = 4, graph: bool = False) -> Result:
    """A large channels-last input vs float64: long sums (here 65,536 x 4 values per group),
    which inside a tf.function run as XLA matrix-vector products."""
    from normbench import layers

    case = Case(shape, groups=groups)
    layer = layers.GroupNormalization(**case.kwargs())
    weights = build(layer, case.shape)
    x, dy = _inputs(case)
    y, grads = run(layer, x, dy, graph=graph)
    return Result("large input" + (" (tf.function)" if graph else ""),
                  f"GN g={groups} {'x'.join(map(str, shape))}",
                  *_exact_errors(case, weights, x, dy, y, grads), TOLERANCE)


def large_offset(mean: float = 1e4, std: float = 1e-2, graph: bool = False) -> Result:
    """Inputs with a large common offset: naive E[x^2]-E[x]^2 or a folded affine loses them."""
    from normbench import layers

    case = Case((2, 8, 8, 4), groups=2, epsilon=1e-8)
    layer = layers.GroupNormalization(**case.kwargs())
    weights = build(layer, case.shape)
    x = np.random.default_rng(3).normal(mean, std, case.shape).astype(np.float32)
    dy = np.random.default_rng(4).normal(size=case.shape).astype(np.float32)
    y, grads = run(layer, x, dy, graph=graph)
    want = reference(x, 2, -1, weights["gamma"], weights["beta"], case.epsilon)
    ref = reference_grads(x, dy, 2, -1, weights["gamma"], case.epsilon)
    # every gradient (x, gamma, beta), as for every other case: dx is where a large offset bites
    return Result("large offset" + (" (tf.function)" if graph else ""), f"mean {mean:g} std {std:g}",
                  rel_error(y, want), max(rel_error(g, ref[n]) for n, g in grads.items()), TOLERANCE)


def mixed_precision(policy: str, instance: bool = False, magnitude: float = 1e5) -> Result:
    """Under a mixed policy: float32 statistics, finite for inputs up to `magnitude`, and the
    compute dtype out. Error is bounded by the output dtype's rounding (float16 2^-11, bf16 2^-8)."""
    import keras
    import tensorflow as tf

    from normbench import layers

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        case = Case((2, 8, 8, 8), groups=4, instance=instance)
        layer = layers.InstanceNormalization() if instance else layers.GroupNormalization(groups=4)
        weights = build(layer, case.shape)
        rng = np.random.default_rng(5)
        x = rng.uniform(-magnitude, magnitude, case.shape).astype(np.float32)
        dy = rng.normal(size=case.shape).astype(np.float32)
        y, grads = run(layer, x, dy)
        compute = layer.compute_dtype
        out_dtype = layer(tf.constant(x[:1])).dtype
    finally:
        keras.mixed_precision.set_global_policy(previous)
    groups = -1 if instance else 4
    want = reference(x, groups, -1, weights["gamma"], weights["beta"], case.epsilon)
    finite = np.isfinite(y).all() and all(np.isfinite(g).all() for g in grads.values())
    tol = 2.0 ** -7 if "bfloat16" in policy else 2.0 ** -10
    error = rel_error(y, want) if finite and out_dtype == compute else float("inf")
    return Result(f"{policy}", f"{'IN' if instance else 'GN g=4'} |x| <= {magnitude:g}, out {out_dtype.name}",
                  error, None, tol)


def run_all(quick: bool = False) -> list[Result]:
    """Every check available on this stack (tfa only where it imports and runs)."""
    from normbench.tf_runtime import quiet_tensorflow
    from normbench.norms import tfa_status

    quiet_tensorflow()
    cases = CASES[::7] if quick else CASES
    out = [against_reference(c) for c in cases]
    out += [against_reference(c, graph=True) for c in cases if not c.dynamic_batch]
    if tfa_status()[0]:
        out += [against(_tfa, "tfa", c) for c in cases]
    out += [against(_keras, "keras", c) for c in cases]
    out.append(batch_independence((4, 150, 100, 24) if quick else (4, 600, 400, 24)))
    out.append(batch_independence((64, 16, 16, 24)))
    out.append(batch_independence((64, 16, 16, 24), graph=True))
    out.append(large_offset())
    out.append(large_offset(graph=True))
    out.append(large_input())
    out.append(large_input(graph=True))
    for policy, instance in itertools.product(("mixed_float16", "mixed_bfloat16"), (False, True)):
        out.append(mixed_precision(policy, instance))
    return out


def report(found: list[Result], *, failures_only: bool = False, fmt: str = "table") -> None:
    """Print the checks (a table, or md/csv/json) and each check's worst error on stderr."""
    from normbench import columns as column_formats, console

    rows = [{"check": r.check, "case": r.case, "output_error": r.output_error,
             "grad_error": r.grad_error, "native_exact": r.native_exact,
             "other_exact": r.other_exact, "tolerance": r.tolerance, "ok": r.ok}
            for r in found if not (failures_only and r.ok)]
    columns = ("check", "case", "output_error", "grad_error", "native_exact", "other_exact",
               "tolerance", "ok")
    if fmt == "table":
        def sci(value: float | None) -> str:
            return "-" if value is None else f"{value:.1e}"

        console.plain_table(
            f"{len(found)} checks, {sum(not r.ok for r in found)} failed. error = max|a-b| / "
            "max|b| per tensor; grad = worst of x, gamma, beta; *_exact = each side vs float64",
            columns, [(row["check"], row["case"], sci(row["output_error"]),
                       sci(row["grad_error"]), sci(row["native_exact"]), sci(row["other_exact"]),
                       f"{row['tolerance']:.0e}", "pass" if row["ok"] else "FAIL") for row in rows])
    else:
        console.out.print(column_formats.render(rows, columns, fmt), end="", soft_wrap=True)
    worst: dict[str, float] = {}
    for r in found:
        worst[r.check] = max(worst.get(r.check, 0.0), r.output_error, r.grad_error or 0.0)
    console.note("worst: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
