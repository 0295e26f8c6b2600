"""The learning-rate schedule of ``maxent-train fit`` (``--lr-schedule constant|poly``, ``--lr-power``).

``poly`` is PEBAL's and Balanced Energy's schedule as their code runs it (``engine/lr_policy.py:WarmUpPolyLR`` with
no warm-up, applied by ``engine/trainer.py``): after optimizer step ``i`` (0-based, counted over the whole run) the
rate becomes ``lr * (1 - i / T) ** power``, clipped to ``[1e-8, lr]``, with ``T`` = epochs x batches per epoch. The
rate is set *after* the step, so step ``s`` runs with the rate computed after step ``s - 1``: steps 0 and 1 both
run at ``lr``, and the last step at ``lr * (1 - (T - 2) / T) ** power``. We reproduce that one-step lag and the floor.
``T`` does not depend on ``--max-steps`` (a run stopped early and resumed follows the same schedule).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import MaxentError
from .choices import LR_SCHEDULES, LrSchedule

#: the floor of the poly schedule (``WarmUpPolyLR``'s ``end_lr``)
POLY_END_LR = 1e-8


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of each optimizer step.

    Parameters
    ----------
    kind : {"constant", "poly"}
    lr : float
        The base rate (``--lr``).
    total_steps : int
        ``T``: epochs x batches per epoch.
    power : float, default=0.9
        The poly exponent (``--lr-power``; PEBAL: 0.9).
    """

    kind: LrSchedule
    lr: float
    total_steps: int
    power: float = 0.9

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULES:
            raise MaxentError(f"--lr-schedule: expected {' or '.join(LR_SCHEDULES)}, got {self.kind!r}")
        if self.total_steps <= 0:
            raise MaxentError(f"lr schedule: total steps must be > 0, got {self.total_steps}")

    def __call__(self, step: int) -> float:
        """The rate optimizer step ``step`` (0-based) runs with."""
        if self.kind == "constant":
            return self.lr
        done = max(step - 1, 0)         # the rate was set after the previous step (PEBAL's trainer)
        # the same float expression as WarmUpPolyLR.get_lr, then numpy.clip(., end_lr, start_lr)
        rate = self.lr * ((1 - float(done) / (self.total_steps + 0.0)) ** self.power)
        return min(max(rate, POLY_END_LR), self.lr)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set every parameter group of ``optimizer`` to the rate of ``step`` (a constant schedule leaves the
        optimizer as it was built: its rate is ``lr`` already)."""
        if self.kind == "constant":
            return
        rate = self(step)
        for group in optimizer.param_groups:
            group["lr"] = rate
