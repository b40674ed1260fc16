"""Learn2Reg-style evaluation metrics (METHOD §2): keypoint TRE, SDlogJ, folding, Dice, HD95."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._validation import check_ddf, check_points
from ..errors import UserInputError
from ..spatial.jacobian import jacobian_determinant
from ..spatial.warp import warp_points

__all__ = ["determinant_statistics", "dice", "hd95", "hd95_learn2reg", "jacobian_statistics", "keypoint_tre"]


def keypoint_tre(
    ddf: torch.Tensor, fixed_points: torch.Tensor, moving_points: torch.Tensor, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> torch.Tensor:
    """Per-keypoint target registration error in mm: ``|(p_f + u(p_f) - p_m) * spacing|``.

    Args:
        ddf: MONAI DDF ``(1, 3, H, W, D)`` on the fixed image's grid (voxels).
        fixed_points, moving_points: ``(N, 3)`` voxel coordinates; row ``k`` of each is one correspondence.
        spacing: voxel size (mm) along the three array axes.

    Returns:
        ``(N,)`` float64 errors. Pass ``torch.zeros_like(ddf)`` for the initial (unregistered) error.
    """
    check_ddf("keypoint_tre", "ddf", ddf)
    check_points("keypoint_tre", "fixed_points", fixed_points)
    check_points("keypoint_tre", "moving_points", moving_points)
    if fixed_points.shape != moving_points.shape or fixed_points.ndim != 2:
        raise UserInputError(
            f"keypoint_tre: fixed_points {tuple(fixed_points.shape)} and moving_points {tuple(moving_points.shape)} "
            "must both have shape (N, 3) with the same N (row k of each is one correspondence)."
        )
    sp = torch.as_tensor([float(s) for s in spacing], dtype=torch.float64)
    if sp.numel() != 3:
        raise UserInputError(f"keypoint_tre: spacing must have 3 entries, got {list(spacing)}.")
    moved = warp_points(fixed_points.to(torch.float64), ddf.detach().to(torch.float64)).cpu()
    return ((moved - moving_points.to(torch.float64).cpu()) * sp).norm(dim=-1)


def jacobian_statistics(ddf: torch.Tensor, mask: torch.Tensor | None = None, border: int = 2) -> dict[str, float]:
    """Smoothness statistics of ``x -> x + u(x)`` on the interior (``border`` voxels cropped on every side).

    Returns:
        ``sdlogj``: true std of ``log det J`` (det clipped to ``[1e-9, 1e9]``);
        ``sdlogj_official``: std of ``log(clip(det J + 3, 1e-9, 1e9))`` (the Learn2Reg script's choice);
        ``folding_percent``: percentage of voxels with ``det J <= 0``; ``jac_min`` / ``jac_max``.
        With ``mask`` ``(H, W, D)`` or ``(1, 1, H, W, D)``, statistics are taken over mask voxels only.
    """
    check_ddf("jacobian_statistics", "ddf", ddf)
    det = jacobian_determinant(ddf.detach().to(torch.float64))[0, 0]
    return determinant_statistics(det, mask, border, where="jacobian_statistics")


def determinant_statistics(
    det: torch.Tensor, mask: torch.Tensor | None = None, border: int = 2, where: str = "determinant_statistics"
) -> dict[str, float]:
    """The statistics of :func:`jacobian_statistics` from a precomputed ``det J`` map ``(H, W, D)``.

    Args:
        det: Jacobian determinant ``(H, W, D)`` of the whole grid (central differences).
        mask: optional ``(H, W, D)`` (or with leading 1-sized dims) region; ``> 0`` is inside.
        border: voxels cropped on every side before the statistics.
        where: function name used in error messages.
    """
    det = torch.as_tensor(det)
    if det.ndim != 3:
        raise UserInputError(f"{where}: det must have shape (H, W, D), got {tuple(det.shape)}.")
    b = int(border)
    full = tuple(det.shape)
    if b:
        if min(full) <= 2 * b:
            raise UserInputError(f"{where}: grid {full} is too small for the {b}-voxel border: every axis needs >= {2 * b + 1} voxels.")
        det = det[b:-b, b:-b, b:-b]
    sel = None
    if mask is not None:
        m = torch.as_tensor(mask)
        if m.numel() != full[0] * full[1] * full[2]:
            raise UserInputError(f"{where}: mask must have the field's spatial shape {full}, got {tuple(m.shape)}.")
        m = m.reshape(full)
        m = (m[b:-b, b:-b, b:-b] if b else m) > 0
        if not bool(m.any()):
            raise UserInputError(f"{where}: mask is empty inside the cropped border.")
        sel = m.to(det.device)
    vals = det[sel] if sel is not None else det.reshape(-1)
    log_true = torch.log(vals.clamp(1e-9, 1e9))
    log_off = torch.log((vals + 3).clamp(1e-9, 1e9))
    return {
        "sdlogj": float(log_true.std(unbiased=False)),
        "sdlogj_official": float(log_off.std(unbiased=False)),
        "folding_percent": float((vals <= 0).double().mean() * 100),
        "jac_min": float(vals.min()),
        "jac_max": float(vals.max()),
    }


def dice(a: torch.Tensor, b: torch.Tensor, labels: Sequence[int] | None = None) -> dict[int, float]:
    """Dice overlap per label of two label maps of equal shape (labels: all non-zero labels of ``a`` if None)."""
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    if a.shape != b.shape:
        raise UserInputError(f"dice: label maps must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if labels is None:
        labels = [int(v) for v in torch.unique(a) if int(v) != 0]
    out = {}
    for lab in labels:
        x, y = a == lab, b == lab
        denom = int(x.sum()) + int(y.sum())
        out[int(lab)] = float(2 * int((x & y).sum()) / denom) if denom else float("nan")
    return out


def hd95(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    percentile: float = 95.0,
) -> float:
    """Robust (95th-percentile) symmetric Hausdorff distance in mm between the surfaces of two binary masks.

    Surface voxels are mask voxels with a 6-neighbour outside the mask (the grid edge counts as outside);
    the distance of each surface voxel of one mask to the nearest surface voxel of the other is taken in mm
    (Euclidean distance transform with ``spacing``); the result is the larger of the two directed
    ``percentile``-th percentiles (linear interpolation), as MONAI's ``compute_hausdorff_distance``. The
    official Learn2Reg script weights surface elements by area (DeepMind ``surface_distance``) and uses
    voxel units; values differ slightly.

    Args:
        a, b: binary masks ``(H, W, D)`` of equal shape (``> 0`` is inside).
        spacing: voxel size (mm) along the three axes.
        percentile: in ``[0, 100]``.

    Returns:
        The distance in mm; ``nan`` if either mask is empty.
    """
    from scipy.ndimage import binary_erosion, distance_transform_edt

    x = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a) > 0
    y = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b) > 0
    if x.shape != y.shape or x.ndim != 3:
        raise UserInputError(f"hd95: masks must be 3-D with equal shapes, got {x.shape} and {y.shape}.")
    if not 0 <= float(percentile) <= 100:
        raise UserInputError(f"hd95: percentile must be in [0, 100], got {percentile}.")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3:
        raise UserInputError(f"hd95: spacing must have 3 entries, got {list(spacing)}.")
    if not x.any() or not y.any():
        return float("nan")
    # crop to both masks' bounding box + 1 voxel: the same surfaces and nearest distances, far less work
    idx = np.argwhere(x | y)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, x.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    x, y = x[box], y[box]
    struct = np.zeros((3, 3, 3), dtype=bool)  # noqa: the 6-neighbourhood
    struct[1, 1, :] = struct[1, :, 1] = struct[:, 1, 1] = True
    sx = x & ~binary_erosion(x, struct, border_value=0)
    sy = y & ~binary_erosion(y, struct, border_value=0)
    d_xy = distance_transform_edt(~sy, sampling=sp)[sx]
    d_yx = distance_transform_edt(~sx, sampling=sp)[sy]
    return float(max(np.percentile(d_xy, percentile), np.percentile(d_yx, percentile)))


def hd95_learn2reg(fixed: torch.Tensor | np.ndarray, warped: torch.Tensor | np.ndarray, percent: float = 95.0) -> float:
    """The robust Hausdorff distance of the official Learn2Reg evaluation (its ``HD95``), in voxels.

    The definition of DeepMind's ``surface_distance`` package (``compute_surface_distances`` with unit spacing,
    then ``compute_robust_hausdorff``), which the official script calls: the surfaces are the surface elements
    (surfels) of the marching-cubes boundary on the voxel corners, each weighted by its area (MONAI's
    :func:`monai.metrics.utils.get_mask_edges` with ``spacing``); the distance of each surfel of one mask to
    the nearest surfel of the other is the Euclidean distance transform of the other's surfel grid; per
    direction the result is the smallest distance whose cumulative (ascending) share of the surface area
    reaches ``percent`` %; the larger direction is returned. Spacing is the official ``(1, 1, 1)``: voxels, not mm
    (see :func:`hd95` for the millimetre figure of this package).

    Args:
        fixed, warped: binary masks ``(H, W, D)`` of equal shape (``> 0`` inside).
        percent: in ``[0, 100]``.

    Returns:
        The distance (voxels); ``inf`` when exactly one mask is empty, ``nan`` when both are.
    """
    from monai.metrics.utils import get_mask_edges
    from scipy.ndimage import distance_transform_edt

    x = np.asarray(fixed.detach().cpu() if isinstance(fixed, torch.Tensor) else fixed) > 0
    y = np.asarray(warped.detach().cpu() if isinstance(warped, torch.Tensor) else warped) > 0
    if x.shape != y.shape or x.ndim != 3:
        raise UserInputError(f"hd95_learn2reg: masks must be 3-D with equal shapes, got {x.shape} and {y.shape}.")
    if not 0 <= float(percent) <= 100:
        raise UserInputError(f"hd95_learn2reg: percent must be in [0, 100], got {percent}.")
    if not x.any() and not y.any():
        return float("nan")
    if not x.any() or not y.any():
        return float("inf")
    edges_y, edges_x, areas_y, areas_x = (np.asarray(a) for a in get_mask_edges(y, x, spacing=(1.0, 1.0, 1.0)))

    def directed(src_edges, src_areas, dst_edges) -> float:
        d = distance_transform_edt(~dst_edges)[src_edges]
        w = src_areas[src_edges].astype(np.float64)
        order = np.argsort(d, kind="stable")
        cum = np.cumsum(w[order]) / w.sum()
        k = int(np.searchsorted(cum, float(percent) / 100.0))
        return float(d[order][min(k, d.size - 1)])

    return max(directed(edges_x, areas_x, edges_y), directed(edges_y, areas_y, edges_x))
