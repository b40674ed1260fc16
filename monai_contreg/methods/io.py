"""The paper's method: instance optimisation of a dense field with Adam under a piecewise LR schedule.

Input: preprocessed fixed and moving images ``(1, 1, H, W, D)`` on one grid. Steps: MIND-SSC features at full
resolution, average-pooled to the working grid; a :class:`~monai_contreg.optim.DisplacementField` (zero or
given initial field); an ignite engine running ``schedule.total_steps`` Adam steps (one dense stage's settings) on
``SSD(MIND_fixed, MIND_moving o (id + u)) + lambda * diffusion(u)``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine

from .._validation import check_finite, check_tensor
from ..errors import MissingFileError, UserInputError
from ..features.mind import mind_ssc
from ..losses.intensity import intensity_similarity
from ..optim.adam import FieldAdam, field_adam_available
from ..optim.engine import create_registration_engine
from ..optim.field import DisplacementField
from ..optim.handlers import (
    DivergenceGuard,
    HistoryRecorder,
    KeepInImage,
    KeypointTREMonitor,
    LossLogger,
    NaNGuard,
    PlateauEarlyStopping,
    run_completed,
)
from ..optim.schedule import PiecewiseLRScheduler
from ..spatial.filters import downsample
from ..errors import UserInputError
from .config import DenseStage, RegistrationConfig

__all__ = [
    "MethodOutput", "checkpoint_prefix", "compute_features", "instance_optimisation", "latest_checkpoint",
    "load_checkpoint", "registration_checkpoints",
]

logger = logging.getLogger(__name__)


@dataclass
class MethodOutput:
    """What a method returns: the field on its working grid plus diagnostics.

    Attributes:
        field: the :class:`DisplacementField` (``field.ddf(shape)`` gives it on any grid).
        history: per-step ``loss``, ``similarity``, ``regularization``, ``lr`` lists.
        tre_history: ``(step, mean TRE mm)`` pairs when keypoints were monitored.
        timings: seconds per stage (``features``, ``optimisation``, ...).
        steps: Adam steps actually taken.
        stopped_early: whether the run ended before its schedule's last step (the plateau stop, a handler that
            terminated the engine); a multi-level run: whether any level did.
        kernels: the similarity's implementation that ran the steps: ``"compiled"`` (the CPU kernels of
            :mod:`monai_contreg.kernels`), ``"pytorch"`` (``grid_sample`` and autograd), ``"compiled+pytorch"``
            if both did (on any level), ``""`` without Adam steps.
        levels_stopped_early: a multi-level run: ``stopped_early`` of every level, in order; ``()`` otherwise.
        affine: with an affine stage, its world map (4x4 float64 numpy, fixed world -> moving world, RAS mm; the
            field is the dense part ``u`` after it); ``None`` without one.
        affine_history: the affine stage's per-step ``similarity`` and ``lr``.
    """

    field: DisplacementField
    history: dict[str, list[float]] = field(default_factory=dict)
    tre_history: list[tuple[int, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    stopped_early: bool = False
    kernels: str = ""
    levels_stopped_early: tuple[bool, ...] = ()
    affine: Any = None
    affine_history: dict[str, list[float]] = field(default_factory=dict)


def _one_dense(where: str, config: RegistrationConfig, stage: DenseStage | None) -> DenseStage:
    """``stage``, or the config's one dense stage (a ``UserInputError`` naming ``stage=`` with several or none)."""
    if stage is not None:
        return stage
    dense = config.dense_stages
    if len(dense) != 1:
        raise UserInputError(
            f"{where}: config has {len(dense)} dense stages (stages: {[s.kind for s in config.stages]}); pass the "
            "stage to run as stage=, or run the whole config with monai_contreg.methods.run.run_method."
        )
    return dense[0]


