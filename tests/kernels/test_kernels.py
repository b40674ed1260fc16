"""The compiled CPU kernels equal the PyTorch path (values and gradients) and give exact answers on known cases."""

from __future__ import annotations

import os

import pytest
import torch

from monai_contreg.kernels import extension_status, load_extension
from monai_contreg.kernels.ops import uses_compiled
from monai_contreg.losses import WarpedSSD, diffusion
from monai_contreg.spatial.filters import box_filter

DISABLED = os.environ.get("CONTREG_EXTENSIONS", "1").lower() in ("0", "false", "no", "off")
needs_ext = pytest.mark.skipif(DISABLED, reason="compiled kernels disabled by CONTREG_EXTENSIONS=0")


def test_extension_builds_here():
    """Where a C++ compiler and ninja exist (the CI machine), the kernels must build; say why if not."""
    if DISABLED:
        assert not uses_compiled(torch.zeros(1)) and extension_status().startswith("disabled")
        return
    assert load_extension() is not None, extension_status()
    assert extension_status().startswith("compiled")


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("CONTREG_EXTENSIONS", "0")
    assert not uses_compiled(torch.zeros(2))
    assert extension_status() == "disabled (CONTREG_EXTENSIONS=0)"


def _both_paths(monkeypatch, fn):
    """``fn()`` on the compiled path, then with the extension disabled (PyTorch path)."""
    compiled = fn()
    monkeypatch.setenv("CONTREG_EXTENSIONS", "0")
    reference = fn()
    monkeypatch.delenv("CONTREG_EXTENSIONS")
    return compiled, reference


