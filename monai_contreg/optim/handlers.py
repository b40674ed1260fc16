"""ignite handlers for registration engines: history, NaN stop, plateau stop, logging, TRE monitoring."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from .._validation import check_points
from ..errors import RegistrationDivergedError

__all__ = [
    "HistoryRecorder",
    "KeypointTREMonitor",
    "LossLogger",
    "NaNGuard",
    "PlateauEarlyStopping",
    "RegistrationDivergedError",
]

logger = logging.getLogger(__name__)


class HistoryRecorder:
    """Record, per step, the loss terms and the learning rate into ``engine.state.history``.

    ``engine.state.history`` is ``{"loss": [...], "similarity": [...], "regularization": [...], "lr": [...]}``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def attach(self, engine: Engine) -> None:
        engine.state.history = {"loss": [], "similarity": [], "regularization": [], "lr": []}
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        hist = engine.state.history
        for key in ("loss", "similarity", "regularization"):
            hist[key].append(float(engine.state.output[key]))
        hist["lr"].append(float(self.optimizer.param_groups[0]["lr"]))


class NaNGuard:
    """Stop with :class:`RegistrationDivergedError` as soon as the loss is NaN or infinite."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        bad = {k: v for k, v in out.items() if not math.isfinite(v)}
        if bad:
            opt = getattr(engine.state, "optimizer", None)
            lr = opt.param_groups[0]["lr"] if opt is not None else float("nan")
            raise RegistrationDivergedError(
                f"registration diverged at step {engine.state.iteration} (lr {lr:g}): non-finite {sorted(bad)}. "
                "Lower optim.schedule.peak_lr, raise optim.reg_weight, or mask the images "
                "(preprocess.use_masks) to keep the field from running off."
            )


class PlateauEarlyStopping:
    """Terminate the run when the loss has not improved for ``patience`` steps.

    An improvement is a loss below ``best - min_delta * |best|``. Nothing is checked before step ``warmup``
    (the high-learning-rate phase is noisy by design).

    Args:
        patience: steps without improvement before stopping (>= 1).
        min_delta: relative improvement that counts.
        warmup: first step at which a stop may happen.

    The state (best loss, steps without improvement) is reset when a run starts (``Events.STARTED``), so one
    handler may serve several runs; :meth:`state_dict` / :meth:`load_state_dict` save and restore it (as ignite's
    ``EarlyStopping``).
    """

    def __init__(self, patience: int, min_delta: float = 1e-4, warmup: int = 0) -> None:
        if patience < 1:
            raise ValueError(f"PlateauEarlyStopping: patience must be >= 1, got {patience}.")
        if min_delta < 0:
            raise ValueError(f"PlateauEarlyStopping: min_delta must be >= 0, got {min_delta}.")
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.warmup = int(warmup)
        self.best = math.inf
        self.wait = 0

    def reset(self) -> None:
        """Forget the best loss and the count of steps without improvement."""
        self.best = math.inf
        self.wait = 0

    def state_dict(self) -> dict[str, float]:
        """``{"best": best loss so far, "wait": steps without improvement}``."""
        return {"best": float(self.best), "wait": int(self.wait)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore :meth:`state_dict` (both keys required)."""
        missing = [k for k in ("best", "wait") if k not in state]
        if missing:
            raise KeyError(f"PlateauEarlyStopping.load_state_dict: missing keys {missing}; expected 'best' and 'wait'.")
        self.best = float(state["best"])
        self.wait = int(state["wait"])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = float(engine.state.output["loss"])
        if loss < self.best - self.min_delta * abs(self.best if math.isfinite(self.best) else 0.0):
            self.best = loss
            self.wait = 0
            return
        self.wait += 1
        if engine.state.iteration >= self.warmup and self.wait >= self.patience:
            logger.info("early stop at step %d: no loss improvement for %d steps", engine.state.iteration, self.wait)
            engine.state.stopped_early = True
            engine.terminate()


class LossLogger:
    """Log the loss terms and learning rate every ``every`` steps (``logging``, logger of this module)."""

    def __init__(self, every: int = 50, total: int | None = None, name: str = "") -> None:
        if every < 1:
            raise ValueError(f"LossLogger: every must be >= 1, got {every}.")
        self.every = int(every)
        self.total = total
        self.name = name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        opt = getattr(engine.state, "optimizer", None)
        lr = opt.param_groups[0]["lr"] if opt is not None else float("nan")
        total = f"/{self.total}" if self.total else ""
        prefix = f"{self.name} " if self.name else ""
        logger.info(
            "%sstep %d%s loss %.5f (sim %.5f, reg %.5f) lr %.4g",
            prefix, engine.state.iteration, total, out["loss"], out["similarity"], out["regularization"], lr,
        )


class KeypointTREMonitor:
    """Analysis only: mean keypoint TRE (mm) of the current field every ``every`` steps.

    Never enters the loss. Records ``(step, tre_mm)`` pairs in ``engine.state.tre_history``.

    Args:
        fixed_points: ``(N, 3)`` fixed-image voxel coordinates (full resolution).
        moving_points: ``(N, 3)`` corresponding moving-image voxel coordinates.
        image_shape: full-resolution grid ``(H, W, D)`` the points refer to.
        spacing: voxel spacing (mm) along the three array axes.
        every: monitoring period in steps (the last step is always measured).
    """

    def __init__(
        self,
        fixed_points: torch.Tensor,
        moving_points: torch.Tensor,
        image_shape: Sequence[int],
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        every: int = 10,
    ) -> None:
        check_points("KeypointTREMonitor", "fixed_points", fixed_points)
        check_points("KeypointTREMonitor", "moving_points", moving_points)
        if fixed_points.shape != moving_points.shape:
            raise ValueError(
                f"KeypointTREMonitor: fixed_points {tuple(fixed_points.shape)} and moving_points "
                f"{tuple(moving_points.shape)} must have equal shapes (row k of each is one correspondence)."
            )
        if every < 1:
            raise ValueError(f"KeypointTREMonitor: every must be >= 1, got {every}.")
        self.fixed_points = fixed_points
        self.moving_points = moving_points
        self.image_shape = tuple(int(s) for s in image_shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.every = int(every)

    def attach(self, engine: Engine) -> None:
        engine.state.tre_history = []
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _final(self, engine: Engine) -> None:
        hist = engine.state.tre_history
        if not hist or hist[-1][0] != engine.state.iteration:
            self(engine)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        from ..spatial.warp import warp_points  # local: keeps handlers free of import cycles

        field = engine.state.field
        ddf = field.ddf(self.image_shape)
        fp = self.fixed_points.to(ddf.device, ddf.dtype)
        mp = self.moving_points.to(ddf.device, ddf.dtype)
        spacing = torch.as_tensor(self.spacing, device=ddf.device, dtype=ddf.dtype)
        err = ((warp_points(fp, ddf) - mp) * spacing).norm(dim=-1).mean()
        engine.state.tre_history.append((engine.state.iteration, float(err)))
