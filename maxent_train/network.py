"""The network a fit trains: built by name, loaded from ``--init``, given an abstention channel when the objective
needs one.

An objective with ``abstention=True`` (``pebal``, ``balanced-energy``) trains ``C + 1`` outputs, the last one the
abstention channel:

* ``--init`` with a ``C``-class classifier (NVIDIA's ``cityscapes_best.pth``): loaded strictly as it is, then each
  classifier convolution the family declares (:class:`maxent_train.models.ClassifierBlock` ``convs``) gains the
  channel as PEBAL's ``load_model(extra_channel=True)`` does (:func:`maxent_train.models.grow_classifier`);
* ``--init`` with ``C + 1`` outputs (PEBAL's ``best_ad_ckpt.pth``, a run of ours with such an objective): loaded as
  it is, its last output taken as the abstention channel;
* no ``--init``: the family built with ``C + 1`` outputs;
* any other output count: refused in one line.

What was done is returned (:class:`Network`) and recorded in ``config.json`` and the checkpoint metadata
(``num_outputs``, ``abstention_channel``), so ``create_model(name, num_classes=num_outputs)`` loads a saved run back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from . import MaxentError
from .models import (
    classifier_block_for,
    create_model,
    filtered_state,
    grow_classifier,
    load_state,
    read_checkpoint,
)

#: how the abstention channel came to be (``Network.abstention_source``)
GROWN, FROM_CHECKPOINT, NEW = "grown from --init", "in --init", "new network"


@dataclass
class Network:
    """A built network and what was done to its classifier."""

    model: nn.Module
    num_outputs: int
    #: the index of the abstention channel (the last output), None when the objective needs none
    abstention_channel: int | None = None
    #: ``GROWN`` / ``FROM_CHECKPOINT`` / ``NEW``, None without an abstention channel
    abstention_source: str | None = None
    #: the convolutions that were grown
    grown: list[str] = field(default_factory=list)


def build_network(name: str, num_classes: int, model_kwargs: dict[str, Any], init: str | None, *,
                  abstention: bool = False, objective: str = "") -> Network:
    """Build model ``name`` with ``num_classes`` classes, load ``init`` (strictly, through the family's
    checkpoint filter) and add the abstention channel when ``abstention``.

    Raises
    ------
    MaxentError
        A checkpoint that does not load; for an abstention objective, a classifier with neither ``num_classes`` nor
        ``num_classes + 1`` outputs, or a model that declares no classifier; without one, an ``init`` of ours that
        has an abstention channel.
    """
    if not abstention:
        model = create_model(name, num_classes=num_classes, **model_kwargs)
        if init:
            state, meta = read_checkpoint(init)
            _refuse_abstention_file(init, meta, objective)
            load_state(model, state, init, strict=True, name=name)   # the model's checkpoint_filter applies
        return Network(model, num_classes)
    convs = _classifier_convs(name, objective)
    if not init:
        model = create_model(name, num_classes=num_classes + 1, **model_kwargs)
        return Network(model, num_classes + 1, num_classes, NEW)
    state, _ = read_checkpoint(init)
    model = create_model(name, num_classes=num_classes, **model_kwargs)
    own = filtered_state(model, state, init, name)
    rows = {c: int(own[f"{c}.weight"].shape[0]) for c in convs if f"{c}.weight" in own}
    if rows and all(r == num_classes + 1 for r in rows.values()):
        model = create_model(name, num_classes=num_classes + 1, **model_kwargs)
        load_state(model, state, init, strict=True, name=name)
        return Network(model, num_classes + 1, num_classes, FROM_CHECKPOINT)
    odd = {c: r for c, r in rows.items() if r != num_classes}
    if odd:
        conv, r = next(iter(odd.items()))
        raise MaxentError(f"--init {init}: its classifier {conv} has {r} outputs; objective {objective!r} grows a "
                          f"{num_classes}-class classifier by one abstention channel (or continues one with "
                          f"{num_classes + 1} outputs): pass --num-classes {r} if the file has {r} classes")
    load_state(model, state, init, strict=True, name=name)     # missing classifier keys: the strict load's line
    grow_classifier(model, convs, num_classes)
    return Network(model, num_classes + 1, num_classes, GROWN, list(convs))


def _classifier_convs(name: str, objective: str) -> tuple[str, ...]:
    block = classifier_block_for(name)
    if block is None:
        raise MaxentError(f"objective {objective!r} adds an abstention channel to the model's classifier, and model "
                          f"{name!r} declares none (see maxent_train.models.register_model's classifier=)")
    return block.convs


def _refuse_abstention_file(init: str | Path, meta: dict[str, Any], objective: str) -> None:
    """A run of ours with an abstention channel, given as ``--init`` to an objective without one: one line."""
    channel = meta.get("abstention_channel")
    if channel is None:
        return
    trained = (meta.get("objective") or {}).get("name", "an abstention objective")
    raise MaxentError(f"--init {init}: has an abstention channel (output {channel}, trained with {trained}); "
                      f"objective {objective or 'maxent'!r} trains the classes only: continue it with --objective "
                      f"{trained} or start from a checkpoint without one")
