"""The examples, reduced to tiny synthetic data."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = {"shape": (40, 32, 40), "spacing": (3.0, 3.0, 3.0), "max_motion": 3.0, "n_keypoints": 60, "seed": 4}


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _quick(steps):
    from monai_contreg import get_preset

    cfg = get_preset("io-lr1")
    s = cfg.optim.schedule
    s.total_steps = s.constant_steps = s.cosine_end = steps
    return cfg


def test_compose_pipeline_example():
    tre = _load("compose_pipeline").main([], demo_kwargs=TINY, config=_quick(30))
    assert tre < 2.0


def test_network_refinement_example():
    out = _load("network_refinement").main(["--iterations", "3"], demo_kwargs=TINY, refine_config=_quick(30))
    assert out["tre_refined"] < out["tre_network"]


def test_register_pair_example(capsys):
    out = _load("register_pair").main(["--set", "optim.schedule.total_steps=20", "--set", "optim.schedule.constant_steps=20",
                                       "--set", "optim.schedule.cosine_end=20", "--set", "optim.schedule.peak_lr=1"])
    assert out["after"] < out["before"]
    # the demo pair is on a 2 mm grid: the initial TRE in mm is twice the voxel distance (1.682 voxels)
    assert out["before"] == pytest.approx(3.364, abs=5e-4)
    assert "TRE 3.364 ->" in capsys.readouterr().out
