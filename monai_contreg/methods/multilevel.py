"""Multi-resolution instance optimisation: the paper's Adam optimisation run level by level, coarse to fine.

Each level (a dense stage, :class:`~monai_contreg.methods.config.DenseStage`) is one run of the same ignite engine as the
single-level method (:func:`~monai_contreg.methods.io.instance_optimisation`) on its own working grid
(``grid_factor``), with its own MIND-SSC features (full-resolution MIND with the level's radius/dilation,
average-pooled onto the level's grid; optionally a second dilation concatenated), schedule, regulariser weight
and smoothing. The (smoothed) field a level ends with is carried onto the next level's grid by
:func:`carry_field` (exact for affine fields) and is that level's initial field. After each level the engine
fires :attr:`LevelEvents.LEVEL_COMPLETED` (``engine.state.level`` holds the level's index); the returned
history concatenates the levels' per-step lists and adds ``history["level"]``.

Options of :class:`~monai_contreg.methods.config.MultilevelConfig`, shared by every dense stage (off unless a preset turns them on):
``mask_aware`` replaces the diffusion regulariser by the mask-aware (sliding) one,
:func:`~monai_contreg.losses.regularization.masked_diffusion`, built from the fixed mask on each level's grid.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, EventEnum, Events

from .._validation import check_ddf, check_tensor
from ..errors import MissingFileError, UserInputError
from ..features.mind import mind_ssc
from ..losses.regularization import mask_edge_weights, masked_diffusion
from ..spatial.conventions import check_shape3
from ..spatial.filters import downsample, pooled_shape
from ..spatial.resample import resample_ddf
from .config import DenseStage, RegistrationConfig
from .io import MethodOutput, checkpoint_prefix, instance_optimisation, latest_checkpoint

__all__ = ["LevelEvents", "carry_field", "level_config", "level_features", "run_dense_stages", "run_multilevel"]

logger = logging.getLogger(__name__)


class LevelEvents(EventEnum):
    """Event fired by each level's engine once its run has completed (``engine.state.level`` = its index)."""

    LEVEL_COMPLETED = "level_completed"


def _grid_affine(shape: Sequence[int], pad: int = 0) -> torch.Tensor:
    """Voxel -> unit-cube matrix of a grid of ``shape`` covering ``[0, 1]^3`` (``align_corners=False`` centres).

    Voxel ``j`` of an axis of ``n`` voxels sits at ``(j + 0.5) / n``; with ``pad`` extra voxels on each side the
    index ``j`` is shifted by ``pad`` (voxel size unchanged).
    """
    a = torch.eye(4, dtype=torch.float64)
    for i, n in enumerate(shape):
        a[i, i] = 1.0 / n
        a[i, 3] = (0.5 - pad) / n
    return a


def _pad_linear(ddf: torch.Tensor) -> torch.Tensor:
    """Pad one voxel on each side of every spatial axis by linear extrapolation (replication on 1-voxel axes)."""
    x = ddf
    for dim in (2, 3, 4):
        n = x.shape[dim]
        if n == 1:
            lo = hi = x
        else:
            lo = 2 * x.narrow(dim, 0, 1) - x.narrow(dim, 1, 1)
            hi = 2 * x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
        x = torch.cat([lo, x, hi], dim=dim)
    return x


