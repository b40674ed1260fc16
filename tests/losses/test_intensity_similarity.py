"""The intensity similarities of a dense stage (``lncc``, ``mi``: MONAI's losses on warped intensities)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from monai_contreg.api import register
from monai_contreg.errors import UserInputError
from monai_contreg.losses.intensity import intensity_similarity
from monai_contreg.methods.config import RegistrationConfig
from monai_contreg.methods.presets import get_preset

SHIFT = np.array([2.0, -1.5, 1.0])  # voxels: fixed voxel x corresponds to moving voxel x + SHIFT


def _phantom(n: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random texture (20 ... 220) and its copy shifted by SHIFT voxels (moving(x) = fixed(x - SHIFT))."""
    rng = np.random.default_rng(seed)
    base = ndi.gaussian_filter(rng.normal(size=(n, n, n)), 2.0)
    base = (base - base.min()) / (base.max() - base.min()) * 200 + 20
    return base.astype(np.float32), ndi.shift(base, SHIFT, order=3, mode="nearest").astype(np.float32)


def _config(similarity: str, steps: int = 60) -> RegistrationConfig:
    cfg = get_preset("io")
    cfg.set("features.similarity", similarity)
    cfg.set("stages.0.schedule", {"peak_lr": 1.0, "constant_steps": steps, "cosine_end": steps, "final_lr": 1.0,
                                  "linear_start_lr": 1.0, "total_steps": steps})
    cfg.engine.num_threads = 1
    return cfg


@pytest.mark.parametrize("similarity, inverted", [("lncc", False), ("mi", False), ("mi", True)])
def test_an_intensity_similarity_recovers_a_known_shift(similarity, inverted):
    fixed, moving = _phantom()
    if inverted:  # another contrast: intensities reversed; only MI (any intensity relation) should cope
        moving = 240.0 - moving
    res = register(fixed, moving, config=_config(similarity), assume_unit_spacing=True)
    d = res.ddf.as_tensor()[0].numpy()[:, 8:-8, 8:-8, 8:-8].reshape(3, -1)
    assert np.abs(d.mean(1) - SHIFT).max() < 0.15, d.mean(1)
    assert np.abs(d - SHIFT[:, None]).mean() < 0.3
    assert res.kernels == "pytorch"  # the autograd path; the compiled kernels are MIND's
    assert res.config.stages[0].similarity == similarity


def test_the_losses_are_offset_to_be_non_negative_and_keep_monai_gradients():
    from monai.losses import GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss

    a = torch.rand(1, 1, 12, 12, 12, dtype=torch.float64)
    b = torch.rand(1, 1, 12, 12, 12, dtype=torch.float64, requires_grad=True)
    lncc = intensity_similarity("lncc", lncc_kernel_size=3)
    assert float(lncc(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= float(lncc(b, a)) <= 1.0
    ref = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=3)(b, a)
    assert float(lncc(b, a)) == pytest.approx(float(ref) + 1.0, abs=1e-12)
    mi = intensity_similarity("mi", mi_bins=16)
    m_ref = GlobalMutualInformationLoss(num_bins=16)(b, a)
    assert float(mi(b, a)) == pytest.approx(float(m_ref) + math.log(16), abs=1e-12)
    assert float(mi(a, a)) >= 0.0
    (g1,) = torch.autograd.grad(mi(b, a), b)
    (g2,) = torch.autograd.grad(GlobalMutualInformationLoss(num_bins=16)(b, a), b)
    assert torch.equal(g1, g2)


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(UserInputError, match="unknown similarity 'mind'"):
        intensity_similarity("mind")
    with pytest.raises(UserInputError, match="lncc_kernel_size must be a positive odd integer, got 4"):
        intensity_similarity("lncc", lncc_kernel_size=4)
    with pytest.raises(UserInputError, match="mi_bins must be an integer >= 2, got 1"):
        intensity_similarity("mi", mi_bins=1)
    with pytest.raises(UserInputError, match="features.lncc_kernel_size must be a positive odd integer"):
        RegistrationConfig().set("features.lncc_kernel_size", 6)
    with pytest.raises(UserInputError, match="engine.fused=true requires the compiled similarity kernels, which only "
                                             "the 'mind' similarity has; got stages.0.similarity='mi'"):
        RegistrationConfig().with_overrides(["engine.fused=true", "features.similarity=mi"])


def test_mind_stays_on_the_compiled_kernels():
    from monai_contreg.kernels import extension_status, load_extension

    load_extension()
    if not str(extension_status()).startswith("compiled"):
        pytest.skip(f"compiled kernels unavailable here: {extension_status()}")
    fixed, moving = _phantom(24)
    res = register(fixed, moving, config=_config("mind", steps=5), assume_unit_spacing=True)
    assert res.kernels == "compiled"
