"""The one streaming-state protocol of the project (torchmetrics' ``Metric`` words).

Every per-frame accumulator — pixel metrics (exact and binned), component metrics, the SegmentMeIfYouCan and
Fishyscapes states, the SML statistics, meta classification's segment metrics — is a :class:`StreamingState`:

- ``update(...)``: fold in one batch / frame (arguments are the accumulator's own: scores and labels, logits, ...);
- ``merge(other)``: fold in everything another accumulator of the same settings has seen, *after* what this one
  has seen (float sums are order-dependent: merging frame states in frame order is bit-identical to updating with
  the frames in that order); returns ``self``;
- ``compute()``: the result so far (does not change the state);
- ``reset()``: forget the data, keep the settings;
- ``empty_copy()``: a new accumulator with the same settings (and any fixed bin edges) and no data.

Parallel evaluation (``oodscore evaluate --workers N``) and the parallel export use only these five: a worker
``update``s an ``empty_copy`` with one frame and hands it back (it must pickle), the parent ``merge``s them in frame
order. It lives in the foundation package because ``cocodag.formats.sml_stats`` implements it too.
"""
from __future__ import annotations

import abc
from typing import Any, TypeVar

__all__ = ["StreamingState"]

_S = TypeVar("_S", bound="StreamingState")


class StreamingState(abc.ABC):
    """Base class of every streaming accumulator (see the module doc for the contract)."""

    @abc.abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Fold in one batch / frame."""

    @abc.abstractmethod
    def merge(self: _S, other: _S) -> _S:
        """Fold in ``other``'s data after this state's own; returns ``self``."""

    @abc.abstractmethod
    def compute(self) -> Any:
        """The result of everything seen so far."""

    @abc.abstractmethod
    def reset(self) -> Any:
        """Forget the data, keep the settings."""

    @abc.abstractmethod
    def empty_copy(self: _S) -> _S:
        """Same settings, no data."""
