import pytest

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
    with pytest.raises(ValueError, match=r"unknown option config.optim.reg_wieght.*Did you mean 'reg_weight'"):
        RegistrationConfig.from_dict({"optim": {"reg_wieght": 1.0}})
    with pytest.raises(ValueError, match=r"unknown option config.optimm.*Did you mean 'optim'"):
        RegistrationConfig().with_overrides(["optimm.steps=3"])


def test_bad_values_named():
    with pytest.raises(ValueError, match=r"config.optim.schedule.total_steps expects int, got 'many'"):
        RegistrationConfig.from_dict({"optim": {"schedule": {"total_steps": "many"}}})
    with pytest.raises(ValueError, match=r"unknown preprocess.intensity 'minmx'.*Did you mean 'minmax'"):
        RegistrationConfig.from_dict({"preprocess": {"intensity": "minmx"}})
    with pytest.raises(ValueError, match=r"field.smoothing_kernel must be a positive odd integer"):
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
