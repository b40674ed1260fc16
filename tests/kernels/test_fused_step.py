"""The fused CPU optimisation step against the unfused reference path (autograd chain, torch's Adam, the separate
in-image clamp), the clamp inside the update, buffers kept for the run, and the host reads on a cadence."""

from __future__ import annotations

import pytest
import torch

from monai_contreg.errors import RegistrationDivergedError, UserInputError
from monai_contreg.kernels import load_extension
from monai_contreg.kernels.ops import (
    FieldStepBuffers,
    adam_clamp,
    channels_last,
    compiled_box_smooth,
    compiled_diffusion,
    compiled_warp_ssd,
    field_step_grad,
)
from monai_contreg.optim import (
    DisplacementField,
    DivergenceGuard,
    HistoryRecorder,
    KeepInImage,
    NaNGuard,
    create_registration_engine,
)
from monai_contreg.optim.adam import FieldAdam
from monai_contreg.optim.engine import host_reads

pytestmark = pytest.mark.skipif(load_extension() is None, reason="compiled kernels unavailable")

SHAPE = (9, 10, 11)


def _features(dtype=torch.float32, channels=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, channels, *SHAPE, generator=g, dtype=dtype),
            torch.rand(1, channels, *SHAPE, generator=g, dtype=dtype))


def _field(dtype=torch.float32, scale=2.0, seed=1):
    f = DisplacementField(SHAPE, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    f.displacement.data.copy_(torch.randn(f.displacement.shape, generator=g, dtype=dtype) * scale)
    return f


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("channels", [12, 5])
def test_field_step_grad_equals_the_autograd_chain(dtype, zeros, channels):
    moving, fixed = _features(dtype, channels)
    f = _field(dtype)
    mcl, fcl = channels_last(moving), channels_last(fixed)
    ddf = compiled_box_smooth(f.displacement, 3, 3)
    sim, _ = compiled_warp_ssd(ddf, mcl, fcl, zeros, False)
    reg = compiled_diffusion(ddf)
    (sim + 1.25 * reg).backward()
    buf = FieldStepBuffers(f.displacement)
    field_step_grad(f.displacement, buf, mcl, fcl, zeros, 3, 3, 1.25)
    assert torch.equal(buf.ddf, ddf.detach())  # the same smoothing kernel
    tol = {"rtol": 1e-5, "atol": 1e-9} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-15}
    torch.testing.assert_close(buf.grad, f.displacement.grad, **tol)
    assert buf.losses[0].item() == pytest.approx(sim.item(), rel=1e-6 if dtype == torch.float32 else 1e-12)
    assert buf.losses[1].item() == pytest.approx(reg.item(), rel=1e-6 if dtype == torch.float32 else 1e-12)


def test_field_step_grad_without_smoothing_and_bfloat16_features():
    moving, fixed = _features()
    f = _field()
    mcl, fcl = channels_last(moving).to(torch.bfloat16), channels_last(fixed).to(torch.bfloat16)
    ddf = f.displacement
    sim, _ = compiled_warp_ssd(ddf, mcl, fcl, False, False)
    (sim + 0.5 * compiled_diffusion(ddf)).backward()
    buf = FieldStepBuffers(f.displacement)
    field_step_grad(f.displacement, buf, mcl, fcl, False, 3, 0, 0.5)  # passes=0: the raw parameter is the field
    assert torch.equal(buf.ddf, ddf.detach())
    torch.testing.assert_close(buf.grad, f.displacement.grad, rtol=1e-5, atol=1e-9)


