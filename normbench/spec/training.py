"""`train:` of a spec (`TrainSpec`): the optimizer, its learning rate, schedule and weight decay,
how long, how the step is compiled, held-out data and evaluations."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from normbench.spec.fields import Choice, Frozen, positive_finite

OPTIMIZERS = ("adam", "sgd", "rmsprop")
LR_SCALINGS = ("none", "linear", "sqrt")
SCHEDULES = ("constant", "step", "cosine")
Optimizer = Choice(OPTIMIZERS, "optimizer")
LrScaling = Choice(LR_SCALINGS, "lr_scaling")
Schedule = Choice(SCHEDULES, "schedule")


class TrainSpec(Frozen):
    epochs: int = Field(1, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1 << 20)
    optimizer: Optimizer = "adam"
    learning_rate: float = 1e-3
    lr_scaling: LrScaling = "none"  # linear: learning_rate * batch_size / base_batch_size (Goyal 2017)
    base_batch_size: int = Field(32, ge=1, le=1 << 20)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    # How the train step is compiled: true = the whole step under XLA; false = plain TF graph;
    # auto = the fastest measured per device (CPU: graph with XLA-compiled norm and optimizer
    # kernels, 1.5x the whole-step XLA here; GPU: whole step). Falls back to graph if XLA fails.
    jit_compile: bool | Literal["auto"] = "auto"
    # Train steps per call into TensorFlow (an in-graph loop): fewer Python round trips, no
    # per-step host syncs. Progress and NaN checks happen between calls.
    steps_per_execution: int = Field(64, ge=1, le=1_000_000)
    # SGD's momentum and Nesterov (ignored by adam/rmsprop: validated against them)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    # L2 weight decay added to the loss (coupled, as PyTorch's SGD and the GN paper: 1e-4);
    # decay_norm_params also decays the norm layers' gamma and beta (the paper does)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    decay_norm_params: bool = True
    # learning-rate schedule over the whole run (in optimizer steps): constant, step (x lr_decay
    # at each milestone, a fraction of training) or cosine (to 0); linear warmup first
    schedule: Schedule = "constant"
    milestones: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field([0.5, 0.75], max_length=16)
    lr_decay: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0, le=1000.0)
    # a fixed number of optimizer steps instead of `epochs` (the equal-steps protocol)
    steps: int | None = Field(None, ge=1, le=100_000_000)
    # held-out validation (the last fraction of a seeded shuffle of the training set) and test
    # error recorded every `eval_every` epochs; None = only at the end
    eval_every: int | None = Field(None, ge=1, le=100_000)
    validation_split: float = Field(0.0, ge=0.0, lt=0.5)
    # the held-out images: false, the last fraction of a shuffle drawn from the seed (each seed
    # holds out its own); true, a fixed class-stratified draw, the same for every seed (a tuning
    # stage and every study seed then hold out the same images)
    validation_fixed: bool = False
    # train on a fixed, class-stratified subset of this many training images, the same for every
    # seed (its sha256 is in the record); null: all of them. Held-out images come from the subset
    train_subset: int | None = Field(None, ge=10, le=1 << 30)
    # write the trained model as model.keras into the run directory (not part of the run id)
    save_model: bool = Field(False, json_schema_extra={"identity": False})

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, value: list[float]) -> list[float]:
        if value != sorted(set(value)):
            raise ValueError(f"milestones must increase strictly, got {value}")
        return value

    @model_validator(mode="after")
    def _optimizer_options(self) -> TrainSpec:
        if self.optimizer != "sgd" and (self.momentum or self.nesterov):
            raise ValueError(f"momentum and nesterov are SGD's options; optimizer is "
                             f"{self.optimizer!r}")
        if self.nesterov and not self.momentum:
            raise ValueError("nesterov needs momentum > 0")
        if self.validation_fixed and not self.validation_split:
            raise ValueError("validation_fixed needs validation_split > 0 (the fraction held out)")
        return self

    @field_validator("jit_compile", mode="before")
    @classmethod
    def _jit_compile(cls, value: Any) -> bool | str:
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() == "auto"):
            return value if isinstance(value, bool) else "auto"
        raise ValueError(f"expected true, false or auto, got {value!r}")

    @property
    def effective_learning_rate(self) -> float:
        """The peak learning rate after lr_scaling (linear: Goyal et al. 2017, for SGD; sqrt:
        the usual rule for Adam)."""
        ratio = self.batch_size / self.base_batch_size
        if self.lr_scaling == "linear":
            return self.learning_rate * ratio
        if self.lr_scaling == "sqrt":
            return self.learning_rate * math.sqrt(ratio)
        return self.learning_rate

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, value: float) -> float:
        return positive_finite(value)
