import nibabel as nib
import numpy as np
import pytest

from monai_contreg.cli import main
from monai_contreg.data.demo import make_demo_pair


def test_demo_command_prints_tre(capsys, tmp_path):
    rc = main(["demo", "--set", "optim.schedule.total_steps=20", "--set", "optim.schedule.constant_steps=20",
               "--set", "optim.schedule.cosine_end=20", "--set", "optim.schedule.peak_lr=1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "TRE before:" in out and "TRE after:" in out
    assert (tmp_path / "disp_demo.nii.gz").is_file() and (tmp_path / "demo_summary.json").is_file()
    assert "TRE before: 3.364 mm" in out
    # the field carries the demo's real geometry (2 mm voxels), not a 1 mm identity
    assert np.allclose(nib.load(str(tmp_path / "disp_demo.nii.gz")).affine, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_register_command_writes_field(tmp_path, capsys):
    pair = make_demo_pair(shape=(32, 32, 32), n_keypoints=10)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    for k in ("fixed", "moving"):
        nib.save(nib.Nifti1Image(getattr(pair, k), aff), str(tmp_path / f"{k}.nii.gz"))
    out = tmp_path / "disp.nii.gz"
    rc = main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "-o", str(out),
               "--set", "optim.schedule.total_steps=5", "--set", "optim.schedule.constant_steps=5", "--set", "optim.schedule.cosine_end=5",
               "--set", "optim.schedule.peak_lr=1"])
    assert rc == 0 and out.is_file()
    img = nib.load(str(out))
    assert img.shape == (32, 32, 32, 3) and np.allclose(img.affine, aff)


def test_cli_errors_are_clear(tmp_path, capsys):
    rc = main(["register", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "-o", str(tmp_path / "o.nii.gz")])
    assert rc == 2
    assert "register: fixed file" in capsys.readouterr().err
    rc = main(["register", "a", "b", "-o", str(tmp_path / "o.txt")])
    assert rc == 2 and "must end with one of" in capsys.readouterr().err
    rc = main(["demo", "--set", "optim.reg_wieght=1"])
    assert rc == 2 and "Did you mean 'reg_weight'" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