def test_adam_clamp_equals_torch_adam_then_the_separate_clamp():
    moving, fixed = _features()
    ours, ref = _field(scale=4.0), _field(scale=4.0)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=3.0, betas=(0.5, 0.9), fused=True)
    m = torch.zeros_like(ours.displacement)
    v = torch.zeros_like(ours.displacement)
    count = torch.zeros(1, dtype=torch.int64)
    g = torch.Generator().manual_seed(5)
    for step, lr in enumerate((3.0, 2.0, 0.5, 0.1), start=1):
        grad = torch.randn(ours.displacement.shape, generator=g)
        ref.displacement.grad = grad.clone()
        opt_ref.param_groups[0]["lr"] = lr
        opt_ref.step()
        changed = ref.clamp_to_image_()
        adam_clamp(ours.displacement.data, grad, m, v, lr=lr, betas=(0.5, 0.9), eps=1e-8, step=step, clamp=True,
                   clamped=count)
        torch.testing.assert_close(ours.displacement.data, ref.displacement.data, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(m, opt_ref.state[ref.displacement]["exp_avg"], rtol=1e-5, atol=1e-6)  # 1 ulp
        assert int(count) == changed
    assert changed > 0  # the test exercised the bound


def test_clamp_in_the_update_keeps_every_voxel_inside_and_counts():
    f = _field(scale=8.0)
    p = f.displacement.data
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in SHAPE], indexing="ij"))[None]
    size = torch.tensor(SHAPE, dtype=torch.float32).view(1, 3, 1, 1, 1)
    outside = int(((grid + p < 0) | (grid + p > size - 1)).sum())
    inside_before = p.clone()
    count = torch.zeros(1, dtype=torch.int64)
    zeros = torch.zeros_like(p)
    # a zero gradient from zero moments moves nothing (0 / eps): the step is the clamp alone
    adam_clamp(p, zeros, zeros.clone(), zeros.clone(), lr=1.0, betas=(0.9, 0.999), eps=1e-8, step=1, clamp=True,
               clamped=count)
    pos = grid + p
    assert bool((pos >= 0).all()) and bool((pos <= size - 1).all())
    assert int(count) == outside > 0
    kept = (grid + inside_before >= 0) & (grid + inside_before <= size - 1)
    assert torch.equal(p[kept], inside_before[kept])  # values inside are untouched
    assert torch.equal(pos[~kept].round(), pos[~kept])  # the others lie exactly on the first or last voxel
    # without clamp the same call changes nothing
    q = _field(scale=8.0).displacement.data
    before = q.clone()
    adam_clamp(q, zeros, zeros.clone(), zeros.clone(), lr=1.0, betas=(0.9, 0.999), eps=1e-8, step=1, clamp=False,
               clamped=count)
    assert torch.equal(q, before) and int(count) == 0


def test_field_adam_refuses_what_it_cannot_run():
    with pytest.raises(UserInputError, match="exactly one parameter"):
        FieldAdam([torch.nn.Parameter(torch.zeros(1, 3, 4, 4, 4)), torch.nn.Parameter(torch.zeros(1, 3, 4, 4, 4))])
    with pytest.raises(UserInputError, match=r"\(1, 3, h, w, d\)"):
        FieldAdam([torch.nn.Parameter(torch.zeros(1, 2, 4, 4, 4))])
    with pytest.raises(UserInputError, match="betas"):
        FieldAdam(DisplacementField(SHAPE).parameters(), betas=(0.9, 1.0))


def _engines(dtype, steps_lr=1.5, reg_weight=1.25, keep=True, sync_free=False):
    """The fused engine and the unfused reference engine (autograd step, torch Adam, KeepInImage's clamp)."""
    moving, fixed = _features(dtype)
    fa, fb = _field(dtype, scale=3.0), _field(dtype, scale=3.0)
    opt_a = FieldAdam(fa.parameters(), lr=steps_lr, keep_in_image=keep)
    opt_b = torch.optim.Adam(fb.parameters(), lr=steps_lr, fused=True)
    ea = create_registration_engine(fa, fixed, moving, opt_a, reg_weight=reg_weight, sync_free=sync_free)
    eb = create_registration_engine(fb, fixed, moving, opt_b, reg_weight=reg_weight)
    for e, opt in ((ea, opt_a), (eb, opt_b)):
        HistoryRecorder(opt).attach(e)
        if keep:
            KeepInImage().attach(e)
    return (ea, fa), (eb, fb)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_engine_equals_the_unfused_engine(dtype):
    (ea, fa), (eb, fb) = _engines(dtype)
    assert ea.state.step_path == "fused" and eb.state.step_path == "autograd"
    for e in (ea, eb):
        e.run(data=None, max_epochs=1, epoch_length=6)
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(fa.displacement.data, fb.displacement.data, **tol)
    for key in ("loss", "similarity", "regularization", "lr"):
        assert ea.state.history[key] == pytest.approx(eb.state.history[key], rel=1e-5)
    assert int(ea.state.clamped) == int(eb.state.clamped)
    assert ea.state.kernels == {"compiled"}


def test_fused_engine_without_regulariser_reports_zero_like_the_unfused_one():
    (ea, _), (eb, _) = _engines(torch.float64, reg_weight=0.0, keep=False)
    for e in (ea, eb):
        e.run(data=None, max_epochs=1, epoch_length=3)
    assert ea.state.history["regularization"] == eb.state.history["regularization"] == [0.0] * 3
    assert ea.state.history["loss"] == pytest.approx(eb.state.history["loss"], rel=1e-9)


