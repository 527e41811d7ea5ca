"""The PyTorch peer for `normbench bench train --peers torch`: the same model, data and batch,
trained two ways. "eager" is written as most people write it; "tuned" flushes denormals and
uses the fused Adam (or the foreach SGD). PyTorch is optional (normbench[bench]); it is
imported only here, and only when a bench asks for it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from normbench import spec as specs
from normbench.errors import NormbenchError

STYLES = ("eager", "tuned")
INSTALL = ("pip install 'normbench[bench]' (a CPU wheel: pip install torch --index-url "
           "https://download.pytorch.org/whl/cpu)")


def missing() -> str | None:
    """Why the peer cannot run here, or None."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return f"PyTorch is not installed: {INSTALL}"
    return None


def build(model: specs.ModelSpec, norm_type: str, groups: int | None, epsilon: float,
          momentum: float | None = 0.99):
    """normbench's tutorial CNN or vgg in PyTorch, with the same parameter count (a BN's
    `momentum` is Keras's: the moving averages keep that fraction each step)."""
    import torch
    from torch import nn

    def norm(channels: int):
        if norm_type == "group":
            return nn.GroupNorm(groups, channels, eps=epsilon)
        if norm_type == "batch":
            return nn.BatchNorm2d(channels, eps=epsilon, momentum=1.0 - (momentum or 0.99))
        if norm_type == "none":
            return nn.Identity()
        raise NormbenchError(f"bench train --peers torch: norm {norm_type!r} has no PyTorch peer "
                             "here (group, batch or none)")

    if model.arch == "tutorial":
        side = specs.IMAGE_SHAPE[0] - specs.CONV_KERNEL + 1
        return nn.Sequential(
            nn.Conv2d(1, model.conv_filters, specs.CONV_KERNEL), norm(model.conv_filters),
            nn.Flatten(), nn.Linear(side * side * model.conv_filters, model.dense_units), nn.ReLU(),
            nn.Dropout(model.dropout), nn.Linear(model.dense_units, 10))
    if model.arch != "vgg":
        raise NormbenchError(f"bench train --peers torch: arch {model.arch!r} has no PyTorch peer")
    layers: list = []
    channels = 1
    for width in model.widths:
        if width == specs.POOL:
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(channels, width, specs.CONV_KERNEL, padding=1, bias=norm_type == "none"),
                   norm(width), nn.ReLU()]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return nn.Sequential(*layers)


def check_training(t: specs.TrainSpec) -> None:
    """Refuse a training setup the peer does not reproduce."""
    if t.optimizer not in ("adam", "sgd"):
        raise NormbenchError(f"bench train --peers torch: optimizer {t.optimizer!r} has no peer")
    if t.schedule != "constant" or t.steps is not None:
        raise NormbenchError(f"bench train --peers torch: the peer trains a constant learning rate "
                             f"(with warmup) for whole epochs; this spec has schedule "
                             f"{t.schedule!r}" + (f" and steps {t.steps}" if t.steps else ""))


