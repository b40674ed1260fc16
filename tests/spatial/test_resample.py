"""Geometry between grids: exact answers on known affine cases."""

import numpy as np
import pytest
import torch

from monai_contreg.spatial.conventions import (
    affine_to_itk_geometry,
    ddf_voxel_to_world,
    itk_geometry_to_affine,
    points_voxel_to_world,
    ras_lps_flip,
    spacing_from_affine,
    voxel_map,
)
from monai_contreg.spatial.resample import (
    map_points_world,
    mapped_coordinates,
    resample_ddf,
    resample_image,
    same_grid,
    warp_between_grids,
    working_grid,
)
from monai_contreg.spatial.warp import warp_image


def _rotated_affine(spacing=(0.7, 1.3, 2.1), origin=(10.0, -20.0, 5.0), angle=0.3):
    """A voxel-to-world matrix with anisotropic spacing, an axis permutation, flips and an oblique rotation."""
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0.0]])
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ perm @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def _world_grid(affine, shape):
    """World coordinates (H, W, D, 3) of every voxel of a grid."""
    return mapped_coordinates(torch.as_tensor(affine), shape, dtype=torch.float64)


# --- conventions added for geometry -------------------------------------------------------------------------


def test_itk_geometry_documented_example_and_round_trip():
    origin, spacing, direction = affine_to_itk_geometry(np.diag([1.5, 1.5, 2.0, 1.0]))
    assert np.allclose(origin, 0) and np.allclose(spacing, [1.5, 1.5, 2.0]) and np.allclose(direction, np.diag([-1, -1, 1]))
    aff = _rotated_affine()
    o, s, d = affine_to_itk_geometry(aff)
    assert np.allclose(o, [-10.0, 20.0, 5.0]) and np.allclose(s, [0.7, 1.3, 2.1])
    assert np.allclose(d @ d.T, np.eye(3))
    assert np.allclose(itk_geometry_to_affine(o, s, d), aff)


def test_ras_lps_flip_points_and_fields():
    assert ras_lps_flip(torch.tensor([1.0, 2.0, 3.0])).tolist() == [-1.0, -2.0, 3.0]
    f = torch.randn(1, 3, 2, 2, 2)
    g = ras_lps_flip(f, dim=1)
    assert torch.equal(g[:, 2], f[:, 2]) and torch.equal(g[:, :2], -f[:, :2])
    assert torch.equal(ras_lps_flip(g, dim=1), f)
    with pytest.raises(ValueError, match=r"ras_lps_flip: x must have 3 entries along dim -1, got shape \(4,\)"):
        ras_lps_flip(torch.zeros(4))


def test_voxel_map_documented_example():
    m = voxel_map(np.diag([2.0, 2.0, 2.0, 1.0]), np.eye(4))
    assert torch.allclose(m @ torch.tensor([3.0, 0, 0, 1], dtype=torch.float64), torch.tensor([6.0, 0, 0, 1], dtype=torch.float64))


# --- working grid ------------------------------------------------------------------------------------------


def test_working_grid_documented_example_keeps_centre_and_orientation():
    aff = np.diag([0.98, 0.98, 2.5, 1.0])
    aff[:3, 3] = [-100.0, 20.0, 7.0]
    w_aff, w_shape = working_grid(aff, (343, 294, 134), 1.5)
    assert w_shape == (224, 192, 223)
    assert np.allclose(spacing_from_affine(w_aff), 1.5)
    centre_old = aff[:3, :3] @ ((np.array([343, 294, 134]) - 1) / 2) + aff[:3, 3]
    centre_new = w_aff[:3, :3].numpy() @ ((np.array(w_shape) - 1) / 2) + w_aff[:3, 3].numpy()
    assert np.allclose(centre_old, centre_new)


def test_working_grid_defaults_to_smallest_spacing_and_oblique_directions():
    aff = _rotated_affine()
    w_aff, w_shape = working_grid(aff, (10, 12, 8))
    assert w_shape == (10, 22, 24)
    assert np.allclose(spacing_from_affine(w_aff), 0.7)
    dirs_old = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    assert np.allclose(w_aff[:3, :3].numpy() / 0.7, dirs_old)


