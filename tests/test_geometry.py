"""Geometry travels with every input: arrays need spacing/affine, masks and keypoints are checked against their
grid, two grids go through the working grid (never voxel to voxel), TRE is in real millimetres."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi

from monai_contreg import register
from monai_contreg.api import RegistrationResult, load_inputs
from monai_contreg.errors import UserInputError
from monai_contreg.methods.presets import get_preset

FAST = ["optim.schedule.total_steps=60", "optim.schedule.constant_steps=60", "optim.schedule.cosine_end=60"]


def _images(n=(32, 32, 28), seed=5):
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.standard_normal(n), 2.0)
    f = ((f - f.min()) / np.ptp(f) * 1300 - 1000).astype(np.float32)
    g = np.indices(n).astype(float)
    u0 = 1.5 * np.sin(np.pi * g[1] / n[1]) * np.sin(np.pi * g[2] / n[2])  # fixed x <-> moving x + u0 (axis 0)
    m = ndi.map_coordinates(f, [g[0] - u0, g[1], g[2]], order=3, mode="nearest").astype(np.float32)
    return f, m, u0


def test_equal_shapes_other_orientation_go_through_the_working_grid(tmp_path):
    """case_17: equal shapes, moving stored with the x axis reversed: registered in the world, not voxel to voxel."""
    f, m, u0 = _images()
    n = f.shape
    a = np.diag([1.5, 1.5, 1.5, 1.0])
    a[:3, 3] = [-20, -20, -18]
    b = a.copy()
    b[0, 0] = -1.5
    b[0, 3] = a[0, 3] + 1.5 * (n[0] - 1)
    nib.save(nib.Nifti1Image(f, a), str(tmp_path / "fixed.nii.gz"))
    nib.save(nib.Nifti1Image(m[::-1].copy(), b), str(tmp_path / "moving_flipped.nii.gz"))
    cfg = get_preset("io-lr1").with_overrides(FAST)
    res = register(tmp_path / "fixed.nii.gz", tmp_path / "moving_flipped.nii.gz", config=cfg)
    assert res.working is not None and np.allclose(res.moving_affine, b)
    d = res.ddf.as_tensor()[0].numpy()
    c = tuple(slice(6, k - 6) for k in n)
    err = np.sqrt((d[0] - u0) ** 2 + d[1] ** 2 + d[2] ** 2)[c].mean()
    zero = np.abs(u0)[c].mean()
    assert zero > 0.9 and err < 0.3  # voxel to voxel on the raw arrays gave a mean error > 1 voxel


def test_plain_arrays_need_geometry():
    f, m, _ = _images((8, 8, 8))
    with pytest.raises(UserInputError, match=r"register: fixed is a plain array without geometry; pass spacing="):
        register(f, m)
    with pytest.raises(UserInputError, match=r"register: give spacing or affine, not both"):
        register(f, m, spacing=2.0, affine=np.eye(4))
    with pytest.raises(UserInputError, match=r"register: spacing must be one or three positive numbers"):
        register(f, m, spacing=(1.0, -1.0, 1.0))
    d = load_inputs(f, m, spacing=(2.0, 2.0, 3.0))
    assert np.allclose(d["fixed"].affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert np.allclose(load_inputs(f, m, assume_unit_spacing=True)["moving"].affine, np.eye(4))
    # a MetaTensor keeps its affine; a plain array next to it takes spacing=
    aff = np.diag([1.2, 1.2, 1.2, 1.0])
    d = load_inputs(MetaTensor(torch.as_tensor(f), affine=torch.as_tensor(aff)), m, spacing=1.2)
    assert np.allclose(d["fixed"].affine, aff) and np.allclose(d["moving"].affine, aff)


def test_masks_must_lie_on_their_images_grid():
    f, m, _ = _images((8, 8, 8))
    mask = np.ones((8, 8, 8), np.uint8)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    fm = MetaTensor(torch.as_tensor(f), affine=torch.as_tensor(aff))
    shifted = aff.copy()
    shifted[0, 3] = 1.0  # same shape, origin 1 mm away
    with pytest.raises(UserInputError, match=r"register: fixed_mask is not on its image's grid .*masks are not resampled"):
        load_inputs(fm, fm, fixed_mask=MetaTensor(torch.as_tensor(mask), affine=torch.as_tensor(shifted)))
    with pytest.raises(UserInputError, match=r"register: moving_mask is not on its image's grid \(moving_mask: shape \(8, 8, 7\)"):
        load_inputs(fm, fm, moving_mask=mask[:, :, :7])
    d = load_inputs(fm, fm, fixed_mask=mask)  # a plain-array mask takes its image's grid
    assert np.allclose(d["fixed_mask"].affine, aff)


def test_keypoints_checked_against_their_grid():
    f, m, _ = _images((8, 8, 8))
    inside = np.array([[1.0, 2.0, 3.0]])
    with pytest.raises(UserInputError, match=r"register: 1 moving keypoints lie outside the moving grid \(8, 8, 8\)"):
        register(f, m, spacing=1.0, keypoints=(inside, np.array([[1.0, 9.0, 3.0]])))
    with pytest.raises(UserInputError, match=r"register: keypoints must be two \(N, 3\) arrays of equal shape"):
        register(f, m, spacing=1.0, keypoints=(inside, np.zeros((2, 3))))


def test_tre_is_in_mm_of_the_real_grid():
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    ddf = torch.zeros(1, 3, 10, 10, 10)
    ddf[:, 0] = 0.5  # half a voxel along axis 0 everywhere
    res = RegistrationResult(ddf=MetaTensor(ddf, affine=torch.as_tensor(aff)))
    fp = np.array([[2.0, 3.0, 4.0], [5.0, 5.0, 5.0]])
    mp = fp + np.array([[1.5, 0.0, 0.0], [0.5, 2.0, 0.0]])
    # |(p + u - q) * 2 mm|: (1.0 voxel -> 2 mm) and (2.0 voxels -> 4 mm)
    assert torch.allclose(res.tre(fp, mp), torch.tensor([2.0, 4.0], dtype=torch.float64))
    # spacing as a numpy array (raised "truth value of an array is ambiguous" before)
    assert torch.allclose(res.tre(fp, mp, spacing=np.array([1.0, 1.0, 3.0])), torch.tensor([1.0, 2.0], dtype=torch.float64))
    world = res.tre(fp @ aff[:3, :3].T, mp @ aff[:3, :3].T, space="world")
    assert torch.allclose(world, torch.tensor([2.0, 4.0], dtype=torch.float64))
    with pytest.raises(UserInputError, match=r"RegistrationResult.tre: spacing must be three positive numbers"):
        res.tre(fp, mp, spacing=[1.0, 1.0])


def test_label_warp_pads_with_zeros():
    aff = np.eye(4)
    ddf = torch.zeros(1, 3, 6, 6, 6)
    ddf[:, 0] = 2.0  # samples 2 voxels further along axis 0: the last two slices fall outside
    res = RegistrationResult(ddf=MetaTensor(ddf, affine=torch.as_tensor(aff)))
    labels = torch.full((6, 6, 6), 3, dtype=torch.int16)
    out = res.warp(labels, labels=True)
    assert out.dtype == torch.int16
    assert out[:4].eq(3).all() and out[4:].eq(0).all()
    img = res.warp(torch.arange(6.0)[:, None, None].expand(6, 6, 6).clone())
    assert np.allclose(img[:, 0, 0].tolist(), [2.0, 3.0, 4.0, 5.0, 5.0, 5.0], atol=1e-5)  # images: border