def warmup_factor(step: int, warmup: int) -> float:
    """The fraction of the peak rate at optimizer step `step` (0-based): normbench's linear
    warmup, (step + 1) / warmup, then 1."""
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def train(spec: specs.Spec, ds, style: str) -> dict[str, Any]:
    """Train the spec's model in PyTorch on the dataset (NHWC float32 in [0, 1]) for the spec's
    epochs and batch; steady samples/s over epochs 2.., the first epoch's time, per-epoch
    losses, test accuracy and the parameter count."""
    import torch
    from torch import nn

    if style not in STYLES:
        raise NormbenchError(f"peer style {style!r}: choose eager or tuned")
    t, norm = spec.train, spec.model.norm
    torch.manual_seed(t.seed)
    torch.set_flush_denormal(style == "tuned")
    model = build(spec.model, norm.type, norm.groups, norm.epsilon, norm.momentum)
    if t.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=t.effective_learning_rate, eps=1e-7,
                                     **({"fused": True} if style == "tuned" else {}))
    elif t.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=t.effective_learning_rate,
                                    momentum=t.momentum, nesterov=t.nesterov,
                                    weight_decay=t.weight_decay,
                                    **({"foreach": True} if style == "tuned" else {}))
    else:
        raise NormbenchError(f"bench train --peers torch: optimizer {t.optimizer!r} has no peer")
    check_training(t)
    per_epoch = -(-len(ds.y_train) // t.batch_size)
    warmup = round(t.warmup_epochs * per_epoch)  # linear, as normbench's: peak * (step + 1) / warmup
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_factor(step, warmup))
    images = torch.from_numpy(np.ascontiguousarray(ds.x_train.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(ds.y_train.astype(np.int64))
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(t.seed)
    n, times, losses = len(labels), [], []
    model.train()
    try:
        for _ in range(t.epochs):
            start = time.perf_counter()
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for i in range(0, n, t.batch_size):  # the last, smaller batch too, as Keras's fit
                rows = order[i:i + t.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(images[rows]), labels[rows])
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(rows)
            times.append(time.perf_counter() - start)
            losses.append(total / n)
    finally:
        torch.set_flush_denormal(False)
    model.eval()
    with torch.no_grad():
        test = torch.from_numpy(np.ascontiguousarray(ds.x_test.transpose(0, 3, 1, 2)))
        predicted = torch.cat([model(test[i:i + 512]).argmax(1) for i in range(0, len(test), 512)])
    accuracy = float((predicted.numpy() == ds.y_test).mean())
    steady = n * (len(times) - 1) / sum(times[1:]) if len(times) > 1 else n / times[0]
    return {"samples_per_s": steady, "first_epoch_s": times[0], "losses": losses,
            "test_accuracy": accuracy, "params": sum(p.numel() for p in model.parameters())}


def kernel_times(spec: specs.Spec, input_shape: tuple[int, ...], repeats: int = 5,
                 loop: int = 50) -> list[dict[str, Any]]:
    """The tuned peer's kernels, each timed alone as `bench floor` times normbench's: every
    module's forward and backward (ms, median of `repeats` loops of `loop`), the loss, and the
    optimizer step over all parameters."""
    import torch
    from torch import nn

    t, norm = spec.train, spec.model.norm
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    model = build(spec.model, norm.type, norm.groups, norm.epsilon, norm.momentum)
    model.train()

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(loop):
                fn()
            times.append((time.perf_counter() - start) / loop * 1e3)
        return float(np.median(times))

    rows = []
    h, w, c = input_shape
    x = torch.randn(t.batch_size, c, h, w)
    try:
        for i, module in enumerate(model):
            inp = x.detach().requires_grad_(i > 0)
            out = module(inp)
            dy = torch.randn_like(out)

            def step(module=module, inp=inp, dy=dy):
                module(inp).backward(dy)

            if out.requires_grad:
                rows.append({"kernel": f"{type(module).__name__} (module {i + 1}) forward + backward",
                             "ms": timed(step)})
            x = out.detach()
        logits = torch.randn(t.batch_size, 10, requires_grad=True)
        labels = torch.randint(0, 10, (t.batch_size,))
        loss_fn = nn.CrossEntropyLoss()
        rows.append({"kernel": "loss (softmax cross-entropy) forward + backward",
                     "ms": timed(lambda: loss_fn(logits, labels).backward())})
        params = list(model.parameters())
        for p in params:
            p.grad = 1e-3 * torch.randn_like(p)
        if t.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=t.effective_learning_rate, eps=1e-7, fused=True)
        else:
            optimizer = torch.optim.SGD(params, lr=t.effective_learning_rate, momentum=t.momentum,
                                        weight_decay=t.weight_decay, foreach=True)
        count = sum(p.numel() for p in params)
        rows.append({"kernel": f"optimizer update ({t.optimizer}, {count:,} parameters)",
                     "ms": timed(optimizer.step)})
    finally:
        torch.set_flush_denormal(False)
    return rows
