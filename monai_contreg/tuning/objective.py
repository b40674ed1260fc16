"""The trial function: the Optuna pruning handler (an ignite handler) and the objective that registers and
scores every tuning pair of a trial.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import RegistrationDivergedError, UserInputError
from ..methods.config import RegistrationConfig
from .measure import PairMetrics, _PairCache, _keypoints, _register_and_measure
from .space import parse_search_space, scale_schedule, schedule_steps
from .study import _NATIVE_CONSTRAINTS, _Job


#: Spacing of the pruner's step indices between pairs and levels (one level of a trial: at most this many steps).
_REPORT_STRIDE = 100_000


class OptunaPruningHandler:
    """ignite handler: report the keypoint TRE (mm) to an Optuna trial every ``every`` steps and prune.

    It measures the TRE with :class:`~monai_contreg.optim.handlers.KeypointTREMonitor` (never in the loss) and
    calls ``trial.report(tre, offset + step)``; from step ``prune_from`` on it asks ``trial.should_prune()``
    and, when the pruner says so, sets :attr:`pruned` (``(step, tre)``) and raises ``optuna.TrialPruned``, as
    optuna-integration's ``PyTorchIgnitePruningHandler`` does: the exception leaves the engine at once (no
    ``COMPLETED`` event, so no end-of-run check judges the half-finished field), leaves the registration and reaches
    Optuna, which records the trial as pruned. ignite's "terminating due to exception" error line is left out for
    it (a pruned trial is not an error).

    Args:
        trial: the ``optuna.Trial``.
        fixed_points, moving_points: ``(N, 3)`` voxel keypoints of the full-resolution grid.
        image_shape: that grid ``(H, W, D)``.
        spacing: its voxel size (mm).
        every: reporting period (steps).
        offset: added to the reported index (:func:`tune` gives pair ``p`` the offset ``p * levels * stride``, so
            that every trial's value at one index comes from the same pair, level and step).
        prune_from: first step of this pair, counted across its levels, at which the trial may be pruned.
        level_offsets: multi-level registration (one engine per level, each counting its steps from 1; the level
            is ``engine.state.level``, set by the multi-level runner): the steps run before level ``i``
            (``[0, steps of level 0, ...]``); level ``i``'s step ``s`` is step ``level_offsets[i] + s`` of the pair.
            Default ``(0,)``: one level. Once the trial is pruned, the engines of the remaining levels stop as they
            start.
        level_stride: the reported index of level ``i``'s step ``s`` is ``offset + i * level_stride + s`` (a fixed
            stride keeps indices comparable between trials whose levels run different numbers of steps);
            ``None``: ``offset + level_offsets[i] + s`` (consecutive).
    """

    def __init__(self, trial: Any, fixed_points: torch.Tensor, moving_points: torch.Tensor, image_shape: Sequence[int],
                 spacing: Sequence[float], every: int, offset: int = 0, prune_from: int = 0,
                 level_offsets: Sequence[int] = (0,), level_stride: int | None = None) -> None:
        from ..optim.handlers import KeypointTREMonitor

        self.trial = trial
        self.monitor = KeypointTREMonitor(fixed_points, moving_points, image_shape, spacing, every)
        self.offset = int(offset)
        self.prune_from = int(prune_from)
        self.level_offsets = tuple(int(o) for o in level_offsets) or (0,)
        self.level_stride = None if level_stride is None else int(level_stride)
        self.reported: list[tuple[int, float]] = []
        self.pruned: tuple[int, float] | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        self.monitor.attach(engine)
        engine.add_event_handler(Events.STARTED, self._skip_if_pruned)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.monitor.every), self)
        if not any(isinstance(f, _QuietPruned) for f in engine.logger.filters):
            engine.logger.addFilter(_QuietPruned())

    def _skip_if_pruned(self, engine) -> None:
        if self.pruned is not None:  # a later level of a pruned registration (were the exception caught): not run
            self._raise()

    def _raise(self) -> None:
        import optuna

        step, tre = self.pruned
        raise optuna.TrialPruned(f"pruned at step {step}: TRE {tre:.3f} mm")

    def __call__(self, engine) -> None:
        step, tre = engine.state.tre_history[-1]
        level = min(int(getattr(engine.state, "level", 0) or 0), len(self.level_offsets) - 1)
        pair_step = self.level_offsets[level] + int(step)
        index = self.offset + (pair_step if self.level_stride is None else level * self.level_stride + int(step))
        self.trial.report(tre, index)
        self.reported.append((index, tre))
        if pair_step >= self.prune_from and self.trial.should_prune():
            self.pruned = (pair_step, tre)
            self._raise()


class _QuietPruned(logging.Filter):
    """Drop the error line ignite's engine logs for an exception raised in a handler when that exception is
    ``optuna.TrialPruned`` (read from ``sys.exc_info()``: the engine logs inside its ``except`` block); every other
    record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = sys.exc_info()[1]
        return not (exc is not None and type(exc).__name__ == "TrialPruned" and type(exc).__module__.startswith("optuna"))




class _Invalid(Exception):
    """A sampled combination the config rejects."""



