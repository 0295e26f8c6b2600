"""The forward of a model split into a deterministic trunk and a stochastic head, written once.

A model that defines ``forward_features(x)`` and ``head_logits(feats)`` (logits at its own output resolution) and
inherits :class:`SplitForward` gets ``forward_head(feats, size=None)``, ``forward_native(x)`` and ``forward(x)``,
with ``forward(x) == F.interpolate(forward_native(x), x.shape[-2:], **output_upsample)`` by construction (the
native-output hook export uses, and the head-only MC dropout of ``maxent_train.mc``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F


class SplitForward:
    """Mixin (put it before ``nn.Module`` in the bases); set ``output_upsample`` to the upstream rule."""

    #: the final upsampling of ``forward``: ``forward(x) == F.interpolate(forward_native(x), x.shape[-2:], **rule)``
    output_upsample: dict[str, Any] = {"mode": "bilinear", "align_corners": False}
    # what the model itself defines (declared for the type checker only: the mixin adds no attribute)
    forward_features: Callable[[torch.Tensor], Any]
    head_logits: Callable[[Any], torch.Tensor]

    def forward_head(self, feats: Any, size: Sequence[int] | None = None) -> torch.Tensor:
        """The head: logits at the network's output resolution when ``size`` is None, else upsampled to ``size``."""
        logits = self.head_logits(feats)
        if size is None:
            return logits
        return F.interpolate(logits, size=tuple(size), **self.output_upsample)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the network's output resolution, before the final upsampling."""
        return self.forward_head(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), x.shape[-2:])
