"""Multi-resolution instance optimisation: exact field carry, mask-aware regulariser, levels config, events."""

import pytest
import torch
from ignite.engine import Events

from monai_contreg.errors import UserInputError
from monai_contreg.losses.regularization import diffusion, mask_edge_weights, masked_diffusion
from monai_contreg.methods.config import LevelConfig, MultilevelConfig, RegistrationConfig
from monai_contreg.methods.multilevel import LevelEvents, carry_field, level_config, run_multilevel
from monai_contreg.methods.presets import get_preset
from monai_contreg.methods.run import run_method
from monai_contreg.optim.schedule import PiecewiseSchedule
from monai_contreg.spatial.warp import warp_image

from ..conftest import smooth_volume

A = torch.tensor([[0.10, 0.02, 0.00], [0.00, -0.05, 0.03], [0.01, 0.00, 0.07]], dtype=torch.float64)
B = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)


def _affine_ddf(shape):
    """u(p) = A p + b on the unit-cube field of view, in voxels of a grid of ``shape`` (voxel centres (j+.5)/n)."""
    axes = [(torch.arange(n, dtype=torch.float64) + 0.5) / n for n in shape]
    p = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    u = torch.einsum("ij,j...->i...", A, p) + B.view(3, 1, 1, 1)
    return (u * torch.tensor(shape, dtype=torch.float64).view(3, 1, 1, 1)).unsqueeze(0)


@pytest.mark.parametrize("src,dst", [((6, 5, 4), (12, 10, 8)), ((12, 10, 8), (6, 5, 4)), ((6, 5, 4), (3, 7, 9))])
def test_carry_field_reproduces_an_affine_field_everywhere(src, dst):
    carried = carry_field(_affine_ddf(src), dst)
    assert carried.shape == (1, 3, *dst)
    torch.testing.assert_close(carried, _affine_ddf(dst), atol=1e-10, rtol=0)  # borders included


def test_carry_field_same_shape_and_errors():
    u = torch.rand(1, 3, 4, 4, 4)
    assert carry_field(u, (4, 4, 4)) is u
    with pytest.raises(ValueError, match="carry_field"):
        carry_field(torch.rand(2, 3, 4, 4, 4), (8, 8, 8))


