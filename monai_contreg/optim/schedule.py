"""The piecewise learning-rate schedule of the paper, as a value function and an ignite parameter scheduler.

Step ``s`` (0-based, the number of Adam steps already taken) uses::

    s <= constant_steps                 peak_lr
    constant_steps < s <= cosine_end    cosine_min_lr + (peak_lr - cosine_min_lr) * (1 + cos(pi * t / cosine_period)) / 2,
                                        t = s - constant_steps
    cosine_end < s <= total_steps       linear from linear_start_lr (at cosine_end) to final_lr (at total_steps);
                                        linear_start_lr=None continues from the cosine value at cosine_end

The defaults are the authors' (peak 15, constant to step 70, cosine of period 200 toward 0.1 until step 180,
then a linear decay restarting at 1.5 and ending at 0.5 on step 270): lr(180) = 6.3846, lr(250) = 0.7222.
A constant schedule is ``constant_steps >= total_steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ignite.handlers.param_scheduler import ParamScheduler
from torch.optim import Optimizer
from ..errors import UserInputError

__all__ = ["PiecewiseLRScheduler", "PiecewiseSchedule"]


@dataclass
class PiecewiseSchedule:
    """Breakpoints and values of the piecewise (constant, cosine, linear) learning-rate schedule.

    Attributes:
        peak_lr: learning rate of the constant phase.
        constant_steps: last step of the constant phase.
        cosine_end: last step of the cosine phase (set equal to ``constant_steps`` to skip it).
        cosine_period: ``T`` of the cosine (half a period of the cosine wave takes ``T`` steps).
        cosine_min_lr: value the cosine anneals toward.
        linear_start_lr: value of the linear phase at ``cosine_end``; ``None`` = continuous with the cosine.
        final_lr: value at ``total_steps``.
        total_steps: number of Adam steps of the run.
    """

    peak_lr: float = 15.0
    constant_steps: int = 70
    cosine_end: int = 180
    cosine_period: float = 200.0
    cosine_min_lr: float = 0.1
    linear_start_lr: float | None = 1.5
    final_lr: float = 0.5
    total_steps: int = 270

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field when the breakpoints are inconsistent."""
        if self.total_steps < 1:
            raise UserInputError(f"PiecewiseSchedule: total_steps must be >= 1, got {self.total_steps}.")
        if self.constant_steps < 0:
            raise UserInputError(f"PiecewiseSchedule: constant_steps must be >= 0, got {self.constant_steps}.")
        if self.cosine_end < self.constant_steps and self.constant_steps < self.total_steps:
            raise UserInputError(
                f"PiecewiseSchedule: cosine_end ({self.cosine_end}) must be >= constant_steps ({self.constant_steps})."
            )
        if self.cosine_period <= 0:
            raise UserInputError(f"PiecewiseSchedule: cosine_period must be > 0, got {self.cosine_period}.")
        for name in ("peak_lr", "cosine_min_lr", "final_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise UserInputError(f"PiecewiseSchedule: {name} must be a finite number >= 0, got {v!r}.")
        if self.linear_start_lr is not None and not (math.isfinite(self.linear_start_lr) and self.linear_start_lr >= 0):
            raise UserInputError(
                f"PiecewiseSchedule: linear_start_lr must be None or a finite number >= 0, got {self.linear_start_lr!r}."
            )

    def _cosine(self, s: int) -> float:
        t = s - self.constant_steps
        return self.cosine_min_lr + (self.peak_lr - self.cosine_min_lr) * (1 + math.cos(math.pi * t / self.cosine_period)) / 2

    def lr_at(self, step: int) -> float:
        """Learning rate used by (0-based) step ``step``."""
        s = int(step)
        if s <= self.constant_steps:
            return float(self.peak_lr)
        if s <= self.cosine_end:
            return float(self._cosine(s))
        start = self._cosine(self.cosine_end) if self.linear_start_lr is None else self.linear_start_lr
        span = self.total_steps - self.cosine_end
        if span <= 0 or s >= self.total_steps:
            return float(self.final_lr)
        frac = (s - self.cosine_end) / span
        return float(start + (self.final_lr - start) * frac)

    def values(self) -> list[float]:
        """The learning rate of every step ``0 .. total_steps - 1``."""
        return [self.lr_at(s) for s in range(self.total_steps)]


class PiecewiseLRScheduler(ParamScheduler):
    """ignite parameter scheduler following a :class:`PiecewiseSchedule`.

    Attach it to ``Events.ITERATION_STARTED``: the ``k``-th iteration (0-based) runs with ``schedule.lr_at(k)``.

    Examples:
        >>> vals = PiecewiseLRScheduler.simulate_values(271, schedule=PiecewiseSchedule())
        >>> vals[70][1], round(vals[180][1], 4)
        (15.0, 6.3846)
    """

    def __init__(
        self,
        optimizer: Optimizer | Any,
        schedule: PiecewiseSchedule | None = None,
        param_name: str = "lr",
        save_history: bool = False,
        param_group_index: int | None = None,
    ) -> None:
        super().__init__(optimizer, param_name, save_history=save_history, param_group_index=param_group_index)
        self.schedule = schedule if schedule is not None else PiecewiseSchedule()

    def get_param(self) -> float:
        return self.schedule.lr_at(self.event_index)
