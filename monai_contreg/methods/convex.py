"""ConvexAdam's coupled convex discrete stage (Heinrich et al. 2014; Siebert, Hansen, Heinrich 2021).

The stage works on a coarse grid: MIND-SSC features average-pooled by ``grid_spacing`` (NLST: 6, so
224x192x224 -> 37x32x37). For every integer shift ``d`` in ``[-disp_hw, disp_hw]^3`` (coarse voxels) it
computes the SSD cost ``C(x, d) = sum_c (F_c(x) - M_c(x + d))^2``, smooths each shift's slice with box
filters, and then alternates two convex sub-problems:

* ``u0 = box(argmin_d C(x, d))`` (shift field of the best label, smoothed);
* for each coupling weight ``w`` (ConvexAdam: 0.003 ... 1): ``label(x) = argmin_d C(x, d) + w |d - u(x)|^2``,
  ``u = box(shift[label])``.

With ``ic`` the same is done moving -> fixed and the two fields are made inverse consistent by
``u1 <- (u1 - u2 o (id + u1)) / 2``, ``u2 <- (u2 - u1 o (id + u2)) / 2`` (simultaneous updates).

The result is a MONAI DDF ``(1, 3, h, w, d)`` in voxels of the coarse grid (fixed -> moving), or, with
``output_shape``, resampled by :func:`~monai_contreg.spatial.conventions.resize_ddf` onto a finer grid over
the same field of view (values in that grid's voxels). Everything runs under ``torch.no_grad`` in the
features' dtype and device; memory is the ``(K, h, w, d)`` cost volume plus ``chunk_size`` shifts at a time.
Unlike the reference code, the field is always returned in the requested grid's voxels (with or without
``ic``), is never quantised to float16, and every resampling uses the ``align_corners=False`` frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_finite, check_tensor, choose
from ..errors import InputTypeError, UserInputError
from ..spatial.conventions import check_shape3, resize_ddf
from ..spatial.filters import box_filter
from ..spatial.warp import warp_image
from .config import ConvexConfig

__all__ = [
    "CoupledConvex",
    "coupled_convex",
    "coupled_convex_field",
    "discrete_registration",
    "displacement_candidates",
    "inverse_consistency",
    "pooled_mind",
    "ssd_cost_volume",
]

logger = logging.getLogger(__name__)


def displacement_candidates(disp_hw: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """All integer shifts of the search range: ``(K, 3)``, ``K = (2 disp_hw + 1)^3``, array-axis order.

    Row ``k`` is ``(a, b, c)`` with ``k = ((a + r) (2r + 1) + (b + r)) (2r + 1) + (c + r)``, ``r = disp_hw``
    (the last axis varies fastest). Example: ``disp_hw = 1`` -> row 0 is ``(-1, -1, -1)``, row 13 ``(0, 0, 0)``.
    """
    if isinstance(disp_hw, bool) or not isinstance(disp_hw, int) or disp_hw < 0:
        raise UserInputError(f"displacement_candidates: disp_hw must be an integer >= 0, got {disp_hw!r}.")
    r = torch.arange(-disp_hw, disp_hw + 1, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


def _check_features(where: str, fixed: torch.Tensor, moving: torch.Tensor) -> None:
    check_tensor(where, "fixed_features", fixed, 5)
    check_tensor(where, "moving_features", moving, 5)
    if fixed.shape[0] != 1 or fixed.shape != moving.shape:
        raise UserInputError(
            f"{where}: fixed_features and moving_features must both have shape (1, C, h, w, d), "
            f"got {tuple(fixed.shape)} and {tuple(moving.shape)}."
        )
    if not fixed.is_floating_point() or fixed.dtype != moving.dtype:
        raise InputTypeError(f"{where}: features must share one floating dtype, got {fixed.dtype} and {moving.dtype}.")
    check_finite(where, "fixed_features", fixed)
    check_finite(where, "moving_features", moving)


def ssd_cost_volume(
    fixed_features: torch.Tensor,
    moving_features: torch.Tensor,
    disp_hw: int = 4,
    *,
    smoothing_kernel: int = 3,
    smoothing_passes: int = 2,
    padding_mode: str = "border",
    chunk_size: int = 64,
) -> torch.Tensor:
    """Smoothed SSD cost of every integer shift: ``C[k, x] = box(sum_c (F_c(x) - M_c(x + d_k))^2)``.

    Args:
        fixed_features, moving_features: ``(1, C, h, w, d)`` features on the same (coarse) grid.
        disp_hw: search half-width in voxels; shifts are :func:`displacement_candidates` ``(disp_hw)``.
        smoothing_kernel, smoothing_passes: box filter applied to each shift's cost map (replication padding).
        padding_mode: ``"border"`` (replicate the moving features' edge) or ``"zeros"`` beyond the image.
        chunk_size: shifts computed and smoothed together (bounds the temporary memory); rounded down to a
            multiple of ``2 disp_hw + 1`` (at least one such row of shifts).

    Returns:
        ``(K, h, w, d)`` tensor, ``K = (2 disp_hw + 1)^3``, dtype of the features.
    """
    where = "ssd_cost_volume"
    _check_features(where, fixed_features, moving_features)
    padding_mode = choose(where, "padding_mode", padding_mode, ("border", "zeros"))
    if chunk_size < 1:
        raise UserInputError(f"{where}: chunk_size must be >= 1, got {chunk_size}.")
    if isinstance(disp_hw, bool) or not isinstance(disp_hw, int) or disp_hw < 0:
        raise UserInputError(f"{where}: disp_hw must be an integer >= 0, got {disp_hw!r}.")
    r = disp_hw
    n = 2 * r + 1
    h, w, d = fixed_features.shape[2:]
    # Shifts are ordered with the last axis fastest (displacement_candidates): for each (a, b) the n shifts
    # along the last axis are one unfold of the padded moving features, so the loop has n^2 iterations.
    pairs = [(a, b) for a in range(-r, r + 1) for b in range(-r, r + 1)]
    pairs_per_chunk = max(1, chunk_size // n)
    with torch.no_grad():
        pad = (r,) * 6
        if padding_mode == "border":
            padded = F.pad(moving_features, pad, mode="replicate")
        else:
            padded = F.pad(moving_features, pad, mode="constant", value=0.0)
        fixed0 = fixed_features[0].unsqueeze(3)  # (C, h, w, 1, d)
        cost = torch.empty((n**3, h, w, d), dtype=fixed_features.dtype, device=fixed_features.device)
        for p0 in range(0, len(pairs), pairs_per_chunk):
            chunk = pairs[p0 : p0 + pairs_per_chunk]
            maps = torch.empty((len(chunk), n, h, w, d), dtype=cost.dtype, device=cost.device)
            for j, (a, b) in enumerate(chunk):
                slab = padded[0, :, r + a : r + a + h, r + b : r + b + w, :].unfold(3, d, 1)  # (C, h, w, n, d)
                maps[j] = (fixed0 - slab).square().sum(0).permute(2, 0, 1, 3)
            maps = box_filter(maps.reshape(-1, 1, h, w, d), smoothing_kernel, smoothing_passes)
            cost[p0 * n : p0 * n + maps.shape[0]] = maps[:, 0]
    return cost


def _labels_to_field(labels: torch.Tensor, shifts: torch.Tensor, spatial: Sequence[int], kernel: int, passes: int) -> torch.Tensor:
    """Shift field of a label map ``(N,)`` -> smoothed DDF ``(1, 3, h, w, d)``."""
    field = shifts[labels].T.reshape(1, 3, *spatial)
    return box_filter(field, kernel, passes)


def coupled_convex_field(
    cost: torch.Tensor,
    disp_hw: int,
    coupling_weights: Sequence[float] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    *,
    smoothing_kernel: int = 3,
    smoothing_passes: int = 1,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Coupled convex optimisation of a cost volume: the smoothed label field of the last coupling weight.

    ``u0 = box(shift[argmin_k C[k]])``; then for each weight ``w``:
    ``label(x) = argmin_k C[k, x] + w |shift_k - u(x)|^2`` and ``u = box(shift[label])``. Ties go to the
    lowest ``k`` (as ``torch.argmin``).

    Args:
        cost: ``(K, h, w, d)`` from :func:`ssd_cost_volume` with the same ``disp_hw``.
        disp_hw: search half-width of ``cost``.
        coupling_weights: the weights ``w`` of the successive coupled iterations.
        smoothing_kernel, smoothing_passes: box filter applied to the shift field after each labelling.
        chunk_size: shifts handled at once in the coupled argmin (bounds temporary memory to ``chunk_size * N``).

    Returns:
        DDF ``(1, 3, h, w, d)`` in voxels of the cost volume's grid (fixed -> moving), dtype of ``cost``.
    """
    where = "coupled_convex_field"
    check_tensor(where, "cost", cost, 4)
    shifts = displacement_candidates(disp_hw, cost.device, cost.dtype)
    if cost.shape[0] != shifts.shape[0]:
        raise UserInputError(
            f"{where}: cost must have (2 * disp_hw + 1)^3 = {shifts.shape[0]} shifts for disp_hw={disp_hw}, "
            f"got {cost.shape[0]} (shape {tuple(cost.shape)})."
        )
    if chunk_size < 1:
        raise UserInputError(f"{where}: chunk_size must be >= 1, got {chunk_size}.")
    spatial = tuple(cost.shape[1:])
    flat = cost.reshape(cost.shape[0], -1)
    with torch.no_grad():
        u = _labels_to_field(flat.argmin(0), shifts, spatial, smoothing_kernel, smoothing_passes)
        sq = shifts.square().sum(1, keepdim=True)  # (K, 1)
        for weight in coupling_weights:
            uf = u.reshape(3, -1)  # (3, N)
            # |d - u|^2 = |d|^2 - 2 d.u + |u|^2; the last term does not depend on d and leaves the argmin unchanged.
            best = None
            labels = None
            for k0 in range(0, flat.shape[0], chunk_size):
                k1 = min(k0 + chunk_size, flat.shape[0])
                total = flat[k0:k1] + float(weight) * (sq[k0:k1] - 2.0 * (shifts[k0:k1] @ uf))
                val, idx = total.min(0)
                idx = idx + k0
                if best is None:
                    best, labels = val, idx
                else:
                    better = val < best
                    best = torch.where(better, val, best)
                    labels = torch.where(better, idx, labels)
            u = _labels_to_field(labels, shifts, spatial, smoothing_kernel, smoothing_passes)
    return u


def inverse_consistency(forward: torch.Tensor, backward: torch.Tensor, iterations: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Make a forward/backward pair of DDFs inverse consistent by symmetric fixed-point averaging.

    Each iteration updates both fields from the previous pair: ``u1 <- (u1 - u2 o (id + u1)) / 2``,
    ``u2 <- (u2 - u1 o (id + u2)) / 2``, with ``u2 o (id + u1)`` sampled trilinearly (border padding).
    For exact inverses (``u1 + u2 o (id + u1) = 0``) the update leaves both unchanged.

    Args:
        forward: DDF ``(1, 3, h, w, d)``, fixed -> moving, voxels.
        backward: DDF of the same shape, moving -> fixed, voxels of the same grid.
        iterations: number of updates (0 returns the inputs).

    Returns:
        ``(forward, backward)`` after ``iterations`` updates.
    """
    from .._validation import check_ddf

    check_ddf("inverse_consistency", "forward", forward)
    check_ddf("inverse_consistency", "backward", backward)
    if forward.shape != backward.shape:
        raise UserInputError(
            f"inverse_consistency: forward {tuple(forward.shape)} and backward {tuple(backward.shape)} must have equal shapes."
        )
    if iterations < 0:
        raise UserInputError(f"inverse_consistency: iterations must be >= 0, got {iterations}.")
    u1, u2 = forward, backward
    with torch.no_grad():
        for _ in range(iterations):
            u1, u2 = 0.5 * (u1 - warp_image(u2, u1)), 0.5 * (u2 - warp_image(u1, u2))
    return u1, u2


def coupled_convex(
    fixed_features: torch.Tensor,
    moving_features: torch.Tensor,
    config: ConvexConfig | None = None,
    *,
    output_shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """ConvexAdam's discrete stage on pooled features: cost volume, coupled convex labelling, optional IC.

    Args:
        fixed_features, moving_features: ``(1, C, h, w, d)`` features already on the coarse grid (e.g. MIND-SSC
            average-pooled by ``config.grid_spacing``; this function does not pool).
        config: :class:`ConvexConfig` (defaults: ConvexAdam's NLST settings).
        output_shape: optional ``(H, W, D)`` of a grid over the same field of view (the full-resolution
            image): the field is resampled there with :func:`resize_ddf` and expressed in its voxels.

    Returns:
        MONAI DDF ``(1, 3, h, w, d)`` (coarse voxels) or ``(1, 3, H, W, D)`` (voxels of ``output_shape``),
        fixed -> moving, dtype of the features.
    """
    cfg = config if config is not None else ConvexConfig()
    if not isinstance(cfg, ConvexConfig):
        raise InputTypeError(f"coupled_convex: config must be a ConvexConfig or None, got {type(cfg).__name__}.")
    cfg.validate()
    _check_features("coupled_convex", fixed_features, moving_features)
    shape = check_shape3("coupled_convex", "output_shape", output_shape) if output_shape is not None else None

    def one_way(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cost = ssd_cost_volume(
            a, b, cfg.disp_hw, smoothing_kernel=cfg.cost_smoothing_kernel, smoothing_passes=cfg.cost_smoothing_passes,
            padding_mode=cfg.padding_mode, chunk_size=cfg.chunk_size,
        )
        return coupled_convex_field(
            cost, cfg.disp_hw, cfg.coupling_weights, smoothing_kernel=cfg.field_smoothing_kernel,
            smoothing_passes=cfg.field_smoothing_passes, chunk_size=cfg.chunk_size,
        )

    with torch.no_grad():
        ddf = one_way(fixed_features, moving_features)
        if cfg.ic:
            backward = one_way(moving_features, fixed_features)
            ddf, _ = inverse_consistency(ddf, backward, cfg.ic_iters)
        if shape is not None:
            ddf = resize_ddf(ddf, shape)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "coupled_convex: grid %s, %d shifts, ic=%s, max |u| %.3f voxels of the output grid",
            tuple(fixed_features.shape[2:]), (2 * cfg.disp_hw + 1) ** 3, cfg.ic, float(ddf.abs().max()),
        )
    return ddf.contiguous()


class CoupledConvex(nn.Module):
    """Module form of :func:`coupled_convex`: ``(1, C, h, w, d)`` x 2 -> DDF ``(1, 3, h, w, d)`` (or ``output_shape``).

    Args:
        config: :class:`ConvexConfig` (defaults: ConvexAdam's NLST settings).
    """

    def __init__(self, config: ConvexConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ConvexConfig()

    def forward(
        self, fixed_features: torch.Tensor, moving_features: torch.Tensor, output_shape: Sequence[int] | None = None
    ) -> torch.Tensor:
        return coupled_convex(fixed_features, moving_features, self.config, output_shape=output_shape)

    def extra_repr(self) -> str:
        c = self.config
        return f"disp_hw={c.disp_hw}, coupling_weights={c.coupling_weights}, ic={c.ic}, ic_iters={c.ic_iters}"


def pooled_mind(image: torch.Tensor, factors: Sequence[int], radius: int = 1, dilation: int = 2) -> list[torch.Tensor]:
    """MIND-SSC of ``image`` at full resolution, average-pooled by each of ``factors`` (computed once).

    Args:
        image: ``(1, 1, H, W, D)`` preprocessed image.
        factors: pooling factors, e.g. ``(6, 2)`` for the discrete stage and the Adam stage.
        radius, dilation: MIND-SSC settings (:class:`~monai_contreg.methods.config.FeatureConfig`).

    Returns:
        One ``(1, 12, h_f, w_f, d_f)`` tensor per factor (:func:`~monai_contreg.spatial.filters.downsample`).
    """
    from ..features.mind import mind_ssc
    from ..spatial.filters import downsample

    check_tensor("pooled_mind", "image", image, 5)
    with torch.no_grad():
        full = mind_ssc(image, radius, dilation)
        return [downsample(full, int(f)).contiguous() for f in factors]


def discrete_registration(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    config: ConvexConfig | None = None,
    *,
    mind_radius: int = 1,
    mind_dilation: int = 2,
    full_resolution: bool = True,
) -> torch.Tensor:
    """The whole discrete stage from images: MIND-SSC, pooling by ``config.grid_spacing``, :func:`coupled_convex`.

    Args:
        fixed, moving: ``(1, 1, H, W, D)`` preprocessed images on one grid.
        config: :class:`ConvexConfig`.
        mind_radius, mind_dilation: MIND-SSC settings.
        full_resolution: return the field on the ``(H, W, D)`` grid (its voxels) instead of the coarse grid.

    Returns:
        MONAI DDF ``(1, 3, H, W, D)`` (or ``(1, 3, h, w, d)`` coarse), fixed -> moving, voxels of its grid.
    """
    cfg = config if config is not None else ConvexConfig()
    check_tensor("discrete_registration", "fixed", fixed, 5)
    check_tensor("discrete_registration", "moving", moving, 5)
    if fixed.shape != moving.shape or fixed.shape[:2] != (1, 1):
        raise UserInputError(
            f"discrete_registration: fixed and moving must both have shape (1, 1, H, W, D), "
            f"got {tuple(fixed.shape)} and {tuple(moving.shape)}."
        )
    (ff,) = pooled_mind(fixed, (cfg.grid_spacing,), mind_radius, mind_dilation)
    (mf,) = pooled_mind(moving, (cfg.grid_spacing,), mind_radius, mind_dilation)
    return coupled_convex(ff, mf, cfg, output_shape=tuple(fixed.shape[2:]) if full_resolution else None)
