import pytest
import torch
import torch.nn.functional as F

from monai_contreg.spatial.filters import box_filter, downsample, gaussian_filter, pooled_shape


def test_box_filter_matches_replicate_avg_pool():
    x = torch.rand(1, 3, 7, 8, 9)
    ref = x
    for _ in range(3):
        ref = F.avg_pool3d(F.pad(ref, (1, 1, 1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert torch.allclose(box_filter(x, 3, passes=3), ref, atol=1e-6)


def test_box_filter_keeps_constants_and_linear_interior():
    c = torch.full((1, 1, 6, 6, 6), 2.5)
    assert torch.allclose(box_filter(c, 5, 2), c)
    ramp = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(1, 1, 10, 3, 3).contiguous()
    assert torch.allclose(box_filter(ramp, 3)[0, 0, 1:-1, 1, 1], torch.arange(1.0, 9.0))


def test_box_filter_bad_kernel():
    with pytest.raises(ValueError, match="box_filter: kernel_size must be a positive odd integer"):
        box_filter(torch.zeros(1, 1, 4, 4, 4), 4)


def test_gaussian_preserves_mean_of_constant():
    c = torch.full((1, 2, 6, 7, 8), 3.0)
    assert torch.allclose(gaussian_filter(c, 1.5), c, atol=1e-6)


def test_downsample_and_shape():
    x = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 2, 2)
    y = downsample(x, (2, 1, 1))
    assert torch.allclose(y[0, 0, :, 0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    assert pooled_shape((224, 192, 224), 2) == (112, 96, 112)
    assert downsample(torch.rand(1, 1, 9, 8, 8), 2).shape == (1, 1, 4, 4, 4)
