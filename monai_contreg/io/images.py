"""Reading and writing images with their geometry (origin, spacing, direction) in MONAI's RAS convention.

Reading goes through MONAI's :class:`~monai.transforms.LoadImage`: NIfTI (``.nii``, ``.nii.gz``) with nibabel
(array indexed exactly as ``nibabel.load(path).dataobj``, affine = ``nibabel``'s), everything else ITK reads
(a DICOM series folder, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ...) with MONAI's ``ITKReader``, which
returns the array in ``[x, y, z]`` index order (ITK's index, nibabel's too) and converts ITK's LPS geometry
into a RAS affine. Either way the result is a ``(1, H, W, D)`` MetaTensor whose ``affine`` maps voxel indices
to RAS millimetres, the frame every function of :mod:`monai_contreg.spatial.conventions` expects.

Writing: :func:`save_image` writes NIfTI with nibabel and ``.nrrd``/``.mha`` with ITK (RAS -> LPS), atomically.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import ITKReader, MetaTensor, NibabelReader
from monai.transforms import LoadImage

from .._validation import check_suffix, choose
from ..errors import MissingFileError, UserInputError, describe_read_error
from ..spatial.conventions import affine_to_itk_geometry
from .atomic import atomic_path

__all__ = ["IMAGE_WRITE_FORMATS", "image_reader_name", "load_image", "save_image"]

_NIFTI = (".nii", ".nii.gz")
#: Extensions :func:`save_image` writes (single-file formats only, so that writes can be atomic).
IMAGE_WRITE_FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")
_READERS = ("auto", "nibabel", "itk")


def image_reader_name(path: str | Path, reader: str = "auto") -> str:
    """The reader :func:`load_image` uses for ``path``: ``"nibabel"`` for NIfTI files, else ``"itk"``."""
    reader = choose("load_image", "reader", reader, _READERS)
    if reader != "auto":
        return reader
    name = str(path).lower()
    return "nibabel" if name.endswith(_NIFTI) and not Path(path).is_dir() else "itk"


def load_image(path: str | Path, reader: str = "auto", dtype: torch.dtype | None = torch.float32) -> MetaTensor:
    """Read an image file or DICOM series folder, keeping its geometry.

    Args:
        path: a file ITK or nibabel reads, or a folder holding one DICOM series.
        reader: ``"auto"`` (nibabel for NIfTI, ITK otherwise), ``"nibabel"`` or ``"itk"``.
        dtype: torch dtype of the array (``None``: keep the file's, as far as torch has it).

    Returns:
        A ``(1, H, W, D)`` MetaTensor; ``.affine`` is the ``(4, 4)`` float64 voxel-to-world matrix in RAS mm,
        ``.meta["filename_or_obj"]`` the path. Array axes are ITK's ``[x, y, z]`` index axes (for NIfTI:
        nibabel's ``i, j, k``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read or does not hold one 3-D volume.
    """
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"load_image: image {str(p)!r} does not exist.")
    which = image_reader_name(p, reader)
    backend = NibabelReader() if which == "nibabel" else ITKReader()
    try:
        img = LoadImage(reader=backend, image_only=True, ensure_channel_first=True)(str(p))
    except Exception as exc:
        raise UserInputError(
            f"load_image: cannot read image {str(p)!r} with the {which} reader: {describe_read_error(exc, p)}"
        ) from exc
    if img.ndim != 4 or img.shape[0] != 1:
        raise UserInputError(f"load_image: image {str(p)!r} must hold one 3-D volume, got shape {tuple(img.shape)} (channel first).")
    if dtype is not None:
        img = img.to(dtype)
    img.affine = torch.as_tensor(np.asarray(img.affine, dtype=np.float64))
    return img


def _format(path: str | Path) -> str:
    return check_suffix("save_image", "output path", path, IMAGE_WRITE_FORMATS)


def save_image(
    path: str | Path, image: torch.Tensor | np.ndarray, affine: np.ndarray | torch.Tensor | None = None, dtype=None
) -> Path:
    """Write a 3-D image with its geometry, atomically.

    Args:
        path: ``*.nii.gz``, ``*.nii`` (nibabel) or ``*.nrrd``, ``*.mha`` (ITK, geometry converted to LPS).
        image: ``(H, W, D)`` or ``(1, H, W, D)`` array (a MetaTensor's affine is used when ``affine`` is None).
        affine: 4x4 RAS voxel-to-world matrix; default the MetaTensor's, else the identity.
        dtype: numpy dtype to store (default: the array's).

    Returns:
        The written path.
    """
    fmt = _format(path)
    if affine is None and isinstance(image, MetaTensor):
        affine = image.affine
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise UserInputError(f"save_image: image must have shape (H, W, D) or (1, H, W, D), got {arr.shape}.")
    if dtype is not None:
        arr = arr.astype(dtype)
    aff = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).detach().cpu().double().reshape(4, 4))
    with atomic_path(path) as tmp:
        if fmt in _NIFTI:
            nib.save(nib.Nifti1Image(arr, aff), str(tmp))
        else:
            import itk

            origin, spacing, direction = affine_to_itk_geometry(aff)
            img = itk.image_from_array(np.ascontiguousarray(arr.transpose(2, 1, 0)))
            img.SetOrigin([float(v) for v in origin])
            img.SetSpacing([float(v) for v in spacing])
            img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
            itk.imwrite(img, str(tmp), compression=True)
    return Path(path)
