"""The experiment schema: frozen, validated pydantic models, one file per block of a spec. No
TensorFlow. Reading YAML files, `-s` overrides and sweep expansion live in `grid.py`.

`normbench.spec` is the one name the rest of normbench imports: every public name of the files
below is here."""

from normbench.spec.document import (DATASETS, NPZ_PREFIX, Spec, for_smoke, summary, to_dict,
                                     to_yaml, validate)
from normbench.spec.fields import FLOAT32_TINY, OUTSIDE_IDENTITY, Choice, Frozen, float32
from normbench.spec.model import (ARCHS, BATCH_NORMS, CONV_KERNEL, EVAL_STATS, FACTORY, IMAGE_SHAPE,
                                  INITIALIZERS, POOL, ModelSpec, NormSpec, conv_output_shape,
                                  first_norm_channels, tfa_installed)
from normbench.spec.outside import SlurmSpec, StudySpec, TuneSpec
from normbench.spec.training import LR_SCALINGS, OPTIMIZERS, SCHEDULES, TrainSpec

__all__ = ["ARCHS", "BATCH_NORMS", "CONV_KERNEL", "Choice", "DATASETS", "EVAL_STATS", "FACTORY",
           "FLOAT32_TINY", "Frozen", "IMAGE_SHAPE", "INITIALIZERS", "LR_SCALINGS", "ModelSpec",
           "NPZ_PREFIX", "NormSpec", "OPTIMIZERS", "OUTSIDE_IDENTITY", "POOL", "SCHEDULES",
           "SlurmSpec", "Spec", "StudySpec", "TrainSpec", "TuneSpec", "conv_output_shape",
           "first_norm_channels", "float32", "for_smoke", "summary", "tfa_installed", "to_dict",
           "to_yaml", "validate"]