def test_fused_step_reuses_its_buffers_every_step():
    moving, fixed = _features()
    f = _field()
    opt = FieldAdam(f.parameters(), lr=1.0, keep_in_image=True)
    e = create_registration_engine(f, fixed, moving, opt)
    ptrs = []

    def record(engine):
        ptrs.append((f.displacement.grad.data_ptr(), engine.state.last_ddf.data_ptr(),
                     opt.state[f.displacement]["exp_avg"].data_ptr()))

    from ignite.engine import Events

    e.add_event_handler(Events.ITERATION_COMPLETED, record)
    e.run(data=None, max_epochs=1, epoch_length=2)  # first steps: the optimiser's moments are created
    e.run(data=None, max_epochs=2, epoch_length=2)  # continues: steps 3 and 4
    # the same gradient, smoothed-field and moment buffers every step (the fused step writes into them)
    assert len(ptrs) == 4 and len(set(ptrs)) == 1
    assert f.displacement.grad.data_ptr() == ptrs[0][0]


def test_sync_free_engine_reads_the_host_on_a_cadence_only():
    (ea, fa), (eb, fb) = _engines(torch.float64, sync_free=True)
    hist = HistoryRecorder(ea.state.optimizer, flush_every=10)  # a second recorder with its own cadence
    hist.attach(ea)
    NaNGuard(every=10).attach(ea)
    DivergenceGuard(every=10, min_steps=0, final_loss_ratio=100.0, final_max_displacement=1.0).attach(ea)
    before = host_reads()
    ea.run(data=None, max_epochs=1, epoch_length=40)
    reads = host_reads() - before
    # per 10 steps: the flush of the recorder with flush_every=10, the NaN test, the guard's loss and field tests;
    # once per run: the first loss, the final flushes and tests. Far fewer than one per step:
    assert reads <= 40 // 10 * 4 + 8 < 40
    assert isinstance(ea.state.output["loss"], torch.Tensor)
    eb.run(data=None, max_epochs=1, epoch_length=40)
    assert hist.history["loss"] == pytest.approx(eb.state.history["loss"], rel=1e-6)
    assert len(ea.state.history["loss"]) == 40  # flushed at the end of the run
    torch.testing.assert_close(fa.displacement.data, fb.displacement.data, rtol=1e-8, atol=1e-8)


def test_sync_free_nan_guard_names_the_first_bad_step():
    moving, fixed = _features(torch.float64)
    moving[0, :, 2, 2, 2] = float("nan")
    f = _field(torch.float64, scale=0.0)
    opt = FieldAdam(f.parameters(), lr=0.5)
    e = create_registration_engine(f, fixed, moving, opt, sync_free=True)
    NaNGuard(every=5).attach(e)
    steps = []
    from ignite.engine import Events

    e.add_event_handler(Events.ITERATION_COMPLETED, lambda eng: steps.append(eng.state.iteration))
    with pytest.raises(RegistrationDivergedError, match="at step 1 "):
        e.run(data=None, max_epochs=1, epoch_length=20)
    assert max(steps) <= 5  # found at the first test of the cadence


def test_divergence_guard_tests_the_fused_steps_field_without_smoothing_again(monkeypatch):
    (ea, fa), _ = _engines(torch.float32)
    calls = []
    original = type(fa).forward
    monkeypatch.setattr(type(fa), "forward", lambda self: calls.append(1) or original(self))
    DivergenceGuard(every=2, min_steps=0, final_loss_ratio=100.0, final_max_displacement=1.0).attach(ea)
    ea.run(data=None, max_epochs=1, epoch_length=6)
    assert len(calls) == 1  # the end-of-run test only (3 tests during the run read engine.state.last_ddf)


@pytest.mark.cuda
def test_cuda_step_path_has_no_host_sync():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from monai_contreg.methods.config import RegistrationConfig
    from monai_contreg.methods.io import instance_optimisation

    moving, fixed = (t.cuda() for t in _features())
    cfg = RegistrationConfig()
    cfg.field.grid_factor = 1
    s = cfg.optim.schedule
    s.peak_lr, s.constant_steps, s.cosine_end, s.total_steps, s.final_lr, s.linear_start_lr = 1.0, 40, 40, 40, 1.0, 1.0
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync outside host_read raises
    try:
        before = host_reads()
        out = instance_optimisation(fixed, moving, cfg)
        reads = host_reads() - before
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.steps == s.total_steps and len(out.history["loss"]) == s.total_steps
    assert reads < s.total_steps // 2
