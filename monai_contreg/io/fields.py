"""Reading and writing displacement fields in the Learn2Reg layout (``(H, W, D, 3)`` voxels, fixed -> moving).

``.nii.gz``/``.nii`` files carry the fixed image's affine; ``.npz`` files hold one array (``arr_0``), by default
float16 as Learn2Reg submissions allow. Writes are atomic.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .._validation import check_ddf, check_finite, check_suffix, choose
from ..errors import MissingFileError, UserInputError
from ..spatial.conventions import ddf_to_learn2reg, learn2reg_to_ddf
from ..spatial.grid import Grid
from .atomic import atomic_path

__all__ = ["field_format", "field_grid", "load_field", "save_field"]

_FORMATS = (".nii.gz", ".nii", ".npz")


def field_format(path: str | Path) -> str:
    """The field format of ``path`` from its extension (``.nii.gz``, ``.nii`` or ``.npz``)."""
    return check_suffix("field_format", "output path", path, _FORMATS)


def save_field(
    path: str | Path, ddf: torch.Tensor, affine: Grid | np.ndarray | torch.Tensor | None = None, dtype: str | None = None
) -> Path:
    """Write a MONAI DDF ``(1, 3, H, W, D)`` (voxels) as a Learn2Reg field file, atomically.

    Args:
        path: ``*.nii.gz``, ``*.nii`` or ``*.npz``.
        ddf: the field.
        affine: the fixed image's :class:`~monai_contreg.spatial.grid.Grid` (of the field's shape) or its 4x4
            voxel-to-world matrix (NIfTI only; identity if ``None``).
        dtype: ``"float32"`` or ``"float16"``; default float32 for NIfTI, float16 for ``.npz``.

    Returns:
        The written path.

    Raises:
        UserInputError: not a finite ``(1, 3, H, W, D)`` field; a grid of another shape, an affine that is not a
            finite invertible 4x4 (nothing written).
    """
    check_ddf("save_field", "ddf", ddf)
    check_finite("save_field", "ddf", ddf)
    fmt = field_format(path)
    dtype = choose("save_field", "dtype", dtype or ("float16" if fmt == ".npz" else "float32"), ("float32", "float16"))
    arr = ddf_to_learn2reg(ddf).astype(dtype)
    aff = np.array(Grid.for_array("save_field", ddf.shape[2:], affine).affine)
    with atomic_path(path) as tmp:
        if fmt == ".npz":
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, arr)
        else:
            img = nib.Nifti1Image(arr, aff)
            img.header.set_intent("vector")
            nib.save(img, str(tmp))
    return Path(path)


def field_grid(path: str | Path) -> Grid | None:
    """The grid of a Learn2Reg field file, read from its header alone: ``None`` for ``.npz`` (no geometry).

    Raises:
        MissingFileError: no such file.
        UserInputError: a header that cannot be read or is not an ``(H, W, D, 3)`` field's.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"field_grid: field file {str(p)!r} does not exist.")
    if field_format(p) == ".npz":
        return None
    try:
        img = nib.load(str(p))
        shape, affine = tuple(int(s) for s in img.shape), img.affine
    except Exception as exc:
        raise UserInputError(f"field_grid: cannot read field file {str(p)!r}: {exc}") from exc
    if len(shape) != 4 or shape[-1] != 3:
        raise UserInputError(f"field_grid: field file {str(p)!r} must hold an (H, W, D, 3) array, got shape {shape}.")
    return Grid.for_array("field_grid", shape[:3], affine)


def load_field(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """Read a Learn2Reg field file -> (MONAI DDF ``(1, 3, H, W, D)`` float32, 4x4 affine).

    ``.npz`` files have no geometry: the affine returned is the identity.

    Raises:
        FileNotFoundError: no such file.
        UserInputError: not an ``(H, W, D, 3)`` array; or an ITK/ANTs displacement field image (NIfTI
            ``(X, Y, Z, 1, 3)``, LPS millimetres, as :func:`~monai_contreg.io.itk_transforms.save_itk_transform`,
            ITK and ANTs write them): that is not a Learn2Reg voxel field, read it with
            :func:`~monai_contreg.io.itk_transforms.load_itk_transform` (``contreg warp --transform``).
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"load_field: field file {str(p)!r} does not exist.")
    fmt = field_format(p)
    try:
        if fmt == ".npz":
            with np.load(p) as z:
                if len(z.files) != 1:
                    raise UserInputError(f"expected one array, found {z.files}")
                arr = z[z.files[0]]
            affine = np.eye(4)
        else:
            img = nib.load(str(p))
            arr = np.asarray(img.dataobj)
            affine = img.affine
    except Exception as exc:
        raise UserInputError(f"load_field: cannot read field file {str(p)!r}: {exc}") from exc
    if arr.ndim == 5 and arr.shape[3] == 1 and arr.shape[4] == 3:
        raise UserInputError(
            f"load_field: {str(p)!r} has shape {arr.shape}, the layout of an ITK/ANTs displacement field image "
            "(LPS millimetres, NIfTI intent vector), not a Learn2Reg field (H, W, D, 3) in voxels; read it with "
            "monai_contreg.io.itk_transforms.load_itk_transform (contreg warp --transform)."
        )
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise UserInputError(f"load_field: field file {str(p)!r} must hold an (H, W, D, 3) array, got shape {arr.shape}.")
    return learn2reg_to_ddf(arr.astype(np.float32)), np.asarray(affine, dtype=np.float64)
