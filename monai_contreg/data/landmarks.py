"""Landmark files in world coordinates for TRE: DIR-Lab style ``.txt`` and Learn2Reg voxel CSVs.

DIR-Lab (4D CT / COPDgene) landmark files list one landmark per line as three whitespace-separated
(or comma-separated) **1-based voxel indices** ``x y z`` of the image they belong to, whose voxel spacing is
stated separately (per case, e.g. ``0.97 x 0.97 x 2.5`` mm). Index ``x`` runs along the first array axis of
the image read by nibabel/ITK (``[x, y, z]`` index order). World coordinates are ``(index - 1) * spacing``
(DIR-Lab's frame, origin at voxel 0) or, given the image's affine, ``A @ (index - 1)`` (the image's RAS
frame, to compare with fields from :func:`monai_contreg.native.register_native`).

Note: some public conversions of DIR-Lab images to NIfTI flip an axis; the landmark indices then need the
same flip before use (``n - 1 - i``), which :func:`load_landmarks_voxel` does with ``flip_axes``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingFileError, UserInputError
from ..spatial.conventions import points_voxel_to_world, spacing_from_affine

__all__ = [
    "landmark_tre",
    "landmarks_to_world",
    "load_dirlab_landmarks",
    "load_landmarks_voxel",
    "save_landmarks_voxel",
]


def load_landmarks_voxel(
    path: str | Path,
    one_based: bool = True,
    flip_axes: Sequence[int] = (),
    shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """Read landmark voxel indices (one ``x y z`` row per landmark, whitespace or commas) -> 0-based ``(N, 3)``.

    Args:
        path: ``.txt``/``.csv`` file.
        one_based: the file counts voxels from 1 (DIR-Lab) rather than 0 (Learn2Reg).
        flip_axes: array axes whose index runs the other way in the image you use (``i -> n_i - 1 - i``).
        shape: the image's spatial shape; needed with ``flip_axes``.

    Returns:
        ``(N, 3)`` float64 0-based voxel coordinates.

    Raises:
        FileNotFoundError / ValueError naming the path: missing file, not three numbers per row, no row.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"load_landmarks_voxel: landmark file {str(p)!r} does not exist.")
    rows = []
    for lineno, line in enumerate(p.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = [v for v in re.split(r"[\s,;]+", text) if v]
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise UserInputError(
                f"load_landmarks_voxel: landmark file {str(p)!r} line {lineno}: expected 3 numbers, got {text!r}."
            ) from None
        if len(values) != 3:
            raise UserInputError(
                f"load_landmarks_voxel: landmark file {str(p)!r} line {lineno}: expected 3 numbers, got {len(values)}."
            )
        rows.append(values)
    if not rows:
        raise UserInputError(f"load_landmarks_voxel: landmark file {str(p)!r} holds no landmark.")
    arr = torch.as_tensor(np.asarray(rows, dtype=np.float64))
    if not bool(torch.isfinite(arr).all()):
        raise UserInputError(f"load_landmarks_voxel: landmark file {str(p)!r} contains NaN or infinite coordinates.")
    if one_based:
        arr = arr - 1.0
    if flip_axes:
        if shape is None or len(shape) != 3:
            raise UserInputError(f"load_landmarks_voxel: flip_axes={list(flip_axes)} needs the image shape (3 ints), got {shape!r}.")
        for ax in flip_axes:
            if ax not in (0, 1, 2):
                raise UserInputError(f"load_landmarks_voxel: flip_axes entries must be 0, 1 or 2, got {ax!r}.")
            arr[:, ax] = float(shape[ax]) - 1.0 - arr[:, ax]
    return arr


def landmarks_to_world(
    voxels: torch.Tensor, spacing: Sequence[float] | None = None, affine=None
) -> torch.Tensor:
    """0-based voxel coordinates ``(N, 3)`` -> world millimetres ``(N, 3)`` float64.

    Args:
        voxels: ``(N, 3)`` voxel coordinates.
        spacing: voxel size (mm) per axis: world = ``voxels * spacing`` (DIR-Lab's frame).
        affine: 4x4 voxel-to-world matrix: world = ``A @ voxels`` (the image's RAS frame). If both are
            given they must agree on the spacing (within 1e-3 mm).
    """
    v = torch.as_tensor(voxels, dtype=torch.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise UserInputError(f"landmarks_to_world: voxels must have shape (N, 3), got {tuple(v.shape)}.")
    if spacing is None and affine is None:
        raise UserInputError("landmarks_to_world: give the image's spacing (DIR-Lab frame) or its affine (RAS frame).")
    if spacing is not None:
        sp = [float(s) for s in spacing]
        if len(sp) != 3 or min(sp) <= 0:
            raise UserInputError(f"landmarks_to_world: spacing must be three positive numbers (mm), got {list(spacing)}.")
        if affine is not None:
            a_sp = spacing_from_affine(affine)
            if max(abs(a - b) for a, b in zip(a_sp, sp)) > 1e-3:
                raise UserInputError(
                    f"landmarks_to_world: spacing {sp} disagrees with the affine's spacing {[round(s, 4) for s in a_sp]}."
                )
        else:
            return v * torch.as_tensor(sp, dtype=torch.float64)
    return points_voxel_to_world(v, affine)


def load_dirlab_landmarks(
    path: str | Path,
    spacing: Sequence[float],
    affine=None,
    one_based: bool = True,
    flip_axes: Sequence[int] = (),
    shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """Read a DIR-Lab landmark file straight into world millimetres ``(N, 3)``.

    Args:
        path: the ``.txt`` file (``x y z`` 1-based voxel indices per row).
        spacing: the case's stated voxel spacing (mm), e.g. ``(0.97, 0.97, 2.5)``.
        affine: optional image affine: world = ``A @ (index - 1)`` (RAS) instead of ``(index - 1) * spacing``.
        one_based, flip_axes, shape: see :func:`load_landmarks_voxel`.

    Returns:
        ``(N, 3)`` float64 world coordinates.
    """
    vox = load_landmarks_voxel(path, one_based=one_based, flip_axes=flip_axes, shape=shape)
    return landmarks_to_world(vox, spacing=spacing, affine=affine)


def save_landmarks_voxel(path: str | Path, voxels, one_based: bool = True, decimals: int = 3) -> Path:
    """Write 0-based voxel coordinates ``(N, 3)`` as a DIR-Lab style text file (tab separated), atomically."""
    from ..io.atomic import atomic_path

    arr = np.asarray(torch.as_tensor(voxels, dtype=torch.float64))
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise UserInputError(f"save_landmarks_voxel: voxels must have shape (N, 3), got {arr.shape}.")
    arr = arr + (1.0 if one_based else 0.0)
    with atomic_path(path) as tmp:
        np.savetxt(tmp, arr, delimiter="\t", fmt=f"%.{int(decimals)}f")
    return Path(path)


def landmark_tre(moved_mm, target_mm) -> torch.Tensor:
    """Per-landmark distance (mm) ``(N,)`` between mapped landmarks and their targets, both ``(N, 3)`` in mm."""
    a = torch.as_tensor(moved_mm, dtype=torch.float64)
    b = torch.as_tensor(target_mm, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise UserInputError(f"landmark_tre: moved_mm and target_mm must both be (N, 3), got {tuple(a.shape)} and {tuple(b.shape)}.")
    return (a - b).norm(dim=-1)
