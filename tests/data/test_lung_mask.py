"""The built-in lung segmentation on a synthetic chest phantom with exact expected voxels."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_contreg.data.lung_mask import LungMaskError, auto_lung_masks, lung_mask
from monai_contreg.methods.presets import get_preset

SPACING = (2.5, 2.5, 2.5)


def chest_phantom(padding: float = -1024.0):
    """(72, 56, 60) HU volume at 2.5 mm, axis 2 superior: body, two box lungs (308 mL each), trachea, bronchi.

    The trachea (a 4x4-voxel prism on the midline) runs from the body's top face (z = 53) down to z = 43, where
    a bar joins two main bronchi that go down into the lungs' top faces (z = 37); a 3x3x3 gas bubble sits low in
    the abdomen. Returns (image, expected lung mask).
    """
    img = np.full((72, 56, 60), padding, np.float32)
    img[4:68, 6:50, 2:54] = 40.0  # body (soft tissue)
    lungs = np.zeros(img.shape, bool)
    lungs[10:32, 12:44, 10:38] = True  # right lung
    lungs[40:62, 12:44, 10:38] = True  # left lung
    img[lungs] = -850.0
    img[34:38, 26:30, 43:54] = -1000.0  # trachea, open at the body's top
    img[22:50, 26:30, 43] = -1000.0  # carina: a bar joining the two bronchi
    img[22:26, 26:30, 38:44] = -1000.0  # right main bronchus down into the lung's top face
    img[46:50, 26:30, 38:44] = -1000.0  # left main bronchus
    img[34:37, 26:29, 4:7] = -900.0  # a gas bubble in the abdomen
    return img, lungs


def _affine(spacing=SPACING):
    return np.diag([*spacing, 1.0])


def test_phantom_exact_voxels():
    img, expected = chest_phantom()
    got = lung_mask(img, _affine())
    assert got.dtype == bool and got.shape == img.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("padding", [-2000.0, -3024.0, -32768.0])
def test_phantom_padding_values(padding):
    img, expected = chest_phantom(padding)
    assert np.array_equal(lung_mask(img, _affine()), expected)


def test_phantom_orientation_and_axis_order():
    """Axes permuted and flipped (the affine says where superior is): the same voxels, permuted and flipped."""
    img, expected = chest_phantom()
    perm = (2, 0, 1)
    img_p = np.transpose(img, perm)[::-1].copy()
    exp_p = np.transpose(expected, perm)[::-1]
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    # array axis 0 = world z (flipped: superior at low index), axis 1 = world x, axis 2 = world y
    aff[2, 0], aff[0, 1], aff[1, 2] = -2.5, 2.5, 2.5
    assert np.array_equal(lung_mask(img_p, aff), exp_p)


def test_phantom_trachea_found_without_the_airway_step_it_stays():
    img, expected = chest_phantom()
    # a trachea too wide to count as airway (airway_max_area_mm2 below its 100 mm2 cross-section): it stays
    got = lung_mask(img, _affine(), airway_max_area_mm2=50.0)
    assert got[34:38, 26:30, 48].all() and not expected[34:38, 26:30, 48].any()


def test_not_a_chest_ct():
    water = np.full((40, 40, 40), -1000.0, np.float32)
    water[5:35, 5:35, 5:35] = 0.0
    with pytest.raises(LungMaskError, match="does not look like a chest CT"):
        lung_mask(water, _affine())
    with pytest.raises(LungMaskError, match="no tissue"):
        lung_mask(np.full((20, 20, 20), -1000.0), _affine())
    img, _ = chest_phantom()
    with pytest.raises(LungMaskError, match="< 1000 mL"):
        lung_mask(img, _affine(), min_lung_ml=1000.0)


def _pair(img):
    t = MetaTensor(torch.as_tensor(img[None]), affine=torch.as_tensor(_affine()))
    return {"fixed": t, "moving": t.clone()}


def test_auto_lung_masks_adds_masks_when_the_preset_masks():
    img, expected = chest_phantom()
    data = auto_lung_masks(_pair(img), get_preset("io"))
    for k in ("fixed_mask", "moving_mask"):
        assert data[k].shape == (1, *img.shape)
        assert np.array_equal(data[k][0].numpy() > 0, expected)
        assert np.allclose(data[k].affine.numpy(), _affine())
    # a preset that does not mask, or auto_mask off: nothing added
    for cfg in (get_preset("convexadam"), get_preset("io").with_overrides(["preprocess.auto_mask=false"])):
        assert "fixed_mask" not in auto_lung_masks(_pair(img), cfg)


def test_auto_lung_masks_warns_and_runs_unmasked(caplog):
    water = np.full((30, 30, 30), -1000.0, np.float32)
    water[3:27, 3:27, 3:27] = 0.0
    with caplog.at_level(logging.WARNING, logger="monai_contreg.data.lung_mask"):
        data = auto_lung_masks(_pair(water), get_preset("io"), where="register")
    assert "fixed_mask" not in data and "moving_mask" not in data
    assert "registering WITHOUT masks" in caplog.text and "--no-auto-mask" in caplog.text


@pytest.mark.data
@pytest.mark.slow
def test_dice_against_nlst_synth_masks(nlst_synth):
    """The auto mask of each fixed image against the shipped lung mask: Dice >= 0.95."""
    for case in ("0101", "0102", "0103", "0104"):
        im = nib.load(nlst_synth / "imagesTr" / f"NLSTB_{case}_0000.nii.gz")
        ref = np.asarray(nib.load(nlst_synth / "masksTr" / f"NLSTB_{case}_0000.nii.gz").dataobj) > 0
        got = lung_mask(np.asarray(im.dataobj, dtype=np.float32), im.affine)
        dice = 2 * (got & ref).sum() / (got.sum() + ref.sum())
        assert dice >= 0.95, (case, dice)
