"""Run a registration's stages (:attr:`~monai_contreg.methods.config.RegistrationConfig.stages`) in order.

Each stage starts from the field the previous one ended with; one runner per stage kind:

* ``"affine"`` (first): the global map of :mod:`monai_contreg.methods.affine` in world mm (the grid's
  voxel-to-world matrix ``grid_affine``); the stages after it register the fixed image against the moving image
  resampled through it, and the output carries it (:attr:`~monai_contreg.methods.io.MethodOutput.affine`; the
  caller composes the total field, :func:`~monai_contreg.methods.affine.compose_affine_ddf`).

* ``"convex"``: ConvexAdam's coupled convex discrete stage (:mod:`monai_contreg.methods.convex`): starts from no
  field, so only first; alone it is the ``convex`` preset (no Adam).
* ``"dense"``: the paper's Adam instance optimisation (:func:`~monai_contreg.methods.io.instance_optimisation`);
  consecutive dense stages are the multi-resolution method (:func:`~monai_contreg.methods.multilevel.run_dense_stages`),
  one stage the single-level paper method.

A convex stage and one dense stage after it with the same MIND settings share one full-resolution MIND-SSC, pooled
twice (ConvexAdam); the dense stages of the multi-level method share theirs across levels.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
from ..optim.field import DisplacementField
from ..optim.handlers import check_divergence
from .config import METHOD_NAMES, ConvexStage, RegistrationConfig
from .convex import coupled_convex, pooled_mind
from .io import MethodOutput
from .multilevel import run_dense_stages

__all__ = ["METHODS", "run_method"]

logger = logging.getLogger(__name__)

METHODS = METHOD_NAMES


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _convex_stage(
    fixed: torch.Tensor, moving: torch.Tensor, stage: ConvexStage, also: int | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, float, float]:
    """The convex stage: MIND-SSC pooled by ``grid_spacing`` (:func:`pooled_mind`), then :func:`coupled_convex`.

    Args:
        also: a second pooling factor of the same full-resolution MIND (the next dense stage's ``grid_factor`` when
            it uses the same MIND settings: computed once, as ConvexAdam does).

    Returns:
        The DDF ``(1, 3, h, w, d)`` on the coarse grid (its voxels), the features pooled by ``also`` (fixed,
        moving; ``None`` without ``also``), the features' and the solver's seconds.
    """
    t0 = time.perf_counter()
    factors = (stage.grid_spacing,) if also is None else (stage.grid_spacing, also)
    fixed_feats = pooled_mind(fixed, factors, stage.mind_radius, stage.mind_dilation)
    moving_feats = pooled_mind(moving, factors, stage.mind_radius, stage.mind_dilation)
    _sync(fixed)
    t_feat = time.perf_counter() - t0
    t1 = time.perf_counter()
    ddf = coupled_convex(fixed_feats[0], moving_feats[0], stage)
    _sync(ddf)
    return ddf, (None if also is None else (fixed_feats[1], moving_feats[1])), t_feat, time.perf_counter() - t1


def run_method(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    config: RegistrationConfig,
    *,
    init_ddf: torch.Tensor | None = None,
    keypoints: tuple[torch.Tensor, torch.Tensor] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    handlers: list[Any] | None = None,
    name: str = "",
    fixed_mask: torch.Tensor | None = None,
    validated: bool = False,
    grid_affine: Any = None,
) -> MethodOutput:
    """Register preprocessed ``fixed``/``moving`` ``(1, 1, H, W, D)`` by running ``config.stages`` in order.

    Args:
        fixed, moving: ``(1, 1, H, W, D)`` preprocessed images on one grid.
        config: the registration config (its stages and the sections they share).
        init_ddf: optional initial DDF ``(1, 3, ...)`` of the first dense stage (voxels of its own grid); it
            replaces a leading convex stage. Not accepted by the convex stage alone.
        keypoints, spacing, handlers, name: passed to :func:`~monai_contreg.methods.io.instance_optimisation`
            (several dense stages: to every stage, TRE steps counted across them).
        fixed_mask: optional ``(1, 1, H, W, D)`` fixed mask, used by ``multilevel.mask_aware`` only.
        validated: the caller has validated ``config`` already (the registration plan,
            :func:`monai_contreg.registration.plan`): it is not checked a second time.
        grid_affine: the images' 4x4 voxel-to-world matrix (RAS mm), for an affine stage (default: ``spacing`` on
            the axes).

    Returns:
        :class:`MethodOutput` (with an affine stage: its ``affine``, the world map, and ``field`` the dense part
        ``u`` found against the moving image resampled through it; an affine stage alone: ``u = 0``); for the
        convex stage alone its field is the discrete result on the coarse grid (no
        smoothing on read, ``steps == 0``). ``timings`` holds ``features``, ``discrete`` (when the convex stage
        ran) and ``optimisation`` seconds (and ``level<i>`` with several dense stages).

    Raises:
        UserInputError: an invalid config, ``init_ddf`` with the convex stage alone.
        RegistrationDivergedError: the optimisation (or, for the convex stage alone, its result) went off; see
            ``config.engine.divergence_*``.
    """
    if not validated:
        config.validate()
    stages = list(config.stages)
    dense = list(config.dense_stages)
    affine_out = None
    if stages[0].kind == "affine":
        if init_ddf is not None:
            raise UserInputError("run_method: init_ddf is not accepted with an affine stage (the initial field would "
                                 "be in the frame the affine stage changes); drop one of them.")
        from .affine import register_affine, resample_through, voxel_affine

        aff = np.diag([*map(float, spacing), 1.0]) if grid_affine is None else np.asarray(grid_affine, dtype=np.float64)
        affine_out = register_affine(fixed, moving, stages[0], aff, name=name)
        stages = stages[1:]
        if not np.allclose(affine_out.world, np.eye(4)):
            moving = resample_through(moving, affine_out.world, aff).to(moving.dtype)
            if keypoints is not None:  # the moving keypoints in the resampled moving image's voxels
                inv = torch.as_tensor(np.linalg.inv(voxel_affine(affine_out.world, aff)), dtype=keypoints[1].dtype)
                keypoints = (keypoints[0], keypoints[1] @ inv[:3, :3].T + inv[:3, 3])
        if not stages:
            shape = tuple(fixed.shape[2:])
            zero = torch.zeros(1, 3, *shape, dtype=fixed.dtype, device=fixed.device)
            field = DisplacementField(shape, init=zero, smoothing_passes=0, dtype=fixed.dtype, device=fixed.device)
            return MethodOutput(field=field, timings={"affine": affine_out.seconds}, steps=affine_out.steps,
                                affine=affine_out.world, affine_history=affine_out.history)
    out = _run_stages(fixed, moving, config, stages, dense, init_ddf=init_ddf, keypoints=keypoints, spacing=spacing,
                      handlers=handlers, name=name, fixed_mask=fixed_mask)
    if affine_out is not None:
        out.affine, out.affine_history = affine_out.world, affine_out.history
        out.timings = {"affine": affine_out.seconds, **out.timings}
    return out


def _run_stages(fixed, moving, config, stages, dense, *, init_ddf, keypoints, spacing, handlers, name, fixed_mask):
    """The convex and dense stages of :func:`run_method` (after any affine stage)."""
    if stages[0].kind == "convex" and init_ddf is not None:
        if not dense:
            raise UserInputError("run_method: init_ddf is not accepted by method 'convex' (the discrete stage starts from nothing); got a tensor.")
        stages = stages[1:]  # a given initial field replaces the discrete stage
    unknown = [s.kind for s in stages if s.kind not in ("convex", "dense")]
    if unknown:
        raise UserInputError(f"run_method: no runner for stage kind(s) {unknown} here; this version runs an 'affine' "
                             "stage first, then 'convex' and 'dense' stages.")
    timings: dict[str, float] = {}
    ddf, features = init_ddf, None
    if stages[0].kind == "convex":
        c = stages[0]
        nxt = dense[0] if len(dense) == 1 else None
        share = nxt is not None and nxt.similarity == "mind" and not nxt.second_dilation and (nxt.mind_radius, nxt.mind_dilation) == (c.mind_radius, c.mind_dilation)
        ddf, features, t_feat, t_disc = _convex_stage(fixed, moving, c, nxt.grid_factor if share else None)
        timings = {"features": t_feat, "discrete": t_disc}
        logger.info("%sstage features: %.2fs (convex grid %s); discrete: %.2fs", f"{name} " if name else "", t_feat,
                    tuple(ddf.shape[2:]), t_disc)
        if not dense:
            if config.engine.divergence_check:  # the discrete stage's equivalent of the engine's DivergenceGuard
                check_divergence(ddf, config.engine.divergence_final_max_displacement, config.engine.divergence_max_folding,
                                 f"{name or 'registration'}: the coupled convex stage",
                                 ("engine.divergence_final_max_displacement", "engine.divergence_max_folding"))
            field = DisplacementField(ddf.shape[2:], init=ddf, smoothing_passes=0, dtype=ddf.dtype, device=ddf.device)
            return MethodOutput(field=field, timings=timings, steps=0)
    out = run_dense_stages(
        fixed, moving, config, dense, init_ddf=ddf, fixed_mask=fixed_mask, keypoints=keypoints, spacing=spacing,
        handlers=handlers, name=name, features=features,
    )
    if timings:
        out.timings = {**out.timings, "features": out.timings["features"] + timings["features"], "discrete": timings["discrete"]}
    return out
