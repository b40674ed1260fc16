"""Automatic lung masks in register / register_native / the CLI (preprocess.auto_mask, --no-auto-mask, contreg mask)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi

from monai_contreg import register
from monai_contreg.cli import main
from monai_contreg.data.lung_mask import lung_mask
from monai_contreg.methods.presets import get_preset
from monai_contreg.native import register_native
from tests.data.test_lung_mask import chest_phantom

FEW = ["optim.schedule.total_steps=4", "optim.schedule.constant_steps=4", "optim.schedule.cosine_end=4",
       "engine.divergence_check=false"]  # 4 steps of the lr-15 schedule: which masks are used, not convergence
AFFINE = np.diag([2.5, 2.5, 2.5, 1.0])


@pytest.fixture(scope="module")
def pair():
    img, _ = chest_phantom()
    rng = np.random.default_rng(1)
    body = img > -1020
    fixed = np.where(body, img + ndi.gaussian_filter(rng.standard_normal(img.shape), 1.5) * 400, -1000.0)
    fixed = fixed.astype(np.float32)
    moving = ndi.shift(fixed, (1.5, 0.0, 1.0), order=1, mode="nearest").astype(np.float32)
    return fixed, moving


def _mt(a):
    return MetaTensor(torch.as_tensor(a), affine=torch.as_tensor(AFFINE))


def _cfg(*extra):
    cfg = get_preset("io").with_overrides([*FEW, *extra])
    cfg.engine.num_threads = 1
    return cfg


def test_register_uses_the_auto_masks(pair):
    fixed, moving = pair
    auto = register(_mt(fixed), _mt(moving), config=_cfg()).ddf.as_tensor()
    fm, mm = (torch.as_tensor(lung_mask(a, AFFINE)).float() for a in (fixed, moving))
    given = register(_mt(fixed), _mt(moving), fixed_mask=_mt(fm), moving_mask=_mt(mm), config=_cfg()).ddf.as_tensor()
    assert torch.equal(auto, given)
    off = register(_mt(fixed), _mt(moving), config=_cfg("preprocess.auto_mask=false")).ddf.as_tensor()
    assert (off - auto).abs().max() > 1e-3  # unmasked is another registration
    # native path on a working grid equal to the fixed grid (2.5 mm, not the preset's 1.5 mm design spacing):
    # the same masks and field
    nat = register_native(_mt(fixed), _mt(moving), config=_cfg(), working_spacing=2.5).ddf.as_tensor()
    assert torch.allclose(nat, auto, atol=1e-5)


def test_cli_mask_and_no_auto_mask(pair, tmp_path, capsys):
    fixed, moving = pair
    f, m = tmp_path / "f.nii.gz", tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(fixed, AFFINE), str(f))
    nib.save(nib.Nifti1Image(moving, AFFINE), str(m))
    assert main(["mask", str(f), "-o", str(tmp_path / "mask.nii.gz")]) == 0
    written = nib.load(str(tmp_path / "mask.nii.gz"))
    assert np.array_equal(np.asarray(written.dataobj) > 0, lung_mask(fixed, AFFINE))
    assert np.allclose(written.affine, AFFINE)
    assert "lungs 616 mL" in capsys.readouterr().out  # two 308 mL box lungs
    sets = [a for s in FEW for a in ("--set", s)] + ["--threads", "1"]
    out = tmp_path / "d.nii.gz"
    assert main(["register", str(f), str(m), "-o", str(out), "--no-auto-mask", *sets]) == 0
    off = register(str(f), str(m), config=_cfg("preprocess.auto_mask=false")).to_learn2reg()
    assert np.allclose(np.asarray(nib.load(str(out)).dataobj), off, atol=1e-5)
    # not a chest CT: contreg mask fails clearly, one line, exit 2 (a user error)
    water = np.full((30, 30, 30), -1000.0, np.float32)
    water[3:27, 3:27, 3:27] = 0.0
    nib.save(nib.Nifti1Image(water, AFFINE), str(tmp_path / "w.nii.gz"))
    assert main(["mask", str(tmp_path / "w.nii.gz"), "-o", str(tmp_path / "wm.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "does not look like a chest CT" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "wm.nii.gz").exists()


def test_readme_recipe_mask_of_a_dicom_folder(tmp_path, capsys):
    """docs/guides/clinical-ct.md: contreg mask on a DICOM folder (CT with rescale intercept, -3024 padding, a localiser)."""
    from monai_contreg.io.images import save_dicom_series

    img, expected = chest_phantom(padding=-3024.0)
    aff = np.diag([-2.5, -2.5, 2.5, 1.0])  # LPS identity orientation, as scanners write axial series
    save_dicom_series(tmp_path / "ct", img, aff, "1.2.826.0.1.3680043.8.498.77.2", series_number=2, rescale=(1.0, -1024.0))
    save_dicom_series(tmp_path / "ct", img[::8, ::8, ::20], np.diag([-20.0, -20.0, 50.0, 1.0]),
                      "1.2.826.0.1.3680043.8.498.77.1", series_number=1)
    assert main(["mask", str(tmp_path / "ct"), "-o", str(tmp_path / "lungs.nii.gz")]) == 0
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "lungs.nii.gz")).dataobj) > 0, expected)
    assert "lungs 616 mL" in capsys.readouterr().out


def _coarse(kind):
    """A tests/data/ct_kinds volume at 6 mm (every second voxel): small enough to register in seconds."""
    aff = kind.affine.copy()
    aff[:3, :3] *= 2
    return kind.image[::2, ::2, ::2].astype(np.float32), aff


@pytest.fixture(scope="module")
def cut_chest():
    from tests.data.ct_kinds import chest, crop

    return _coarse(crop(chest(), 0, 0, 83))  # the field of view cuts the right lung


@pytest.fixture(scope="module")
def no_lungs():
    from tests.data.ct_kinds import abdomen

    return _coarse(abdomen())  # about 430 mL of bowel gas, no lungs


def test_register_records_the_mask_report(cut_chest, no_lungs):
    from monai_contreg.data.lung_mask import LungMaskError, segment_lungs
    from monai_contreg.errors import UserInputError

    img, aff = cut_chest
    mt = MetaTensor(torch.as_tensor(img), affine=torch.as_tensor(aff))
    res = register(mt, mt.clone(), config=_cfg())
    rep = res.mask_report
    expected = segment_lungs(img, aff).report
    assert rep["masked"] is True and rep["fixed"]["source"] == rep["moving"]["source"] == "automatic"
    assert rep["fixed"]["touches_border"] and rep["fixed"]["border_faces"] == ["right"]
    for k in ("volume_ml", "right_ml", "left_ml", "lungs"):
        assert rep["fixed"][k] == expected[k]
    # the two-grid path carries the working grid's report
    nat = register_native(mt, mt.clone(), config=_cfg(), working_spacing=6.0)
    assert nat.mask_report["masked"] is True and nat.mask_report["fixed"]["volume_ml"] == expected["volume_ml"]
    # no lungs: registered unmasked, and said so; --require-mask stops instead
    img, aff = no_lungs
    mt = MetaTensor(torch.as_tensor(img), affine=torch.as_tensor(aff))
    res = register(mt, mt.clone(), config=_cfg())
    assert res.mask_report["masked"] is False and res.mask_report["fixed"]["source"] == "not found"
    off = register(mt, mt.clone(), config=_cfg("preprocess.auto_mask=false")).ddf.as_tensor()
    assert torch.equal(res.ddf.as_tensor(), off)  # unmasked is what ran
    with pytest.raises(LungMaskError, match="--require-mask") as info:
        register(mt, mt.clone(), config=_cfg("preprocess.require_mask=true"))
    assert isinstance(info.value, UserInputError)


def test_cli_no_lungs_is_a_user_error(no_lungs, cut_chest, tmp_path, capsys):
    img, aff = no_lungs
    f = tmp_path / "abdomen.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(f))
    assert main(["mask", str(f), "-o", str(tmp_path / "m.nii.gz"), "--require-mask"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("contreg mask: error:") and "no plausible lung" in err[0]
    sets = [a for s in FEW for a in ("--set", s)] + ["--threads", "1", "--quiet"]
    for cmd in ("register", "register-native"):
        assert main([cmd, str(f), str(f), "-o", str(tmp_path / f"{cmd}.nii.gz"), "--require-mask", *sets]) == 2
        err = capsys.readouterr().err
        assert f"contreg {cmd}: error:" in err and "--require-mask" in err and "no plausible lung" in err
        assert not (tmp_path / f"{cmd}.nii.gz").exists()
    # contreg mask says the lungs touch the image border
    img, aff = cut_chest
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "chest.nii.gz"))
    assert main(["mask", str(tmp_path / "chest.nii.gz"), "-o", str(tmp_path / "lungs.nii.gz")]) == 0
    assert "touches the image border (right)" in capsys.readouterr().out


def test_require_mask_option_reaches_the_config(tmp_path):
    from monai_contreg.cli import _config, build_parser

    parser = build_parser()
    for argv in (["register", "f", "m", "-o", "d.nii.gz"], ["register-native", "f", "m", "-o", "d.nii.gz"],
                 ["run", "ds", "-o", "out"]):
        assert _config(parser.parse_args([*argv, "--require-mask"])).preprocess.require_mask is True
        assert _config(parser.parse_args(argv)).preprocess.require_mask is False
    assert parser.parse_args(["mask", "ct.nii.gz", "-o", "m.nii.gz", "--require-mask"]).require_mask is True
