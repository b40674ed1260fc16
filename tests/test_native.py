"""register_native: images on different grids, a working grid, the field back on the fixed grid."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import monai_contreg.registration as registration
from monai_contreg.api import RegistrationResult, register
from monai_contreg.data.demo import make_demo_pair
from monai_contreg.methods.presets import get_preset
from monai_contreg.native import register_native
from monai_contreg.spatial.conventions import ddf_voxel_to_world, points_voxel_to_world, spacing_from_affine
from monai_contreg.spatial.resample import mapped_coordinates, resample_image

# five steps at the peak rate 15 would end above the starting loss (DivergenceGuard): a plumbing run at lr 1
FAST = ["optim.schedule.total_steps=5", "optim.schedule.constant_steps=5", "optim.schedule.cosine_end=5",
        "optim.schedule.peak_lr=1"]


@pytest.fixture(scope="module")
def pair():
    return make_demo_pair(shape=(32, 32, 32), n_keypoints=20)


def _cfg():
    return get_preset("io").with_overrides(FAST)


def _other_grid(spacing=(2.5, 1.6, 2.0)):
    """Axes (2, 0, 1) of the demo grid, axis 0 reversed, anisotropic spacing, over about the same box."""
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    aff[2, 0] = -spacing[0]
    aff[0, 1] = spacing[1]
    aff[1, 2] = spacing[2]
    aff[:3, 3] = [0.0, 0.0, 62.0]
    shape = (int(round(64 / spacing[0])), int(round(64 / spacing[1])), int(round(64 / spacing[2])))
    return aff, shape


def test_same_grid_equals_register(pair):
    f = MetaTensor(torch.as_tensor(pair.fixed), affine=torch.as_tensor(pair.affine))
    m = MetaTensor(torch.as_tensor(pair.moving), affine=torch.as_tensor(pair.affine))
    res = register_native(f, m, config=_cfg(), working_spacing=pair.spacing[0])
    ref = register(pair.fixed, pair.moving, spacing=pair.spacing, config=_cfg())
    assert res.working_shape == (32, 32, 32)
    assert torch.equal(res.ddf.as_tensor(), ref.ddf.as_tensor())


def test_known_working_field_comes_back_exactly_on_the_native_grid(pair, monkeypatch):
    """Stub the optimiser: a known world-affine displacement on the working grid must reach the fixed grid exactly."""
    f_aff, f_shape = _other_grid()
    fixed = MetaTensor(torch.rand(1, *f_shape), affine=torch.as_tensor(f_aff))
    moving = MetaTensor(torch.as_tensor(pair.moving), affine=torch.as_tensor(pair.affine))
    b = torch.tensor([[0.02, -0.01, 0.0], [0.01, 0.03, -0.02], [0.0, 0.01, 0.01]], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    seen = {}

    def fake_solve(data, plan, **kwargs):
        f_w, m_w = data["fixed"][0], data["moving"][0]
        w_aff = np.asarray(f_w.affine, dtype=np.float64)
        seen.update(shape=tuple(f_w.shape), affine=w_aff, moving_shape=tuple(m_w.shape))
        world = mapped_coordinates(torch.as_tensor(w_aff), f_w.shape, dtype=torch.float64)
        vox = (world @ b.T + c) @ torch.linalg.inv(torch.as_tensor(w_aff[:3, :3])).T
        return RegistrationResult(ddf=MetaTensor(vox.permute(3, 0, 1, 2)[None].float(), affine=torch.as_tensor(w_aff)))

    monkeypatch.setattr(registration, "solve", fake_solve)
    res = register_native(fixed, moving, output="mm")
    assert seen["shape"] == seen["moving_shape"] == res.working_shape
    assert np.allclose(spacing_from_affine(seen["affine"]), get_preset("io").field.design_spacing)
    assert res.ddf.shape == (1, 3, *f_shape) and np.allclose(res.ddf.affine, f_aff)
    world = mapped_coordinates(torch.as_tensor(f_aff), f_shape, dtype=torch.float64)
    truth = (world @ b.T + c).permute(3, 0, 1, 2)[None]
    assert torch.allclose(res.displacement.double(), truth, atol=1e-4)
    assert torch.allclose(res.displacement, ddf_voxel_to_world(res.ddf.as_tensor(), f_aff))
    pts = world.reshape(-1, 3)[::97]
    assert torch.allclose(res.map_points(pts), pts + pts @ b.T + c, atol=1e-4)


def test_different_grids_and_files_end_to_end(pair, tmp_path):
    """Moving on a permuted, flipped, anisotropic grid in NRRD; fixed NIfTI; tiny optimisation."""
    from monai_contreg.io.images import save_image
    from monai_contreg.io.itk_transforms import load_itk_transform

    m_aff, m_shape = _other_grid()
    moving = resample_image(torch.as_tensor(pair.moving)[None, None], pair.affine, m_aff, m_shape)[0, 0]
    nib.save(nib.Nifti1Image(pair.fixed.astype(np.float32), pair.affine), str(tmp_path / "fixed.nii.gz"))
    nib.save(nib.Nifti1Image(pair.fixed_mask.astype(np.uint8), pair.affine), str(tmp_path / "fixed_mask.nii.gz"))
    save_image(tmp_path / "moving.nrrd", moving, m_aff)
    fk = points_voxel_to_world(torch.as_tensor(pair.fixed_keypoints), pair.affine)
    mk = points_voxel_to_world(torch.as_tensor(pair.moving_keypoints), pair.affine)
    res = register_native(
        tmp_path / "fixed.nii.gz", tmp_path / "moving.nrrd", fixed_mask=tmp_path / "fixed_mask.nii.gz",
        working_spacing=2.0, config=_cfg(), keypoints_mm=(fk, mk),
    )
    assert res.working_shape == (32, 32, 32) and res.ddf.shape == (1, 3, 32, 32, 32)
    assert np.allclose(res.moving_affine, m_aff, atol=1e-5) and res.moving_shape == m_shape
    tre = res.tre(fk, mk, space="world")
    assert tre.shape == (20,) and bool(torch.isfinite(tre).all())
    assert torch.equal(res.displacement, res.ddf.as_tensor())
    warped = res.warp(moving, moving_affine=m_aff)
    assert warped.shape == (32, 32, 32)
    back, aff = load_itk_transform(res.save_itk(tmp_path / "tx.h5"))
    assert np.allclose(aff, pair.affine) and torch.allclose(back, res.ddf.as_tensor(), atol=1e-4)
    assert res.save(tmp_path / "disp.nii.gz").is_file()


def test_errors_name_function_and_argument(pair, tmp_path):
    with pytest.raises(ValueError, match=r"register_native: unknown output 'vox'.*Did you mean 'voxel'"):
        register_native(pair.fixed, pair.moving, output="vox", spacing=pair.spacing)
    with pytest.raises(FileNotFoundError, match=r"register_native: fixed file '.*none.nii.gz' does not exist"):
        register_native(tmp_path / "none.nii.gz", pair.moving, spacing=pair.spacing)
    with pytest.raises(ValueError, match=r"register_native: moving must be a 3-D volume .* got shape \(2, 32, 32, 32\)"):
        register_native(pair.fixed, np.zeros((2, 32, 32, 32)), spacing=pair.spacing)
    with pytest.raises(TypeError, match=r"register_native: fixed_mask must be a file path"):
        register_native(pair.fixed, pair.moving, fixed_mask=[1, 2], spacing=pair.spacing)


def test_default_working_grid_is_the_presets_design_spacing(monkeypatch):
    """A clinical anisotropic header (0.65 x 0.65 x 2.5 mm) is registered at the preset's 1.5 mm, not at 0.65 mm."""
    aff = np.diag([0.65, 0.65, 2.5, 1.0])
    aff[:3, 3] = [-80.0, -60.0, 10.0]
    shape = (40, 30, 12)  # 26 x 19.5 x 30 mm
    fixed = MetaTensor(torch.rand(1, *shape), affine=torch.as_tensor(aff))
    seen = {}

    def fake_solve(data, plan, **kwargs):
        f_w = data["fixed"][0]
        seen.update(shape=tuple(f_w.shape), affine=np.asarray(f_w.affine, dtype=np.float64), config=plan.config)
        return RegistrationResult(ddf=MetaTensor(torch.zeros(1, 3, *f_w.shape), affine=f_w.affine))

    monkeypatch.setattr(registration, "solve", fake_solve)
    res = register_native(fixed, fixed.clone())
    # n' = round(n * s / 1.5): 40 * 0.65 / 1.5 = 17.33 -> 17, 30 * 0.65 / 1.5 = 13, 12 * 2.5 / 1.5 = 20
    assert seen["shape"] == res.working_shape == (17, 13, 20)
    assert np.allclose(spacing_from_affine(seen["affine"]), (1.5, 1.5, 1.5))
    centre = lambda a, n: a[:3, :3] @ ((np.asarray(n) - 1) / 2) + a[:3, 3]  # noqa: E731
    assert np.allclose(centre(seen["affine"], seen["shape"]), centre(aff, shape))
    # the preset's design spacing decides; a finer grid only when asked
    cfg = get_preset("io")
    cfg.field.design_spacing = 2.5
    register_native(fixed, fixed.clone(), config=cfg)
    assert seen["shape"] == (10, 8, 12)
    register_native(fixed, fixed.clone(), working_spacing=0.65)
    assert seen["shape"] == (40, 30, 46)
