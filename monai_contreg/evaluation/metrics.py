"""Learn2Reg-style evaluation metrics (METHOD §2): keypoint TRE, SDlogJ, folding, Dice."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._validation import check_ddf, check_points
from ..spatial.jacobian import jacobian_determinant
from ..spatial.warp import warp_points

__all__ = ["dice", "jacobian_statistics", "keypoint_tre"]


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
        raise ValueError(
            f"keypoint_tre: fixed_points {tuple(fixed_points.shape)} and moving_points {tuple(moving_points.shape)} "
            "must both have shape (N, 3) with the same N (row k of each is one correspondence)."
        )
    sp = torch.as_tensor([float(s) for s in spacing], dtype=torch.float64)
    if sp.numel() != 3:
        raise ValueError(f"keypoint_tre: spacing must have 3 entries, got {list(spacing)}.")
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
    b = int(border)
    if b:
        det = det[b:-b, b:-b, b:-b]
    sel = None
    if mask is not None:
        m = torch.as_tensor(mask).reshape(ddf.shape[2:])
        m = (m[b:-b, b:-b, b:-b] if b else m) > 0
        if not bool(m.any()):
            raise ValueError("jacobian_statistics: mask is empty inside the cropped border.")
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
        raise ValueError(f"dice: label maps must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if labels is None:
        labels = [int(v) for v in torch.unique(a) if int(v) != 0]
    out = {}
    for lab in labels:
        x, y = a == lab, b == lab
        denom = int(x.sum()) + int(y.sum())
        out[int(lab)] = float(2 * int((x & y).sum()) / denom) if denom else float("nan")
    return out
