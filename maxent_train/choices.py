"""The choices of maxent_train's options, each a ``Literal`` alias with its tuple derived from it, defined once.

Cheap to import (no torch): the command line annotates its options with the aliases at start-up (typer lists and
enforces the choices), and the library (:mod:`maxent_train.loss`, :mod:`maxent_train.objectives`,
:mod:`maxent_train.mc`, :mod:`maxent_train.export`) checks values against the same tuples.
"""
from __future__ import annotations

from typing import Literal, get_args

# ``export --compression / --logits-resolution / --logits-dtype``: the logits writer's own choices (no lzf: h5py's
# LZF encoder is not byte-deterministic, ``cocodag.formats.choices.LZF_REFUSED``)
from cocodag.formats.choices import COMPRESSIONS, LOGITS_DTYPES, Compression, LogitsDtype, LogitsResolution
from cocodag.formats.choices import RESOLUTIONS as LOGITS_RESOLUTIONS

__all__ = [
    "COMPRESSIONS", "LOGITS_DTYPES", "LOGITS_RESOLUTIONS", "MC_DTYPES", "MOMENTS_OF", "OBJECTIVES", "OPTIM_TARGETS",
    "REDUCTIONS", "Compression", "LogitsDtype", "LogitsResolution", "McDtype", "MomentsOf", "ObjectiveName",
    "OptimTarget", "Reduction",
    "FROZEN_BN", "LR_SCHEDULES", "FrozenBN", "LrSchedule",
]

#: ``fit --objective``: the training objectives of :mod:`maxent_train.objectives` (MaxEnt first: the default)
ObjectiveName = Literal["maxent", "pebal", "balanced-energy"]
#: ``fit --optim-target``: meta-ood's entropy soft targets, or the seed's logit target (:mod:`maxent_train.loss`)
OptimTarget = Literal["entropy", "logit"]
#: reduction of the MaxEnt loss over pixels
Reduction = Literal["mean", "sum", "none"]
#: ``export --moments-of``: MC-dropout moments of the logits (the paper) or of the softmax probabilities (seed code)
MomentsOf = Literal["logits", "probs"]
#: ``export --mc-dtype``
McDtype = Literal["float32", "float16"]
#: ``fit --lr-schedule``: a constant rate, or PEBAL's poly decay (:mod:`maxent_train.schedule`)
LrSchedule = Literal["constant", "poly"]
#: ``fit --frozen-bn``: BatchNorm layers without a trained parameter keep updating their running statistics (train
#: mode, what PEBAL's and Balanced Energy's code do) or use them frozen (eval mode) (:mod:`maxent_train.params`)
FrozenBN = Literal["train", "eval"]

OBJECTIVES: tuple[str, ...] = get_args(ObjectiveName)
OPTIM_TARGETS: tuple[str, ...] = get_args(OptimTarget)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
MOMENTS_OF: tuple[str, ...] = get_args(MomentsOf)
MC_DTYPES: tuple[str, ...] = get_args(McDtype)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
FROZEN_BN: tuple[str, ...] = get_args(FrozenBN)
