"""MaxEnt fine-tuning loss of meta-ood: cross-entropy on ID pixels, maximal softmax entropy on OOD pixels.

Labels: trainIds ``0..C-1`` are in-distribution (ID), ``254`` is OOD, ``255`` and any other value are void.

``optim_target="entropy"`` (meta-ood's soft targets). Per pixel the target is ``(1-λ)·e_k`` on an ID pixel of class k,
``λ/C`` on every class of an OOD pixel and zeros on void, and the pixel loss is ``Σ_c target_c · (-log p_c)``:
``(1-λ)·CE`` on ID, ``λ·(-1/C)·Σ_c log p_c`` on OOD, 0 on void. It is computed with ``gather`` and a mean over the
class axis of ``log_softmax``: no one-hot / soft-target tensor is built.

``optim_target="logit"`` (the seed's): per-pixel weight ``y = 1-λ`` on ID, ``-λ`` on OOD, 0 on void; the pixel loss is
``-max_c(logits) · y``.

Reduction (ours): ``"mean"`` divides the sum of pixel losses by the number of pixels, void included (void pixels
contribute 0, as in meta-ood). meta-ood's ``mean`` also runs over the class axis, i.e. its entropy-target value is
ours divided by C; with Adam that constant does not change the updates. ``"sum"`` sums; ``"none"`` returns the
``(N, H, W)`` pixel-loss map.

Everything is computed in float32 (logits are upcast), so fp16/bf16 autocast outputs are safe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cocodag.labels import OOD_ID

from . import MaxentError
from .choices import OPTIM_TARGETS, REDUCTIONS, OptimTarget, Reduction


def _masks(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lab = labels.long()  # uint8 labels arrive straight from the loader
    is_id = (lab >= 0) & (lab < num_classes)
    is_ood = lab == OOD_ID
    safe = torch.where(is_id, lab, torch.zeros_like(lab))  # gather needs a valid index on void/OOD pixels too
    return is_id, is_ood, safe


def maxent_loss(logits: torch.Tensor, labels: torch.Tensor, lam: float = 0.9, optim_target: OptimTarget = "entropy",
                num_classes: int | None = None,
                reduction: Reduction = "mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """meta-ood's MaxEnt loss (see the module docstring for the exact definitions and reduction).

    Parameters
    ----------
    logits : Tensor (N, C, H, W)
        Raw network output at label resolution (any float dtype; computed in float32).
    labels : Tensor (N, H, W), uint8 or integer
        trainIds 0..C-1, 254 = OOD, anything else = void.
    lam : float, default=0.9
        λ: weight of the OOD term (ID term weighted 1-λ).
    optim_target : {"entropy", "logit"}, default="entropy"
    num_classes : int, optional
        Checked against ``logits.shape[1]`` when given.
    reduction : {"mean", "sum", "none"}, default="mean"
        ``mean`` = over all N·H·W pixels, void included.

    Returns
    -------
    loss : Tensor
        Scalar (or ``(N, H, W)`` for ``reduction="none"``), differentiable.
    parts : dict of detached 0-dim tensors
        ``id_ce`` (mean CE over ID pixels), ``ood_entropy`` (mean softmax entropy over OOD pixels, nats),
        ``ood_uniform_ce`` (mean ``-(1/C)Σ log p_c`` over OOD pixels, the quantity the entropy target minimizes),
        ``n_id``, ``n_ood`` (pixel counts). Means over zero pixels are 0. Call ``float()`` when logging (it syncs).
    """
    if optim_target not in OPTIM_TARGETS:
        raise MaxentError(f"optim_target must be one of {OPTIM_TARGETS}, got {optim_target!r}")
    if reduction not in REDUCTIONS:
        raise MaxentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= float(lam) <= 1.0:
        raise MaxentError(f"lambda must be in [0, 1], got {lam}")
    if logits.ndim != 4:
        raise MaxentError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
    n, c, h, w = logits.shape
    if num_classes is not None and num_classes != c:
        raise MaxentError(f"logits have {c} classes, expected num_classes={num_classes}")
    if tuple(labels.shape) != (n, h, w):
        raise MaxentError(f"labels shape {tuple(labels.shape)} does not match logits (N, H, W) = {(n, h, w)}")
    if labels.is_floating_point():
        raise MaxentError(f"labels must be an integer tensor (uint8 trainIds), got {labels.dtype}")

    x = logits.float()
    is_id, is_ood, safe = _masks(labels, c)
    idf, oodf = is_id.float(), is_ood.float()

    logp = F.log_softmax(x, dim=1)
    ce = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)  # (N, H, W), valid where is_id
    uni = -logp.mean(dim=1)  # (N, H, W): -(1/C) Σ_c log p_c
    if optim_target == "entropy":
        pix = (1.0 - lam) * ce * idf + lam * uni * oodf
    else:
        y = (1.0 - lam) * idf - lam * oodf
        pix = -x.amax(dim=1) * y

    if reduction == "mean":
        loss = pix.mean()
    elif reduction == "sum":
        loss = pix.sum()
    else:
        loss = pix

    with torch.no_grad():
        n_id, n_ood = idf.sum(), oodf.sum()
        ent = -(logp.exp() * logp).sum(dim=1)
        parts = {
            "id_ce": (ce * idf).sum() / n_id.clamp(min=1),
            "ood_entropy": (ent * oodf).sum() / n_ood.clamp(min=1),
            "ood_uniform_ce": (uni * oodf).sum() / n_ood.clamp(min=1),
            "n_id": n_id,
            "n_ood": n_ood,
        }
    return loss, parts
