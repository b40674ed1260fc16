"""A Learn2Reg field (voxels) and an ITK/ANTs displacement image (LPS mm) are never read as each other."""

import numpy as np
import pytest
import torch

from monai_contreg.cli import main
from monai_contreg.errors import UserInputError
from monai_contreg.io.fields import load_field, save_field
from monai_contreg.io.itk_transforms import load_itk_transform, save_itk_transform
from monai_contreg.io.images import save_image


def _plus_one():
    d = torch.zeros(1, 3, 5, 6, 7)
    d[:, 0] = 1.0  # +1 voxel along axis 0 (2 mm, RAS x), i.e. -2 mm along LPS x
    return d


def test_itk_displacement_image_refused_by_load_field(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    save_itk_transform(tmp_path / "tx.nii.gz", _plus_one(), aff)
    # before: read as a Learn2Reg voxel field, the +1 voxel field came back as -2.0 (LPS millimetres)
    with pytest.raises(UserInputError, match=r"load_field: .* \(5, 6, 7, 1, 3\), the layout of an ITK/ANTs displacement"):
        load_field(tmp_path / "tx.nii.gz")
    ddf, back = load_itk_transform(tmp_path / "tx.nii.gz")  # the right reader gives the right value
    assert np.allclose(back, aff) and torch.allclose(ddf, _plus_one(), atol=1e-6)


def test_learn2reg_field_refused_by_load_itk_transform(tmp_path):
    save_field(tmp_path / "disp.nii.gz", _plus_one(), np.eye(4))
    with pytest.raises(UserInputError, match=r"load_itk_transform: .* the layout of a Learn2Reg field .*--field"):
        load_itk_transform(tmp_path / "disp.nii.gz")
    ddf, _ = load_field(tmp_path / "disp.nii.gz")
    assert torch.equal(ddf, _plus_one())


@pytest.mark.parametrize("option,writer,hint", [
    ("--transform", "learn2reg", "--field"),   # case_08
    ("--field", "itk", "--transform"),
])
def test_contreg_warp_hints_the_other_option(tmp_path, capsys, option, writer, hint):
    aff = np.eye(4)
    path = tmp_path / "t.nii.gz"
    (save_field if writer == "learn2reg" else save_itk_transform)(path, _plus_one(), aff)
    save_image(tmp_path / "moving.nii.gz", np.zeros((5, 6, 7), np.float32), aff)
    rc = main(["warp", option, str(path), "--image", str(tmp_path / "moving.nii.gz"), str(tmp_path / "out.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and hint in err
