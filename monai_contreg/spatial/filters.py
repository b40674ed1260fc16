"""Smoothing and resampling filters on ``(B, C, H, W, D)`` tensors (torch only)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import UserInputError
from .._validation import check_tensor
from ..kernels.ops import compiled_box_smooth, uses_compiled

__all__ = ["box_filter", "box_filter_", "downsample", "gaussian_filter", "pooled_shape"]


def _pad_axis(x: torch.Tensor, dim: int, r: int) -> torch.Tensor:
    """Replicate-pad ``x`` by ``r`` on both sides of dimension ``dim`` (cheap: cat of edge slices)."""
    n = x.shape[dim]
    first = x.narrow(dim, 0, 1)
    last = x.narrow(dim, n - 1, 1)
    reps = [1] * x.ndim
    reps[dim] = r
    return torch.cat([first.repeat(reps), x, last.repeat(reps)], dim=dim)


def box_filter(x: torch.Tensor, kernel_size: int = 3, passes: int = 1) -> torch.Tensor:
    """Mean filter over a ``kernel_size**3`` cube, applied ``passes`` times, with replication padding.

    Separable: each pass is three 1-D running means (one per spatial axis), so the cost is linear in
    ``kernel_size``. Differentiable. On CPU it runs the compiled kernel of :mod:`monai_contreg.kernels` when
    available (same values; backward by the filter's exact adjoint), else the PyTorch ops below.

    Args:
        x: ``(B, C, H, W, D)`` floating tensor.
        kernel_size: odd window width in voxels (1 = identity).
        passes: number of repeated applications (3 passes of width 3 approximate a Gaussian, sigma = 1.41).

    Returns:
        Tensor with the shape of ``x``.
    """
    check_tensor("box_filter", "x", x, 5)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise UserInputError(f"box_filter: kernel_size must be a positive odd integer, got {kernel_size}.")
    if passes < 0:
        raise UserInputError(f"box_filter: passes must be >= 0, got {passes}.")
    if kernel_size == 1 or passes == 0:
        return x
    if uses_compiled(x):
        return compiled_box_smooth(x, kernel_size, passes)
    r = kernel_size // 2
    for _ in range(passes):
        for dim in (2, 3, 4):
            n = x.shape[dim]
            xp = _pad_axis(x, dim, r)
            acc = xp.narrow(dim, 0, n)
            for k in range(1, kernel_size):
                acc = acc + xp.narrow(dim, k, n)
            x = acc / kernel_size
    return x


def box_filter_(x: torch.Tensor, kernel_size: int = 3, passes: int = 1) -> torch.Tensor:
    """In-place :func:`box_filter` of a contiguous tensor that needs no gradient (saves a full-size buffer).

    Returns ``x``, overwritten with its filtered values.
    """
    check_tensor("box_filter_", "x", x, 5)
    if x.requires_grad and torch.is_grad_enabled():
        raise UserInputError("box_filter_: x requires grad; use box_filter (in-place filtering breaks autograd).")
    if not x.is_contiguous():
        raise UserInputError("box_filter_: x must be contiguous.")
    if uses_compiled(x) and kernel_size % 2 == 1 and kernel_size >= 1 and passes >= 0:
        return compiled_box_smooth(x, kernel_size, passes, inplace=True)
    return x.copy_(box_filter(x, kernel_size, passes))


def gaussian_filter(x: torch.Tensor, sigma: float | Sequence[float], truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(B, C, H, W, D)`` with replication padding; ``sigma`` in voxels."""
    check_tensor("gaussian_filter", "x", x, 5)
    sigmas = [float(sigma)] * 3 if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sigmas) != 3 or min(sigmas) < 0:
        raise UserInputError(f"gaussian_filter: sigma must be one or three non-negative numbers, got {sigma!r}.")
    c = x.shape[1]
    for axis, s in enumerate(sigmas):
        if s == 0:
            continue
        r = max(1, int(truncate * s + 0.5))
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = k / k.sum()
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = 2 * r + 1
        weight = k.view(shape).repeat(c, 1, 1, 1, 1)
        xp = _pad_axis(x, axis + 2, r)
        x = F.conv3d(xp, weight, groups=c)
    return x


def pooled_shape(shape: Sequence[int], factor: int | Sequence[int]) -> tuple[int, int, int]:
    """Shape of a grid pooled by ``factor``: ``max(1, round(n / f))`` per axis (same field of view)."""
    f = _factors("pooled_shape", factor)
    return tuple(max(1, int(round(int(n) / k))) for n, k in zip(shape, f))  # type: ignore[return-value]


def _factors(where: str, factor: int | Sequence[int]) -> tuple[int, int, int]:
    f = (int(factor),) * 3 if isinstance(factor, (int, float)) else tuple(int(v) for v in factor)
    if len(f) != 3 or min(f) < 1:
        raise UserInputError(f"{where}: factor must be one or three positive integers, got {factor!r}.")
    return f  # type: ignore[return-value]


def downsample(x: torch.Tensor, factor: int | Sequence[int]) -> torch.Tensor:
    """Average-pool ``(B, C, H, W, D)`` by ``factor`` (per axis) onto :func:`pooled_shape` voxels.

    Where a size divides by its factor, pooled voxel ``j`` is the mean of fine voxels ``f j .. f j + f - 1``; its
    centre is where the ``align_corners=False`` frame of :mod:`monai_contreg.spatial.conventions` places it.
    Otherwise adaptive average pooling keeps the whole field of view.
    """
    check_tensor("downsample", "x", x, 5)
    f = _factors("downsample", factor)
    if f == (1, 1, 1):
        return x
    if all(n % k == 0 for n, k in zip(x.shape[2:], f)):
        return F.avg_pool3d(x, kernel_size=f, stride=f)
    return F.adaptive_avg_pool3d(x, pooled_shape(x.shape[2:], f))
