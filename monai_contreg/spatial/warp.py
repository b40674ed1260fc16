"""Warping of images, label maps and point sets by a MONAI DDF (fixed -> moving, voxels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserInputError
from .._validation import check_ddf, check_points, check_tensor, choose
from ..modes import IMAGE_PADDING, LABEL_PADDING, PaddingMode
from .conventions import ALIGN_CORNERS, ddf_to_sampling_grid, voxel_to_normalized

__all__ = ["grid_sample_3d", "sample_at_points", "warp_image", "warp_labels", "warp_points"]

def grid_sample_3d(
    image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border", chunks: int | None = None
) -> torch.Tensor:
    """``F.grid_sample`` of a single 3-D volume, parallel over CPU threads (``align_corners=False``).

    PyTorch's CPU 3-D grid sampler (forward and backward) parallelises over the batch dimension only, so a
    batch of one runs on one thread. This splits the grid along its first spatial axis into ``chunks`` slabs
    (default: ``torch.get_num_threads()``), samples them as a batch against the same (expanded, not copied)
    image, and reassembles the output. Results and gradients equal those of one ``grid_sample`` call.
    On CUDA, or with ``chunks == 1``, it is a plain ``grid_sample``.

    Args:
        image: ``(1, C, H, W, D)``.
        grid: ``(1, h, w, d, 3)`` normalised coordinates.

    Returns:
        ``(1, C, h, w, d)``.
    """
    k = torch.get_num_threads() if chunks is None else int(chunks)
    h = grid.shape[1]
    if image.device.type != "cpu" or image.shape[0] != 1 or grid.shape[0] != 1 or k <= 1 or h < 2 * k:
        return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    step = -(-h // k)  # ceil
    pad = step * k - h
    g = torch.cat([grid, grid[:, -1:].expand(1, pad, *grid.shape[2:])], dim=1) if pad else grid
    g = g.reshape(k, step, *grid.shape[2:])
    out = F.grid_sample(image.expand(k, *image.shape[1:]), g, mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    out = out.transpose(0, 1).reshape(1, image.shape[1], step * k, *grid.shape[2:4])
    return out[:, :, :h] if pad else out


def _check_pair(where: str, image: torch.Tensor, ddf: torch.Tensor) -> None:
    check_tensor(where, "image", image, 5)
    check_ddf(where, "ddf", ddf)
    if tuple(image.shape[2:]) != tuple(ddf.shape[2:]):
        raise UserInputError(
            f"{where}: image spatial shape {tuple(image.shape[2:])} must equal ddf spatial shape "
            f"{tuple(ddf.shape[2:])}."
        )
    if ddf.shape[0] not in (1, image.shape[0]):
        raise UserInputError(f"{where}: ddf batch size {ddf.shape[0]} must be 1 or the image's {image.shape[0]}.")


def warp_image(image: torch.Tensor, ddf: torch.Tensor, padding_mode: str = IMAGE_PADDING) -> torch.Tensor:
    """Resample the moving ``image`` into the fixed frame: ``out(x) = image(x + u(x))``, trilinear.

    Args:
        image: moving image ``(B, C, H, W, D)``.
        ddf: MONAI DDF ``(B or 1, 3, H, W, D)`` in voxels on the same grid.
        padding_mode: a :class:`~monai_contreg.modes.PaddingMode`: ``"border"`` (default), ``"zeros"`` or
            ``"reflection"``.

    Returns:
        ``(B, C, H, W, D)``, same dtype as ``image`` (computed in the DDF's floating dtype).
    """
    _check_pair("warp_image", image, ddf)
    padding_mode = choose("warp_image", "padding_mode", padding_mode, PaddingMode).value
    grid = ddf_to_sampling_grid(ddf).to(image.dtype if image.is_floating_point() else ddf.dtype)
    if grid.shape[0] != image.shape[0]:
        grid = grid.expand(image.shape[0], *grid.shape[1:])
    src = image if image.is_floating_point() else image.to(grid.dtype)
    if src.shape[0] == 1:
        return grid_sample_3d(src, grid, "bilinear", padding_mode)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode=padding_mode, align_corners=ALIGN_CORNERS)


def warp_labels(labels: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Resample a moving label map with nearest-neighbour interpolation (labels stay labels, dtype kept).

    Outside the moving image the result is 0 (background; :data:`~monai_contreg.modes.LABEL_PADDING`).
    """
    _check_pair("warp_labels", labels, ddf)
    grid = ddf_to_sampling_grid(ddf.float())
    if grid.shape[0] != labels.shape[0]:
        grid = grid.expand(labels.shape[0], *grid.shape[1:])
    out = F.grid_sample(labels.float(), grid, mode="nearest", padding_mode=LABEL_PADDING.value, align_corners=ALIGN_CORNERS)
    return out.to(labels.dtype)


def sample_at_points(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume`` ``(B, C, H, W, D)`` at voxel ``points`` ``(N, 3)`` or ``(B, N, 3)``.

    Returns ``(B, N, C)``. Points outside the grid take the border value (as ``scipy``'s ``nearest`` mode).
    """
    check_tensor("sample_at_points", "volume", volume, 5)
    check_points("sample_at_points", "points", points)
    pts = points.to(volume.dtype)
    if pts.ndim == 2:
        pts = pts.unsqueeze(0).expand(volume.shape[0], -1, -1)
    if pts.shape[0] != volume.shape[0]:
        raise UserInputError(
            f"sample_at_points: points batch size {pts.shape[0]} must equal volume batch size {volume.shape[0]}."
        )
    grid = voxel_to_normalized(pts, volume.shape[2:]).view(pts.shape[0], -1, 1, 1, 3)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=ALIGN_CORNERS)
    return out.view(volume.shape[0], volume.shape[1], -1).transpose(1, 2)


def warp_points(points: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Map fixed-image voxel ``points`` to the moving image: ``p + u(p)`` with ``u`` sampled trilinearly.

    Args:
        points: ``(N, 3)`` or ``(B, N, 3)`` voxel coordinates in the fixed image (array-axis order).
        ddf: MONAI DDF ``(B, 3, H, W, D)``.

    Returns:
        Points of the same shape (and floating dtype of ``ddf``) in moving-image voxel coordinates.
    """
    check_points("warp_points", "points", points)
    check_ddf("warp_points", "ddf", ddf)
    u = sample_at_points(ddf, points)
    out = points.to(ddf.dtype) + (u[0] if points.ndim == 2 else u)
    return out
