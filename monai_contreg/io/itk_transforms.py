"""Export and import of fields as ITK displacement field transforms (LPS millimetres).

ITK's :class:`itk.DisplacementFieldTransform` holds a vector image on the fixed grid whose value at a fixed
physical point ``X`` is the displacement ``T(X) - X`` to the corresponding moving physical point, in
millimetres of ITK's LPS frame; ``TransformPoint`` interpolates it linearly. A MONAI DDF (voxels of the fixed
grid, fixed -> moving) becomes one by ``u_mm = A[:3, :3] @ u`` (RAS mm, :func:`ddf_voxel_to_world`) followed
by the RAS -> LPS flip (:func:`ras_lps_flip`); the image geometry is the fixed grid's
(:func:`affine_to_itk_geometry`). This is the transform ``antsApplyTransforms``/``itk.resample_image_filter``
use to pull a moving image into the fixed frame.

Files:

* ``.h5`` / ``.hdf5``: an ITK transform file holding one ``DisplacementFieldTransform_double_3_3``
  (``itk.transformread`` returns it ready to use).
* ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``: the displacement field image itself (float32 3-vectors, LPS mm,
  ITK writes NIfTI as ``(X, Y, Z, 1, 3)`` with intent ``vector``), the form ANTs writes warps in; load it with
  ``itk.imread(path, pixel_type=itk.Vector[itk.F, 3])`` and give it to ``DisplacementFieldTransform[itk.F, 3]``.

All writes are atomic. ITK is imported lazily (it is slow to import).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError
from .._validation import check_ddf, check_finite
from ..errors import MissingFileError, UserInputError
from ..spatial.conventions import (
    affine_to_itk_geometry,
    ddf_voxel_to_world,
    ddf_world_to_voxel,
    itk_geometry_to_affine,
    ras_lps_flip,
)
from .atomic import atomic_path

__all__ = [
    "ITK_TRANSFORM_FORMATS",
    "ddf_to_itk_displacement",
    "ddf_to_itk_transform",
    "is_itk_transform_path",
    "itk_displacement_to_ddf",
    "load_itk_transform",
    "save_itk_transform",
]

_TRANSFORM_FILES = (".h5", ".hdf5")
_IMAGE_FILES = (".nii.gz", ".nii", ".nrrd", ".mha")
#: Extensions :func:`save_itk_transform` writes: ITK transform files, then displacement field images.
ITK_TRANSFORM_FORMATS = _TRANSFORM_FILES + _IMAGE_FILES


def _format(where: str, path: str | Path) -> str:
    name = str(path).lower()
    for ext in ITK_TRANSFORM_FORMATS:
        if name.endswith(ext):
            return ext
    raise UserInputError(f"{where}: path {str(path)!r} must end with one of {list(ITK_TRANSFORM_FORMATS)}.")


def is_itk_transform_path(path: str | Path) -> bool:
    """Whether ``path`` names an ITK transform file (``.h5``/``.hdf5``) rather than a field image."""
    return str(path).lower().endswith(_TRANSFORM_FILES)


def _lps_mm_array(ddf: torch.Tensor, affine) -> np.ndarray:
    """DDF ``(1, 3, H, W, D)`` voxels -> numpy ``(D, W, H, 3)`` float64 LPS mm (ITK's ``[z, y, x]`` buffer order)."""
    mm = ras_lps_flip(ddf_voxel_to_world(ddf.detach().cpu().to(torch.float64), affine), dim=1)
    return np.ascontiguousarray(mm[0].permute(3, 2, 1, 0).numpy())


def _set_geometry(img, affine) -> None:
    import itk

    origin, spacing, direction = affine_to_itk_geometry(affine)
    img.SetOrigin([float(v) for v in origin])
    img.SetSpacing([float(v) for v in spacing])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))


def ddf_to_itk_displacement(ddf: torch.Tensor, affine, precision: str = "float"):
    """A MONAI DDF on the fixed grid -> ITK displacement field image (LPS mm, fixed grid geometry).

    Args:
        ddf: DDF ``(1, 3, H, W, D)`` in voxels of the fixed grid, fixed -> moving.
        affine: the fixed grid's 4x4 RAS voxel-to-world matrix.
        precision: ``"float"`` (``itk.Image[itk.Vector[itk.F, 3], 3]``, writable as an image) or ``"double"``
            (``itk.Image[itk.Vector[itk.D, 3], 3]``, what ``DisplacementFieldTransform[itk.D, 3]`` takes).

    Returns:
        The ITK image; its index ``[x, y, z]`` is our voxel ``(x, y, z)``.
    """
    import itk

    check_ddf("ddf_to_itk_displacement", "ddf", ddf)
    if ddf.shape[0] != 1:
        raise UserInputError(f"ddf_to_itk_displacement: ddf must hold one field (batch 1), got shape {tuple(ddf.shape)}.")
    check_finite("ddf_to_itk_displacement", "ddf", ddf)
    if precision not in ("float", "double"):
        raise UserInputError(f"ddf_to_itk_displacement: precision must be 'float' or 'double', got {precision!r}.")
    arr = _lps_mm_array(ddf, affine)
    ctype = itk.F if precision == "float" else itk.D
    img_type = itk.Image[itk.Vector[ctype, 3], 3]
    img = img_type.New()
    region = itk.ImageRegion[3]()
    region.SetSize([int(s) for s in ddf.shape[2:]])
    img.SetRegions(region)
    img.Allocate()
    view = itk.array_view_from_image(img)
    view[...] = arr.astype(np.float32 if precision == "float" else np.float64)
    _set_geometry(img, affine)
    return img


