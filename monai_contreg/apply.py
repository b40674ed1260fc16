"""Apply a registration result to files: images (linear), label maps (nearest), point sets (CSV).

The transform is a field on the fixed grid, fixed -> moving, given as

* a Learn2Reg field file (``.nii.gz``/``.nii``: voxels of the fixed grid, the fixed affine in the header;
  ``.npz``: no geometry, pass ``reference``), read by :func:`monai_contreg.io.fields.load_field`; or
* an ITK displacement field transform (``.h5``) or displacement image (LPS mm) written by
  :func:`monai_contreg.io.itk_transforms.save_itk_transform` (or by ITK/ANTs), read by
  :func:`~monai_contreg.io.itk_transforms.load_itk_transform`.

Images and label maps are *moving* images on their own grids (any format :func:`load_image` reads); the
output is on the fixed grid with the fixed affine: ``out(x) = moving(A_m^-1 A_f (x + u(x)))``.
A Learn2Reg field is in the package's frame: ``A_m`` is the package's reading of the moving file. An ITK transform
is in ITK's frame (its grid is ITK's reading of the fixed image, its values end at ITK's moving points): ``A_m``
is then ITK's reading of the moving file (:func:`~monai_contreg.io.geometry_checks.itk_reading`), so that
``contreg warp --transform`` applies an export as ITK does, also for a header the two read differently.
Point sets are *fixed* points mapped to the moving image (what ITK's ``TransformPoint`` does with the
transform): Learn2Reg-style CSVs of ``x,y,z`` rows, either voxel coordinates (fixed grid in; moving grid out
when ``moving_reference`` is given, else fixed-grid positions, Learn2Reg's convention) or world millimetres
(RAS, or LPS with ``lps=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ._validation import choose
from .data.keypoints import load_keypoints, save_keypoints
from .errors import UserInputError
from .io.fields import load_field
from .io.geometry_checks import itk_reading
from .io.images import load_image, save_image
from .io.itk_transforms import load_itk_transform
from .modes import IMAGE_PADDING, LABEL_PADDING, InterpolationMode
from .spatial.conventions import points_voxel_to_world, points_world_to_voxel, ras_lps_flip
from .spatial.grid import GRID_ATOL_MM, Grid
from .spatial.resample import map_points_world, warp_between_grids

__all__ = ["apply_to_files", "load_displacement", "warp_image_file", "warp_points_file"]

_SPACES = ("voxel", "world")
_FRAMES = ("package", "itk")


def load_displacement(
    field: str | Path | None = None, transform: str | Path | None = None, reference: str | Path | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Read the transform to apply: exactly one of a Learn2Reg ``field`` or an ITK ``transform``.

    Args:
        field: Learn2Reg field file (voxels).
        transform: ITK displacement field transform (``.h5``) or displacement image (LPS mm).
        reference: fixed image whose affine (and shape) the field lives on; needed for ``.npz`` fields,
            checked against the file's geometry otherwise.

    Returns:
        ``(ddf, affine)``: MONAI DDF ``(1, 3, H, W, D)`` in fixed-grid voxels and the fixed 4x4 RAS affine.
    """
    where = "load_displacement"
    if (field is None) == (transform is None):
        raise UserInputError(f"{where}: give exactly one of field (Learn2Reg file) or transform (ITK file), got field={field!r}, transform={transform!r}.")
    if field is not None:
        ddf, affine = load_field(field)  # refuses an ITK/ANTs displacement image, naming --transform
        geometry_in_file = not str(field).lower().endswith(".npz")
    else:
        ddf, affine = load_itk_transform(transform)
        geometry_in_file = True
    if reference is not None:
        ref = load_image(reference)
        ref_aff = np.asarray(ref.affine, dtype=np.float64)
        if transform is not None:  # an ITK transform lives on ITK's reading of the fixed image
            ref_aff = _itk_affine(where, "reference", reference, ref_aff)
        ref_grid = Grid(tuple(ref.shape[1:]), ref_aff)
        if ref_grid.shape != tuple(ddf.shape[2:]):
            raise UserInputError(
                f"{where}: reference {str(reference)!r} has shape {ref_grid.shape}, the field {tuple(ddf.shape[2:])}."
            )
        if geometry_in_file and not ref_grid.same_as(Grid(ref_grid.shape, affine)):  # the one tolerance, GRID_ATOL_MM
            raise UserInputError(
                f"{where}: reference {str(reference)!r} affine {np.round(ref_aff, 4).tolist()} differs from the field's "
                f"{np.round(affine, 4).tolist()} (by more than {GRID_ATOL_MM:g} mm in an entry: another grid)."
            )
        affine = ref_aff
    elif not geometry_in_file:
        raise UserInputError(f"{where}: field {str(field)!r} (.npz) carries no geometry; pass reference (the fixed image).")
    return ddf, affine


def _itk_affine(where: str, name: str, path: str | Path, ours: np.ndarray) -> np.ndarray:
    """ITK's reading of an image file's geometry (4x4 RAS), or a UserInputError naming the file."""
    reading = itk_reading(path, ours=ours)
    if reading.affine is None:
        raise UserInputError(f"{where}: ITK cannot read the {name} image {str(path)!r} ({reading.problem}); an ITK "
                             "transform cannot be applied to it (use the Learn2Reg field, --field).")
    return reading.affine


