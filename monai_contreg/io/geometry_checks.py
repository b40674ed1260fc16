"""Where the readers disagree: a NIfTI file's geometry as nibabel reads it (this package's reader) against ITK's.

NIfTI stores two voxel-to-world matrices (qform and sform) and nibabel and ITK do not always pick the same one;
ITK cannot represent sheared (non-orthogonal) axes at all. A field registered in nibabel's frame and exported for
ITK, ANTs or Slicer would then be applied somewhere else. :func:`nifti_geometry_disagreement` says so, and
:func:`monai_contreg.api.register` warns (:class:`GeometryWarning`) before it registers such an input;
:func:`~monai_contreg.spatial.conventions.affine_to_itk_geometry` refuses to write a sheared grid for ITK.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["GeometryWarning", "affine_shear", "nifti_geometry_disagreement"]


class GeometryWarning(UserWarning):
    """An input whose geometry other tools (ITK, ANTs, Slicer) would read differently than this package does."""


def affine_shear(affine) -> float:
    """Largest ``|cos|`` of the angle between two voxel axes of a 4x4 affine (0 for orthogonal axes)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    cols = a / np.linalg.norm(a, axis=0)
    g = np.abs(cols.T @ cols - np.eye(3))
    return float(g.max())


def nifti_geometry_disagreement(path: str | Path, atol: float = 1e-3) -> str | None:
    """Why ITK would place the voxels of a NIfTI file elsewhere than nibabel does, or ``None`` if it would not.

    Compares nibabel's affine with the geometry ITK's NIfTI reader reports (origin, spacing, direction; header
    only), and notes a sheared affine (which ITK's orthonormal direction matrix cannot hold) and a qform that
    differs from the sform.

    Args:
        path: a ``.nii``/``.nii.gz`` file.
        atol: tolerance (mm, and on direction cosines) of the comparison.
    """
    import itk
    import nibabel as nib

    from ..spatial.conventions import itk_geometry_to_affine

    img = nib.load(str(path))
    ours = np.asarray(img.affine, dtype=np.float64)
    notes = []
    shear = affine_shear(ours)
    if shear > atol:
        notes.append(f"its voxel axes are not orthogonal (largest |cos| between axes {shear:.4f}): ITK, ANTs and "
                     "Slicer store orthonormal directions and cannot represent this grid")
    hdr = img.header
    sform, scode = hdr.get_sform(coded=True)
    qform, qcode = hdr.get_qform(coded=True)
    if sform is not None and qform is not None and scode and qcode and not np.allclose(sform, qform, atol=atol):
        notes.append(f"its sform (code {int(scode)}) and qform (code {int(qcode)}) differ; nibabel uses the sform")
    try:
        reader = itk.ImageFileReader[itk.Image[itk.F, 3]].New(FileName=str(path))
        reader.UpdateOutputInformation()
        out = reader.GetOutput()
        theirs = itk_geometry_to_affine(np.asarray(out.GetOrigin()), np.asarray(out.GetSpacing()),
                                        itk.array_from_matrix(out.GetDirection()))
        if not np.allclose(ours, theirs, atol=atol):
            notes.append(f"ITK reads its voxel-to-world matrix (RAS) as {np.round(theirs, 4).tolist()}, nibabel as "
                         f"{np.round(ours, 4).tolist()}")
    except Exception as exc:  # a header ITK cannot read: ITK tools would not read the file either
        notes.append(f"ITK cannot read its header ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    if not notes:
        return None
    return f"{str(path)!r}: " + "; ".join(notes) + (
        ". This package registers in nibabel's frame; a transform exported for ITK/ANTs/Slicer would be applied "
        "in theirs. Fix the header (one consistent, orthogonal sform/qform) before registering.")
