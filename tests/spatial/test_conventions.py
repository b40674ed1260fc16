import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_contreg.spatial.conventions import (
    ALIGN_CORNERS,
    ddf_to_learn2reg,
    ddf_to_sampling_grid,
    ddf_voxel_to_world,
    ddf_world_to_voxel,
    identity_grid,
    learn2reg_to_ddf,
    points_voxel_to_world,
    points_world_to_voxel,
    resize_ddf,
    spacing_from_affine,
    voxel_to_normalized,
)


def test_identity_grid_values():
    g = identity_grid((2, 3, 4))
    assert g.shape == (1, 3, 2, 3, 4)
    assert g[0, :, 1, 2, 3].tolist() == [1.0, 2.0, 3.0]


def test_voxel_to_normalized_documented_example():
    n = voxel_to_normalized(torch.tensor([[0.0, 1.5, 7.0]]), (4, 4, 8))
    assert torch.allclose(n, torch.tensor([[0.875, 0.0, -0.75]]))


def test_zero_ddf_grid_samples_identity():
    img = torch.rand(1, 2, 5, 6, 7)
    grid = ddf_to_sampling_grid(torch.zeros(1, 3, 5, 6, 7))
    out = F.grid_sample(img, grid, align_corners=ALIGN_CORNERS, mode="bilinear")
    assert torch.allclose(out, img, atol=1e-6)


def test_learn2reg_round_trip_and_layout():
    ddf = torch.randn(1, 3, 4, 5, 6)
    arr = ddf_to_learn2reg(ddf)
    assert arr.shape == (4, 5, 6, 3)
    assert np.allclose(arr[1, 2, 3], ddf[0, :, 1, 2, 3].numpy())
    assert torch.equal(learn2reg_to_ddf(arr), ddf)


def test_learn2reg_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"learn2reg_to_ddf: field must have shape \(H, W, D, 3\)"):
        learn2reg_to_ddf(np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match="batch size 1"):
        ddf_to_learn2reg(torch.zeros(2, 3, 4, 4, 4))


def test_resize_ddf_constant_shift_scales_with_grid():
    ddf = torch.zeros(1, 3, 112 // 8, 96 // 8, 112 // 8)
    ddf[:, 0] = 1.0
    ddf[:, 2] = -0.5
    up = resize_ddf(ddf, (28, 24, 28))
    assert torch.allclose(up[:, 0], torch.full_like(up[:, 0], 2.0))
    assert torch.allclose(up[:, 2], torch.full_like(up[:, 2], -1.0))
    assert torch.allclose(up[:, 1], torch.zeros_like(up[:, 1]))


def test_resize_ddf_preserves_physical_points():
    # an affine field u(x) = A x + b on a fine grid, coarsened 2x, must map matching points alike
    fine = (16, 12, 20)
    x = identity_grid(fine)
    a = torch.tensor([[0.05, 0.0, 0.02], [0.0, -0.03, 0.0], [0.01, 0.0, 0.04]])
    ddf = torch.einsum("ij,bj...->bi...", a, x) + torch.tensor([0.5, -0.2, 0.1]).view(1, 3, 1, 1, 1)
    coarse = resize_ddf(ddf, (8, 6, 10))
    # coarse voxel j sits at fine coordinate 2 j + 0.5; its displacement in coarse voxels is u / 2
    j = torch.tensor([3.0, 2.0, 4.0])
    p = 2 * j + 0.5
    expected = (a @ p + torch.tensor([0.5, -0.2, 0.1])) / 2
    assert torch.allclose(coarse[0, :, 3, 2, 4], expected, atol=1e-5)


def test_world_conversions():
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [10, 20, 30]
    ddf = torch.zeros(1, 3, 2, 2, 2)
    ddf[:, 0] = 2.0
    mm = ddf_voxel_to_world(ddf, affine)
    assert torch.allclose(mm[:, 0], torch.full_like(mm[:, 0], 3.0))
    assert torch.allclose(ddf_world_to_voxel(mm, affine), ddf)
    pts = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    w = points_voxel_to_world(pts, affine)
    assert torch.allclose(w, torch.tensor([[11.5, 24.0, 37.5]], dtype=torch.float64))
    assert torch.allclose(points_world_to_voxel(w, affine), pts)
    assert spacing_from_affine(affine) == pytest.approx((1.5, 2.0, 2.5))


def test_world_conversion_with_rotation():
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([0.8, 0.8, 2.0])
    affine = np.eye(4)
    affine[:3, :3] = rot
    pts = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(points_voxel_to_world(pts, affine), torch.tensor([[0.0, 0.8, 0.0]], dtype=torch.float64))
    assert spacing_from_affine(affine) == pytest.approx((0.8, 0.8, 2.0))


def test_bad_affine_named():
    with pytest.raises(ValueError, match="ddf_voxel_to_world: affine must be a 4x4"):
        ddf_voxel_to_world(torch.zeros(1, 3, 2, 2, 2), np.eye(3))