def carry_field(ddf: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Carry a DDF from one level's grid onto another grid of ``shape`` over the same field of view.

    Trilinear resampling by :func:`monai_contreg.spatial.resample.resample_ddf` between the two grids
    (voxel centres at ``(j + 0.5) / n`` of the field of view, the ``align_corners=False`` frame), after padding
    the source one voxel on each side by linear extrapolation, so that every target voxel interpolates inside
    the padded source: an affine field (``u(x) = A x + b`` in world terms) is reproduced exactly everywhere,
    not only away from the border. Values are converted to voxels of the target grid (channel ``i`` scaled by
    ``shape[i] / ddf.shape[i + 2]``).

    Args:
        ddf: ``(1, 3, h, w, d)`` DDF in voxels of its grid.
        shape: target grid ``(H, W, D)``.

    Returns:
        ``(1, 3, H, W, D)`` DDF in voxels of the target grid (``ddf`` itself when the shape is unchanged).

    Raises:
        ValueError (UserInputError): for a DDF that is not ``(1, 3, h, w, d)`` or a bad ``shape``.
    """
    check_ddf("carry_field", "ddf", ddf)
    if ddf.shape[0] != 1:
        raise UserInputError(f"carry_field: ddf must hold one field (batch 1), got {tuple(ddf.shape)}.")
    shape = check_shape3("carry_field", "shape", shape)
    src = tuple(ddf.shape[2:])
    if src == shape:
        return ddf
    return resample_ddf(_pad_linear(ddf), _grid_affine(src, pad=1), _grid_affine(shape), shape)


def level_config(config: RegistrationConfig, level: DenseStage) -> RegistrationConfig:
    """A copy of ``config`` whose stages are ``level`` alone (the single-level config that runs that level)."""
    cfg = copy.deepcopy(config)
    cfg.stages = (copy.deepcopy(level),)
    return cfg


def level_features(
    fixed: torch.Tensor, moving: torch.Tensor, level: DenseStage, cache: dict | None = None, release: bool = False,
    channels_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of one level: full-resolution MIND-SSC, average-pooled by the level's ``grid_factor``.

    Args:
        fixed, moving: ``(1, 1, H, W, D)`` preprocessed images on one grid.
        level: the level (``mind_radius``, ``mind_dilation``, ``second_dilation``, ``grid_factor``).
        cache: optional dict reused across levels: full-resolution MIND per ``(image, radius, dilation)`` (with
            ``"channels_last"`` appended to the key for that layout).
        release: drop this level's entries from ``cache`` as soon as they are pooled (their last use).
        channels_last: keep the full-resolution MIND and the pooled features channels-last
            (``torch.channels_last_3d``): the layout the compiled similarity samples from, so it makes no second
            copy (at full resolution a copy is ~0.45 GiB per image); the multi-level method's. ``False``: the
            default (contiguous) layout of the single-level method, whose full-resolution MIND a convex stage
            before it shares.

    Returns:
        Two ``(1, C, h, w, d)`` tensors on the level's grid (``C`` = 12, or 24 with ``second_dilation``); for a
        level whose ``similarity`` is ``"lncc"`` or ``"mi"``: the images themselves, average-pooled (``C`` = 1).
    """
    check_tensor("level_features", "fixed", fixed, 5)
    check_tensor("level_features", "moving", moving, 5)
    if level.similarity != "mind":  # an intensity similarity (losses.intensity): the pooled images
        with torch.no_grad():
            return (downsample(fixed, level.grid_factor).contiguous(), downsample(moving, level.grid_factor).contiguous())
    cache = {} if cache is None else cache
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    dilations = [level.mind_dilation] + ([level.second_dilation] if level.second_dilation else [])
    outs = []
    with torch.no_grad():
        for img_key, img in (("fixed", fixed), ("moving", moving)):
            parts = []
            for d in dilations:
                key = (img_key, level.mind_radius, d, *(("channels_last",) if channels_last else ()))
                full = cache[key] if key in cache else mind_ssc(img, level.mind_radius, d).contiguous(memory_format=fmt)
                cache[key] = full
                parts.append(downsample(full, level.grid_factor).contiguous(memory_format=fmt))
                del full
                if release:
                    del cache[key]
            feat = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1).contiguous(memory_format=fmt)
            outs.append(feat)
            del parts
    return outs[0], outs[1]


class _LevelMarker:
    """Registers :class:`LevelEvents` on a level's engine, sets ``state.level`` and fires LEVEL_COMPLETED."""

    def __init__(self, level: int) -> None:
        self.level = level

    def attach(self, engine: Engine) -> None:
        engine.register_events(*LevelEvents)
        engine.state.level = self.level
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _completed(self, engine: Engine) -> None:
        engine.fire_event(LevelEvents.LEVEL_COMPLETED)


