"""Where the readers disagree: an image file's geometry as this package reads it against ITK's reading.

NIfTI stores two voxel-to-world matrices (qform and sform) and this package (nibabel, through MONAI's
``NibabelReader``) and ITK do not always pick the same one (measured with itk 5.4.7, nibabel 5.4.2, MONAI 1.6;
ANTsPy 0.6.3 reads as ITK does):

* sform code 1 (scanner): both read the sform. sform code 2..5 with a qform (code > 0): nibabel the sform, ITK
  the **qform**. Only one of them coded: both read that one.
* neither coded: nibabel centres the grid (``get_base_affine``: x flipped, the centre voxel at 0), ITK puts voxel
  0 at the origin with LPS axes: a different place.
* a qform with qfac -1 (left-handed): both read it alike.
* a sheared sform: MONAI replaces it by the qform when the sform's column lengths differ from ``pixdim``; ITK
  reads the qform when one is coded, and cannot read the file at all ("No orthonormal definition found") when
  none is. ITK keeps a tiny shear (about 1e-4) of an sform it accepts as a non-orthogonal direction matrix.
* NRRD / MetaImage: the package reads them with ITK, so the readings agree, non-orthogonal directions included.

:func:`itk_reading` records ITK's reading of one input (header only) and :func:`monai_contreg.api.register` keeps
it with the result, so that an ITK export (:func:`monai_contreg.io.itk_transforms.save_itk_transform`) composes
the difference into the transform or refuses the export. :func:`nifti_geometry_disagreement` says how the
readings differ, and :func:`monai_contreg.api.register` warns (:class:`GeometryWarning`) before it registers
such an input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["GeometryWarning", "ItkReading", "affine_shear", "itk_reading", "nifti_geometry_disagreement"]


@dataclass(frozen=True)
class ItkReading:
    """How ITK (and so ANTs and Slicer) reads one image file's geometry.

    Attributes:
        path: the file (or DICOM folder).
        affine: ITK's voxel-to-world matrix as a 4x4 RAS float64 array (``flip @ [direction @ diag(spacing) |
            origin]``, ``flip = diag(-1, -1, 1)``); ``None`` when ITK cannot read the header.
        problem: why ITK cannot read it (``""`` when it can).
    """

    path: str
    affine: np.ndarray | None
    problem: str = ""


def itk_reading(path: str | Path, ours=None) -> ItkReading:
    """ITK's reading of an image file's geometry (header only), as :class:`ItkReading`.

    Args:
        path: an image file (any format ITK reads) or a DICOM folder.
        ours: this package's affine of it (4x4 RAS); returned for a DICOM folder, which the package reads with
            ITK itself (GDCM series reader) so that the readings agree by construction.

    Never raises for an unreadable header: the reason is in :attr:`ItkReading.problem`.
    """
    import itk

    from ..spatial.conventions import itk_geometry_to_affine

    p = Path(path)
    if p.is_dir():
        return ItkReading(str(p), None if ours is None else np.asarray(ours, dtype=np.float64).reshape(4, 4).copy(),
                          "" if ours is not None else "a DICOM folder read without its affine")
    try:
        reader = itk.ImageFileReader[itk.Image[itk.F, 3]].New(FileName=str(p))
        reader.UpdateOutputInformation()
        out = reader.GetOutput()
        aff = itk_geometry_to_affine(np.asarray(out.GetOrigin()), np.asarray(out.GetSpacing()),
                                     itk.array_from_matrix(out.GetDirection()))
    except Exception as exc:  # noqa: BLE001 - ITK's reason, kept as text
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "ITK ERROR" in ln), lines[-1] if lines else type(exc).__name__)
        return ItkReading(str(p), None, why.split("):")[-1].strip()[:200])
    return ItkReading(str(p), aff)


class GeometryWarning(UserWarning):
    """An input whose geometry other tools (ITK, ANTs, Slicer) would read differently than this package does."""


def affine_shear(affine) -> float:
    """Largest ``|cos|`` of the angle between two voxel axes of a 4x4 affine (0 for orthogonal axes)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    cols = a / np.linalg.norm(a, axis=0)
    g = np.abs(cols.T @ cols - np.eye(3))
    return float(g.max())


def nifti_geometry_disagreement(path: str | Path, atol: float = 1e-3, ours=None,
                                reading: ItkReading | None = None) -> str | None:
    """Why ITK would place the voxels of a NIfTI file elsewhere than this package does, or ``None`` if it would not.

    Compares the package's affine with the geometry ITK's NIfTI reader reports (origin, spacing, direction; header
    only), and notes a sheared affine (which ITK's orthonormal direction matrix cannot hold) and a qform that
    differs from the sform.

    Args:
        path: a ``.nii``/``.nii.gz`` file.
        atol: tolerance (mm, and on direction cosines) of the comparison.
        ours: the package's affine of it (:func:`~monai_contreg.io.images.load_image`); default nibabel's.
        reading: ITK's reading (:func:`itk_reading`), if already made.
    """
    import nibabel as nib

    img = nib.load(str(path))
    ours = np.asarray(img.affine if ours is None else ours, dtype=np.float64).reshape(4, 4)
    notes = []
    shear = affine_shear(ours)
    if shear > atol:
        notes.append(f"its voxel axes are not orthogonal (largest |cos| between axes {shear:.4f}), which the "
                     "orthonormal direction matrix of ITK, ANTs and Slicer cannot hold")
    hdr = img.header
    sform, scode = hdr.get_sform(coded=True)
    qform, qcode = hdr.get_qform(coded=True)
    if sform is not None and qform is not None and scode and qcode and not np.allclose(sform, qform, atol=atol):
        notes.append(f"its sform (code {int(scode)}) and qform (code {int(qcode)}) differ")
    if not scode and not qcode:
        notes.append("neither its sform nor its qform is coded (nibabel centres the grid, ITK starts it at the origin)")
    reading = itk_reading(path) if reading is None else reading
    if reading.affine is None:
        notes.append(f"ITK cannot read its header ({reading.problem}); an ITK export (--itk, save_itk) will be "
                     "refused")
    elif not np.allclose(ours, reading.affine, atol=atol):
        notes.append(f"ITK reads its voxel-to-world matrix (RAS) as {np.round(reading.affine, 4).tolist()}, this "
                     f"package as {np.round(ours, 4).tolist()}; an ITK export (--itk, save_itk) composes the "
                     "difference so that ITK and ANTs apply it as contreg warp does, but a tool that reads the "
                     "header as this package does would not")
    else:
        notes = []  # ITK reads it as this package does: whatever the header holds, the readings agree
    if not notes:
        return None
    return f"{str(path)!r}: " + "; ".join(notes) + (
        ". Best: fix the header (one orthogonal voxel-to-world matrix A as both sform and qform, code 1; nibabel: "
        "img.set_sform(A, code=1); img.set_qform(A, code=1)).")