def test_working_grid_at_own_spacing_is_the_grid():
    aff = _rotated_affine(spacing=(1.5, 1.5, 1.5))
    w_aff, w_shape = working_grid(aff, (7, 8, 9))
    assert w_shape == (7, 8, 9) and same_grid(w_aff, w_shape, aff, (7, 8, 9))


def test_working_grid_rejects_bad_spacing():
    with pytest.raises(ValueError, match=r"working_grid: spacing must be a positive number or three, got -1"):
        working_grid(np.eye(4), (4, 4, 4), -1)
    with pytest.raises(ValueError, match=r"working_grid: shape must be three positive integers"):
        working_grid(np.eye(4), (4, 4), 1.0)


# --- resampling images -------------------------------------------------------------------------------------


def test_resample_integer_translation_is_an_exact_shift():
    img = torch.rand(1, 1, 8, 7, 6)
    dst = np.eye(4)
    dst[:3, 3] = [2.0, 0.0, -1.0]
    out = resample_image(img, np.eye(4), dst, (6, 7, 6))
    assert torch.allclose(out[..., :, :, 1:], img[..., 2:8, :, 0:5], atol=1e-6)


def test_resample_permuted_flipped_grid_is_an_exact_transpose():
    img = torch.rand(1, 1, 5, 6, 7)
    src = _rotated_affine(spacing=(1.0, 2.0, 3.0))
    # the same voxels, stored with axes (2, 0, 1) and axis 0 reversed
    perm = np.zeros((4, 4))
    perm[3, 3] = 1
    perm[2, 0] = -1.0  # new axis 0 = old axis 2, reversed
    perm[2, 3] = 6.0
    perm[0, 1] = 1.0  # new axis 1 = old axis 0
    perm[1, 2] = 1.0  # new axis 2 = old axis 1
    dst = src @ perm
    out = resample_image(img, src, dst, (7, 5, 6))
    expected = img.permute(0, 1, 4, 2, 3).flip(2)
    assert torch.allclose(out, expected, atol=1e-5)
    labels = torch.randint(0, 5, (1, 1, 5, 6, 7), dtype=torch.int64)
    lab = resample_image(labels, src, dst, (7, 5, 6), mode="nearest")
    assert lab.dtype == torch.int64 and torch.equal(lab, labels.permute(0, 1, 4, 2, 3).flip(2))


def test_resample_linear_function_is_exact_between_oblique_grids():
    src = _rotated_affine(spacing=(0.7, 1.3, 2.1))
    src_shape = (30, 20, 14)
    w = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    img = (_world_grid(src, src_shape) @ w)[None, None]
    dst, dst_shape = working_grid(src, src_shape, 1.9)
    out = resample_image(img, src, dst, dst_shape)
    truth = _world_grid(dst.numpy(), dst_shape) @ w
    # inside the source grid (away from its border, where values are clamped) trilinear is exact
    vox = (_world_grid(dst.numpy(), dst_shape) - torch.as_tensor(src[:3, 3])) @ torch.linalg.inv(torch.as_tensor(src[:3, :3])).T
    inside = ((vox >= 0) & (vox <= torch.tensor(src_shape, dtype=torch.float64) - 1)).all(-1)
    assert inside.sum() > 100
    assert torch.allclose(out[0, 0][inside], truth[inside], atol=1e-9)


def test_resample_same_grid_returns_input_and_checks_arguments():
    img = torch.rand(1, 1, 4, 4, 4)
    assert resample_image(img, np.eye(4), np.eye(4), (4, 4, 4)) is img
    with pytest.raises(ValueError, match=r"resample_image: unknown mode 'linear'.*Did you mean"):
        resample_image(img, np.eye(4), np.eye(4), (4, 4, 4), mode="linear")
    with pytest.raises(ValueError, match=r"resample_image: image must have 5 dimensions"):
        resample_image(img[0], np.eye(4), np.eye(4), (4, 4, 4))


# --- fields between grids ----------------------------------------------------------------------------------