class _Objective:
    """The trial function of one worker."""

    def __init__(self, job: _Job, rank: int = 0) -> None:
        self.job = job
        self.rank = rank
        self.params = parse_search_space(job.space, job.base)
        self.cache = _PairCache(job.dataset, job.split, job.keys, with_labels=job.objective == "dice")
        self.on_start: Callable[[], None] = lambda: None  # the worker's trial-start lock release
        self.current: int | None = None  # number of the trial being run (re-queued on Ctrl-C)

    def config(self, values: dict[str, Any]) -> RegistrationConfig:
        try:
            cfg = self.job.base.with_overrides(values)
            if self.job.search_steps:
                cfg = scale_schedule(cfg, self.job.search_steps)
        except (ValueError, TypeError) as exc:
            raise _Invalid(str(exc)) from None
        cfg.engine.num_threads = self.job.threads or 0
        cfg.engine.progress = False
        return cfg

    def _surplus(self, trial) -> bool:
        from optuna.trial import TrialState

        others = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        ahead = [t for t in others if t.number < trial.number]
        return len(ahead) >= self.job.n_trials

    def __call__(self, trial) -> float:
        import optuna

        self.on_start()  # the trial is RUNNING and this worker's: other workers may take the next one
        self.current = trial.number
        if self._surplus(trial):  # another worker took the last trial meanwhile
            trial.set_user_attr("surplus", True)
            raise _Surplus()
        values = {p.key: p.suggest(trial) for p in self.params}
        trial.set_user_attr("worker", self.rank)
        job = self.job
        try:
            cfg = self.config(values)
        except _Invalid as exc:
            return self._reject(trial, "invalid", str(exc))
        metrics: list[PairMetrics] = []
        level_steps = schedule_steps(cfg)
        steps = sum(level_steps)  # of one pair, over its levels
        level_offsets = [sum(level_steps[:k]) for k in range(len(level_steps))]
        # reported index of pair i, level l, step s: (i * levels + l) * stride + s, the same in every trial
        stride = max(_REPORT_STRIDE, max(level_steps) + 1)
        for i, pair in enumerate(self.cache.pairs):
            data = self.cache.data(pair)
            handlers = []
            kp = _keypoints(data)
            if job.objective == "tre" and kp is not None and job.report_every:
                grid = self.cache.grid(pair)  # the fixed grid: the TRE's voxel shape and spacing (mm)
                handlers.append(OptunaPruningHandler(
                    trial, kp[0], kp[1], grid.shape, grid.spacing, min(job.report_every, max(level_steps)),
                    offset=i * len(level_steps) * stride, prune_from=int(math.ceil(job.prune_fraction * steps)),
                    level_offsets=level_offsets, level_stride=stride,
                ))
            try:
                m = _register_and_measure(pair, data, cfg, job.device, handlers, dice=job.objective == "dice",
                                          stop=lambda: any(h.pruned for h in handlers), max_memory=job.max_memory)
            except optuna.TrialPruned as exc:  # the handler pruned the run: Optuna records the trial as pruned
                raise optuna.TrialPruned(f"{pair.key}: {exc}") from None
            except RegistrationDivergedError as exc:
                if any(h.pruned for h in handlers):
                    # a check on the field of a run the pruner stopped (were it to run after the prune): the trial
                    # was pruned, not diverged; its half-finished field says nothing about the config
                    raise self._pruned(pair, handlers) from None
                return self._reject(trial, "diverged", f"{pair.key}: {exc}")
            if m is None:  # pruned, and the exception did not come through (an EXCEPTION_RAISED handler took it)
                raise self._pruned(pair, handlers)
            metrics.append(m)
            self._record(trial, metrics)
            if job.objective == "dice":
                trial.report(self._value(metrics), i)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after pair {pair.key}")
        _set_native_constraints(trial, [max(m.sdlogj for m in metrics) - job.max_sdlogj,
                                        max(m.folding_percent for m in metrics) - job.max_folding])
        return self._value(metrics)

    @staticmethod
    def _pruned(pair, handlers) -> Exception:
        import optuna

        step, tre = next(h.pruned for h in handlers if h.pruned)
        return optuna.TrialPruned(f"{pair.key}: pruned at step {step}: TRE {tre:.3f} mm")

    def _value(self, metrics: list[PairMetrics]) -> float:
        vals = [m.tre if self.job.objective == "tre" else m.dice for m in metrics]
        if any(v is None for v in vals):
            raise UserInputError(f"tune: objective {self.job.objective!r} could not be measured on every pair.")
        return float(sum(vals) / len(vals))

    def _record(self, trial, metrics: list[PairMetrics]) -> None:
        sd = max(m.sdlogj for m in metrics)
        fold = max(m.folding_percent for m in metrics)
        trial.set_user_attr("pairs", {m.key: dataclasses.asdict(m) for m in metrics})
        trial.set_user_attr("sdlogj_max", sd)
        trial.set_user_attr("folding_max", fold)
        trial.set_user_attr("seconds", float(sum(m.seconds for m in metrics)))
        trial.set_user_attr("constraints", [sd - self.job.max_sdlogj, fold - self.job.max_folding])

    def _reject(self, trial, kind: str, message: str) -> float:
        import optuna

        trial.set_user_attr("error_kind", kind)
        trial.set_user_attr("error", message[:500])
        trial.set_user_attr("constraints", [1e3, 1e3])
        _set_native_constraints(trial, [1e3, 1e3])
        raise optuna.TrialPruned(f"{kind}: {message}")


def _set_native_constraints(trial, values: Sequence[float]) -> None:
    """Optuna >= 5: hand the constraint values to the sampler (once per trial)."""
    if _NATIVE_CONSTRAINTS:
        trial.set_constraint("sdlogj", float(values[0]))
        trial.set_constraint("folding", float(values[1]))


class _Surplus(Exception):
    """The study had its trials already when this one started."""
