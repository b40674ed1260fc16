"""One padding policy, table-driven: exact values per padding mode and per path.

A field of +2 voxels along axis 0 on a 6-voxel axis samples positions 2..7: the last two fall outside the moving
image. Label maps come back as background (0) there on every path; images follow their padding mode.
"""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_contreg.api import RegistrationResult
from monai_contreg.apply import apply_to_files
from monai_contreg.evaluation.learn2reg import evaluate_field
from monai_contreg.io.fields import save_field
from monai_contreg.modes import LABEL_PADDING, PaddingMode
from monai_contreg.pipeline.transforms import ApplyDDFd
from monai_contreg.spatial.resample import resample_image, warp_between_grids
from monai_contreg.spatial.warp import warp_image, warp_labels

N = 6
RAMP = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
#: image values along axis 0 after the +2 shift, per padding mode (align_corners=False)
IMAGE = {
    PaddingMode.BORDER: [2.0, 3.0, 4.0, 5.0, 5.0, 5.0],
    PaddingMode.ZEROS: [2.0, 3.0, 4.0, 5.0, 0.0, 0.0],
    PaddingMode.REFLECTION: [2.0, 3.0, 4.0, 5.0, 5.0, 4.0],
}
LABELS = [3, 3, 3, 3, 0, 0]


def _ddf():
    d = torch.zeros(1, 3, N, N, N)
    d[:, 0] = 2.0
    return d


def _ramp():
    return torch.as_tensor(RAMP)[:, None, None].expand(N, N, N).clone()


def _labels():
    return torch.full((N, N, N), 3, dtype=torch.int16)


def test_label_policy_is_zeros():
    assert LABEL_PADDING == PaddingMode.ZEROS == "zeros"


@pytest.mark.parametrize("mode", list(IMAGE))
def test_warp_image_per_padding_mode(mode):
    out = warp_image(_ramp()[None, None], _ddf(), padding_mode=mode)[0, 0, :, 0, 0]
    assert np.allclose(out.tolist(), IMAGE[mode], atol=1e-5)


@pytest.mark.parametrize("mode", list(IMAGE))
def test_warp_between_grids_per_padding_mode(mode):
    out = warp_between_grids(_ramp()[None, None], np.eye(4), _ddf(), np.eye(4), padding_mode=mode)[0, 0, :, 0, 0]
    assert np.allclose(out.tolist(), IMAGE[mode], atol=1e-5)


def _result():
    return RegistrationResult(ddf=MetaTensor(_ddf(), affine=torch.eye(4, dtype=torch.float64)))


def _path_labels_result():
    return _result().warp(_labels(), labels=True)


def _path_labels_result_other_grid():
    # the moving label map on a grid of its own (one more voxel along axis 1): the between-grids branch
    lab = MetaTensor(torch.full((N, N + 1, N), 3, dtype=torch.int16), affine=torch.eye(4, dtype=torch.float64))
    return _result().warp(lab, labels=True)


def _path_warp_labels():
    return warp_labels(_labels()[None, None], _ddf())[0, 0]


def _path_apply_ddfd():
    d = {"seg": MetaTensor(_labels()[None], affine=torch.eye(4)), "ddf": MetaTensor(_ddf()[0], affine=torch.eye(4))}
    return ApplyDDFd(["seg"], mode="nearest")(d)["seg"][0]


def _path_cli_warp(tmp_path):
    save_field(tmp_path / "f.nii.gz", _ddf(), np.eye(4))
    nib.save(nib.Nifti1Image(_labels().numpy(), np.eye(4)), str(tmp_path / "lab.nii.gz"))
    apply_to_files(field=tmp_path / "f.nii.gz", labels=[(tmp_path / "lab.nii.gz", tmp_path / "out.nii.gz")])
    return torch.as_tensor(np.asarray(nib.load(str(tmp_path / "out.nii.gz")).dataobj))


def _path_native_mask():
    # a mask resampled onto another grid (register's two-grid path): 2 mm further along axis 0
    dst = np.eye(4)
    dst[0, 3] = 2.0
    return resample_image(_labels()[None, None], np.eye(4), dst, (N, N, N), mode="nearest", padding_mode=LABEL_PADDING)[0, 0]


@pytest.mark.parametrize("path", ["result", "result_other_grid", "warp_labels", "apply_ddfd", "cli_warp", "native_mask"])
def test_labels_are_zero_outside_on_every_path(path, tmp_path):
    fn = {"result": _path_labels_result, "result_other_grid": _path_labels_result_other_grid,
          "warp_labels": _path_warp_labels, "apply_ddfd": _path_apply_ddfd, "native_mask": _path_native_mask}
    out = _path_cli_warp(tmp_path) if path == "cli_warp" else fn[path]()
    assert out[:, 2, 2].tolist() == LABELS


def test_apply_ddfd_does_not_warn():
    import warnings

    d = {"img": MetaTensor(_ramp()[None], affine=torch.eye(4)), "ddf": MetaTensor(_ddf()[0], affine=torch.eye(4))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MONAI's "Setting affine, but the applied meta contains an affine"
        out = ApplyDDFd(["img"])(d)
    assert np.allclose(out["img"][0, :, 0, 0].tolist(), IMAGE[PaddingMode.BORDER], atol=1e-5)


def test_evaluation_dice_counts_outside_as_background():
    # fixed: label 3 everywhere; moving warped by +2: the last two slices leave the image -> background
    f = torch.full((1, N, N, N), 3.0)
    res = evaluate_field(_ddf(), {"fixed_label": f, "moving_label": f.clone()}, fixed_spacing=(1, 1, 1),
                         moving_spacing=(1, 1, 1))
    inside, total = 4 * N * N, N * N * N
    assert res["Dice"]["mean"] == pytest.approx(2 * inside / (inside + total))  # 0.8; border padding gave 1.0