def compute_features(
    fixed: torch.Tensor, moving: torch.Tensor, config: RegistrationConfig, stage: DenseStage | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MIND-SSC of both images at full resolution, average-pooled by the dense stage's ``grid_factor``.

    Args:
        fixed, moving: ``(1, 1, H, W, D)`` preprocessed images on the same grid.
        config: the config; its one dense stage is used unless ``stage`` is given.
        stage: the dense stage (``mind_radius``, ``mind_dilation``, ``grid_factor``).

    Returns:
        Two ``(1, 12, h, w, d)`` tensors on the working grid; for a stage whose ``similarity`` is ``"lncc"`` or
        ``"mi"``, the images average-pooled onto it (``(1, 1, h, w, d)``).

    Raises:
        UserInputError: unequal shapes; no ``stage`` and not exactly one dense stage in ``config``.
    """
    check_tensor("compute_features", "fixed", fixed, 5)
    check_tensor("compute_features", "moving", moving, 5)
    if fixed.shape != moving.shape:
        raise UserInputError(f"compute_features: fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must have equal shapes.")
    st = _one_dense("compute_features", config, stage)
    if st.similarity != "mind":  # an intensity similarity (losses.intensity): the images, pooled
        with torch.no_grad():
            return downsample(fixed, st.grid_factor).contiguous(), downsample(moving, st.grid_factor).contiguous()
    with torch.no_grad():
        ff = downsample(mind_ssc(fixed, st.mind_radius, st.mind_dilation), st.grid_factor)
        mf = downsample(mind_ssc(moving, st.mind_radius, st.mind_dilation), st.grid_factor)
    return ff.contiguous(), mf.contiguous()


def instance_optimisation(
    fixed_features: torch.Tensor,
    moving_features: torch.Tensor,
    config: RegistrationConfig,
    *,
    init_ddf: torch.Tensor | None = None,
    keypoints: tuple[torch.Tensor, torch.Tensor] | None = None,
    image_shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    handlers: list[Any] | None = None,
    name: str = "",
    regularizer: Any = None,
    stage: DenseStage | None = None,
    resume: bool | None = None,
) -> MethodOutput:
    """Run the Adam instance optimisation of one dense stage on working-grid features (one ignite engine run).

    Args:
        fixed_features, moving_features: ``(1, C, h, w, d)`` on the working grid (:func:`compute_features`: MIND-SSC
            for the ``"mind"`` similarity, the pooled images for ``"lncc"``/``"mi"``).
        config: the registration config: its shared ``optim``, ``engine`` and ``features.storage`` settings, and
            its one dense stage unless ``stage`` is given.
        init_ddf: optional initial DDF ``(1, 3, ...)`` on any grid over the same field of view (its voxels).
        keypoints: optional ``(fixed, moving)`` ``(N, 3)`` voxel coordinates on the full grid, for TRE monitoring
            (needs ``image_shape`` and ``config.engine.tre_every > 0``); never used in the loss.
        image_shape: full-resolution grid the keypoints refer to.
        spacing: voxel spacing in mm for the TRE monitor.
        handlers: extra objects with an ``attach(engine)`` method (ignite handlers).
        name: label used in log lines.
        regularizer: optional ``ddf -> scalar`` replacing the diffusion regulariser (weighted by
            the stage's ``reg_weight``), e.g. the multi-level method's mask-aware one.
        stage: the dense stage to run (:class:`~monai_contreg.methods.config.DenseStage`: grid, schedule,
            regulariser weight, smoothing).
        resume: continue from the latest checkpoint of ``name`` in ``config.engine.checkpoint_dir``; ``None``
            (default): ``config.engine.resume``. A multi-level run passes ``False`` for a level that has no
            checkpoint yet (it was not reached before the interruption).

    Raises:
        RegistrationDivergedError: the loss became non-finite, or (``config.engine.divergence_check``) the run went
            off (:class:`~monai_contreg.optim.DivergenceGuard`).
    """
    check_finite("instance_optimisation", "fixed_features", fixed_features)
    check_finite("instance_optimisation", "moving_features", moving_features)
    st = _one_dense("instance_optimisation", config, stage)
    ocfg, ecfg = config.optim, config.engine
    shape = tuple(fixed_features.shape[2:])
    fld = DisplacementField(
        shape, init=init_ddf, smoothing_passes=st.smoothing_passes, kernel_size=st.smoothing_kernel,
        dtype=fixed_features.dtype, device=fixed_features.device,
    )
    sched = st.schedule
    # on CPU with the compiled kernels: FieldAdam (the update and the in-image bound in one compiled pass), which
    # also lets the engine run the fused step; else torch's fused Adam (same update to float rounding), unless the
    # step is asked to stay on plain PyTorch ops (engine.fused=False)
    optimizer = _adam(fld, sched.lr_at(0), tuple(ocfg.betas), fused=ecfg.fused is not False,
                      keep_in_image=bool(ocfg.keep_in_image))
    similarity = None  # "mind": the engine's warped SSD of the features (compiled kernels on CPU)
    if st.similarity != "mind":  # MONAI's LNCC / MI on the pooled intensities, warped by grid_sample, autograd
        similarity = intensity_similarity(st.similarity, lncc_kernel_size=config.features.lncc_kernel_size,
                                          mi_bins=config.features.mi_bins, mi_sampling=config.features.mi_sampling)
    engine = create_registration_engine(
        fld, fixed_features, moving_features, optimizer, reg_weight=st.reg_weight, padding_mode=ocfg.padding_mode,
        fused=ecfg.fused, feature_storage=config.features.storage, regularizer=regularizer, similarity=similarity,
    )
    scheduler = PiecewiseLRScheduler(optimizer, sched)
    scheduler.attach(engine)
    history = HistoryRecorder(optimizer)
    history.attach(engine)
    # every handler with a state: saved by a checkpoint and loaded back when a run resumes
    stateful: dict[str, Any] = {"field": fld, "optimizer": optimizer, "scheduler": scheduler, "engine": engine,
                                "history": history}
    NaNGuard(every=ecfg.divergence_every).attach(engine)
    if ocfg.keep_in_image:
        KeepInImage().attach(engine)
    if ecfg.divergence_check:
        stateful["divergence"] = DivergenceGuard(
            loss_ratio=ecfg.divergence_loss_ratio, max_displacement=ecfg.divergence_max_displacement,
            final_loss_ratio=ecfg.divergence_final_loss_ratio,
            final_max_displacement=ecfg.divergence_final_max_displacement, max_folding=ecfg.divergence_max_folding,
            every=ecfg.divergence_every, min_steps=ecfg.divergence_min_steps,
        )
        stateful["divergence"].attach(engine)
    if ecfg.log_every:
        LossLogger(ecfg.log_every, sched.total_steps, name).attach(engine)
    if ecfg.early_stop_patience:
        stateful["early_stop"] = PlateauEarlyStopping(ecfg.early_stop_patience, ecfg.early_stop_min_delta, ecfg.early_stop_warmup)
        stateful["early_stop"].attach(engine)
    tre_monitor = None
    if keypoints is not None and ecfg.tre_every:
        if image_shape is None:
            raise UserInputError("instance_optimisation: image_shape is required to monitor keypoint TRE.")
        tre_monitor = KeypointTREMonitor(keypoints[0], keypoints[1], image_shape, spacing, ecfg.tre_every)
        tre_monitor.attach(engine)
        stateful["tre"] = tre_monitor
    if ecfg.progress:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False, desc=name or "registration").attach(engine, output_transform=lambda o: {"loss": o["loss"]})
    resumed_at = 0
    if ecfg.checkpoint_dir:
        prefix = checkpoint_prefix(name)
        if ecfg.resume if resume is None else resume:
            resumed_at = load_checkpoint(stateful, ecfg.checkpoint_dir, prefix)
        _attach_checkpoints(engine, stateful, ecfg.checkpoint_dir, ecfg.checkpoint_every, prefix)
    for h in handlers or []:
        h.attach(engine)

    t0 = time.perf_counter()
    threads = _threads(ecfg.num_threads)
    with threads:
        if not (resumed_at and resumed_at >= sched.total_steps):  # a finished run's checkpoint: nothing left to do
            engine.run(data=None, max_epochs=1, epoch_length=sched.total_steps)
    if fixed_features.is_cuda:
        torch.cuda.synchronize(fixed_features.device)
    elapsed = time.perf_counter() - t0
    return MethodOutput(
        field=fld,
        history=history.history,
        tre_history=list(tre_monitor.history) if tre_monitor is not None else [],
        timings={"optimisation": elapsed},
        steps=int(engine.state.iteration),
        stopped_early=bool(getattr(engine.state, "stopped_early", False)) or not run_completed(engine),
        kernels="+".join(sorted(getattr(engine.state, "kernels", set()))),
    )


def fused_step_enabled() -> bool:
    """Whether the fused CPU step may run (``CONTREG_FUSED_STEP=0`` selects the unfused step: autograd, torch's
    Adam and the in-image bound as a separate pass; for comparisons)."""
    return os.environ.get("CONTREG_FUSED_STEP", "1").strip().lower() not in ("0", "false", "no", "off")


def _adam(fld: DisplacementField, lr: float, betas: tuple, fused: bool, keep_in_image: bool = False) -> torch.optim.Optimizer:
    """The field's optimiser: :class:`~monai_contreg.optim.FieldAdam` where it runs (CPU, compiled kernels; the
    in-image bound in its update), else torch's fused Adam where this torch and device support it, else Adam."""
    if fused and fused_step_enabled() and field_adam_available(fld.displacement):
        return FieldAdam(fld.parameters(), lr=lr, betas=betas, keep_in_image=keep_in_image)
    if fused:
        try:
            return torch.optim.Adam(fld.parameters(), lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError):  # older torch (CPU fused Adam since 2.4) or another device
            pass
    return torch.optim.Adam(fld.parameters(), lr=lr, betas=betas)


def checkpoint_prefix(name: str) -> str:
    """The checkpoint files' prefix: the run's name (``registration`` when none) with only ``[A-Za-z0-9_.-]``.

    A level ``i`` of a multi-level run named ``N`` is named ``N[level i]``: prefix ``N_level_i``
    (``registration_level_i`` for an unnamed run).
    """
    if name.startswith("["):  # a level of an unnamed run
        name = f"registration{name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "registration"


def registration_checkpoints(directory: str | Path, name: str = "", levels: int = 1) -> list[Path]:
    """The latest checkpoint of each stage of the registration ``name`` in ``directory`` (those that exist).

    ``levels`` dense stages: one stage is checkpointed as ``name``, stage ``i`` of several as ``name[level i]``
    (:func:`checkpoint_prefix`). With ``levels=None`` every level found counts (a caller that does not know the
    config's stages, e.g. a Learn2Reg run deciding whether a pair was started).
    """
    if not Path(directory).is_dir():
        return []
    labels = [name] if levels == 1 else [f"{name}[level {i}]" for i in range(levels)] if levels else None
    if labels is None:
        base = checkpoint_prefix(name)
        pattern = re.compile(rf"^{re.escape(base)}(_level_\d+)?_checkpoint_\d+\.pt$")
        prefixes = sorted({p.name.rsplit("_checkpoint_", 1)[0] for p in Path(directory).iterdir() if pattern.match(p.name)})
    else:
        prefixes = [checkpoint_prefix(lb) for lb in labels]
    return [p for p in (latest_checkpoint(directory, pre) for pre in prefixes) if p is not None]


def _attach_checkpoints(engine: Engine, stateful: dict[str, Any], directory: str, every: int, prefix: str) -> None:
    from ignite.engine import Events
    from ignite.handlers import Checkpoint, DiskSaver

    saver = DiskSaver(directory, require_empty=False, create_dir=True, atomic=True)
    ckpt = Checkpoint(stateful, saver, filename_prefix=prefix, n_saved=1)
    engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), ckpt)


