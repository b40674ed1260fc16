"""ignite handlers for registration engines: history, NaN and divergence stops, the in-image displacement bound,
plateau stop, logging, TRE monitoring.

Each handler owns its state, as ignite's own handlers do (``EarlyStopping``, ``Checkpoint``): it is reset when a
run starts (``Events.STARTED``), so one handler object may serve several runs and two handlers of one kind on one
engine never share a list; the stateful ones have ``state_dict`` / ``load_state_dict``, which a checkpoint saves
and a resumed run loads back. End-of-run checks ask :func:`run_completed`: a run stopped before its last step (early
stopping, a pruned tuning trial, any handler calling ``engine.terminate()``) is not held to what only a finished
run must satisfy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from .._validation import check_ddf, check_points
from ..errors import RegistrationDivergedError, UserInputError
from .engine import RegistrationEvents, host_read

__all__ = [
    "DIVERGENCE_FIX",
    "DivergenceGuard",
    "HistoryRecorder",
    "KeepInImage",
    "KeypointTREMonitor",
    "LossLogger",
    "NaNGuard",
    "PlateauEarlyStopping",
    "RegistrationDivergedError",
    "check_divergence",
    "run_completed",
]

logger = logging.getLogger(__name__)


def run_completed(engine: Engine) -> bool:
    """Whether the engine's run went to its last iteration (``max_epochs * epoch_length``) without being stopped.

    ``False`` while a run is stopped by ``engine.terminate()`` (ignite keeps ``engine.should_terminate`` set until
    the next run starts, so ``Events.COMPLETED`` handlers see it) or before its last iteration.
    """
    if engine.should_terminate:
        return False
    st = engine.state
    total = (st.epoch_length or 0) * (st.max_epochs or 0)
    return not total or st.iteration >= total


_HISTORY_KEYS = ("loss", "similarity", "regularization", "lr")


def _is_tensor_output(out: dict) -> bool:
    return isinstance(out.get("loss"), torch.Tensor)


class HistoryRecorder:
    """Record, per step, the loss terms and the learning rate (:attr:`history`, also ``engine.state.history``).

    ``history`` is ``{"loss": [...], "similarity": [...], "regularization": [...], "lr": [...]}``, new (empty) lists
    at every ``Events.STARTED``; :meth:`state_dict` / :meth:`load_state_dict` save and restore it. A sync-free
    engine's outputs (0-dim device tensors) are kept as tensors and moved to the lists every ``flush_every`` steps
    and when the run completes (one host read per flush instead of one per step), so during such a run the lists
    lag by up to ``flush_every - 1`` steps; :meth:`flush` brings them up to date.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, flush_every: int = 50) -> None:
        if flush_every < 1:
            raise UserInputError(f"HistoryRecorder: flush_every must be >= 1, got {flush_every}.")
        self.optimizer = optimizer
        self.flush_every = int(flush_every)
        self.history: dict[str, list[float]] = {k: [] for k in _HISTORY_KEYS}
        self._pending: list[torch.Tensor] = []
        self._pending_lr: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.state.history = self.history
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, lambda _e: self.flush())

    def _started(self, engine: Engine) -> None:
        if engine.state.iteration == 0:  # a fresh run (a resumed one keeps the history it loaded)
            self.history = {k: [] for k in _HISTORY_KEYS}
            self._pending, self._pending_lr = [], []
        engine.state.history = self.history

    def flush(self) -> None:
        """Move the values kept as device tensors into :attr:`history` (one host read)."""
        if not self._pending:
            return
        with host_read():
            rows = torch.stack(self._pending).cpu().tolist()
        for row, lr in zip(rows, self._pending_lr):
            for key, v in zip(("loss", "similarity", "regularization"), row):
                self.history[key].append(float(v))
            self.history["lr"].append(lr)
        self._pending, self._pending_lr = [], []

    def state_dict(self) -> dict[str, list[float]]:
        """A copy of :attr:`history` (after :meth:`flush`)."""
        self.flush()
        return {k: list(v) for k, v in self.history.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        """Restore :meth:`state_dict` (every key of :attr:`history` required)."""
        missing = [k for k in _HISTORY_KEYS if k not in state]
        if missing:
            raise KeyError(f"HistoryRecorder.load_state_dict: missing keys {missing}; expected {list(_HISTORY_KEYS)}.")
        self.history = {k: [float(x) for x in state[k]] for k in _HISTORY_KEYS}
        self._pending, self._pending_lr = [], []

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        lr = float(self.optimizer.param_groups[0]["lr"])
        if _is_tensor_output(out):
            self._pending.append(torch.stack([out[k].detach().to(torch.float64).reshape(())
                                              for k in ("loss", "similarity", "regularization")]))
            self._pending_lr.append(lr)
            if len(self._pending) >= self.flush_every:
                self.flush()
            return
        hist = self.history
        for key in ("loss", "similarity", "regularization"):
            hist[key].append(float(out[key]))
        hist["lr"].append(lr)


class NaNGuard:
    """Stop with :class:`RegistrationDivergedError` as soon as the loss is NaN or infinite.

    With float outputs every step is tested. A sync-free engine's outputs (device tensors) are gathered and
    tested every ``every`` steps and when the run completes (one host read per test); the error names the first
    non-finite step.
    """

    def __init__(self, every: int = 10) -> None:
        if every < 1:
            raise UserInputError(f"NaNGuard: every must be >= 1, got {every}.")
        self.every = int(every)
        self._pending: list[tuple[int, torch.Tensor]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _e: self._pending.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._check_pending)

    def _raise(self, engine: Engine, step: int, bad: list[str]) -> None:
        opt = getattr(engine.state, "optimizer", None)
        lr = opt.param_groups[0]["lr"] if opt is not None else float("nan")
        raise RegistrationDivergedError(
            f"registration diverged at step {step} (lr {lr:g}): non-finite {sorted(bad)}. "
            "Lower optim.schedule.peak_lr, raise optim.reg_weight, or mask the images "
            "(preprocess.use_masks) to keep the field from running off."
        )

    def _check_pending(self, engine: Engine) -> None:
        if not self._pending:
            return
        keys = sorted(self._pending[0][1])
        with host_read():
            values = torch.stack([torch.stack([out[k].detach().double().reshape(()) for k in keys])
                                  for _, out in self._pending]).cpu()
        steps = [s for s, _ in self._pending]
        self._pending = []
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            row = int((~finite.all(dim=1)).nonzero()[0, 0])
            self._raise(engine, steps[row], [k for k, ok in zip(keys, finite[row].tolist()) if not ok])

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        if _is_tensor_output(out):
            self._pending.append((engine.state.iteration, dict(out)))
            if engine.state.iteration % self.every == 0:
                self._check_pending(engine)
            return
        bad = {k: v for k, v in out.items() if not math.isfinite(v)}
        if bad:
            self._raise(engine, engine.state.iteration, list(bad))


#: What to try when a run diverges (the end of every divergence message).
DIVERGENCE_FIX = (
    "Likely cause: the learning rate is too high for these images (unmasked background or a small field of view "
    "lets the early high-rate Adam steps carry the field off the anatomy). Fix: give lung masks "
    "(--fixed-mask/--moving-mask, preprocess.use_masks), use a preset with a lower rate (--preset io-lr1), or "
    "lower the rate (--set optim.schedule.peak_lr=5; on a multi-level preset such as 'accurate', the level's own: "
    "--set multilevel.levels.I.schedule.peak_lr=...)."
)


def _folding_percent(ddf: torch.Tensor) -> float:
    from ..spatial.jacobian import folding_percent  # local: keeps handlers free of import cycles

    if min(ddf.shape[2:]) < 2:
        return 0.0
    return folding_percent(ddf)  # in slabs: a full-resolution field's Jacobian would need ~1 GiB of temporaries


def check_divergence(
    ddf: torch.Tensor,
    max_displacement: float = 0.25,
    max_folding: float | None = 10.0,
    where: str = "registration",
    options: tuple[str, str] = ("", ""),
) -> None:
    """Raise :class:`RegistrationDivergedError` when a field is implausible for its grid.

    Args:
        ddf: MONAI DDF ``(1, 3, h, w, d)`` in voxels of its grid (e.g. the working grid).
        max_displacement: largest plausible ``|u_i|`` as a fraction of the grid's extent ``n_i`` along axis ``i``.
        max_folding: largest plausible share (percent) of voxels with ``det J <= 0``; ``None``: not tested.
        where: what is checked, for the message (e.g. ``"registration at step 40 (lr 15)"``).
        options: the config options of the two bounds, named in the message (e.g.
            ``("engine.divergence_final_max_displacement", "engine.divergence_max_folding")``).

    Raises:
        RegistrationDivergedError naming the failed test, the values and the fix (:data:`DIVERGENCE_FIX`).
    """
    check_ddf("check_divergence", "ddf", ddf)
    with torch.no_grad():
        u = ddf.detach()
        n = torch.as_tensor(u.shape[2:], dtype=torch.float64)
        largest = torch.stack([u[:, a].abs().amax() for a in range(3)]).double().cpu()
        if not bool(torch.isfinite(largest).all()):
            raise RegistrationDivergedError(f"{where} diverged: the field is not finite. {DIVERGENCE_FIX}")
        frac = largest / n
        axis = int(torch.argmax(frac))
        if float(frac[axis]) > max_displacement:
            raise RegistrationDivergedError(
                f"{where} diverged: the largest displacement, {float(largest[axis]):.1f} voxels along axis {axis}, is "
                f"{float(frac[axis]):.2f} of the image extent ({int(n[axis])} voxels), beyond the plausible "
                f"{max_displacement:g}{f' ({options[0]})' if options[0] else ''}. {DIVERGENCE_FIX}"
            )
        if max_folding is None:
            return
        fold = _folding_percent(u)
        if fold > max_folding:
            raise RegistrationDivergedError(
                f"{where} diverged: {fold:.2f}% of the voxels fold (det J <= 0), beyond the plausible "
                f"{max_folding:g}%{f' ({options[1]})' if options[1] else ''}. {DIVERGENCE_FIX}"
            )


class DivergenceGuard:
    """Stop a run that goes off with :class:`RegistrationDivergedError` (message: cause and fix).

    The loss is compared with the first step's (the initial field's), the smoothed field ``engine.state.field()``
    with the extent of its grid. Every ``every`` steps (loosely: the paper's high early learning rate makes large
    transient excursions that its decay phase may still repair):

    * a loss above ``loss_ratio`` x the larger of the first loss and the loss at step ``min_steps`` (a pair that
      starts aligned has a first loss near zero, and the high-rate phase's transient raises any loss from there:
      the ratio to that start alone stopped such runs that then ended well);
    * a displacement along an axis beyond ``max_displacement`` x the grid's extent on that axis.

    After the last step (strictly), when the run went to its end (:func:`run_completed`):

    * a loss above ``final_loss_ratio`` x the first loss (the run made the alignment worse);
    * a displacement beyond ``final_max_displacement`` x the extent;
    * more than ``max_folding`` percent of voxels with ``det J <= 0``.

    A run stopped before its last step (plateau early stopping, a pruned tuning trial: its field is half-way
    through the schedule's high-rate phase) gets the loose tests of the run at its last step instead.

    The first loss is forgotten at ``Events.STARTED`` of a fresh run; :meth:`state_dict` / :meth:`load_state_dict`
    save and restore it (a resumed run compares with its original start).

    Args:
        loss_ratio, max_displacement: the tests during the run (displacements as fractions of the image extent:
            unit-free, the same on every grid).
        final_loss_ratio, final_max_displacement, max_folding: the tests at the end.
        every: check period in steps.
        min_steps: the loss tests apply from this step on (at the end: to runs at least this long); Adam's first
            steps move every parameter by about the learning rate, so a few-step run's loss says little.
    """

    def __init__(
        self,
        loss_ratio: float = 100.0,
        max_displacement: float = 1.0,
        final_loss_ratio: float = 2.0,
        final_max_displacement: float = 0.25,
        max_folding: float = 10.0,
        every: int = 10,
        min_steps: int = 20,
    ) -> None:
        for name, v in (("loss_ratio", loss_ratio), ("max_displacement", max_displacement),
                        ("final_loss_ratio", final_loss_ratio), ("final_max_displacement", final_max_displacement),
                        ("max_folding", max_folding)):
            if not v > 0:
                raise UserInputError(f"DivergenceGuard: {name} must be > 0, got {v}.")
        if every < 1:
            raise UserInputError(f"DivergenceGuard: every must be >= 1, got {every}.")
        self.loss_ratio = float(loss_ratio)
        self.max_displacement = float(max_displacement)
        self.final_loss_ratio = float(final_loss_ratio)
        self.final_max_displacement = float(final_max_displacement)
        self.max_folding = float(max_folding)
        self.every = int(every)
        if min_steps < 0:
            raise UserInputError(f"DivergenceGuard: min_steps must be >= 0, got {min_steps}.")
        self.min_steps = int(min_steps)
        self.first_loss: float | None = None
        self.reference_loss: float | None = None  # max(first loss, loss at step min_steps), for the in-run test

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _started(self, engine: Engine) -> None:
        if engine.state.iteration == 0:
            self.first_loss = None
            self.reference_loss = None

    def state_dict(self) -> dict[str, float | None]:
        """``{"first_loss": the first step's loss, "reference_loss": the in-run test's reference}`` (None before
        they are known)."""
        return {"first_loss": self.first_loss, "reference_loss": self.reference_loss}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        """Restore :meth:`state_dict` (a state without ``reference_loss``, from an older checkpoint, takes the first
        loss as the reference)."""
        if "first_loss" not in state:
            raise KeyError("DivergenceGuard.load_state_dict: missing key 'first_loss'.")
        self.first_loss = None if state["first_loss"] is None else float(state["first_loss"])
        ref = state.get("reference_loss", self.first_loss)
        self.reference_loss = None if ref is None else float(ref)

    def _where(self, engine: Engine) -> str:
        opt = getattr(engine.state, "optimizer", None)
        lr = f" (lr {opt.param_groups[0]['lr']:.4g})" if opt is not None else ""
        level = getattr(engine.state, "level", None)  # set by the multi-level method (LevelEvents)
        if level is None:
            return f"registration at step {engine.state.iteration}{lr}"
        return f"registration, level {level} (multilevel.levels.{level}), at step {engine.state.iteration} of that level{lr}"

    def _check_loss(self, engine: Engine, ratio: float, option: str, final: bool) -> None:
        with host_read():
            loss = float(engine.state.output["loss"])
        first = self.first_loss
        ref = first if final or self.reference_loss is None else self.reference_loss
        if engine.state.iteration < self.min_steps or ref is None or not loss > ratio * ref + 1e-6 * max(abs(ref), 1e-6):
            return
        what = "ended at" if final else "rose to"
        base = f"its start {first:.5g}" if ref == first else f"its loss at step {self.min_steps} {ref:.5g}"
        raise RegistrationDivergedError(
            f"{self._where(engine)} diverged: the loss {what} {loss:.5g}, {loss / max(ref, 1e-30):.3g} x {base}, "
            f"beyond the tolerated {ratio:g} x ({option}). {DIVERGENCE_FIX}"
        )

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration == 1 or self.first_loss is None:
            with host_read():  # once per run
                self.first_loss = float(engine.state.output["loss"])
        if self.reference_loss is None and engine.state.iteration >= self.min_steps:
            with host_read():  # once per run
                self.reference_loss = max(self.first_loss, float(engine.state.output["loss"]))
        if engine.state.iteration % self.every:
            return
        self._check_loss(engine, self.loss_ratio, "engine.divergence_loss_ratio", final=False)
        # the fused step keeps the smoothed field its loss saw (before this step's update): tested as it is,
        # instead of smoothing the parameter again (a full pass and a full-size temporary)
        last = getattr(engine.state, "last_ddf", None)
        with host_read():
            check_divergence(engine.state.field() if last is None else last, self.max_displacement, None,
                             self._where(engine), ("engine.divergence_max_displacement", ""))

    def _final(self, engine: Engine) -> None:
        if engine.state.output is None:
            return
        if not run_completed(engine):  # stopped early: the field is not a finished one; the run's own tests
            self._check_loss(engine, self.loss_ratio, "engine.divergence_loss_ratio", final=False)
            with host_read():
                check_divergence(engine.state.field(), self.max_displacement, None,
                                 f"{self._where(engine)}, stopped early", ("engine.divergence_max_displacement", ""))
            return
        self._check_loss(engine, self.final_loss_ratio, "engine.divergence_final_loss_ratio", final=True)
        with host_read():
            check_divergence(engine.state.field(), self.final_max_displacement, self.max_folding,
                             f"{self._where(engine)}, end of run",
                             ("engine.divergence_final_max_displacement", "engine.divergence_max_folding"))


class KeepInImage:
    """After every Adam step, clamp the field's parameter so each working-grid voxel maps inside the image.

    On axis ``i`` the raw parameter at voxel ``x`` is clamped to ``[-x_i, n_i - 1 - x_i]`` (working-grid voxels),
    so ``x + u(x)`` lies in the image (the smoothed field read by the loss is an average of such values, inside
    up to the replicated border). A sample outside the image has no similarity gradient (border padding), and
    Adam's momentum would carry it on: see :attr:`monai_contreg.methods.config.OptimConfig.keep_in_image`.
    Fires on :attr:`RegistrationEvents.FIELD_UPDATED`; records the number of clamped values of the last step in
    ``engine.state.clamped`` (an int64 tensor: ``int()`` reads it; no host sync per step). Where the optimiser is
    a :class:`~monai_contreg.optim.FieldAdam` with ``keep_in_image``, the clamp already ran inside its update (one
    pass): this handler then only publishes its count.
    """

    def attach(self, engine: Engine) -> None:
        engine.state.clamped = torch.zeros((), dtype=torch.int64)
        engine.add_event_handler(RegistrationEvents.FIELD_UPDATED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        opt = getattr(engine.state, "optimizer", None)
        if getattr(opt, "keep_in_image", False) and hasattr(opt, "clamped"):
            engine.state.clamped = opt.clamped.reshape(())
            return
        engine.state.clamped = engine.state.field.clamp_to_image_(as_tensor=True)


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
            raise UserInputError(f"PlateauEarlyStopping: patience must be >= 1, got {patience}.")
        if min_delta < 0:
            raise UserInputError(f"PlateauEarlyStopping: min_delta must be >= 0, got {min_delta}.")
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
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        if engine.state.iteration == 0:  # a resumed run keeps the state it loaded
            self.reset()

    def __call__(self, engine: Engine) -> None:
        with host_read():  # every step (early stopping is off in every preset)
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
            raise UserInputError(f"LossLogger: every must be >= 1, got {every}.")
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
        with host_read():
            terms = [float(out[k]) for k in ("loss", "similarity", "regularization")]
        logger.info(
            "%sstep %d%s loss %.5f (sim %.5f, reg %.5f) lr %.4g", prefix, engine.state.iteration, total, *terms, lr,
        )


class KeypointTREMonitor:
    """Analysis only: mean keypoint TRE (mm) of the current field every ``every`` steps.

    Never enters the loss. Records ``(step, tre_mm)`` pairs in its own :attr:`history` (new at every fresh
    ``Events.STARTED``; two monitors on one engine keep two lists); ``engine.state.tre_history`` is the history of
    the monitor that measured last (a handler that runs right after its monitor reads that monitor's value there).
    :meth:`state_dict` / :meth:`load_state_dict` save and restore the history.

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
            raise UserInputError(
                f"KeypointTREMonitor: fixed_points {tuple(fixed_points.shape)} and moving_points "
                f"{tuple(moving_points.shape)} must have equal shapes (row k of each is one correspondence)."
            )
        if every < 1:
            raise UserInputError(f"KeypointTREMonitor: every must be >= 1, got {every}.")
        self.fixed_points = fixed_points
        self.moving_points = moving_points
        self.image_shape = tuple(int(s) for s in image_shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.every = int(every)
        self.history: list[tuple[int, float]] = []

    def attach(self, engine: Engine) -> None:
        if getattr(engine.state, "tre_history", None) is None:
            engine.state.tre_history = self.history
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _started(self, engine: Engine) -> None:
        if engine.state.iteration == 0:
            was_published = getattr(engine.state, "tre_history", None) is self.history
            self.history = []
            if was_published:
                engine.state.tre_history = self.history

    def state_dict(self) -> dict[str, list[tuple[int, float]]]:
        """``{"history": [(step, tre_mm), ...]}`` (a copy)."""
        return {"history": [(int(s), float(t)) for s, t in self.history]}

    def load_state_dict(self, state: dict[str, list]) -> None:
        """Restore :meth:`state_dict`."""
        if "history" not in state:
            raise KeyError("KeypointTREMonitor.load_state_dict: missing key 'history'.")
        self.history = [(int(s), float(t)) for s, t in state["history"]]

    def _final(self, engine: Engine) -> None:
        if not self.history or self.history[-1][0] != engine.state.iteration:
            self(engine)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        from ..spatial.warp import warp_points  # local: keeps handlers free of import cycles

        with host_read():  # on the monitor's cadence (the points and spacing go to the device, the mean comes back)
            field = engine.state.field
            ddf = field.ddf(self.image_shape)
            fp = self.fixed_points.to(ddf.device, ddf.dtype)
            mp = self.moving_points.to(ddf.device, ddf.dtype)
            spacing = torch.as_tensor(self.spacing, device=ddf.device, dtype=ddf.dtype)
            err = ((warp_points(fp, ddf) - mp) * spacing).norm(dim=-1).mean()
            self.history.append((engine.state.iteration, float(err)))
        engine.state.tre_history = self.history