def test_masked_diffusion_of_a_field_constant_on_each_side_is_zero():
    mask = torch.zeros(1, 1, 10, 9, 8)
    mask[:, :, 2:7, 3:8, 1:6] = 1
    inside, outside = torch.tensor([1.5, -2.0, 0.25]), torch.tensor([-0.5, 3.0, 1.0])
    u = torch.where(mask.bool(), inside.view(1, 3, 1, 1, 1), outside.view(1, 3, 1, 1, 1))
    assert float(masked_diffusion(u, mask_edge_weights(mask, 0.0))) == 0.0
    assert float(diffusion(u)) > 0  # the plain regulariser does penalise the jump
    # with all weights 1 it is the plain diffusion regulariser
    ones = mask_edge_weights(torch.ones_like(mask), 0.0)
    v = torch.randn(1, 3, 10, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(masked_diffusion(v, ones), diffusion(v.float()).double(), rtol=1e-5, atol=0)
    # an across-boundary weight w scales exactly the jump's cost: 3 axes of jumps, each counted in its own mean
    half = mask_edge_weights(mask, 0.5)
    expected = sum(0.5 * float(((u.narrow(d, 1, u.shape[d] - 1) - u.narrow(d, 0, u.shape[d] - 1)) ** 2).mean()) for d in (2, 3, 4))
    assert float(masked_diffusion(u, half)) == pytest.approx(expected, rel=1e-6)


def test_mask_edge_weights_errors():
    with pytest.raises(UserInputError, match="mask_edge_weights: mask"):
        mask_edge_weights(torch.zeros(2, 1, 4, 4, 4))
    with pytest.raises(UserInputError, match="cross_weight"):
        mask_edge_weights(torch.zeros(4, 4, 4), -1.0)


def test_levels_config_round_trip_overrides_and_errors():
    cfg = get_preset("accurate")
    assert len(cfg.multilevel.levels) >= 2 and cfg.multilevel.levels[-1].grid_factor < 2
    assert RegistrationConfig.from_dict(cfg.to_dict()) == cfg
    assert get_preset("io").multilevel == MultilevelConfig()  # off in every other preset
    over = RegistrationConfig().with_overrides(["multilevel.levels=[{grid_factor: 4, schedule: {total_steps: 5}}, {grid_factor: 1}]"])
    assert [lv.grid_factor for lv in over.multilevel.levels] == [4, 1]
    assert over.multilevel.levels[0].schedule.total_steps == 5 and over.multilevel.levels[1].schedule.total_steps == 270
    with pytest.raises(UserInputError, match=r"unknown option multilevel.levels.0.grid_factr.*Did you mean 'grid_factor'"):
        RegistrationConfig.from_dict({"multilevel": {"levels": [{"grid_factr": 2}]}})
    with pytest.raises(UserInputError, match="smoothing_kernel must be a positive odd integer"):
        RegistrationConfig.from_dict({"multilevel": {"levels": [{"smoothing_kernel": 4}]}})
    with pytest.raises(UserInputError, match="multilevel.cross_weight"):
        RegistrationConfig.from_dict({"multilevel": {"cross_weight": -1}})


def _pair(shape=(24, 20, 22)):
    fixed = smooth_volume(shape, seed=1)
    shift = torch.zeros(1, 3, *shape)
    shift[:, 0] = 1.5
    shift[:, 1] = -1.0
    return fixed, warp_image(fixed, -shift), shift


def _levels(*factors, steps=6):
    sched = PiecewiseSchedule(peak_lr=1.0, constant_steps=steps, cosine_end=steps, linear_start_lr=1.0, final_lr=1.0, total_steps=steps)
    return tuple(LevelConfig(grid_factor=f, schedule=sched, reg_weight=0.5) for f in factors)


def test_one_level_is_the_single_level_method():
    fixed, moving, _ = _pair()
    (lv,) = _levels(2)
    single = level_config(RegistrationConfig(), lv)
    multi = RegistrationConfig(stages=(lv,))
    a = run_method(fixed, moving, single).field().detach()
    b = run_method(fixed, moving, multi).field().detach()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_levels_fire_events_and_record_history():
    fixed, moving, shift = _pair()
    cfg = RegistrationConfig(stages=_levels(4, 2, 1))
    seen, starts = [], []

    class Probe:
        def attach(self, engine):
            engine.add_event_handler(LevelEvents.LEVEL_COMPLETED, lambda e: seen.append((e.state.level, e.state.iteration)))
            engine.add_event_handler(Events.STARTED, lambda e: starts.append(tuple(e.state.field.shape)))

    out = run_multilevel(fixed, moving, cfg, handlers=[Probe()])
    assert seen == [(0, 6), (1, 6), (2, 6)]
    assert starts == [(6, 5, 6), (12, 10, 11), (24, 20, 22)]
    assert out.steps == 18 and out.history["level"] == [0.0] * 6 + [1.0] * 6 + [2.0] * 6
    assert len(out.history["loss"]) == 18 and set(out.timings) >= {"features", "optimisation", "level0", "level2"}
    assert tuple(out.field.shape) == (24, 20, 22)
    # it moved toward the known shift (the loss fell)
    assert out.history["loss"][-1] < out.history["loss"][0]


def test_mask_aware_needs_a_mask_and_runs_with_one():
    fixed, moving, _ = _pair()
    cfg = RegistrationConfig(stages=_levels(2, 1, steps=3), multilevel=MultilevelConfig(mask_aware=True))
    with pytest.raises(UserInputError, match="mask_aware needs the fixed image's mask"):
        run_method(fixed, moving, cfg)
    mask = torch.zeros_like(fixed)
    mask[..., 4:20, 3:17, 4:18] = 1
    out = run_method(fixed, moving, cfg, fixed_mask=mask)
    assert out.steps == 6 and torch.isfinite(out.field()).all()


def test_second_feature_scale_concatenates_a_second_dilation():
    from monai_contreg.features.mind import mind_ssc
    from monai_contreg.methods.multilevel import level_features
    from monai_contreg.spatial.filters import downsample

    fixed, moving, _ = _pair()
    lv = LevelConfig(grid_factor=2, mind_dilation=2, second_dilation=3)
    ff, mf = level_features(fixed, moving, lv)
    assert ff.shape == (1, 24, 12, 10, 11) and mf.shape == ff.shape
    torch.testing.assert_close(ff[:, :12], downsample(mind_ssc(fixed, 1, 2), 2))
    torch.testing.assert_close(mf[:, 12:], downsample(mind_ssc(moving, 1, 3), 2))


def test_check_finite_counts_every_bad_value_of_a_large_tensor():
    from monai_contreg._validation import check_finite

    x = torch.zeros(1, 3, 200, 100, 80)  # 4.8 M values: checked in slabs
    assert check_finite("f", "x", x) is x
    x[0, 1, 150, 3, 7] = float("nan")
    x[0, 2, 5, 99, 79] = float("inf")
    x[0, 0, 199, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"f: x contains 3 NaN or infinite value\(s\) out of 4800000"):
        check_finite("f", "x", x)


def test_a_diverging_level_is_named_in_the_error():
    from monai_contreg.errors import RegistrationDivergedError

    fixed, moving, _ = _pair()
    good, runaway = _levels(2, 1, steps=25)
    runaway = LevelConfig(grid_factor=1, reg_weight=0.0, smoothing_passes=0, schedule=PiecewiseSchedule(
        peak_lr=1000.0, constant_steps=25, cosine_end=25, linear_start_lr=1000.0, final_lr=1000.0, total_steps=25))
    cfg = RegistrationConfig(stages=(good, runaway))
    cfg.optim.keep_in_image = False
    with pytest.raises(RegistrationDivergedError, match=r"^registration, level 1 \(multilevel.levels.1\), at step \d+ of that level"):
        run_multilevel(fixed, moving, cfg)


def test_multilevel_records_the_kernels_and_every_levels_early_stop():
    """Before: kernels was "" and stopped_early was the last level's flag only (False here)."""
    fixed, moving, _ = _pair()
    cfg = RegistrationConfig(stages=_levels(4, 2))

    class StopFirstLevel:
        def attach(self, engine):
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=3),
                                     lambda e: e.terminate() if e.state.level == 0 else None)

    out = run_multilevel(fixed, moving, cfg, handlers=[StopFirstLevel()])
    assert out.levels_stopped_early == (True, False) and out.stopped_early
    assert out.steps == 3 + 6
    assert out.kernels and set(out.kernels.split("+")) <= {"compiled", "pytorch"}
