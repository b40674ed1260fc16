"""Geometry between grids (torch only): working grids, resampling by affines, fields moved between grids.

A *grid* is a spatial shape ``(H, W, D)`` and a 4x4 voxel-to-world affine (RAS mm, as nibabel and MONAI
store it). Two images on different grids share the world frame; every function here goes through it:

* :func:`working_grid`: the fixed image's field of view on an isotropic (or any given) spacing, same
  orientation, same centre.
* :func:`resample_image`: an image from its grid onto another grid (``out(v) = image(A_src^-1 A_dst v)``).
* :func:`resample_ddf`: a DDF (voxels, fixed -> moving, both ends in the one world frame) from the grid it
  lives on onto another grid, in that grid's voxels: how a field found on the working grid comes back to the
  fixed image's native grid.
* :func:`warp_between_grids`: a moving image on its own grid, warped by a DDF on the fixed grid, sampled on
  the fixed grid: ``out(x) = moving(A_m^-1 A_f (x + u(x)))``.
* :func:`map_points_world`: world points moved by a DDF.

Voxel/world conversions come from :mod:`monai_contreg.spatial.conventions`; nothing here flips an axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import UserInputError
from .._validation import check_ddf, check_points, check_tensor, choose
from ..modes import IMAGE_PADDING, InterpolationMode, PaddingMode
from .conventions import (
    ALIGN_CORNERS,
    _affine,
    check_shape3,
    points_voxel_to_world,
    points_world_to_voxel,
    voxel_map,
    voxel_to_normalized,
)
from .grid import Grid
from .warp import sample_at_points

__all__ = [
    "map_points_world",
    "mapped_coordinates",
    "resample_ddf",
    "resample_image",
    "same_grid",
    "warp_between_grids",
    "working_grid",
]

_MODES = InterpolationMode
_PADDING = PaddingMode


def working_grid(
    affine, shape: Sequence[int], spacing: float | Sequence[float] | None = None
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The field of view of a grid, re-gridded at ``spacing`` with the same orientation and centre.

    Along axis ``i`` the new grid has ``n'_i = max(1, round(n_i * s_i / s'_i))`` voxels of size ``s'_i``, its axis
    directions are those of ``affine`` and the centre of its field of view (voxel ``(n' - 1) / 2``) sits at
    the world position of the old centre (voxel ``(n - 1) / 2``). When ``spacing`` equals the grid's own, the
    result is the grid itself.

    The formula is :meth:`monai_contreg.spatial.grid.Grid.working`'s.

    Example: ``affine = diag(0.98, 0.98, 2.5, 1)``, ``shape = (343, 294, 134)``, ``spacing = 1.5`` ->
    ``shape' = (224, 192, 223)``.

    Args:
        affine: 4x4 voxel-to-world matrix of the grid (e.g. the fixed image's).
        shape: its spatial shape ``(H, W, D)``.
        spacing: one number (isotropic) or three (per axis, mm); ``None``: the grid's smallest spacing.

    Returns:
        ``(affine', shape')``: float64 ``(4, 4)`` tensor and three ints.
    """
    grid = Grid(check_shape3("working_grid", "shape", shape), _affine("working_grid", affine)).working(spacing)
    return grid.affine_tensor(), grid.shape


def same_grid(affine_a, shape_a: Sequence[int], affine_b, shape_b: Sequence[int], atol: float = 1e-6) -> bool:
    """Whether two grids are the same (equal shapes, affines equal within ``atol`` mm); :meth:`Grid.same_as`."""
    if tuple(int(s) for s in shape_a) != tuple(int(s) for s in shape_b):
        return False
    a = _affine("same_grid", affine_a).numpy()
    b = _affine("same_grid", affine_b).numpy()
    return Grid(shape_a, a).same_as(Grid(shape_b, b), atol=atol)