def ddf_to_itk_transform(ddf: torch.Tensor, affine):
    """A MONAI DDF on the fixed grid -> ``itk.DisplacementFieldTransform[itk.D, 3]`` (fixed -> moving points).

    ``transform.TransformPoint(X)`` for a fixed LPS point ``X`` (mm) returns the corresponding moving LPS point.
    """
    import itk

    field = ddf_to_itk_displacement(ddf, affine, precision="double")
    tx = itk.DisplacementFieldTransform[itk.D, 3].New()
    tx.SetDisplacementField(field)
    return tx


def save_itk_transform(path: str | Path, ddf: torch.Tensor, affine) -> Path:
    """Write a DDF as an ITK displacement field transform (``.h5``) or displacement image, atomically.

    Args:
        path: ``*.h5``/``*.hdf5`` (ITK transform file) or ``*.nii.gz``, ``*.nii``, ``*.nrrd``, ``*.mha``
            (displacement field image, float32 LPS mm).
        ddf: DDF ``(1, 3, H, W, D)`` in voxels of the fixed grid, fixed -> moving.
        affine: the fixed grid's 4x4 RAS voxel-to-world matrix.

    Returns:
        The written path.
    """
    import itk

    fmt = _format("save_itk_transform", path)
    check_ddf("save_itk_transform", "ddf", ddf)
    with atomic_path(path) as tmp:
        if fmt in _TRANSFORM_FILES:
            itk.transformwrite([ddf_to_itk_transform(ddf, affine)], str(tmp), compression=True)
        else:
            itk.imwrite(ddf_to_itk_displacement(ddf, affine, precision="float"), str(tmp), compression=True)
    return Path(path)


def itk_displacement_to_ddf(field) -> tuple[torch.Tensor, np.ndarray]:
    """ITK displacement field image (LPS mm) -> (MONAI DDF ``(1, 3, H, W, D)`` float32 voxels, 4x4 RAS affine)."""
    import itk

    arr = np.asarray(itk.array_view_from_image(field), dtype=np.float64)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise UserInputError(f"itk_displacement_to_ddf: expected a 3-D image of 3-vectors, got an array of shape {arr.shape}.")
    affine = itk_geometry_to_affine(
        np.asarray(field.GetOrigin()), np.asarray(field.GetSpacing()), itk.array_from_matrix(field.GetDirection())
    )
    lps = torch.from_numpy(np.ascontiguousarray(arr.transpose(3, 2, 1, 0)))[None]  # (1, 3, H, W, D), LPS mm
    ddf = ddf_world_to_voxel(ras_lps_flip(lps, dim=1), affine)
    return ddf.to(torch.float32).contiguous(), affine


def load_itk_transform(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """Read a displacement field transform (``.h5``) or displacement image -> (DDF voxels, fixed affine).

    Returns:
        ``(ddf, affine)``: MONAI DDF ``(1, 3, H, W, D)`` float32 in voxels of the field's grid (fixed -> moving)
        and that grid's 4x4 RAS voxel-to-world matrix (float64).

    Raises:
        FileNotFoundError, ValueError: naming the path: missing file, unreadable file, a transform file that
            does not hold exactly one displacement field transform.
    """
    import itk

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"load_itk_transform: transform file {str(p)!r} does not exist.")
    fmt = _format("load_itk_transform", p)
    if fmt in (".nii", ".nii.gz"):
        import nibabel as nib

        try:
            shape = nib.load(str(p)).shape
        except Exception as exc:
            raise UserInputError(f"load_itk_transform: cannot read displacement field image {str(p)!r}: {exc}") from exc
        if len(shape) == 4 and shape[3] == 3:
            raise UserInputError(
                f"load_itk_transform: {str(p)!r} has shape {shape}, the layout of a Learn2Reg field (H, W, D, 3) in "
                "voxels of the fixed grid, not an ITK displacement field image (X, Y, Z, 1, 3) in LPS millimetres; "
                "read it with monai_contreg.io.fields.load_field (contreg warp --field)."
            )
    try:
        if fmt in _TRANSFORM_FILES:
            transforms = itk.transformread(str(p))
            names = [t.GetNameOfClass() for t in transforms]
            if len(transforms) != 1 or names[0] != "DisplacementFieldTransform":
                raise UserInputError(f"expected one DisplacementFieldTransform, found {names}")
            field = transforms[0].GetDisplacementField()
        else:
            field = itk.imread(str(p), pixel_type=itk.Vector[itk.F, 3])
    except Exception as exc:
        raise UserInputError(f"load_itk_transform: cannot read displacement field transform {str(p)!r}: {exc}") from exc
    return itk_displacement_to_ddf(field)