def latest_checkpoint(directory: str | Path, prefix: str = "registration") -> Path | None:
    """The checkpoint of ``prefix`` with the highest step in ``directory`` (``{prefix}_checkpoint_{step}.pt``), or None."""
    best: tuple[int, Path] | None = None
    for p in Path(directory).glob(f"{glob.escape(prefix)}_checkpoint_*.pt"):
        tail = p.stem[len(prefix) + len("_checkpoint_"):]
        if tail.isdigit() and (best is None or int(tail) > best[0]):
            best = (int(tail), p)
    return None if best is None else best[1]


def load_checkpoint(stateful: dict[str, Any], directory: str | Path, prefix: str = "registration") -> int:
    """Load the latest checkpoint of ``prefix`` into ``stateful`` (field, optimiser, scheduler, engine, handlers).

    Returns:
        The step the checkpoint was saved at (the engine continues from the next one).

    Raises:
        MissingFileError: no checkpoint of ``prefix`` in ``directory``.
        UserInputError: a checkpoint that does not hold the objects of this run (another config:
            ``engine.divergence_check``, ``early_stop_patience``, ``tre_every`` must be as when it was written).
    """
    from ignite.handlers import Checkpoint

    path = latest_checkpoint(directory, prefix)
    if path is None:
        raise MissingFileError(
            f"engine.resume: no checkpoint {prefix}_checkpoint_<step>.pt in {str(directory)!r} (engine.checkpoint_dir); "
            "run once without engine.resume to write one."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = sorted(set(stateful) - set(state))
    if missing:
        raise UserInputError(
            f"engine.resume: checkpoint {str(path)!r} lacks {missing} (saved: {sorted(state)}); resume with the "
            "config that wrote it."
        )
    try:
        Checkpoint.load_objects(to_load=stateful, checkpoint=state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # another grid, schedule or optimiser
        raise UserInputError(
            f"engine.resume: checkpoint {str(path)!r} does not fit this run (written for another image, grid or "
            f"config?): {' '.join(str(exc).split())[:300]}; resume with the inputs and config that wrote it, or give "
            "another checkpoint folder."
        ) from exc
    logger.info("resumed %s from step %d (%s)", prefix, stateful["engine"].state.iteration, path)
    return int(stateful["engine"].state.iteration)


@contextlib.contextmanager
def _threads(n: int):
    """Temporarily set torch's CPU thread count (0 = unchanged)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
