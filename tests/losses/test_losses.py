import pytest
import torch

from monai_contreg.losses import DiffusionLoss, SSDLoss, diffusion, ssd


def test_ssd_sum_over_channels_mean_over_voxels():
    a = torch.zeros(1, 12, 4, 4, 4)
    b = torch.ones(1, 12, 4, 4, 4)
    assert SSDLoss()(a, b).item() == pytest.approx(12.0)
    b2 = b.clone()
    b2[:, :, 0] = 0  # a quarter of voxels now agree
    assert ssd(a, b2).item() == pytest.approx(9.0)
    assert ssd(a, b2, "none").shape == (1, 1, 4, 4, 4)
    assert ssd(a, b2, "sum").item() == pytest.approx(12 * 48)


def test_ssd_errors():
    with pytest.raises(ValueError, match="ssd: pred and target must have equal shapes"):
        ssd(torch.zeros(1, 2, 3, 3, 3), torch.zeros(1, 3, 3, 3, 3))
    with pytest.raises(ValueError, match="ssd: unknown reduction 'meen'.*Did you mean 'mean'"):
        ssd(torch.zeros(1, 2, 3, 3, 3), torch.zeros(1, 2, 3, 3, 3), "meen")


def test_diffusion_of_linear_field():
    ddf = torch.zeros(1, 3, 5, 5, 5)
    ddf[:, 0] = torch.arange(5.0).view(5, 1, 1) * 2.0  # d u0 / d x0 = 2 -> squared diff 4 over axis-0 diffs
    # mean over all channels of axis-0 differences: 4 * (1 of 3 channels) = 4/3; other axes: 0
    assert diffusion(ddf).item() == pytest.approx(4.0 / 3.0)
    assert DiffusionLoss()(torch.full((1, 3, 4, 4, 4), 7.0)).item() == 0.0
    with pytest.raises(ValueError, match="DiffusionLoss: reduction 'none' is not supported"):
        DiffusionLoss("none")
