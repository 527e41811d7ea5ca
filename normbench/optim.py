"""The optimizer of a spec: Keras's Adam, SGD or RMSprop with the learning-rate schedule
(warmup, step, cosine), and Keras 3's plain Adam and SGD as TensorFlow's fused update ops."""

from __future__ import annotations

import math

import numpy as np

from normbench import spec as specs
from normbench.tf_runtime import quiet_tensorflow

tf = quiet_tensorflow()  # before Keras, which imports it with its C++ log lines
import keras  # noqa: E402


OPTIMIZERS = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
              "rmsprop": keras.optimizers.RMSprop}


def native_update(optimizer, variables):
    """apply(grads) for Keras 3's plain Adam or SGD as TensorFlow's fused training ops (one
    multithreaded pass over each variable and its slots: ResourceApplyAdam,
    ResourceApplyKerasMomentum), the same update formulas as Keras's, or None where the
    optimizer has anything those ops lack (clipping, weight decay, AMSGrad, EMA, loss scaling,
    gradient accumulation, constraints) or on Keras 2."""
    if int(keras.__version__.split(".")[0]) < 3 or type(optimizer) not in (
            keras.optimizers.Adam, keras.optimizers.SGD):
        return None
    plain = (optimizer.clipnorm, optimizer.clipvalue, optimizer.global_clipnorm,
             optimizer.weight_decay, optimizer.loss_scale_factor,
             optimizer.gradient_accumulation_steps)
    if any(plain) or optimizer.use_ema or getattr(optimizer, "amsgrad", False) \
            or any(v.constraint is not None for v in variables) \
            or any(v.dtype != "float32" for v in variables):
        return None
    index = [optimizer._get_variable_index(v) for v in variables]
    handles = [v.value.handle for v in variables]

    def rate():
        return tf.cast(optimizer.learning_rate, tf.float32)  # a schedule: at `iterations`

    if isinstance(optimizer, keras.optimizers.Adam):
        m = [optimizer._momentums[i].value.handle for i in index]
        v2 = [optimizer._velocities[i].value.handle for i in index]
        b1, b2 = float(optimizer.beta_1), float(optimizer.beta_2)

        def apply(grads):
            step = tf.cast(optimizer.iterations + 1, tf.float32)
            lr = rate()
            b1_power, b2_power = tf.pow(b1, step), tf.pow(b2, step)
            for var, mv, vv, g in zip(handles, m, v2, grads):
                tf.raw_ops.ResourceApplyAdam(
                    var=var, m=mv, v=vv, beta1_power=b1_power, beta2_power=b2_power, lr=lr,
                    beta1=b1, beta2=b2, epsilon=float(optimizer.epsilon), grad=g)
            optimizer.iterations.assign_add(1)
        return apply

    if not optimizer.momentum:
        def apply(grads):
            lr = rate()
            for var, g in zip(handles, grads):
                tf.raw_ops.ResourceApplyGradientDescent(var=var, alpha=lr, delta=g)
            optimizer.iterations.assign_add(1)
        return apply
    accum = [optimizer.momentums[i].value.handle for i in index]
    momentum, nesterov = float(optimizer.momentum), bool(optimizer.nesterov)

    def apply(grads):
        lr = rate()
        for var, acc, g in zip(handles, accum, grads):
            tf.raw_ops.ResourceApplyKerasMomentum(var=var, accum=acc, lr=lr, grad=g,
                                                  momentum=momentum, use_nesterov=nesterov)
        optimizer.iterations.assign_add(1)
    return apply


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate at each optimizer step: linear warmup from peak / warmup_steps to the
    peak over `warmup_steps`, then constant, step (x `decay` at each milestone, a fraction of
    `total_steps`) or cosine (from the peak at the end of warmup to 0 at `total_steps`)."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0,
                 kind: str = "constant", milestones=(), decay: float = 0.1):
        self.peak, self.total_steps, self.warmup_steps = float(peak), int(total_steps), int(warmup_steps)
        self.kind, self.milestones, self.decay = kind, tuple(milestones), float(decay)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak, tf.float32)
        if self.kind == "step":
            passed = tf.add_n([tf.cast(step >= round(m * self.total_steps), tf.float32)
                               for m in self.milestones] or [tf.constant(0.0)])
            rate = peak * tf.pow(tf.constant(self.decay, tf.float32), passed)
        elif self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            rate = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            rate = peak + 0.0 * step
        if self.warmup_steps:
            rate = rate * tf.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return rate

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind,
                "milestones": list(self.milestones), "decay": self.decay}


def make_optimizer(t: specs.TrainSpec, total_steps: int, steps_per_epoch: int):
    """The spec's optimizer, with its schedule (a plain float when constant without warmup, so
    runs from before schedules existed train exactly as they did)."""
    peak = t.effective_learning_rate
    warmup = round(t.warmup_epochs * steps_per_epoch)
    rate = peak if t.schedule == "constant" and not warmup else LearningRate(
        peak, total_steps, warmup, t.schedule, t.milestones, t.lr_decay)
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=t.momentum, nesterov=t.nesterov)
    return OPTIMIZERS[t.optimizer](learning_rate=rate)


def current_rate(optimizer, steps_done: int) -> float | None:
    """The learning rate of the last step taken (a schedule evaluated there, or the constant)."""
    rate = getattr(optimizer, "_learning_rate", None)
    if rate is None:
        return None
    if callable(rate) and not hasattr(rate, "assign"):  # a schedule, not a variable
        rate = rate(max(0, steps_done - 1))
    value = float(np.asarray(rate))
    return value if math.isfinite(value) and value >= 0 else None

