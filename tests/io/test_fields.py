import os

import numpy as np
import pytest
import torch

from monai_contreg.io.fields import load_field, save_field


@pytest.mark.parametrize("ext,tol", [(".nii.gz", 0), (".nii", 0), (".npz", 1e-2)])
def test_round_trip(tmp_path, ext, tol):
    ddf = torch.randn(1, 3, 5, 6, 7)
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    p = save_field(tmp_path / f"disp_0001_0002{ext}", ddf, aff)
    back, affine = load_field(p)
    assert back.shape == ddf.shape and torch.allclose(back, ddf, atol=tol)
    if ext != ".npz":
        assert np.allclose(affine, aff)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []  # no temporary left behind


def test_atomic_no_partial_file_on_failure(tmp_path):
    target = tmp_path / "disp.nii.gz"
    bad = torch.zeros(1, 3, 4, 4, 4)
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="save_field: ddf contains 1 NaN"):
        save_field(target, bad)
    assert not target.exists() and os.listdir(tmp_path) == []


def test_bad_names_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"field_format: output path 'x.mha' must end with one of"):
        save_field("x.mha", torch.zeros(1, 3, 2, 2, 2))
    with pytest.raises(FileNotFoundError, match="load_field: field file .* does not exist"):
        load_field(tmp_path / "none.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match="load_field: cannot read field file"):
        load_field(junk)


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = save_field(tmp_path / "disp.nii.gz", torch.zeros(1, 3, 2, 2, 2))
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o644