def _level_mask(mask: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    m = mask.reshape(1, 1, *mask.shape[-3:]).to(torch.float32)
    if tuple(m.shape[2:]) == shape:
        return m
    pooled = downsample(m, tuple(max(1, round(a / b)) for a, b in zip(m.shape[2:], shape)))
    if tuple(pooled.shape[2:]) != shape:
        pooled = F.adaptive_avg_pool3d(m, shape)
    return pooled


def run_multilevel(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    config: RegistrationConfig,
    *,
    init_ddf: torch.Tensor | None = None,
    fixed_mask: torch.Tensor | None = None,
    keypoints: tuple[torch.Tensor, torch.Tensor] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    handlers: list[Any] | None = None,
    name: str = "",
) -> MethodOutput:
    """Register preprocessed ``fixed``/``moving`` with the dense stages of ``config`` (:func:`run_dense_stages`).

    Raises:
        UserInputError: the config has no dense stage, or ``mask_aware`` without a fixed mask.
    """
    return run_dense_stages(fixed, moving, config, config.dense_stages, init_ddf=init_ddf, fixed_mask=fixed_mask,
                            keypoints=keypoints, spacing=spacing, handlers=handlers, name=name)


def _levels_to_resume(config: RegistrationConfig, name: str, n: int) -> list[bool] | None:
    """``engine.resume`` of a multi-level run: which levels continue from a checkpoint (``None``: not resuming).

    A level with a checkpoint continues from it; a level without one was not reached (or was shorter than
    ``engine.checkpoint_every``) and runs from its start, which gives the same field as before (the run is
    deterministic). A run none of whose levels left a checkpoint is refused, as a single level is.

    Raises:
        MissingFileError: no checkpoint of any level of ``name`` in ``engine.checkpoint_dir``.
    """
    ecfg = config.engine
    if not (ecfg.checkpoint_dir and ecfg.resume):
        return None
    found = [latest_checkpoint(ecfg.checkpoint_dir, checkpoint_prefix(f"{name}[level {i}]")) is not None for i in range(n)]
    if not any(found):
        raise MissingFileError(
            f"engine.resume: no checkpoint of {checkpoint_prefix(name)!r} (levels {checkpoint_prefix(name + '[level 0]')}"
            f" ... _level_{n - 1}) in {str(ecfg.checkpoint_dir)!r} (engine.checkpoint_dir); run once without "
            "engine.resume to write one."
        )
    return found


def run_dense_stages(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    config: RegistrationConfig,
    stages: Sequence[DenseStage],
    *,
    init_ddf: torch.Tensor | None = None,
    fixed_mask: torch.Tensor | None = None,
    keypoints: tuple[torch.Tensor, torch.Tensor] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    handlers: list[Any] | None = None,
    name: str = "",
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> MethodOutput:
    """Register preprocessed ``fixed``/``moving`` ``(1, 1, H, W, D)`` with dense ``stages``, one after the other.

    One stage is the single-level paper method; several are the multi-resolution method (coarse to fine, each
    stage's field carried onto the next stage's grid by :func:`carry_field`; each stage's engine fires
    :attr:`LevelEvents.LEVEL_COMPLETED` with ``engine.state.level`` = its index among the dense stages).

    Args:
        fixed, moving: ``(1, 1, H, W, D)`` preprocessed images on one grid.
        config: the config whose shared sections the stages use (``engine``, ``features.storage``,
            ``optim.betas``/``padding_mode``/``keep_in_image``, ``multilevel.mask_aware``/``cross_weight``).
        stages: the dense stages (:class:`~monai_contreg.methods.config.DenseStage`), coarse to fine.
        init_ddf: optional initial DDF ``(1, 3, ...)`` of the first stage (voxels of its own grid).
        fixed_mask: ``(1, 1, H, W, D)`` fixed mask (values > 0.5 inside); required by ``multilevel.mask_aware``.
        keypoints, spacing, name: as :func:`~monai_contreg.methods.io.instance_optimisation` (TRE monitor steps
            count across stages).
        handlers: extra ignite handlers, attached to every stage's engine (after :class:`LevelEvents` is
            registered, with several stages, so they may listen to ``LEVEL_COMPLETED``).
        features: optional ``(fixed, moving)`` features of the first stage, already computed on its grid (a
            convex stage before it computed them from the same MIND).

    Returns:
        :class:`~monai_contreg.methods.io.MethodOutput` whose ``field`` is the last stage's; ``timings`` has
        ``features`` and ``optimisation`` (sums); with several stages ``history`` has the concatenated per-step
        lists plus ``"level"`` and ``timings`` has ``level<i>`` (features + optimisation of stage ``i``);
        ``kernels`` joins the similarity implementations of every stage; ``levels_stopped_early`` every stage's
        early-stop flag (``stopped_early``: any of them).

    Raises:
        UserInputError: no stages, or ``mask_aware`` without a fixed mask.
    """
    ml = config.multilevel
    stages = list(stages)
    if not stages:
        raise UserInputError("run_dense_stages: no dense stage to run; give at least one (stages with kind: dense).")
    if ml.mask_aware and fixed_mask is None:
        raise UserInputError(
            "run_multilevel: multilevel.mask_aware needs the fixed image's mask (--fixed-mask on the command line, "
            "register(..., fixed_mask=...) in Python, or preprocess.auto_mask); got none."
        )
    multi = len(stages) > 1
    image_shape = tuple(int(s) for s in fixed.shape[2:])
    cache: dict = {}
    # the full-resolution MIND of a (radius, dilation) is kept only until the last stage that uses it
    last_use = {}
    for i, lv in enumerate(stages):
        if lv.similarity != "mind":
            continue
        for d in [lv.mind_dilation] + ([lv.second_dilation] if lv.second_dilation else []):
            last_use[(lv.mind_radius, d)] = i
    history: dict[str, list[float]] = {}
    tre_history: list[tuple[int, float]] = []
    timings: dict[str, float] = {"features": 0.0, "optimisation": 0.0}
    steps = 0
    kernels: set[str] = set()
    stopped: list[bool] = []
    ddf = init_ddf
    out: MethodOutput | None = None
    resume_levels = _levels_to_resume(config, name, len(stages)) if multi else None
    for i, lv in enumerate(stages):
        t0 = time.perf_counter()
        dils = [lv.mind_dilation] + ([lv.second_dilation] if lv.second_dilation else [])
        if i == 0 and features is not None:
            (ff, mf), features = features, None
        else:  # one stage: the single-level method's features (default layout)
            ff, mf = level_features(fixed, moving, lv, cache, release=all(last_use.get((lv.mind_radius, d), -1) <= i for d in dils),
                                    channels_last=multi)
        for key in [k for k in cache if last_use.get(k[1:3], -1) <= i]:
            del cache[key]
        if fixed.is_cuda:
            torch.cuda.synchronize(fixed.device)
        t_feat = time.perf_counter() - t0
        label = f"{name}[level {i}]" if multi else name
        logger.info("%sstage features: %.2fs (working grid %s)", f"{label} " if label else "", t_feat, tuple(ff.shape[2:]))
        shape = pooled_shape(image_shape, lv.grid_factor)
        if ddf is not None and i > 0:
            ddf = carry_field(ddf, shape)
        out = None  # the previous stage's field and optimiser state are no longer needed
        regularizer = None
        if ml.mask_aware:
            weights = mask_edge_weights(_level_mask(fixed_mask, shape), ml.cross_weight)
            weights = tuple(w.to(ff.device) for w in weights)

            def regularizer(u: torch.Tensor, _w=weights) -> torch.Tensor:
                return masked_diffusion(u, _w)

        out = instance_optimisation(
            ff, mf, config, stage=lv, init_ddf=ddf, keypoints=keypoints, image_shape=image_shape,
            spacing=spacing, handlers=[_LevelMarker(i), *(handlers or [])] if multi else handlers,
            name=label, regularizer=regularizer, resume=None if resume_levels is None else resume_levels[i],
        )
        logger.info("%sstage optimisation: %.2fs (%d steps)", f"{label} " if label else "", out.timings.get("optimisation", 0.0), out.steps)
        del ff, mf
        if not multi:
            out.timings = {"features": t_feat, **out.timings}
            return out
        with torch.no_grad():
            ddf = out.field().detach()
        n = out.steps
        for key, values in out.history.items():
            history.setdefault(key, []).extend(values)
        history.setdefault("level", []).extend([float(i)] * n)
        tre_history.extend((steps + s, t) for s, t in out.tre_history)
        steps += n
        timings["features"] += t_feat
        timings["optimisation"] += out.timings.get("optimisation", 0.0)
        timings[f"level{i}"] = time.perf_counter() - t0
        kernels.update(k for k in out.kernels.split("+") if k)
        stopped.append(bool(out.stopped_early))
    assert out is not None
    return MethodOutput(
        field=out.field, history=history, tre_history=tre_history, timings=timings, steps=steps,
        stopped_early=any(stopped), kernels="+".join(sorted(kernels)), levels_stopped_early=tuple(stopped),
    )
