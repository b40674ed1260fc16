"""The coupled convex discrete stage (ConvexAdam stage 1): exact answers on tiny synthetic volumes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai_contreg import register
from monai_contreg.methods.config import ConvexConfig, RegistrationConfig
from monai_contreg.methods.convex import (
    CoupledConvex,
    coupled_convex,
    coupled_convex_field,
    discrete_registration,
    displacement_candidates,
    inverse_consistency,
    pooled_mind,
    ssd_cost_volume,
)
from monai_contreg.methods.presets import get_preset
from monai_contreg.methods.run import run_method
from monai_contreg.spatial.conventions import identity_grid
from monai_contreg.spatial.filters import box_filter
from monai_contreg.spatial.warp import warp_image
from tests.conftest import smooth_volume


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one CPU thread is fastest and avoids contention on shared machines (restored after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _shifted_pair(shift: tuple[int, int, int], size: int = 24, margin: int = 6, seed: int = 1):
    """Crops of one smooth volume: ``fixed(x) = moving(x + shift)`` exactly, both ``(1, 1, size, size, size)``."""
    big = smooth_volume((size + 2 * margin,) * 3, seed=seed, sigma=1.5)
    f = [slice(margin, margin + size)] * 3
    m = [slice(margin - s, margin - s + size) for s in shift]
    return big[:, :, f[0], f[1], f[2]].contiguous(), big[:, :, m[0], m[1], m[2]].contiguous()


def _residual(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """``|u1 + u2 o (id + u1)|`` per voxel: zero where ``u2`` inverts ``u1``."""
    return (u1 + warp_image(u2, u1)).norm(dim=1)


def test_candidates_order():
    s = displacement_candidates(1)
    assert s.shape == (27, 3)
    assert s[0].tolist() == [-1, -1, -1] and s[13].tolist() == [0, 0, 0] and s[14].tolist() == [0, 0, 1]
    assert displacement_candidates(4).shape == (729, 3)


def test_cost_volume_matches_direct_loop():
    g = torch.Generator().manual_seed(0)
    ff, mf = torch.rand((1, 12, 7, 6, 5), generator=g), torch.rand((1, 12, 7, 6, 5), generator=g)
    r = 2
    padded = F.pad(mf, (r,) * 6, mode="replicate")
    direct = torch.stack(
        [
            (ff[0] - padded[0, :, r + a : r + a + 7, r + b : r + b + 6, r + c : r + c + 5]).square().sum(0)
            for a, b, c in displacement_candidates(r).long().tolist()
        ]
    )
    expected = box_filter(direct[:, None], 3, 2)[:, 0]
    for chunk in (1, 7, 64, 1000):  # chunking must not change the result
        torch.testing.assert_close(ssd_cost_volume(ff, mf, r, chunk_size=chunk), expected)


@pytest.mark.parametrize("ic", [False, True])
def test_integer_shift_found_exactly_grid2(ic):
    # fixed(x) = moving(x + (2, -2, 0)) fine voxels = (1, -1, 0) coarse voxels at grid spacing 2: exact everywhere
    fixed, moving = _shifted_pair((2, -2, 0))
    cfg = ConvexConfig(grid_spacing=2, disp_hw=2, ic=ic)
    coarse = discrete_registration(fixed, moving, cfg, full_resolution=False)
    assert coarse.shape == (1, 3, 12, 12, 12)
    assert torch.equal(coarse, torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1, 1).expand_as(coarse))
    full = discrete_registration(fixed, moving, cfg)
    assert torch.equal(full, torch.tensor([2.0, -2.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 24, 24, 24))


@pytest.mark.parametrize("ic", [False, True])
def test_larger_integer_shift_exact_in_interior(ic):
    # (4, -2, 2) fine = (2, -1, 1) coarse on a 16^3 coarse grid; within 3 coarse voxels of the border the content
    # leaves the field of view (no true match), further in the answer is exact
    fixed, moving = _shifted_pair((4, -2, 2), size=32, margin=8)
    coarse = discrete_registration(fixed, moving, ConvexConfig(grid_spacing=2, disp_hw=3, ic=ic), full_resolution=False)
    inner = coarse[:, :, 3:-3, 3:-3, 3:-3]
    assert torch.equal(inner, torch.tensor([2.0, -1.0, 1.0]).view(1, 3, 1, 1, 1).expand_as(inner))


def test_integer_shift_found_exactly_grid6_via_register():
    # 6 fine voxels = 1 coarse voxel at the default grid spacing 6 (48^3 -> 8^3 coarse voxels)
    fixed, moving = _shifted_pair((6, -6, 0), size=48, margin=6)
    cfg = get_preset("convex").with_overrides(["convex.disp_hw=2"])
    assert cfg.convex.grid_spacing == 6
    result = register(fixed[0, 0], moving[0, 0], config=cfg, assume_unit_spacing=True)
    expected = torch.tensor([6.0, -6.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 48, 48, 48)
    assert torch.equal(result.ddf.as_tensor(), expected)
    assert result.working_ddf.shape == (1, 3, 8, 8, 8) and result.steps == 0
    assert "discrete" in result.timings and "optimisation" not in result.timings


def _sinusoidal_pair(n: int = 32):
    """A smooth image and its warp by a sinusoidal (non-rigid) field ``v`` of up to 4 fine voxels."""
    fixed = smooth_volume((n, n, n), seed=2, sigma=1.0)
    grid = identity_grid((n, n, n))
    v = torch.zeros(1, 3, n, n, n)
    v[:, 0] = 4 * torch.sin(2 * math.pi * grid[:, 1] / n)
    v[:, 1] = 3 * torch.cos(2 * math.pi * grid[:, 2] / n)
    return fixed, warp_image(fixed, -v)


def test_inverse_consistency_bound():
    """forward o backward ~ identity: after 15 iterations ``max |u1 + u2 o (id + u1)| < 0.1`` coarse voxels.

    Without the IC step the discrete fields (integer labels, box-smoothed) disagree by more than one coarse voxel
    somewhere; 15 symmetric averaging steps bring the worst voxel below 0.1 voxel (measured: 0.046) and the mean
    below 0.02 voxel (measured: 0.008), both ways.
    """
    fixed, moving = _sinusoidal_pair()
    (ff,), (mf,) = pooled_mind(fixed, (2,)), pooled_mind(moving, (2,))
    u1 = coupled_convex_field(ssd_cost_volume(ff, mf, 3), 3)
    u2 = coupled_convex_field(ssd_cost_volume(mf, ff, 3), 3)
    before = _residual(u1, u2)
    assert before.max() > 1.0
    a, b = inverse_consistency(u1, u2, 15)
    for r in (_residual(a, b), _residual(b, a)):
        assert r.max() < 0.1 and r.mean() < 0.02
    assert _residual(a, b).mean() < before.mean() / 10
    # coupled_convex(ic=True) returns exactly this forward field
    cfg = ConvexConfig(grid_spacing=2, disp_hw=3, ic=True, ic_iters=15)
    torch.testing.assert_close(coupled_convex(ff, mf, cfg), a)


def test_inverse_consistency_fixed_point_and_zero_iterations():
    u1 = torch.zeros(1, 3, 5, 6, 7)
    u1[:, 0] = 1.5
    u2 = -u1
    a, b = inverse_consistency(u1, u2, 15)
    assert torch.equal(a, u1) and torch.equal(b, u2)
    a, b = inverse_consistency(u1, torch.zeros_like(u1), 0)
    assert a is u1


def test_coupling_smooths_labels():
    """Larger coupling weights pull the labels toward the smoothed field: the argmin-only field is rougher."""
    fixed, moving = _sinusoidal_pair()
    (ff,), (mf,) = pooled_mind(fixed, (2,)), pooled_mind(moving, (2,))
    cost = ssd_cost_volume(ff, mf, 3)
    rough = coupled_convex_field(cost, 3, ())
    coupled = coupled_convex_field(cost, 3)

    def tv(u):
        return sum((u.diff(dim=d)).abs().mean() for d in (2, 3, 4))

    assert tv(coupled) < tv(rough)


def test_module_and_output_shape():
    fixed, moving = _shifted_pair((2, 0, 0))
    (ff,), (mf,) = pooled_mind(fixed, (2,)), pooled_mind(moving, (2,))
    mod = CoupledConvex(ConvexConfig(grid_spacing=2, disp_hw=1, ic=False))
    assert "disp_hw=1" in repr(mod)
    out = mod(ff, mf, output_shape=(24, 24, 24))
    assert out.shape == (1, 3, 24, 24, 24) and out.dtype == torch.float32
    assert torch.equal(out[0, 0], torch.full((24, 24, 24), 2.0))


def test_convex_init_feeds_adam():
    fixed, moving = _shifted_pair((2, -2, 0))
    cfg = get_preset("convexadam").with_overrides(
        ["convex.grid_spacing=2", "convex.disp_hw=2", "optim.schedule.total_steps=2",
         "optim.schedule.constant_steps=2", "optim.schedule.cosine_end=2",
         "engine.divergence_check=false"]  # 2 Adam steps: plumbing, not a converged run
    )
    out = run_method(fixed, moving, cfg)
    assert out.steps == 2 and set(out.timings) >= {"features", "discrete", "optimisation"}
    assert out.field.shape == (12, 12, 12)
    with pytest.raises(ValueError, match=r"run_method: init_ddf is not accepted by method 'convex'"):
        run_method(fixed, moving, get_preset("convex"), init_ddf=torch.zeros(1, 3, 4, 4, 4))


def test_presets():
    assert get_preset("convex").method == "convex"
    ca = get_preset("convexadam")
    assert (ca.method, ca.init, ca.optim.schedule.total_steps, ca.optim.reg_weight) == ("io", "convex", 80, 1.25)
    assert set(ca.optim.schedule.values()) == {1.0} and ca.field.smoothing_passes == 3 and ca.field.grid_factor == 2
    assert ca.convex.ic and not ca.preprocess.use_masks
    cio = get_preset("convex+io")
    assert cio.init == "convex" and cio.optim.schedule == get_preset("io").optim.schedule
    for name in ("convex", "convexadam", "convex+io"):
        cfg = get_preset(name)
        assert RegistrationConfig.from_dict(cfg.to_dict()) == cfg


def test_config_fields_and_errors():
    cfg = get_preset("convexadam").with_overrides(["convex.coupling_weights=[0.1, 1]", "convex.ic=false"])
    assert cfg.convex.coupling_weights == (0.1, 1.0) and cfg.convex.ic is False
    with pytest.raises(ValueError, match=r"ConvexConfig: convex.disp_hw must be an integer >= 0, got -1"):
        ConvexConfig(disp_hw=-1)
    with pytest.raises(ValueError, match=r"convex.cost_smoothing_kernel must be a positive odd integer, got 4"):
        RegistrationConfig.from_dict({"convex": {"cost_smoothing_kernel": 4}}, get_preset("convex"))
    with pytest.raises(ValueError, match=r"convex.coupling_weights must be finite numbers >= 0, got \(-1.0,\)"):
        RegistrationConfig.from_dict({"convex": {"coupling_weights": [-1]}}, get_preset("convex"))
    with pytest.raises(ValueError, match=r"unknown convex.padding_mode 'zero'.*Did you mean 'zeros'"):
        RegistrationConfig.from_dict({"convex": {"padding_mode": "zero"}}, get_preset("convex"))
    with pytest.raises(ValueError, match=r"unknown option convex.disp_wh.*Did you mean 'disp_hw'"):
        RegistrationConfig.from_dict({"convex": {"disp_wh": 3}}, get_preset("convex"))
    # on a config without a convex stage the convex settings have nowhere to go
    with pytest.raises(ValueError, match=r"convex.ic has no effect on this config: it has no convex stage"):
        RegistrationConfig.from_dict({"convex": {"ic": False}})
    with pytest.raises(ValueError, match=r"RegistrationConfig: unknown method 'convx'.*Did you mean 'convex'"):
        RegistrationConfig.from_dict({"method": "convx"})
    with pytest.raises(ValueError, match=r"RegistrationConfig: unknown init 'zeros'.*Did you mean 'zero'"):
        RegistrationConfig.from_dict({"init": "zeros"})


def test_function_argument_errors():
    a = torch.rand(1, 12, 4, 4, 4)
    with pytest.raises(ValueError, match=r"ssd_cost_volume: fixed_features and moving_features must both have shape"):
        ssd_cost_volume(a, torch.rand(1, 12, 4, 4, 5), 1)
    with pytest.raises(ValueError, match=r"ssd_cost_volume: unknown padding_mode 'edge'; expected one of \['border', 'zeros'\]"):
        ssd_cost_volume(a, a, 1, padding_mode="edge")
    with pytest.raises(ValueError, match=r"ssd_cost_volume: disp_hw must be an integer >= 0, got -2"):
        ssd_cost_volume(a, a, -2)
    with pytest.raises(ValueError, match=r"coupled_convex_field: cost must have .* = 125 shifts for disp_hw=2, got 27"):
        coupled_convex_field(torch.rand(27, 4, 4, 4), 2)
    with pytest.raises(ValueError, match=r"displacement_candidates: disp_hw must be an integer >= 0, got 1.5"):
        displacement_candidates(1.5)
    with pytest.raises(ValueError, match=r"inverse_consistency: iterations must be >= 0, got -1"):
        inverse_consistency(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 3, 2, 2, 2), -1)
    with pytest.raises(TypeError, match=r"coupled_convex: config must be a ConvexConfig or None, got dict"):
        coupled_convex(a, a, {"disp_hw": 1})
    with pytest.raises(ValueError, match=r"coupled_convex: output_shape must be three positive integers"):
        coupled_convex(a, a, ConvexConfig(disp_hw=1), output_shape=(4, 4))
    with pytest.raises(ValueError, match=r"coupled_convex_field: chunk_size must be >= 1, got 0"):
        coupled_convex_field(torch.rand(27, 4, 4, 4), 1, chunk_size=0)


def test_chunking_does_not_change_labels_and_dtype_follows_inputs():
    fixed, moving = _sinusoidal_pair(16)
    (ff,), (mf,) = pooled_mind(fixed, (2,)), pooled_mind(moving, (2,))
    cost = ssd_cost_volume(ff, mf, 2)
    ref = coupled_convex_field(cost, 2, chunk_size=1000)
    for chunk in (1, 5, 64):
        assert torch.equal(coupled_convex_field(cost, 2, chunk_size=chunk), ref)
    out64 = coupled_convex(ff.double(), mf.double(), ConvexConfig(disp_hw=2, ic=True), output_shape=(16, 16, 16))
    assert out64.dtype == torch.float64 and out64.shape == (1, 3, 16, 16, 16)  # never quantised to float16


@pytest.mark.cuda
def test_cuda_follows_inputs():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    fixed, moving = _shifted_pair((2, -2, 0))
    cfg = ConvexConfig(grid_spacing=2, disp_hw=2, ic=True)
    out = discrete_registration(fixed.cuda(), moving.cuda(), cfg, full_resolution=False)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), discrete_registration(fixed, moving, cfg, full_resolution=False))