def warp_image_file(
    src: str | Path, dst: str | Path, ddf: torch.Tensor, affine, labels: bool = False, padding_mode: str = IMAGE_PADDING,
    frame: str = "package",
) -> Path:
    """Warp a moving image file into the fixed grid and write it (atomically) with the fixed affine.

    Args:
        src: moving image (its own grid and affine).
        dst: output ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``.
        ddf: DDF ``(1, 3, H, W, D)`` on the fixed grid (fixed voxels, fixed -> moving).
        affine: the fixed grid's 4x4 RAS affine.
        labels: nearest-neighbour interpolation, output stored as integers (else trilinear, float32).
        padding_mode: outside the moving image, for images: ``"border"`` (default) or ``"zeros"``; label maps are
            always padded with zeros (:data:`~monai_contreg.modes.LABEL_PADDING`).
        frame: ``"package"`` (a Learn2Reg field: the moving file as this package reads it) or ``"itk"`` (an ITK
            transform: the moving file as ITK reads it).
    """
    frame = choose("warp_image_file", "frame", frame, _FRAMES)
    img = load_image(src, dtype=None)
    arr = img.as_tensor()[None]
    m_aff = np.asarray(img.affine, dtype=np.float64)
    if frame == "itk":
        m_aff = _itk_affine("warp_image_file", "moving", src, m_aff)
    if labels:
        out = warp_between_grids(arr.to(torch.float64), m_aff, ddf.to(torch.float64), affine, mode=InterpolationMode.NEAREST,
                                  padding_mode=LABEL_PADDING)
        vals = out[0, 0].round().numpy()
        dtype = np.int16 if vals.size == 0 or (vals.min() >= -32768 and vals.max() <= 32767) else np.int32
        return save_image(dst, vals.astype(dtype), affine)
    out = warp_between_grids(arr.to(torch.float32), m_aff, ddf.to(torch.float32), affine, padding_mode=padding_mode)
    return save_image(dst, out[0, 0].numpy().astype(np.float32), affine)


def warp_points_file(
    src: str | Path,
    dst: str | Path,
    ddf: torch.Tensor,
    affine,
    space: str = "voxel",
    moving_reference: str | Path | None = None,
    lps: bool = False,
    frame: str = "package",
) -> Path:
    """Map fixed points (CSV ``x,y,z`` rows) to the moving image and write them (atomically) as a CSV.

    Args:
        src, dst: input and output CSV files.
        ddf, affine: the field on the fixed grid and its affine (see :func:`load_displacement`).
        space: ``"voxel"`` (fixed-grid voxel coordinates in; moving-grid voxel coordinates out when
            ``moving_reference`` is given, else fixed-grid positions) or ``"world"`` (mm in and out).
        moving_reference: moving image whose grid voxel outputs refer to (voxel space only).
        lps: world points are in ITK's LPS frame instead of RAS (world space only).
        frame: ``"package"`` or ``"itk"``: how ``moving_reference`` is read (see :func:`warp_image_file`).
    """
    space = choose("warp_points_file", "space", space, _SPACES)
    frame = choose("warp_points_file", "frame", frame, _FRAMES)
    pts = load_keypoints(src, name="points")
    if space == "world":
        ras = ras_lps_flip(pts) if lps else pts
        moved = map_points_world(ras, ddf, affine)
        out = ras_lps_flip(moved) if lps else moved
    else:
        moved_world = map_points_world(points_voxel_to_world(pts, affine), ddf, affine)
        m_aff = affine
        if moving_reference is not None:
            m_aff = np.asarray(load_image(moving_reference).affine, dtype=np.float64)
            if frame == "itk":
                m_aff = _itk_affine("warp_points_file", "moving reference", moving_reference, m_aff)
        out = points_world_to_voxel(moved_world, m_aff)
    save_keypoints(dst, out)
    return Path(dst)


def apply_to_files(
    *,
    field: str | Path | None = None,
    transform: str | Path | None = None,
    reference: str | Path | None = None,
    images: Sequence[tuple[str | Path, str | Path]] = (),
    labels: Sequence[tuple[str | Path, str | Path]] = (),
    points: Sequence[tuple[str | Path, str | Path]] = (),
    points_space: str = "voxel",
    moving_reference: str | Path | None = None,
    lps: bool = False,
) -> list[Path]:
    """Read the transform once and apply it to every ``(input, output)`` pair; returns the written paths."""
    if not (images or labels or points):
        raise UserInputError("apply_to_files: nothing to warp; give at least one image, label map or point set.")
    choose("apply_to_files", "points_space", points_space, _SPACES)
    ddf, affine = load_displacement(field, transform, reference)
    frame = "package" if transform is None else "itk"
    written = [warp_image_file(s, d, ddf, affine, frame=frame) for s, d in images]
    written += [warp_image_file(s, d, ddf, affine, labels=True, frame=frame) for s, d in labels]
    written += [warp_points_file(s, d, ddf, affine, points_space, moving_reference, lps, frame) for s, d in points]
    return written
