"""Multi-resolution instance optimisation: the paper's Adam optimisation run level by level, coarse to fine.

Each level (:class:`~monai_contreg.methods.config.LevelConfig`) is one run of the same ignite engine as the
single-level method (:func:`~monai_contreg.methods.io.instance_optimisation`) on its own working grid
(``grid_factor``), with its own MIND-SSC features (full-resolution MIND with the level's radius/dilation,
average-pooled onto the level's grid; optionally a second dilation concatenated), schedule, regulariser weight
and smoothing. The (smoothed) field a level ends with is carried onto the next level's grid by
:func:`carry_field` (exact for affine fields) and is that level's initial field. After each level the engine
fires :attr:`LevelEvents.LEVEL_COMPLETED` (``engine.state.level`` holds the level's index); the returned
history concatenates the levels' per-step lists and adds ``history["level"]``.

Options of :class:`~monai_contreg.methods.config.MultilevelConfig` (off unless a preset turns them on):
``mask_aware`` replaces the diffusion regulariser by the mask-aware (sliding) one,
:func:`~monai_contreg.losses.regularization.masked_diffusion`, built from the fixed mask on each level's grid.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, EventEnum, Events

from .._validation import check_ddf, check_tensor
from ..errors import UserInputError
from ..features.mind import mind_ssc
from ..losses.regularization import mask_edge_weights, masked_diffusion
from ..spatial.conventions import check_shape3
from ..spatial.filters import downsample, pooled_shape
from ..spatial.resample import resample_ddf
from .config import LevelConfig, RegistrationConfig
from .io import MethodOutput, instance_optimisation

__all__ = ["LevelEvents", "carry_field", "level_config", "level_features", "run_multilevel"]


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
        ValueError (UserInputError) for a DDF that is not ``(1, 3, h, w, d)`` or a bad ``shape``.
    """
    check_ddf("carry_field", "ddf", ddf)
    if ddf.shape[0] != 1:
        raise UserInputError(f"carry_field: ddf must hold one field (batch 1), got {tuple(ddf.shape)}.")
    shape = check_shape3("carry_field", "shape", shape)
    src = tuple(ddf.shape[2:])
    if src == shape:
        return ddf
    return resample_ddf(_pad_linear(ddf), _grid_affine(src, pad=1), _grid_affine(shape), shape)


def level_config(config: RegistrationConfig, level: LevelConfig) -> RegistrationConfig:
    """The single-level config that runs ``level``: ``config`` with the level's grid, schedule, weight, MIND."""
    cfg = copy.deepcopy(config)
    cfg.multilevel.levels = ()
    cfg.field.grid_factor = level.grid_factor
    cfg.field.smoothing_passes = level.smoothing_passes
    cfg.field.smoothing_kernel = level.smoothing_kernel
    cfg.optim.schedule = copy.deepcopy(level.schedule)
    cfg.optim.reg_weight = level.reg_weight
    cfg.features.mind_radius = level.mind_radius
    cfg.features.mind_dilation = level.mind_dilation
    return cfg


