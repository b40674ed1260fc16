"""The one home of every coordinate convention in monai_contreg.

monai_contreg uses a single displacement convention everywhere, MONAI's dense displacement field (DDF):

* a tensor of shape ``(B, 3, H, W, D)``;
* values in **voxels of the grid the field lives on**;
* channel ``i`` is the displacement along tensor dimension ``i + 2`` (array axis ``i``);
* it maps **fixed -> moving**: fixed voxel ``x`` corresponds to moving voxel ``x + u(x)``.

This is what :class:`monai.networks.blocks.Warp` expects, and, for batch item 0 moved to channels-last, what
Learn2Reg stores in ``disp_FFFF_MMMM.nii.gz``. Every conversion to another convention lives here, and
nowhere else flips an axis or rescales a coordinate:

* :func:`voxel_to_normalized` / :func:`ddf_to_sampling_grid`: torch ``grid_sample`` coordinates. ``grid_sample``
  wants the last dimension ordered ``(x, y, z) = (axis 2, axis 1, axis 0)``, i.e. reversed, and in ``[-1, 1]``.
  We always use ``align_corners=False`` (:data:`ALIGN_CORNERS`): a grid of ``n`` voxels covers ``[-1, 1]``
  edge to edge, voxel ``j`` sits at ``(2 j + 1) / n - 1``. Grids of different resolution over the same field
  of view (a volume and its 2x average-pooled copy) then share one normalized frame.
  Example: ``n = 4`` voxels: voxel 0 -> -0.75, voxel 1.5 -> 0.0, voxel 3 -> 0.75.
* :func:`ddf_to_learn2reg` / :func:`learn2reg_to_ddf`: the Learn2Reg ``(H, W, D, 3)`` array.
  Example: ``ddf[0, :, 10, 20, 30] == [1., 2., 3.]`` <-> ``arr[10, 20, 30] == [1., 2., 3.]``.
* :func:`resize_ddf`: a DDF on another grid over the same field of view (values rescaled).
  Example: a constant 1-voxel shift on a 112-voxel axis is a 2-voxel shift on the 224-voxel axis.
* :func:`ddf_voxel_to_world` / :func:`ddf_world_to_voxel`, :func:`points_voxel_to_world` /
  :func:`points_world_to_voxel`: millimetres through a 4x4 voxel-to-world affine (as nibabel and MONAI
  MetaTensor store it). Example: affine ``diag(1.5, 1.5, 1.5, 1)`` turns a ``(2, 0, 0)`` voxel displacement into
  ``(3, 0, 0)`` mm.
* :func:`voxel_map`: voxel coordinates of one grid -> voxel coordinates of another grid over the same world
  (``A_dst^-1 @ A_src``). Example: src ``diag(2, 2, 2, 1)``, dst ``diag(1, 1, 1, 1)``: src voxel 3 -> dst voxel 6.
* :func:`ras_lps_flip`, :func:`affine_to_itk_geometry` / :func:`itk_geometry_to_affine`: ITK's frame. World
  coordinates here are RAS (nibabel/MONAI); ITK's physical space is LPS, i.e. x and y negated (the map is its
  own inverse, for points and for vectors alike). Example: RAS point ``(1, 2, 3)`` is LPS ``(-1, -2, 3)``; the
  affine ``diag(1.5, 1.5, 2, 1)`` is ITK origin ``(0, 0, 0)``, spacing ``(1.5, 1.5, 2)``, direction
  ``diag(-1, -1, 1)``. ITK indexes an image ``[x, y, z]`` = our array axes ``(0, 1, 2)``; its numpy view is
  ``(z, y, x)``, i.e. reversed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import check_ddf, check_points, check_tensor
from ..errors import UserInputError

__all__ = [
    "ALIGN_CORNERS",
    "affine_to_itk_geometry",
    "as_ddf_tensor",
    "check_shape3",
    "ddf_to_learn2reg",
    "ddf_to_sampling_grid",
    "ddf_voxel_to_world",
    "ddf_world_to_voxel",
    "identity_grid",
    "itk_geometry_to_affine",
    "learn2reg_to_ddf",
    "points_voxel_to_world",
    "points_world_to_voxel",
    "ras_lps_flip",
    "ras_lps_matrix",
    "resize_ddf",
    "spacing_from_affine",
    "voxel_map",
    "voxel_to_normalized",
]

#: ``align_corners`` used by every ``grid_sample``/``interpolate`` call on images and fields.
ALIGN_CORNERS = False


def identity_grid(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of every voxel of a grid: ``(1, 3, H, W, D)``, channel ``i`` = index along axis ``i``.

    Example: ``identity_grid((2, 3, 4))[0, :, 1, 2, 3] == [1., 2., 3.]``.
    """
    axes = [torch.arange(int(n), device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def voxel_to_normalized(coords: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Voxel coordinates ``(..., 3)`` (array-axis order) -> ``grid_sample`` coordinates ``(..., 3)`` (x, y, z).

    Uses the ``align_corners=False`` frame: ``n = (2 * v + 1) / size - 1``, then reverses the last dimension.
    Example: shape ``(4, 4, 8)``, voxel ``(0, 1.5, 7)`` -> ``(0.875, 0.0, -0.75)``.
    """
    out = 2.0 * coords + 1.0
    for axis, n in enumerate(shape):  # Python scalars: no host-to-device copy (a sync on CUDA) per call
        out[..., axis].div_(float(n))
    return (out - 1.0).flip(-1)


def ddf_to_sampling_grid(ddf: torch.Tensor) -> torch.Tensor:
    """MONAI DDF ``(B, 3, H, W, D)`` (voxels) -> ``grid_sample`` grid ``(B, H, W, D, 3)``.

    The grid samples, at every fixed voxel ``x``, the moving image at ``x + u(x)`` (use ``align_corners=False``).
    """
    check_ddf("ddf_to_sampling_grid", "ddf", ddf)
    shape = ddf.shape[2:]
    coords = identity_grid(shape, ddf.device, ddf.dtype) + ddf
    return voxel_to_normalized(coords.movedim(1, -1), shape)


def resize_ddf(ddf: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a DDF onto a grid of ``shape`` voxels covering the same field of view.

    Interpolates trilinearly (``align_corners=False`` frame) and rescales channel ``i`` by
    ``shape[i] / ddf.shape[i + 2]`` so that values are voxels of the new grid.
    Returns ``ddf`` itself when the shape is unchanged.
    """
    check_ddf("resize_ddf", "ddf", ddf)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise UserInputError(f"resize_ddf: shape must have 3 entries, got {shape}.")
    old = tuple(ddf.shape[2:])
    if old == shape:
        return ddf
    out = F.interpolate(ddf, size=shape, mode="trilinear", align_corners=ALIGN_CORNERS)
    scale = torch.as_tensor([n / o for n, o in zip(shape, old)], device=ddf.device, dtype=ddf.dtype)
    return out * scale.view(1, 3, 1, 1, 1)


def ddf_to_learn2reg(ddf: torch.Tensor) -> np.ndarray:
    """MONAI DDF ``(1, 3, H, W, D)`` -> Learn2Reg array ``(H, W, D, 3)`` (float32 numpy, voxels)."""
    check_ddf("ddf_to_learn2reg", "ddf", ddf)
    if ddf.shape[0] != 1:
        raise UserInputError(f"ddf_to_learn2reg: ddf must hold one field (batch size 1), got shape {tuple(ddf.shape)}.")
    return ddf[0].detach().movedim(0, -1).float().cpu().numpy()


def learn2reg_to_ddf(field: np.ndarray | torch.Tensor, device=None, dtype=torch.float32) -> torch.Tensor:
    """Learn2Reg array ``(H, W, D, 3)`` (any float, voxels) -> MONAI DDF ``(1, 3, H, W, D)``."""
    t = torch.as_tensor(np.asarray(field) if not isinstance(field, torch.Tensor) else field)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise UserInputError(f"learn2reg_to_ddf: field must have shape (H, W, D, 3), got {tuple(t.shape)}.")
    return t.to(device=device, dtype=dtype).movedim(-1, 0).unsqueeze(0).contiguous()


def _affine(where: str, affine) -> torch.Tensor:
    a = torch.as_tensor(np.asarray(affine, dtype=np.float64) if not isinstance(affine, torch.Tensor) else affine)
    if a.shape not in ((4, 4), (1, 4, 4)):
        raise UserInputError(f"{where}: affine must be a 4x4 voxel-to-world matrix, got shape {tuple(a.shape)}.")
    return a.reshape(4, 4).to(torch.float64)


def spacing_from_affine(affine) -> tuple[float, float, float]:
    """Voxel spacing (mm) along the three array axes: norms of the affine's first three columns."""
    a = _affine("spacing_from_affine", affine)
    return tuple(float(v) for v in torch.linalg.norm(a[:3, :3], dim=0))


def ddf_voxel_to_world(ddf: torch.Tensor, affine) -> torch.Tensor:
    """DDF in voxels -> displacement in world millimetres ``(B, 3, H, W, D)``, channel = world axis.

    ``u_mm = A[:3, :3] @ u_vox`` (the translation part of the affine does not act on displacements).
    """
    check_ddf("ddf_voxel_to_world", "ddf", ddf)
    a = _affine("ddf_voxel_to_world", affine)[:3, :3].to(ddf.device, ddf.dtype)
    return torch.einsum("ij,bj...->bi...", a, ddf)


def ddf_world_to_voxel(ddf_mm: torch.Tensor, affine) -> torch.Tensor:
    """Inverse of :func:`ddf_voxel_to_world`: ``u_vox = A[:3, :3]^-1 @ u_mm``."""
    check_ddf("ddf_world_to_voxel", "ddf_mm", ddf_mm)
    a = torch.linalg.inv(_affine("ddf_world_to_voxel", affine)[:3, :3]).to(ddf_mm.device, ddf_mm.dtype)
    return torch.einsum("ij,bj...->bi...", a, ddf_mm)


def points_voxel_to_world(points: torch.Tensor, affine) -> torch.Tensor:
    """Points ``(..., N, 3)`` in voxel coordinates -> world millimetres: ``A[:3, :3] @ p + A[:3, 3]``."""
    check_points("points_voxel_to_world", "points", points)
    a = _affine("points_voxel_to_world", affine).to(points.device, points.dtype if points.is_floating_point() else torch.float64)
    p = points.to(a.dtype)
    return p @ a[:3, :3].T + a[:3, 3]


def points_world_to_voxel(points: torch.Tensor, affine) -> torch.Tensor:
    """Points ``(..., N, 3)`` in world millimetres -> voxel coordinates (inverse of the affine)."""
    check_points("points_world_to_voxel", "points", points)
    inv = torch.linalg.inv(_affine("points_world_to_voxel", affine))
    a = inv.to(points.device, points.dtype if points.is_floating_point() else torch.float64)
    p = points.to(a.dtype)
    return p @ a[:3, :3].T + a[:3, 3]


def voxel_map(src_affine, dst_affine) -> torch.Tensor:
    """The 4x4 matrix taking voxel coordinates of the ``src`` grid to voxel coordinates of the ``dst`` grid.

    Both grids live in one world frame: ``M = dst_affine^-1 @ src_affine`` (float64).
    Example: src ``diag(2, 2, 2, 1)``, dst identity: ``M @ (3, 0, 0, 1) == (6, 0, 0, 1)``.
    """
    src = _affine("voxel_map", src_affine)
    dst = _affine("voxel_map", dst_affine)
    return torch.linalg.inv(dst) @ src


#: RAS <-> LPS: x and y change sign, z is kept (ITK's physical frame is LPS).
_RAS_LPS = (-1.0, -1.0, 1.0)


def ras_lps_flip(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Points or vectors RAS <-> LPS (the map is its own inverse): negate components 0 and 1 along ``dim``.

    Args:
        x: a tensor with 3 entries along ``dim``: points ``(..., N, 3)`` (``dim=-1``) or a world-mm displacement
            field ``(B, 3, H, W, D)`` (``dim=1``).

    Example: ``ras_lps_flip(torch.tensor([1., 2., 3.])) == [-1., -2., 3.]``.
    """
    if x.shape[dim] != 3:
        raise UserInputError(f"ras_lps_flip: x must have 3 entries along dim {dim}, got shape {tuple(x.shape)}.")
    shape = [1] * x.ndim
    shape[dim] = 3
    return x * torch.as_tensor(_RAS_LPS, dtype=x.dtype, device=x.device).view(shape)


def ras_lps_matrix() -> np.ndarray:
    """The 4x4 homogeneous RAS <-> LPS matrix ``diag(-1, -1, 1, 1)`` (float64; its own inverse).

    ``ras_lps_matrix() @ A`` is ITK's LPS voxel-to-world matrix of a RAS affine ``A``.
    Example: ``ras_lps_matrix() @ (1, 2, 3, 1) == (-1, -2, 3, 1)``.
    """
    return np.diag([*_RAS_LPS, 1.0])


def affine_to_itk_geometry(affine, orthogonal: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 4x4 RAS voxel-to-world affine -> ITK ``(origin (3,), spacing (3,), direction (3, 3))`` in LPS, float64.

    ITK maps index ``i`` to ``origin + direction @ diag(spacing) @ i``; this equals ``flip @ affine`` with
    ``flip = diag(-1, -1, 1)``. Example: ``diag(1.5, 1.5, 2, 1)`` -> origin ``0``, spacing ``(1.5, 1.5, 2)``,
    direction ``diag(-1, -1, 1)``.

    Args:
        affine: the 4x4 RAS matrix.
        orthogonal: refuse non-orthogonal voxel axes (largest ``|cos|`` above 1e-4; default). ``False`` keeps
            them as a non-orthonormal direction matrix, which ITK images hold in memory and in ``.h5``, NRRD and
            MetaImage files (for a grid that ITK itself read that way).

    Raises:
        UserInputError: a zero-length axis, or non-orthogonal axes with ``orthogonal=True``.
    """
    a = _affine("affine_to_itk_geometry", affine).numpy()
    flip = np.diag(_RAS_LPS)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise UserInputError(f"affine_to_itk_geometry: affine has a zero-length axis, spacing {spacing.tolist()}.")
    direction = flip @ a[:3, :3] / spacing
    shear = float(np.abs(direction.T @ direction - np.eye(3)).max())
    if orthogonal and shear > 1e-4:
        from ..errors import UserInputError

        raise UserInputError(
            f"affine_to_itk_geometry: the grid's voxel axes are not orthogonal (largest |cos| between axes "
            f"{shear:.4g}); ITK's direction matrix is orthonormal, so ITK, ANTs and Slicer would place this grid "
            "elsewhere: not written."
        )
    origin = flip @ a[:3, 3]
    return origin, spacing, direction


def itk_geometry_to_affine(origin, spacing, direction) -> np.ndarray:
    """ITK ``origin (3,)``, ``spacing (3,)``, ``direction (3, 3)`` (LPS) -> 4x4 RAS voxel-to-world affine (float64).

    Inverse of :func:`affine_to_itk_geometry`.
    """
    o = np.asarray(origin, dtype=np.float64).reshape(-1)
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    d = np.asarray(direction, dtype=np.float64)
    if o.shape != (3,) or s.shape != (3,) or d.shape != (3, 3):
        raise UserInputError(
            "itk_geometry_to_affine: expected origin (3,), spacing (3,), direction (3, 3), "
            f"got {o.shape}, {s.shape}, {d.shape}."
        )
    flip = np.diag(_RAS_LPS)
    out = np.eye(4)
    out[:3, :3] = flip @ d @ np.diag(s)
    out[:3, 3] = flip @ o
    return out


def check_shape3(where: str, name: str, shape: Sequence[int]) -> tuple[int, int, int]:
    """Check a 3-D spatial shape (three positive integers)."""
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as exc:  # pragma: no cover - defensive
        raise UserInputError(f"{where}: {name} must be three positive integers, got {shape!r}.") from exc
    if len(out) != 3 or min(out) < 1:
        raise UserInputError(f"{where}: {name} must be three positive integers, got {shape!r}.")
    return out  # type: ignore[return-value]


def as_ddf_tensor(where: str, name: str, ddf) -> torch.Tensor:
    """Accept a MONAI DDF tensor or a Learn2Reg ``(H, W, D, 3)`` array; return a DDF ``(1, 3, H, W, D)``."""
    if isinstance(ddf, np.ndarray) or (isinstance(ddf, torch.Tensor) and ddf.ndim == 4 and ddf.shape[-1] == 3):
        return learn2reg_to_ddf(ddf)
    check_tensor(where, name, ddf, 5)
    return check_ddf(where, name, ddf)
