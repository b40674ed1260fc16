import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from monai_contreg.evaluation.metrics import dice, jacobian_statistics, keypoint_tre
from monai_contreg.spatial.conventions import identity_grid


def test_tre_matches_scipy_map_coordinates():
    g = torch.Generator().manual_seed(0)
    ddf = torch.randn((1, 3, 10, 11, 12), generator=g, dtype=torch.float64)
    fp = torch.rand((50, 3), generator=g, dtype=torch.float64) * torch.tensor([9.0, 10.0, 11.0])
    mp = torch.rand((50, 3), generator=g, dtype=torch.float64) * 10
    spacing = (1.5, 1.5, 2.0)
    ours = keypoint_tre(ddf, fp, mp, spacing).numpy()
    arr = ddf[0].numpy()
    u = np.stack([map_coordinates(arr[c], fp.numpy().T, order=1) for c in range(3)], axis=1)
    ref = np.linalg.norm((fp.numpy() + u - mp.numpy()) * np.array(spacing), axis=1)
    assert np.allclose(ours, ref, atol=1e-9)


def test_tre_zero_field_is_initial_distance():
    fp = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    mp = torch.tensor([[4.0, 5.0, 1.0]], dtype=torch.float64)
    assert keypoint_tre(torch.zeros(1, 3, 6, 6, 6), fp, mp).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="keypoint_tre: fixed_points .* must both have shape"):
        keypoint_tre(torch.zeros(1, 3, 6, 6, 6), fp, torch.zeros(2, 3))


def test_jacobian_statistics_known_field():
    x = identity_grid((12, 12, 12), dtype=torch.float64)
    ddf = torch.zeros(1, 3, 12, 12, 12, dtype=torch.float64)
    ddf[:, 0] = 0.1 * x[:, 0]  # det = 1.1 everywhere -> std 0
    s = jacobian_statistics(ddf)
    assert s["sdlogj"] == pytest.approx(0.0, abs=1e-12) and s["folding_percent"] == 0.0
    assert s["jac_min"] == pytest.approx(1.1)
    # half of the interior folded
    ddf2 = torch.zeros(1, 3, 12, 12, 12, dtype=torch.float64)
    ddf2[:, 0, :, :, 6:] = -2.0 * x[:, 0, :, :, 6:]
    s2 = jacobian_statistics(ddf2)
    assert s2["folding_percent"] == pytest.approx(50.0)


def test_dice():
    a = torch.zeros(4, 4, 4, dtype=torch.int64)
    b = torch.zeros(4, 4, 4, dtype=torch.int64)
    a[:2] = 1
    b[1:3] = 1
    assert dice(a, b) == {1: pytest.approx(0.5)}