def level_features(
    fixed: torch.Tensor, moving: torch.Tensor, level: LevelConfig, cache: dict | None = None, release: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of one level: full-resolution MIND-SSC, average-pooled by the level's ``grid_factor``.

    Args:
        fixed, moving: ``(1, 1, H, W, D)`` preprocessed images on one grid.
        level: the level (``mind_radius``, ``mind_dilation``, ``second_dilation``, ``grid_factor``).
        cache: optional dict reused across levels: full-resolution MIND per ``(image, radius, dilation)``.
        release: drop this level's entries from ``cache`` as soon as they are pooled (their last use).

    Returns:
        Two ``(1, C, h, w, d)`` tensors on the level's grid (``C`` = 12, or 24 with ``second_dilation``), stored
        channels-last (``torch.channels_last_3d``): the layout the compiled similarity samples from, so it
        makes no second copy (at full resolution a copy is ~0.45 GiB per image).
    """
    check_tensor("level_features", "fixed", fixed, 5)
    check_tensor("level_features", "moving", moving, 5)
    cache = {} if cache is None else cache
    dilations = [level.mind_dilation] + ([level.second_dilation] if level.second_dilation else [])
    outs = []
    with torch.no_grad():
        for img_key, img in (("fixed", fixed), ("moving", moving)):
            parts = []
            for d in dilations:
                key = (img_key, level.mind_radius, d)
                # kept channels-last: a full-resolution level then samples this very tensor (no copy)
                full = cache[key] if key in cache else mind_ssc(img, level.mind_radius, d).contiguous(memory_format=torch.channels_last_3d)
                cache[key] = full
                parts.append(downsample(full, level.grid_factor).contiguous(memory_format=torch.channels_last_3d))
                del full
                if release:
                    del cache[key]
            feat = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1).contiguous(memory_format=torch.channels_last_3d)
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
    """Register preprocessed ``fixed``/``moving`` ``(1, 1, H, W, D)`` level by level (``config.multilevel``).

    Args:
        fixed, moving: ``(1, 1, H, W, D)`` preprocessed images on one grid.
        config: a config whose ``multilevel.levels`` is non-empty (``engine``, ``features.storage``,
            ``optim.betas``/``padding_mode`` and ``multilevel`` are used).
        init_ddf: optional initial DDF ``(1, 3, ...)`` of the first level (voxels of its own grid).
        fixed_mask: ``(1, 1, H, W, D)`` fixed mask (values > 0.5 inside); required by ``multilevel.mask_aware``.
        keypoints, spacing, name: as :func:`~monai_contreg.methods.io.instance_optimisation` (TRE monitor steps
            count across levels).
        handlers: extra ignite handlers, attached to every level's engine (after :class:`LevelEvents` is
            registered, so they may listen to ``LEVEL_COMPLETED``).

    Returns:
        :class:`~monai_contreg.methods.io.MethodOutput` whose ``field`` is the last level's; ``history`` has the
        concatenated per-step lists plus ``"level"``; ``timings`` has ``features``, ``optimisation`` (sums) and
        ``level<i>`` (features + optimisation of level ``i``); ``kernels`` the implementations any level ran;
        ``levels_stopped_early`` every level's early-stop flag (``stopped_early``: any of them).

    Raises:
        UserInputError: no levels, or ``mask_aware`` without a fixed mask.
    """
    ml = config.multilevel
    if not ml.levels:
        raise UserInputError("run_multilevel: config.multilevel.levels is empty; give at least one level.")
    if ml.mask_aware and fixed_mask is None:
        raise UserInputError(
            "run_multilevel: multilevel.mask_aware needs the fixed image's mask (--fixed-mask on the command line, "
            "register(..., fixed_mask=...) in Python, or preprocess.auto_mask); got none."
        )
    image_shape = tuple(int(s) for s in fixed.shape[2:])
    cache: dict = {}
    # the full-resolution MIND of a (radius, dilation) is kept only until the last level that uses it
    last_use = {}
    for i, lv in enumerate(ml.levels):
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
    for i, lv in enumerate(ml.levels):
        t0 = time.perf_counter()
        dils = [lv.mind_dilation] + ([lv.second_dilation] if lv.second_dilation else [])
        ff, mf = level_features(fixed, moving, lv, cache, release=all(last_use[(lv.mind_radius, d)] <= i for d in dils))
        for key in [k for k in cache if last_use.get(k[1:], -1) <= i]:
            del cache[key]
        t_feat = time.perf_counter() - t0
        shape = pooled_shape(image_shape, lv.grid_factor)
        if ddf is not None and i > 0:
            ddf = carry_field(ddf, shape)
        out = None  # the previous level's field and optimiser state are no longer needed
        regularizer = None
        if ml.mask_aware:
            weights = mask_edge_weights(_level_mask(fixed_mask, shape), ml.cross_weight)
            weights = tuple(w.to(ff.device) for w in weights)

            def regularizer(u: torch.Tensor, _w=weights) -> torch.Tensor:
                return masked_diffusion(u, _w)

        out = instance_optimisation(
            ff, mf, level_config(config, lv), init_ddf=ddf, keypoints=keypoints, image_shape=image_shape,
            spacing=spacing, handlers=[_LevelMarker(i), *(handlers or [])], name=f"{name}[level {i}]",
            regularizer=regularizer,
        )
        del ff, mf
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