def _affine_field_on_grid(affine, shape, b, c):
    """DDF (voxels) of the world displacement d(X) = B X + c on a grid (exactly trilinear)."""
    world = _world_grid(affine, shape)
    d_mm = world @ b.T + c
    vox = d_mm @ torch.linalg.inv(torch.as_tensor(affine[:3, :3])).T
    return vox.permute(3, 0, 1, 2)[None]


def test_resample_ddf_constant_shift_changes_units():
    ddf = torch.zeros(1, 3, 8, 8, 8, dtype=torch.float64)
    ddf[:, 0] = 1.0
    src = np.diag([1.5, 1.5, 1.5, 1.0])
    dst, shape = working_grid(src, (8, 8, 8), 1.0)
    out = resample_ddf(ddf, src, dst, shape)
    assert shape == (12, 12, 12)
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 1.5)) and torch.allclose(out[:, 1:], torch.zeros_like(out[:, 1:]))


def test_resample_ddf_keeps_the_world_displacement_between_oblique_grids():
    b = torch.tensor([[0.02, -0.01, 0.0], [0.01, 0.03, -0.02], [0.0, 0.01, 0.01]], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    src = _rotated_affine(spacing=(1.5, 1.5, 1.5))
    src_shape = (20, 20, 20)
    ddf = _affine_field_on_grid(src, src_shape, b, c)
    dst = _rotated_affine(spacing=(0.9, 2.5, 1.1), origin=(11.0, -19.0, 3.0), angle=0.25)
    dst_shape = (20, 8, 18)
    out = resample_ddf(ddf, src, dst, dst_shape)
    truth = _affine_field_on_grid(dst, dst_shape, b, c)
    vox = (_world_grid(dst, dst_shape) - torch.as_tensor(src[:3, 3])) @ torch.linalg.inv(torch.as_tensor(src[:3, :3])).T
    inside = ((vox >= 0) & (vox <= 19)).all(-1)
    assert inside.sum() > 100
    err = (ddf_voxel_to_world(out - truth, dst)[0].permute(1, 2, 3, 0)[inside]).norm(dim=-1)
    assert float(err.max()) < 1e-9


def test_warp_between_grids_matches_warp_image_on_one_grid_and_is_exact_for_linear_images():
    img = torch.rand(1, 1, 9, 8, 7)
    ddf = torch.randn(1, 3, 9, 8, 7)
    aff = _rotated_affine()
    assert torch.allclose(warp_between_grids(img, aff, ddf, aff), warp_image(img, ddf), atol=1e-5)
    # moving image f(X) = w.X on its own grid; constant world shift t: out(x) = w.(A_f x + t)
    w = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    m_aff = _rotated_affine(spacing=(0.8, 0.8, 1.6), angle=-0.2, origin=(0.0, 0.0, 0.0))
    m_shape = (40, 40, 20)
    m_aff[:3, 3] = np.array([-5.0, 10.0, 8.0]) - m_aff[:3, :3] @ ((np.array(m_shape) - 1) / 2)  # centred on the fixed grid
    moving = (_world_grid(m_aff, m_shape) @ w)[None, None]
    f_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    f_aff[:3, 3] = [-10.0, 5.0, 3.0]
    t = torch.tensor([1.0, 2.0, -1.5], dtype=torch.float64)
    ddf_f = (torch.linalg.inv(torch.as_tensor(f_aff[:3, :3])) @ t).view(1, 3, 1, 1, 1).expand(1, 3, 6, 6, 6).contiguous()
    out = warp_between_grids(moving, m_aff, ddf_f, f_aff)
    truth = (_world_grid(f_aff, (6, 6, 6)) + t) @ w
    assert torch.allclose(out[0, 0], truth, atol=1e-9)


def test_map_points_world_constant_shift():
    aff = _rotated_affine()
    ddf = torch.zeros(1, 3, 6, 6, 6, dtype=torch.float64)
    ddf[:, 1] = 2.0  # two voxels along axis 1 = 2 * 1.3 mm along the affine's second column
    pts = points_voxel_to_world(torch.tensor([[1.0, 2.0, 3.0], [4.5, 0.5, 2.25]], dtype=torch.float64), aff)
    out = map_points_world(pts, ddf, aff)
    assert torch.allclose(out - pts, torch.as_tensor(aff[:3, 1] * 2.0).expand(2, 3))