def mapped_coordinates(matrix: torch.Tensor, shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """``matrix @ v`` for every voxel ``v`` of a grid of ``shape``: ``(H, W, D, 3)`` coordinates.

    Computed as a sum of three broadcast axis terms (no ``(H, W, D, 4)`` homogeneous array), the 4x4
    ``matrix`` in float64 and the result in ``dtype``.
    """
    n = check_shape3("mapped_coordinates", "shape", shape)
    m = torch.as_tensor(matrix, dtype=torch.float64)
    if m.shape != (4, 4):
        raise UserInputError(f"mapped_coordinates: matrix must be 4x4, got shape {tuple(m.shape)}.")
    m = m.to(device=device, dtype=dtype)
    out = m[:3, 3].view(1, 1, 1, 3).expand(*n, 3).clone()
    for axis, size in enumerate(n):
        idx = torch.arange(size, device=device, dtype=dtype)
        view = [1, 1, 1, 1]
        view[axis] = size
        out = out + idx.view(view) * m[:3, axis].view(1, 1, 1, 3)
    return out


def _sample(image: torch.Tensor, coords: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    """``grid_sample`` of ``image`` ``(B, C, *S)`` at voxel ``coords`` ``(B or 1, H, W, D, 3)`` of ``S``."""
    grid = voxel_to_normalized(coords, image.shape[2:]).to(image.dtype)
    if grid.shape[0] != image.shape[0]:
        grid = grid.expand(image.shape[0], *grid.shape[1:])
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)


def resample_image(
    image: torch.Tensor,
    src_affine,
    dst_affine,
    dst_shape: Sequence[int],
    mode: str = InterpolationMode.BILINEAR,
    padding_mode: str = IMAGE_PADDING,
) -> torch.Tensor:
    """Resample ``image`` from its grid onto another grid over the same world: ``out(v) = image(A_src^-1 A_dst v)``.

    Args:
        image: ``(B, C, H, W, D)`` on the source grid.
        src_affine: 4x4 voxel-to-world matrix of ``image``.
        dst_affine: 4x4 voxel-to-world matrix of the target grid.
        dst_shape: target spatial shape ``(H', W', D')``.
        mode: ``"bilinear"`` (trilinear; images) or ``"nearest"`` (labels; integer dtypes are kept).
        padding_mode: value outside the source: ``"border"`` (default), ``"zeros"`` or ``"reflection"``.

    Returns:
        ``(B, C, H', W', D')``, ``image`` itself when the two grids are the same.

    Example: a source ``diag(1, 1, 1, 1)`` and a target ``diag(1, 1, 1, 1)`` translated by ``(2, 0, 0)`` mm give
    ``out[..., i, :, :] == image[..., i + 2, :, :]`` (exactly, inside the source).
    """
    check_tensor("resample_image", "image", image, 5)
    mode = choose("resample_image", "mode", mode, _MODES).value
    padding_mode = choose("resample_image", "padding_mode", padding_mode, _PADDING).value
    shape = check_shape3("resample_image", "dst_shape", dst_shape)
    if same_grid(src_affine, image.shape[2:], dst_affine, shape):
        return image
    m = voxel_map(dst_affine, src_affine)
    src = image if image.is_floating_point() else image.to(torch.float32)
    coords = mapped_coordinates(m, shape, device=image.device, dtype=src.dtype if src.dtype == torch.float64 else torch.float32)
    out = _sample(src, coords.unsqueeze(0), mode, padding_mode)
    if not image.is_floating_point():
        out = out.round().to(image.dtype) if mode == "nearest" else out
    return out


def resample_ddf(ddf: torch.Tensor, src_affine, dst_affine, dst_shape: Sequence[int]) -> torch.Tensor:
    """Move a DDF from the grid it lives on onto another grid over the same world, in the new grid's voxels.

    The field maps the world point of source voxel ``x`` to the world point of source voxel ``x + u(x)``
    (both ends in one world frame, as a field found on a working grid onto which both images were resampled).
    On the target grid: ``u'(v) = L^-1 u(M v)`` with ``M = A_src^-1 A_dst`` (target voxel -> source voxel,
    trilinear sampling with border values) and ``L = A_src^-1[:3, :3] A_dst[:3, :3]``, so that target voxel
    ``v`` corresponds to target-grid position ``v + u'(v)``. The world displacement is unchanged.

    Args:
        ddf: MONAI DDF ``(1, 3, H, W, D)`` in voxels of the source grid.
        src_affine: 4x4 voxel-to-world matrix of the source grid.
        dst_affine: 4x4 voxel-to-world matrix of the target grid.
        dst_shape: target spatial shape ``(H', W', D')``.

    Returns:
        DDF ``(1, 3, H', W', D')`` in target voxels (``ddf`` itself if the grids are the same).

    Example: a constant 1-voxel shift along axis 0 on a 1.5 mm grid becomes a constant 1.5-voxel shift on a
    1 mm grid of the same orientation.
    """
    check_ddf("resample_ddf", "ddf", ddf)
    shape = check_shape3("resample_ddf", "dst_shape", dst_shape)
    if same_grid(src_affine, ddf.shape[2:], dst_affine, shape):
        return ddf
    m = voxel_map(dst_affine, src_affine)
    coords = mapped_coordinates(m, shape, device=ddf.device, dtype=ddf.dtype)
    sampled = _sample(ddf, coords.unsqueeze(0), "bilinear", "border")
    lin = torch.linalg.inv(m[:3, :3]).to(device=ddf.device, dtype=ddf.dtype)
    return torch.einsum("ij,bj...->bi...", lin, sampled)


def warp_between_grids(
    moving: torch.Tensor,
    moving_affine,
    ddf: torch.Tensor,
    fixed_affine,
    mode: str = InterpolationMode.BILINEAR,
    padding_mode: str = IMAGE_PADDING,
) -> torch.Tensor:
    """Warp a moving image on its own grid into the fixed grid: ``out(x) = moving(A_m^-1 A_f (x + u(x)))``.

    Args:
        moving: ``(B, C, H_m, W_m, D_m)`` on the moving grid.
        moving_affine: its 4x4 voxel-to-world matrix.
        ddf: MONAI DDF ``(1 or B, 3, H, W, D)`` on the fixed grid, fixed voxels (fixed -> moving).
        fixed_affine: the fixed grid's 4x4 voxel-to-world matrix.
        mode: ``"bilinear"`` or ``"nearest"`` (labels; integer dtypes are kept).
        padding_mode: ``"border"``, ``"zeros"`` or ``"reflection"``.

    Returns:
        ``(B, C, H, W, D)`` on the fixed grid. With equal grids this is
        :func:`monai_contreg.spatial.warp.warp_image` / ``warp_labels``.
    """
    check_tensor("warp_between_grids", "moving", moving, 5)
    check_ddf("warp_between_grids", "ddf", ddf)
    mode = choose("warp_between_grids", "mode", mode, _MODES).value
    padding_mode = choose("warp_between_grids", "padding_mode", padding_mode, _PADDING).value
    if ddf.shape[0] not in (1, moving.shape[0]):
        raise UserInputError(f"warp_between_grids: ddf batch size {ddf.shape[0]} must be 1 or the moving batch {moving.shape[0]}.")
    m = voxel_map(fixed_affine, moving_affine).to(device=ddf.device, dtype=ddf.dtype)
    src = moving if moving.is_floating_point() else moving.to(ddf.dtype)
    base = mapped_coordinates(m, ddf.shape[2:], device=ddf.device, dtype=ddf.dtype).unsqueeze(0)
    coords = base + torch.einsum("ij,bj...->b...i", m[:3, :3], ddf)
    out = _sample(src.to(ddf.dtype) if src.dtype != ddf.dtype else src, coords, mode, padding_mode)
    if not moving.is_floating_point():
        out = out.round().to(moving.dtype) if mode == "nearest" else out
    elif out.dtype != moving.dtype:
        out = out.to(moving.dtype)
    return out


def map_points_world(points: torch.Tensor, ddf: torch.Tensor, affine) -> torch.Tensor:
    """Move world points (mm) of the fixed frame by a DDF on the fixed grid: ``X + A[:3, :3] u(A^-1 X)``.

    Args:
        points: ``(N, 3)`` world coordinates (RAS mm, the frame of ``affine``).
        ddf: MONAI DDF ``(1, 3, H, W, D)`` in voxels of the grid of ``affine``.
        affine: 4x4 voxel-to-world matrix of that grid.

    Returns:
        ``(N, 3)`` float64 world coordinates of the corresponding moving points (displacement sampled
        trilinearly, border values outside the grid).
    """
    check_points("map_points_world", "points", points)
    check_ddf("map_points_world", "ddf", ddf)
    if points.ndim != 2 or ddf.shape[0] != 1:
        raise UserInputError(
            f"map_points_world: expected points (N, 3) and ddf (1, 3, H, W, D), got {tuple(points.shape)} and {tuple(ddf.shape)}."
        )
    pts = points.to(torch.float64)
    vox = points_world_to_voxel(pts, affine)
    u = sample_at_points(ddf.detach().to(torch.float64).cpu(), vox.cpu())[0]
    return points_voxel_to_world(vox.cpu() + u, affine)
