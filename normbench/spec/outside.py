"""The blocks of a spec outside a run's identity: `slurm:` (where jobs are submitted), `study:`
(what `normbench report` declares before the runs) and `tune:` (the tuning stage's grid and rule).
Changing them never makes new runs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from normbench.spec.fields import Frozen, positive_finite


class SlurmSpec(Frozen):
    """Where `--executor slurm` submits (not part of the run id; --slurm-* options override)."""

    partition: str | None = Field(None, pattern=r"^[A-Za-z0-9_.,-]{1,128}$")
    time_min: int = Field(60, ge=1, le=60 * 24 * 30)  # per run
    cpus_per_task: int = Field(2, ge=1, le=1024)
    mem_gb: float = Field(8.0, gt=0.0, le=16384.0)
    array_parallelism: int = Field(32, ge=1, le=10_000)  # runs queued or running at once
    # a job pending only because its nodes are down or drained (or its partition is down) is
    # cancelled after this many minutes and reported not done; its run stays to do
    unavailable_min: float = Field(10.0, gt=0.0, le=60.0 * 24 * 30)


class StudySpec(Frozen):
    """What a study declares before its runs, for `normbench report` (not part of the run id;
    each run's saved spec keeps it, which is how the report knows it came first)."""

    # |difference| in points of test error below which two cells count as equivalent (two
    # one-sided tests at the report's multiplicity-adjusted level); none: no equivalence verdict
    equivalence_margin: float | None = Field(None, gt=0.0, le=100.0)
    # the study's metric: the mean test error over the evaluations made in the last this
    # fraction of training steps (e.g. 0.25; the final evaluation is always among them); null:
    # the GN paper's median of the last 5 evaluations (or the final test error without
    # periodic evaluations)
    metric_last: float | None = Field(None, gt=0.0, le=1.0)


class TuneSpec(Frozen):
    """A study's tuning stage (`normbench tune`): the learning-rate grid each group of runs
    chooses from on held-out data, before any study run (not part of the run id; the rate it
    chooses is). The selection rule: the lowest held-out error at the final evaluation, ties to
    the smaller rate; a best rate at an edge of the grid adds the next rate past it (the ratio of
    the two grid values at that edge), up to `extend` times."""

    learning_rate: list[Annotated[float, Field(gt=0.0, le=1e6)]] = Field([], max_length=32)
    by: list[str] = Field(["model.norm.type"], min_length=1, max_length=8)  # a rate per value
    seed: int = Field(1000, ge=0, le=2**32 - 1)  # the tuning runs' seed: none of the study's
    extend: int = Field(1, ge=0, le=8)
    # cells (field path -> value) tuned on their own and reported, never applied to the study's
    # runs: e.g. {model.norm.virtual_batch_size: 2} for BN at its smallest v
    sensitivity: list[dict[str, Any]] = Field([], max_length=8)
    # set by normbench when it applies the frozen choice: the sha256 of the tuning records
    records_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("learning_rate")
    @classmethod
    def _grid(cls, value: list[float]) -> list[float]:
        if value != sorted(set(value)):
            raise ValueError(f"the grid must increase strictly, got {value}")
        if len(value) == 1:
            raise ValueError(f"a grid of one rate ({value[0]:g}) chooses nothing; give two or "
                             "more (or none: no tuning)")
        return [positive_finite(v) for v in value]
