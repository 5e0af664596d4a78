"""The learning-rate schedule: linear warm-up, then step decay at milestones.

:class:`ScheduleConfig` gives both in epochs; :meth:`WarmupMultiStepLR.from_config` converts them
to optimiser steps for the run's data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from detector.training.config import ScheduleConfig

__all__ = ["WarmupMultiStepLR"]


class WarmupMultiStepLR(LRScheduler):
    """Linear warm-up over ``warmup_steps`` from ``start_factor``, then ``gamma`` at each milestone.

    ``last_epoch`` counts optimiser steps; call :meth:`step` after every optimiser step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        warmup_steps: int,
        start_factor: float,
        milestones: Sequence[int],
        gamma: float,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        return self.gamma ** sum(1 for m in self.milestones if step >= m)

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]

    @classmethod
    def from_config(
        cls, optimizer: torch.optim.Optimizer, *, schedule: ScheduleConfig, steps_per_epoch: int
    ) -> WarmupMultiStepLR:
        return cls(
            optimizer,
            warmup_steps=round(schedule.warmup_epochs * steps_per_epoch),
            start_factor=schedule.warmup_start_factor,
            milestones=[round(m * steps_per_epoch) for m in schedule.milestones],
            gamma=schedule.gamma,
        )
