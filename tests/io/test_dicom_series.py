"""DICOM folders as clinics export them: several series, rescale slope/intercept, series choice, errors."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from monai_contreg.errors import UserInputError
from monai_contreg.io.images import list_dicom_series, load_image, save_dicom_series

pytest.importorskip("itk")

CT_UID = "1.2.826.0.1.3680043.8.498.4242.2"
SCOUT_UID = "1.2.826.0.1.3680043.8.498.4242.1"
CT_AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, -0.8, 0, -20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])


def _ct(shape=(12, 10, 8), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1500, shape).astype(np.float32)


def _two_series(folder, ct):
    """The CT (8 slices) and a 3-slice localiser on another grid, in one folder."""
    save_dicom_series(folder, ct, CT_AFFINE, CT_UID, description="chest", series_number=2, rescale=(1.0, -1024.0))
    scout_aff = np.diag([-4.0, -4.0, 10.0, 1.0])
    save_dicom_series(folder, _ct((6, 6, 3), seed=1), scout_aff, SCOUT_UID, description="localiser", series_number=1)


@pytest.mark.parametrize("rescale", [(1.0, -1024.0), (2.0, -1024.0), (0.5, -3000.0)])
def test_save_dicom_series_round_trip(tmp_path, rescale):
    slope, intercept = rescale
    ct = _ct()
    ct[0, 0, 0] = -3024.0  # padding outside the scan circle
    ct = np.round((ct - intercept) / slope) * slope + intercept  # representable values
    save_dicom_series(tmp_path, ct, CT_AFFINE, CT_UID, rescale=rescale)
    img = load_image(tmp_path)
    assert np.array_equal(img[0].numpy(), ct)
    assert np.allclose(img.affine.numpy(), CT_AFFINE, atol=1e-4)
    assert img.meta["dicom_series"] == CT_UID


def test_save_dicom_series_errors(tmp_path):
    with pytest.raises(UserInputError, match="left-handed"):
        save_dicom_series(tmp_path, _ct(), np.diag([0.8, 0.8, -2.5, 1.0]), CT_UID)
    with pytest.raises(UserInputError, match="do not fit int16"):
        save_dicom_series(tmp_path, _ct() * 100, CT_AFFINE, CT_UID)


def test_two_series_reads_the_ct_and_says_so(tmp_path, caplog):
    ct = _ct()
    _two_series(tmp_path, ct)
    found = list_dicom_series(tmp_path)
    assert sorted((s.uid, s.slices, s.description, s.modality) for s in found) == [
        (SCOUT_UID, 3, "localiser", "CT"), (CT_UID, 8, "chest", "CT")
    ]
    with caplog.at_level(logging.WARNING, logger="monai_contreg.io.images"):
        img = load_image(tmp_path)
    assert img.shape == (1, 12, 10, 8) and np.array_equal(img[0].numpy(), ct)
    assert img.meta["dicom_series"] == CT_UID
    assert "holds 2 DICOM series" in caplog.text and f"reading {CT_UID}" in caplog.text and "--series" in caplog.text
    scout = load_image(tmp_path, series=SCOUT_UID)
    assert scout.shape == (1, 6, 6, 3)


def test_series_errors(tmp_path):
    _two_series(tmp_path / "two", _ct())
    with pytest.raises(UserInputError, match=r"series '1\.2\.3' is not in folder .* holds: .*localiser"):
        load_image(tmp_path / "two", series="1.2.3")
    assert load_image(tmp_path / "two", series="1.2.3", strict_series=False).shape == (1, 12, 10, 8)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not DICOM")
    with pytest.raises(UserInputError, match="holds no DICOM series"):
        load_image(tmp_path / "junk")


def test_cli_register_native_picks_the_ct_and_accepts_series(tmp_path, capsys):
    from monai_contreg.cli import main

    ct = _ct()
    _two_series(tmp_path / "dicom", ct)
    nib.save(nib.Nifti1Image(ct, CT_AFFINE), str(tmp_path / "moving.nii.gz"))
    steps = ["--set", "optim.schedule.total_steps=3", "--set", "optim.schedule.constant_steps=3",
             "--set", "optim.schedule.cosine_end=3", "--set", "engine.divergence_check=false",
             "--preset", "io-lr1", "--threads", "1"]
    out = tmp_path / "disp.nii.gz"
    assert main(["register-native", str(tmp_path / "dicom"), str(tmp_path / "moving.nii.gz"), "-o", str(out), *steps]) == 0
    assert nib.load(str(out)).shape == (12, 10, 8, 3)
    # --series chooses the 3-slice localiser, which is then refused as too thin to register (one line, exit 2)
    capsys.readouterr()
    rc = main(["register-native", str(tmp_path / "dicom"), str(tmp_path / "moving.nii.gz"), "-o", str(out),
               "--series", SCOUT_UID, *steps])
    assert rc == 2 and "has shape (6, 6, 3): too thin to register" in capsys.readouterr().err
    rc = main(["register-native", str(tmp_path / "dicom"), str(tmp_path / "moving.nii.gz"), "-o", str(out),
               "--series", "9.9.9", *steps])
    assert rc == 2 and "series '9.9.9' is not in any DICOM folder given" in capsys.readouterr().err
    # contreg register (one grid): the folder's CT against the NIfTI copy
    assert main(["register", str(tmp_path / "dicom"), str(tmp_path / "moving.nii.gz"), "-o", str(out), *steps]) == 0
    assert nib.load(str(out)).shape == (12, 10, 8, 3)