@needs_ext
@pytest.mark.parametrize("channels", [12, 5])
@pytest.mark.parametrize("padding", ["border", "zeros"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_warp_ssd_equals_grid_sample_path(channels, padding, dtype, tol):
    g = torch.Generator().manual_seed(channels)
    shape = (9, 7, 11)
    moving = torch.rand((1, channels, *shape), generator=g, dtype=dtype)
    fixed = torch.rand((1, channels, *shape), generator=g, dtype=dtype)
    # large displacements: many samples fall outside the grid, so the padding rules are exercised too
    # (random positions: at exact voxel positions the interpolant's derivative jumps, and grid_sample picks the
    # forward or backward difference by float rounding of its normalised coordinates)
    u = torch.randn((1, 3, *shape), generator=g, dtype=dtype) * 3
    out = {}
    for fused in (True, False):
        ur = u.clone().requires_grad_()
        sim = WarpedSSD(moving, fixed, padding, fused=fused)
        assert sim.fused is fused
        loss, warped = sim(ur)
        loss.backward()
        out[fused] = (loss.detach(), warped.detach(), ur.grad)
    for a, b in zip(out[True], out[False]):
        assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()
    assert out[True][0].dtype == dtype


@needs_ext
def test_warp_ssd_integer_shift_is_exact():
    """Moving = fixed shifted by (2, -1, 3) voxels: the matching constant field gives loss 0 and gradient 0."""
    g = torch.Generator().manual_seed(1)
    fixed = torch.rand((1, 12, 16, 14, 18), generator=g)
    moving = torch.zeros_like(fixed)
    # moving(x + s) = fixed(x) for s = (2, -1, 3) on the overlap
    moving[:, :, 2:, :-1, 3:] = fixed[:, :, :-2, 1:, :-3]
    u = torch.tensor([2.0, -1.0, 3.0]).view(1, 3, 1, 1, 1).expand(1, 3, 16, 14, 18).clone().requires_grad_()
    sim = WarpedSSD(moving[:, :, 2:, :-1, 3:].contiguous(), fixed[:, :, :-2, 1:, :-3].contiguous(), "border", fused=True)
    loss, warped = sim(torch.zeros(1, 3, 14, 13, 15, requires_grad=True))
    assert float(loss.detach()) == 0.0
    sim = WarpedSSD(moving, fixed, "zeros", fused=True)
    loss, warped = sim(u)
    inner = (slice(None), slice(None), slice(0, 14), slice(1, 14), slice(0, 15))
    assert torch.equal(warped[inner], fixed[inner])
    loss.backward()
    assert u.grad[inner].abs().max() < 1e-6


@needs_ext
def test_warp_ssd_gradient_conventions_at_voxel_positions():
    """At exact voxel positions the derivative is the forward difference; on the border faces (border padding)
    the gradient along that axis is 0, as grid_sample's."""
    moving = torch.zeros(1, 1, 4, 4, 4, dtype=torch.float64)
    moving[0, 0] = torch.arange(4.0, dtype=torch.float64).view(4, 1, 1) ** 2  # m = h^2 along axis 0
    fixed = torch.zeros_like(moving)
    u = torch.zeros(1, 3, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    loss, _ = WarpedSSD(moving, fixed, "border", fused=True)(u)
    loss.backward()
    # d/du_h of mean((m(h + u) - 0)^2) at u = 0: 2 m(h) (m(h + 1) - m(h)) / 64 for h = 1, 2; 0 on faces h = 0, 3
    expect = torch.tensor([0.0, 2 * 1 * 3, 2 * 4 * 5, 0.0], dtype=torch.float64) / 64
    assert torch.allclose(u.grad[0, 0, :, 1, 1], expect)
    assert torch.count_nonzero(u.grad[0, 1:]) == 0


@needs_ext
def test_warp_ssd_independent_of_threads():
    g = torch.Generator().manual_seed(2)
    m, f = torch.rand((1, 12, 20, 18, 16), generator=g), torch.rand((1, 12, 20, 18, 16), generator=g)
    u = torch.randn((1, 3, 20, 18, 16), generator=g)
    old = torch.get_num_threads()
    res = []
    for t in (1, 2):
        torch.set_num_threads(t)
        ur = u.clone().requires_grad_()
        loss, _ = WarpedSSD(m, f, fused=True)(ur, return_warped=False)
        loss.backward()
        res.append((loss.detach(), ur.grad))
    torch.set_num_threads(old)
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])


@needs_ext
@pytest.mark.parametrize("kernel,passes", [(3, 3), (5, 2), (3, 1)])
@pytest.mark.parametrize("shape", [(2, 3, 6, 5, 7), (1, 3, 1, 4, 3), (1, 2, 40, 3, 300)])
def test_box_filter_compiled_equals_pytorch(monkeypatch, kernel, passes, shape):
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(shape, dtype=torch.float64)

    def run():
        xr = x.clone().requires_grad_()
        y = box_filter(xr, kernel, passes)
        (y * w).sum().backward()
        return y.detach(), xr.grad

    (yc, gc), (yr, gr) = _both_paths(monkeypatch, run)
    assert torch.allclose(yc, yr, atol=1e-12) and torch.allclose(gc, gr, atol=1e-12)


@needs_ext
def test_box_filter_keeps_constants_and_mean():
    x = torch.full((1, 3, 8, 9, 10), 2.5)
    assert torch.allclose(box_filter(x, 3, 3), x)
    # the adjoint of a mean filter with replicate padding preserves the total: sum(A^T g) = sum(g A 1) = sum(g)
    g = torch.randn(1, 3, 8, 9, 10, dtype=torch.float64)
    xr = torch.zeros_like(g, requires_grad=True)
    (box_filter(xr, 3, 3) * g).sum().backward()
    assert torch.allclose(xr.grad.sum(), g.sum())


@needs_ext
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(1, 3, 7, 6, 5), (2, 3, 1, 4, 6)])
def test_diffusion_compiled_equals_pytorch(monkeypatch, reduction, shape):
    u = torch.randn(shape, dtype=torch.float64)

    def run():
        ur = u.clone().requires_grad_()
        loss = diffusion(ur, reduction)
        loss.backward()
        return loss.detach(), ur.grad

    (lc, gc), (lr, gr) = _both_paths(monkeypatch, run)
    assert torch.allclose(lc, lr, rtol=1e-12) and torch.allclose(gc, gr, atol=1e-12)


@needs_ext
def test_diffusion_of_linear_field_is_exact():
    # u = (x, 0, 0) along axis 0: every difference along axis 0 of channel 0 is 1, all others 0
    u = torch.zeros(1, 3, 5, 4, 6)
    u[0, 0] = torch.arange(5.0).view(5, 1, 1)
    # mean over the 3 channels' differences along axis 0: one channel of three is 1
    assert float(diffusion(u)) == pytest.approx(1 / 3)


@needs_ext
def test_warp_ssd_bfloat16_storage_matches_pytorch_path_and_stays_close():
    """bfloat16 feature storage: both paths see the same rounded features; the loss moves by the rounding only."""
    g = torch.Generator().manual_seed(3)
    m, f = torch.rand((1, 12, 10, 9, 8), generator=g), torch.rand((1, 12, 10, 9, 8), generator=g)
    u = torch.randn((1, 3, 10, 9, 8), generator=g)
    out = {}
    for fused in (True, False):
        ur = u.clone().requires_grad_()
        loss, warped = WarpedSSD(m, f, fused=fused, storage="bfloat16")(ur)
        loss.backward()
        out[fused] = (loss.detach(), warped.detach(), ur.grad)
    for a, b in zip(out[True], out[False]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    full, _ = WarpedSSD(m, f)(u)
    assert abs(float(full) - float(out[True][0])) < 1e-2 * float(full)
    with pytest.raises(ValueError, match="WarpedSSD: unknown storage 'float8'"):
        WarpedSSD(m, f, storage="float8")
