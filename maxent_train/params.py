"""Which parameters a fit trains (``--train-only``) and what frozen BatchNorm layers do (``--frozen-bn``).

``--train-only PATTERN...`` takes parameter-name globs (``fnmatch``, matched against the whole dotted name, e.g.
``final.*``); the parameters no pattern matches are frozen (``requires_grad = False``) and left out of the optimizer,
so neither the gradient nor Adam's weight decay moves them. Without it the objective decides: every parameter
(``maxent``), or the model family's final classifier block (``pebal``, ``balanced-energy``: the token
:data:`maxent_train.objectives.CLASSIFIER_BLOCK` in their ``default_train_only``, replaced by the globs the family
declared in the registry, ``final.*`` for WRN38).

Frozen BatchNorm layers (those with no trained parameter) are a choice, recorded with the run: ``train`` (the
default) leaves them in train mode like the rest of the network, so they normalize with the batch's statistics and
keep updating their running statistics (what PEBAL's and Balanced Energy's code do: their trainer calls
``model.train()`` on the whole network and only clears ``requires_grad``); ``eval`` puts them in eval mode, so they
normalize with their stored statistics and never change them (the network outside the trained block then stays
exactly as it was loaded).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch.nn as nn

from . import MaxentError
from .choices import FROZEN_BN, FrozenBN
from .models import classifier_block_for
from .objectives import CLASSIFIER_BLOCK, Objective


def parameter_groups(model: nn.Module) -> list[str]:
    """The model's top-level parameter groups as globs, in registration order (``mod1.*``, ..., ``final.*``)."""
    groups: dict[str, None] = {}
    for name, _ in model.named_parameters():
        head = name.split(".", 1)[0]
        groups[f"{head}.*" if "." in name else head] = None
    return list(groups)


def resolve_train_only(patterns: Sequence[str] | None, objective: Objective, model_name: str) -> list[str] | None:
    """The parameter globs a fit trains: ``patterns`` (``--train-only``) when given, else the objective's default,
    its :data:`~maxent_train.objectives.CLASSIFIER_BLOCK` token replaced by the family's declared block. None: every
    parameter.

    Raises
    ------
    MaxentError
        The objective trains the classifier block and ``model_name`` (a plug-in) declares none.
    """
    if patterns is not None:
        return list(patterns)
    default = objective.default_train_only
    if default is None:
        return None
    out: list[str] = []
    for pattern in default:
        if pattern != CLASSIFIER_BLOCK:
            out.append(pattern)
            continue
        block = classifier_block_for(model_name)
        if block is None:
            raise MaxentError(f"objective {objective.name!r} trains the model's final classifier block only, and "
                              f"model {model_name!r} declares none (see maxent_train.models.register_model); name its "
                              f"parameters with --train-only PATTERN")
        out.extend(block.params)
    return out


def freeze_parameters(model: nn.Module, patterns: Sequence[str] | None, model_name: str = "") -> list[str]:
    """Train exactly the parameters matching ``patterns`` (all of them when None); returns their names.

    Raises
    ------
    MaxentError
        A pattern matches no parameter (the line names the model's parameter groups).
    """
    names = [name for name, _ in model.named_parameters()]
    if patterns is None:
        return names
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            which = f" {model_name}" if model_name else ""
            raise MaxentError(f"--train-only {pattern!r} matches no parameter of the model{which}; its parameter "
                              f"groups: {', '.join(parameter_groups(model))}")
    trained = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(fnmatch.fnmatchcase(name, p) for p in patterns))
        if param.requires_grad:
            trained.append(name)
    return trained


def frozen_batchnorm(model: nn.Module) -> list[str]:
    """The names of the BatchNorm layers whose parameters are all frozen (none when every parameter trains)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters())]


def set_frozen_bn_mode(model: nn.Module, mode: FrozenBN) -> int:
    """After ``model.train()``: put the frozen BatchNorm layers in eval mode for ``mode="eval"`` (``"train"`` leaves
    them as they are); returns how many layers were switched."""
    if mode not in FROZEN_BN:
        raise MaxentError(f"--frozen-bn: expected {' or '.join(FROZEN_BN)}, got {mode!r}")
    if mode == "train":
        return 0
    layers = frozen_batchnorm(model)
    for name in layers:
        model.get_submodule(name).eval()
    return len(layers)
