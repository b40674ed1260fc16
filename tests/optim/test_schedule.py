import math

import pytest
from ignite.engine import Engine, Events

from monai_contreg.optim.schedule import PiecewiseLRScheduler, PiecewiseSchedule


def test_authors_schedule_values():
    s = PiecewiseSchedule()
    # constant phase
    assert s.lr_at(0) == 15.0
    assert s.lr_at(70) == 15.0
    # cosine: 0.1 + 14.9 * (1 + cos(pi * t / 200)) / 2
    assert s.lr_at(71) == pytest.approx(0.1 + 14.9 * (1 + math.cos(math.pi / 200)) / 2, abs=1e-12)
    assert s.lr_at(71) == pytest.approx(14.99908, abs=1e-5)
    assert s.lr_at(180) == pytest.approx(0.1 + 14.9 * (1 + math.cos(math.pi * 110 / 200)) / 2, abs=1e-12)
    assert s.lr_at(180) == pytest.approx(6.38457, abs=1e-5)
    # linear from 1.5 (after step 180) to 0.5 at step 270
    assert s.lr_at(250) == pytest.approx(1.5 - 70 / 90, abs=1e-12)
    assert s.lr_at(250) == pytest.approx(0.72222, abs=1e-5)
    assert s.lr_at(269) == pytest.approx(1.5 - 89 / 90, abs=1e-12)
    assert s.lr_at(270) == 0.5


def test_continuous_linear_variant_and_constant():
    s = PiecewiseSchedule(linear_start_lr=None)
    assert s.lr_at(181) == pytest.approx(s.lr_at(180) + (0.5 - s.lr_at(180)) / 90)
    c = PiecewiseSchedule(peak_lr=1.0, constant_steps=100, cosine_end=100, total_steps=100, final_lr=1.0)
    assert set(c.values()) == {1.0}


def test_simulate_values_matches_lr_at():
    vals = PiecewiseLRScheduler.simulate_values(270, schedule=PiecewiseSchedule())
    s = PiecewiseSchedule()
    assert [v for _, v in vals] == [s.lr_at(i) for i in range(270)]


def test_scheduler_drives_optimizer_in_engine():
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.0)
    seen = []
    eng = Engine(lambda e, b: seen.append(opt.param_groups[0]["lr"]))
    PiecewiseLRScheduler(opt, PiecewiseSchedule(total_steps=10, constant_steps=3, cosine_end=6)).attach(eng)
    eng.run(data=None, max_epochs=1, epoch_length=10)
    assert seen[0] == 15.0 and seen[3] == 15.0 and seen[4] < 15.0 and len(seen) == 10


def test_invalid_schedule_named():
    with pytest.raises(ValueError, match="PiecewiseSchedule: cosine_end"):
        PiecewiseSchedule(constant_steps=100, cosine_end=50, total_steps=270)
    with pytest.raises(ValueError, match="PiecewiseSchedule: peak_lr must be a finite number"):
        PiecewiseSchedule(peak_lr=float("nan"))


def test_accurate_full_resolution_level_is_linear_from_its_peak():
    """The fine level's schedule continues from peak_lr (linear_start_lr None): peak_lr sets every step's rate,
    step 0 included (a separate linear_start_lr would have left step 0 at peak_lr)."""
    from monai_contreg.methods.presets import get_preset

    fine = get_preset("accurate").multilevel.levels[1].schedule
    values = fine.values()
    assert values[0] == 1.0 and values[-1] == pytest.approx(1.0 + (0.25 - 1.0) * 39 / 40)
    assert all(a > b for a, b in zip(values, values[1:]))
    doubled = get_preset("accurate").with_overrides(["multilevel.levels.1.schedule.peak_lr=2"]).multilevel.levels[1].schedule
    assert doubled.values()[0] == 2.0 and doubled.values()[1] == pytest.approx(2.0 + (0.25 - 2.0) / 40)
