"""Inputs whose geometry ITK/ANTs/Slicer would read differently are noticed before registering; sheared grids are
never exported for ITK."""

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_contreg.api import load_inputs
from monai_contreg.errors import UserInputError
from monai_contreg.io.geometry_checks import GeometryWarning, affine_shear, nifti_geometry_disagreement
from monai_contreg.io.itk_transforms import save_itk_transform


def _vol():
    return np.random.default_rng(0).random((8, 9, 10)).astype(np.float32)


def test_consistent_file_passes_silently(tmp_path):
    nib.save(nib.Nifti1Image(_vol(), np.diag([1.5, 1.5, 2.0, 1.0])), str(tmp_path / "ok.nii.gz"))
    assert nifti_geometry_disagreement(tmp_path / "ok.nii.gz") is None


def test_sform_qform_mismatch_is_reported(tmp_path):
    img = nib.Nifti1Image(_vol(), np.diag([1.5, 1.5, 2.0, 1.0]))
    q = np.diag([1.5, 1.5, 2.0, 1.0])
    q[:3, 3] = [10.0, 0.0, 0.0]  # the qform 10 mm away
    img.set_qform(q, code=1)
    img.set_sform(np.diag([1.5, 1.5, 2.0, 1.0]), code=2)
    nib.save(img, str(tmp_path / "two.nii.gz"))
    note = nifti_geometry_disagreement(tmp_path / "two.nii.gz")
    assert note is not None and "sform (code 2) and qform (code 1) differ" in note
    with pytest.warns(GeometryWarning, match=r"register: fixed .*two.nii.gz.*sform .* qform"):
        load_inputs(tmp_path / "two.nii.gz", tmp_path / "two.nii.gz")


def test_sheared_affine_is_reported_and_not_exported(tmp_path):
    sheared = np.diag([1.0, 1.0, 1.0, 1.0])
    sheared[0, 1] = 0.3  # axis 1 tilted towards axis 0
    assert affine_shear(sheared) == pytest.approx(0.3 / np.sqrt(1.09))
    nib.save(nib.Nifti1Image(_vol(), sheared), str(tmp_path / "shear.nii.gz"))
    assert "not orthogonal" in nifti_geometry_disagreement(tmp_path / "shear.nii.gz")
    with pytest.warns(GeometryWarning, match="non-orthogonal axes"):
        load_inputs(_vol(), _vol(), affine=sheared)
    with pytest.raises(UserInputError, match="save_itk_transform: the fixed grid's voxel axes are not orthogonal"):
        save_itk_transform(tmp_path / "tx.h5", torch.zeros(1, 3, 8, 9, 10), sheared)
