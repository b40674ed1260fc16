import re

import pytest

from monai_contreg.errors import UserInputError
from monai_contreg.methods.config import RegistrationConfig
from monai_contreg.methods.presets import get_preset, preset_names


def test_round_trip_dict():
    cfg = get_preset("io-authors")
    again = RegistrationConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_overrides_parse_types():
    cfg = RegistrationConfig().with_overrides(
        ["optim.schedule.peak_lr=10", "preprocess.use_masks=false", "preprocess.window=[-900, 400]", "optim.schedule.linear_start_lr=null"]
    )
    assert cfg.optim.schedule.peak_lr == 10.0
    assert cfg.preprocess.use_masks is False
    assert cfg.preprocess.window == (-900.0, 400.0)
    assert cfg.optim.schedule.linear_start_lr is None


def test_unknown_option_suggests():
    with pytest.raises(ValueError, match=r"unknown option optim.reg_wieght.*Did you mean 'reg_weight'"):
        RegistrationConfig.from_dict({"optim": {"reg_wieght": 1.0}})
    with pytest.raises(ValueError, match=r"unknown option optimm.steps.*Did you mean 'optim'"):
        RegistrationConfig().with_overrides(["optimm.steps=3"])


def test_bad_values_named():
    with pytest.raises(ValueError, match=r"optim.schedule.total_steps expects int, got 'many'"):
        RegistrationConfig.from_dict({"optim": {"schedule": {"total_steps": "many"}}})
    with pytest.raises(ValueError, match=r"unknown preprocess.intensity 'minmx'.*Did you mean 'minmax'"):
        RegistrationConfig.from_dict({"preprocess": {"intensity": "minmx"}})
    with pytest.raises(ValueError, match=r"smoothing_kernel must be a positive odd integer, got 4. \(in field.smoothing_kernel, that is stages.0.smoothing_kernel\)"):
        RegistrationConfig.from_dict({"field": {"smoothing_kernel": 4}})


def test_presets_and_unknown_preset():
    assert {"io", "io-authors", "io-lr1", "io-lr15"} <= set(preset_names())
    lr1 = get_preset("io-lr1")
    assert set(lr1.optim.schedule.values()) == {1.0} and lr1.optim.schedule.total_steps == 100
    assert get_preset("io-authors").optim.schedule.peak_lr == 15.0
    with pytest.raises(ValueError, match=r"unknown preset 'io-lr16'.*Did you mean"):
        get_preset("io-lr16")


def test_from_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  reg_weight: 2.0\n")
    assert RegistrationConfig.from_file(p).optim.reg_weight == 2.0
    with pytest.raises(FileNotFoundError, match="config file .* does not exist"):
        RegistrationConfig.from_file(tmp_path / "none.yaml")


def test_dotted_keys_with_a_level_index_reach_one_level():
    acc = get_preset("accurate")
    cfg = acc.with_overrides(["multilevel.levels.1.reg_weight=2.0", "multilevel.levels.0.schedule.peak_lr=7",
                              "multilevel.levels.1.smoothing_kernel=7"])
    coarse, fine = cfg.multilevel.levels
    assert (fine.reg_weight, fine.smoothing_kernel, coarse.schedule.peak_lr) == (2.0, 7, 7.0)
    # everything else is kept: the other level, the other fields, the number of levels; the preset is untouched
    before_coarse, before_fine = acc.multilevel.levels
    assert (coarse.reg_weight, coarse.grid_factor, fine.grid_factor, fine.schedule) == (
        before_coarse.reg_weight, before_coarse.grid_factor, before_fine.grid_factor, before_fine.schedule)
    assert coarse.schedule.total_steps == before_coarse.schedule.total_steps and len(cfg.multilevel.levels) == 2
    assert (before_fine.reg_weight, before_fine.smoothing_kernel) != (2.0, 7) and before_coarse.schedule.peak_lr != 7.0
    assert acc.multilevel.levels == get_preset("accurate").multilevel.levels  # the preset is untouched
    # the dict form of with_overrides, and a whole level given as a mapping, do the same
    same = acc.with_overrides({"multilevel.levels.1.reg_weight": 2.0, "multilevel.levels.0": {"schedule": {"peak_lr": 7}}})
    assert same.multilevel.levels[1].reg_weight == 2.0 and same.multilevel.levels[0].schedule.peak_lr == 7.0


