import pytest
import torch

from monai_contreg.features.mind import MINDSSC, mind_ssc, mind_ssc_pairs


def test_twelve_pairs_at_squared_distance_two_never_opposite():
    pairs = mind_ssc_pairs()
    assert len(pairs) == 12 and len(set(pairs)) == 12
    for a, b in pairs:
        assert sum((p - q) ** 2 for p, q in zip(a, b)) == 2
        assert tuple(-v for v in a) != b


def test_constant_image_gives_ones():
    out = mind_ssc(torch.full((1, 1, 8, 9, 10), 0.7))
    assert out.shape == (1, 12, 8, 9, 10)
    assert torch.equal(out, torch.ones_like(out))


def test_range_and_min_channel_is_one():
    out = mind_ssc(torch.rand(2, 1, 10, 10, 10))
    assert out.min() > 0 and out.max() <= 1
    # the channel with the smallest patch distance has m = 0 -> exp(0) = 1 at every voxel
    assert torch.allclose(out.max(dim=1).values, torch.ones(2, 10, 10, 10))


def test_invariant_to_affine_intensity_change():
    img = torch.rand(1, 1, 10, 10, 10)
    assert torch.allclose(mind_ssc(img), mind_ssc(3.0 * img + 5.0), atol=1e-5)


def test_known_value_on_a_step_edge():
    # step along axis 0 between voxels 2 and 3, radius 0, dilation 1. At x0 = 2 the offset (+1, 0, 0) sees 1,
    # all other neighbours 0: the 4 pairs that contain (+1, 0, 0) have distance 1, the other 8 have 0.
    # v = 4 / 12 = 1/3 at x0 in {2, 3}, 0 elsewhere; mean v = 1/9, so the clamp leaves 1/3 unchanged.
    img = torch.zeros(1, 1, 6, 6, 6)
    img[:, :, 3:] = 1.0
    out = mind_ssc(img, radius=0, dilation=1)
    edge = out[0, :, 2, 3, 3].sort().values
    expected = torch.tensor([torch.exp(torch.tensor(-3.0))] * 4 + [1.0] * 8)
    assert torch.allclose(edge, expected, atol=1e-6)
    assert torch.allclose(out[0, :, 0], torch.ones(12, 6, 6))


def test_module_and_errors():
    m = MINDSSC(radius=1, dilation=2)
    assert m(torch.rand(1, 1, 6, 6, 6)).shape == (1, 12, 6, 6, 6)
    with pytest.raises(ValueError, match=r"mind_ssc: image must have one channel"):
        mind_ssc(torch.rand(1, 2, 6, 6, 6))
    with pytest.raises(ValueError, match="mind_ssc: image contains 1 NaN"):
        img = torch.rand(1, 1, 6, 6, 6)
        img[0, 0, 1, 1, 1] = float("nan")
        mind_ssc(img)


def test_in_place_feature_path_equals_differentiable_path():
    """Registration computes MIND in place (no grad); the differentiable path (MINDSSCLoss) gives the same values."""
    x = torch.rand(2, 1, 17, 15, 19, dtype=torch.float64)
    fast = mind_ssc(x)
    ref = mind_ssc(x.clone().requires_grad_()).detach()
    assert torch.equal(fast, ref)
    assert fast.shape == (2, 12, 17, 15, 19)
