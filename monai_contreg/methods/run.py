"""Dispatch from a config's ``method`` to the method implementation (one entry per method).

* ``"io"``: the paper's instance optimisation (:func:`~monai_contreg.methods.io.instance_optimisation`), starting
  from zero (``init="zero"``), from the coupled convex discrete stage (``init="convex"``: ConvexAdam), or from a
  given ``init_ddf``.
* ``"convex"``: the coupled convex discrete stage alone (:mod:`monai_contreg.methods.convex`), no Adam.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from .._validation import choose
from ..errors import UserInputError
from ..optim.field import DisplacementField
from ..optim.handlers import check_divergence
from .config import INIT_NAMES, METHOD_NAMES, RegistrationConfig
from .convex import coupled_convex, pooled_mind
from .io import MethodOutput, compute_features, instance_optimisation
from .multilevel import run_multilevel

__all__ = ["METHODS", "run_method"]

logger = logging.getLogger(__name__)

METHODS = METHOD_NAMES


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


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
) -> MethodOutput:
    """Register preprocessed ``fixed``/``moving`` ``(1, 1, H, W, D)`` with ``config.method``.

    Args:
        fixed, moving: ``(1, 1, H, W, D)`` preprocessed images on one grid.
        config: the registration config (``method``, ``init`` and the sections they use).
        init_ddf: optional initial DDF ``(1, 3, ...)`` for ``"io"`` (voxels of its own grid); it replaces
            ``config.init``. Not accepted by ``"convex"``.
        keypoints, spacing, handlers, name: passed to :func:`instance_optimisation`.
        fixed_mask: optional ``(1, 1, H, W, D)`` fixed mask, used by ``multilevel.mask_aware`` only.

    With ``config.multilevel.levels`` non-empty, ``"io"`` runs the multi-resolution method
    (:func:`~monai_contreg.methods.multilevel.run_multilevel`), from ``init_ddf``, from zero, or (``init="convex"``)
    from the discrete stage's field.

    Returns:
        :class:`MethodOutput`; for ``"convex"`` its field is the discrete result on the coarse grid (no
        smoothing on read, ``steps == 0``). ``timings`` holds ``features``, ``discrete`` (when the discrete
        stage ran) and ``optimisation`` seconds.

    Raises:
        RegistrationDivergedError: the optimisation (or, for ``"convex"``, its result) went off; see
            ``config.engine.divergence_*``.
    """
    method = choose("run_method", "method", config.method, METHODS)
    init = choose("run_method", "init", config.init, INIT_NAMES)
    if method == "convex" and init_ddf is not None:
        raise UserInputError("run_method: init_ddf is not accepted by method 'convex' (the discrete stage starts from nothing); got a tensor.")
    discrete = method == "convex" or (init == "convex" and init_ddf is None)
    fc = config.features
    t0 = time.perf_counter()
    if method == "io" and config.multilevel.levels:
        timings = {}
        if discrete:
            feats = [pooled_mind(x, (config.convex.grid_spacing,), fc.mind_radius, fc.mind_dilation)[0] for x in (fixed, moving)]
            timings["features"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            init_ddf = coupled_convex(feats[0], feats[1], config.convex)
            _sync(init_ddf)
            timings["discrete"] = time.perf_counter() - t1
            del feats
        out = run_multilevel(
            fixed, moving, config, init_ddf=init_ddf, fixed_mask=fixed_mask, keypoints=keypoints, spacing=spacing,
            handlers=handlers, name=name,
        )
        out.timings = {**out.timings, "features": out.timings["features"] + timings.get("features", 0.0),
                       **({"discrete": timings["discrete"]} if "discrete" in timings else {})}
        return out
    if discrete:
        factors = (config.convex.grid_spacing,) if method == "convex" else (config.convex.grid_spacing, config.field.grid_factor)
        fixed_feats = pooled_mind(fixed, factors, fc.mind_radius, fc.mind_dilation)
        moving_feats = pooled_mind(moving, factors, fc.mind_radius, fc.mind_dilation)
    else:
        ff, mf = compute_features(fixed, moving, config)
        fixed_feats, moving_feats = [ff], [mf]
    _sync(fixed)
    timings = {"features": time.perf_counter() - t0}
    logger.info("%sstage features: %.2fs (working grid %s)", f"{name} " if name else "", timings["features"],
                tuple(fixed_feats[-1].shape[2:]))
    if discrete:
        t1 = time.perf_counter()
        coarse = coupled_convex(fixed_feats[0], moving_feats[0], config.convex)
        _sync(coarse)
        timings["discrete"] = time.perf_counter() - t1
        if method == "convex":
            if config.engine.divergence_check:  # the discrete stage's equivalent of the engine's DivergenceGuard
                check_divergence(coarse, config.engine.divergence_final_max_displacement, config.engine.divergence_max_folding,
                                 f"{name or 'registration'}: the coupled convex stage",
                                 ("engine.divergence_final_max_displacement", "engine.divergence_max_folding"))
            field = DisplacementField(coarse.shape[2:], init=coarse, smoothing_passes=0, dtype=coarse.dtype, device=coarse.device)
            return MethodOutput(field=field, timings=timings, steps=0)
        init_ddf = coarse
    out = instance_optimisation(
        fixed_feats[-1], moving_feats[-1], config, init_ddf=init_ddf, keypoints=keypoints,
        image_shape=tuple(fixed.shape[2:]), spacing=spacing, handlers=handlers, name=name,
    )
    out.timings = {**timings, **out.timings}
    logger.info("%sstage optimisation: %.2fs (%d steps)", f"{name} " if name else "", out.timings["optimisation"], out.steps)
    return out
