import torch

from monai_contreg.spatial.conventions import identity_grid
import pytest

from monai_contreg.spatial.jacobian import folding_percent, jacobian_determinant


def test_zero_field_det_one():
    det = jacobian_determinant(torch.zeros(2, 3, 5, 6, 7))
    assert det.shape == (2, 1, 5, 6, 7)
    assert torch.allclose(det, torch.ones_like(det))


def test_affine_field_exact_determinant():
    a = torch.tensor([[0.1, 0.2, 0.0], [-0.05, 0.3, 0.1], [0.0, 0.02, -0.2]], dtype=torch.float64)
    x = identity_grid((9, 8, 7), dtype=torch.float64)
    ddf = torch.einsum("ij,bj...->bi...", a, x) + 3.0
    det = jacobian_determinant(ddf)
    expected = torch.linalg.det(torch.eye(3, dtype=torch.float64) + a)
    assert torch.allclose(det, expected.expand_as(det), atol=1e-12)


def test_folding_field_negative():
    x = identity_grid((8, 8, 8))
    ddf = torch.zeros(1, 3, 8, 8, 8)
    ddf[:, 0] = -2.0 * x[:, 0]  # x -> -x along axis 0: det = -1
    assert torch.allclose(jacobian_determinant(ddf), torch.full((1, 1, 8, 8, 8), -1.0))


@pytest.mark.parametrize("slab", [1, 2, 3, 7, 64])
def test_folding_percent_in_slabs_equals_the_whole_field(slab):
    torch.manual_seed(0)
    ddf = 0.9 * torch.randn(2, 3, 9, 6, 5, dtype=torch.float64)  # rough: many folded voxels, borders included
    whole = 100.0 * float((jacobian_determinant(ddf) <= 0).double().mean())
    assert 5.0 < whole < 95.0
    assert folding_percent(ddf, slab=slab) == pytest.approx(whole, abs=1e-12)


def test_folding_percent_rejects_bad_arguments():
    with pytest.raises(ValueError, match="slab"):
        folding_percent(torch.zeros(1, 3, 4, 4, 4), slab=0)
    with pytest.raises(ValueError, match="spatial size"):
        folding_percent(torch.zeros(1, 3, 1, 4, 4))