@pytest.mark.parametrize("override, message", [
    ("multilevel.levels.2.reg_weight=1",
     "RegistrationConfig: multilevel.levels.2.reg_weight: level index 2 is out of range; valid indices of "
     "multilevel.levels: [0, 1]."),
    ("multilevel.levels.-1.reg_weight=1",
     "RegistrationConfig: multilevel.levels.-1.reg_weight: level index -1 is out of range; valid indices of "
     "multilevel.levels: [0, 1]."),
    ("multilevel.levels.fine.reg_weight=1",
     "RegistrationConfig: multilevel.levels.fine.reg_weight: level index 'fine' is not an integer; valid indices of "
     "multilevel.levels: [0, 1]."),
    ("multilevel.levels.1.reg_wieght=1",
     "RegistrationConfig: unknown option multilevel.levels.1.reg_wieght; valid options of stages.1: ['grid_factor', "
     "'mind_dilation', 'mind_radius', 'reg_weight', 'schedule', 'second_dilation', 'similarity', "
     "'smoothing_kernel', 'smoothing_passes']. Did you mean 'reg_weight'?"),
    ("multilevel.levels.1.smoothing_kernel=4",
     "DenseStage: smoothing_kernel must be a positive odd integer, got 4. (in multilevel.levels.1.smoothing_kernel, "
     "that is stages.1.smoothing_kernel)"),
    ("multilevel.levels.1=3",
     "RegistrationConfig: multilevel.levels.1 must be a mapping of DenseStage fields (['grid_factor', "
     "'schedule', 'reg_weight', 'mind_radius', 'mind_dilation', 'second_dilation', 'smoothing_passes', "
     "'smoothing_kernel', 'similarity']), got 3."),
    ("stages.2.reg_weight=1",
     "RegistrationConfig: stages.2.reg_weight: stage index 2 is out of range; valid indices of stages: [0, 1]."),
])
def test_bad_level_keys_name_the_key_and_the_valid_indices(override, message):
    with pytest.raises(ValueError) as err:
        get_preset("accurate").with_overrides([override])
    assert str(err.value) == message


def test_a_level_index_counts_the_dense_stages():
    # multilevel.levels.I is the I-th dense stage: on io the one stage, on convexadam the stage after the convex one
    assert get_preset("io").with_overrides(["multilevel.levels.0.reg_weight=1"]).stages[0].reg_weight == 1.0
    assert get_preset("convexadam").with_overrides(["multilevel.levels.0.reg_weight=1"]).stages[1].reg_weight == 1.0
    with pytest.raises(ValueError) as err:
        get_preset("convex").with_overrides(["multilevel.levels.0.reg_weight=1"])
    assert str(err.value) == (
        "RegistrationConfig: multilevel.levels.0.reg_weight: level index 0 is out of range; multilevel.levels is "
        "empty on this config (it has no dense stage).")


def test_cli_set_reaches_a_level(capsys):
    import argparse

    from monai_contreg.cli import _config

    args = argparse.Namespace(preset="accurate", config=None, set=["multilevel.levels.1.reg_weight=2.5"], threads=1,
                              quiet=True, progress=False, no_auto_mask=False)
    assert _config(args).multilevel.levels[1].reg_weight == 2.5
    from monai_contreg.cli import main

    assert main(["register", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz", "--preset", "accurate",
                 "--set", "multilevel.levels.3.reg_weight=1"]) == 2
    assert "multilevel.levels.3.reg_weight: level index 3 is out of range; valid indices of multilevel.levels: [0, 1]" \
        in capsys.readouterr().err


@pytest.mark.parametrize("key, value, instead", [
    ("optim.reg_weight", "10", "stages.I.reg_weight"),
    ("optim.schedule.peak_lr", "30", "stages.I.schedule.peak_lr"),
    ("field.grid_factor", "3", "stages.I.grid_factor"),
    ("field.smoothing_kernel", "5", "stages.I.smoothing_kernel"),
    ("features.mind_dilation", "3", "stages.I.mind_dilation"),
])
def test_single_level_keys_are_refused_on_a_multilevel_config(key, value, instead):
    # each dense stage has its own: a single-level setting would have no single place to go
    with pytest.raises(UserInputError, match=re.escape(f"{key} is ambiguous on this config: it has 2 dense stages") + ".*"
                       + re.escape(f"set {instead} instead (I = 0, 1)")):
        get_preset("accurate").with_overrides([f"{key}={value}"])
    assert get_preset("io").with_overrides([f"{key}={value}"])  # the single-level method uses it


def test_multilevel_options_and_stage_order():
    # the mask-aware regulariser belongs to the dense stages: any config with one takes it, the convex stage alone not
    assert get_preset("convexadam").with_overrides(["multilevel.mask_aware=true"]).multilevel.mask_aware
    with pytest.raises(UserInputError, match=r"multilevel.mask_aware has no effect on this config: it has no dense stage"):
        get_preset("convex").with_overrides(["multilevel.mask_aware=true"])
    assert get_preset("accurate").with_overrides(["multilevel.mask_aware=true"]).multilevel.mask_aware
    with pytest.raises(UserInputError, match=r"coarse to fine \(grid_factor not increasing\), got grid factors \[2, 4\]"):
        get_preset("accurate").with_overrides(["multilevel.levels.1.grid_factor=4"])
    with pytest.raises(UserInputError, match=r"second_dilation \(2\) equals its mind_dilation.*\(in multilevel.levels.0.second_dilation"):
        get_preset("accurate").with_overrides(["multilevel.levels.0.second_dilation=2"])
    assert get_preset("accurate").with_overrides(["multilevel.levels.0.second_dilation=3"]).multilevel.levels[0].second_dilation == 3
