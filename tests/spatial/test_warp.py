import pytest
import torch

from monai_contreg.spatial.warp import sample_at_points, warp_image, warp_labels, warp_points


def test_zero_field_is_identity():
    img = torch.rand(2, 3, 6, 7, 8)
    assert torch.allclose(warp_image(img, torch.zeros(1, 3, 6, 7, 8)), img, atol=1e-6)
    lab = torch.randint(0, 4, (1, 1, 6, 7, 8))
    out = warp_labels(lab, torch.zeros(1, 3, 6, 7, 8))
    assert out.dtype == lab.dtype and torch.equal(out, lab)


@pytest.mark.parametrize("axis,shift", [(0, 2), (1, -1), (2, 3)])
def test_integer_shift(axis, shift):
    img = torch.rand(1, 1, 10, 11, 12)
    ddf = torch.zeros(1, 3, 10, 11, 12)
    ddf[:, axis] = shift
    out = warp_image(img, ddf)
    # out(x) = img(x + shift e_axis), exact away from the border
    n = img.shape[axis + 2]
    lo, hi = max(0, -shift), n - max(0, shift)
    got = out.narrow(axis + 2, lo, hi - lo)
    want = img.narrow(axis + 2, lo + shift, hi - lo)
    assert torch.allclose(got, want, atol=1e-6)


def test_half_voxel_shift_interpolates_linearly():
    img = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1, 1).expand(1, 1, 8, 2, 2).contiguous()
    ddf = torch.zeros(1, 3, 8, 2, 2)
    ddf[:, 0] = 0.5
    out = warp_image(img, ddf)
    assert torch.allclose(out[0, 0, :7, 0, 0], torch.arange(7, dtype=torch.float32) + 0.5)


def test_labels_nearest():
    lab = torch.zeros(1, 1, 6, 6, 6, dtype=torch.int64)
    lab[:, :, 3:] = 2
    ddf = torch.zeros(1, 3, 6, 6, 6)
    ddf[:, 0] = 1.4
    out = warp_labels(lab, ddf)
    assert set(out.unique().tolist()) <= {0, 2}
    assert out[0, 0, 1, 0, 0] == 0 and out[0, 0, 2, 0, 0] == 2


def test_warp_points_and_sampling():
    ddf = torch.zeros(1, 3, 8, 8, 8)
    ddf[:, 1] = torch.arange(8.0).view(1, 8, 1, 1)  # u_1(x) = x_0
    pts = torch.tensor([[2.5, 1.0, 3.0], [0.0, 0.0, 0.0]])
    out = warp_points(pts, ddf)
    assert torch.allclose(out, torch.tensor([[2.5, 3.5, 3.0], [0.0, 0.0, 0.0]]))
    vals = sample_at_points(torch.rand(2, 4, 8, 8, 8), pts)
    assert vals.shape == (2, 2, 4)


def test_shape_errors_name_argument():
    with pytest.raises(ValueError, match="warp_image: image spatial shape"):
        warp_image(torch.rand(1, 1, 4, 4, 4), torch.zeros(1, 3, 5, 4, 4))
    with pytest.raises(ValueError, match=r"warp_image: ddf must be a MONAI DDF of shape \(B, 3, H, W, D\)"):
        warp_image(torch.rand(1, 1, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="warp_image: unknown padding_mode 'boder'.*Did you mean 'border'"):
        warp_image(torch.rand(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), padding_mode="boder")
    with pytest.raises(ValueError, match=r"warp_points: points must have shape \(N, 3\)"):
        warp_points(torch.zeros(4, 2), torch.zeros(1, 3, 4, 4, 4))


@pytest.mark.parametrize("h,chunks", [(12, 2), (13, 3), (9, 4)])
def test_grid_sample_3d_chunked_equals_plain(h, chunks):
    import torch.nn.functional as F

    from monai_contreg.spatial.warp import grid_sample_3d

    img = torch.rand(1, 4, h, 7, 8)
    grid = (torch.rand(1, h, 7, 8, 3) * 2.2 - 1.1).requires_grad_()
    ref = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    (ref * torch.arange(ref.numel()).view_as(ref).sin()).sum().backward()
    g_ref = grid.grad.clone()
    grid.grad = None
    out = grid_sample_3d(img, grid, chunks=chunks)
    (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(grid.grad, g_ref, atol=1e-5)
