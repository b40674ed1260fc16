"""Clinical CT intensities: the padding value outside the scanned circle must not change any preset's result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi

from monai_contreg import register
from monai_contreg.methods.presets import get_preset, preset_names
from tests.data.test_lung_mask import chest_phantom

FEW_STEPS = ["optim.schedule.total_steps=3", "optim.schedule.constant_steps=3", "optim.schedule.cosine_end=3",
             "engine.divergence_check=false"]  # 3 steps of a lr-15 schedule: features and plumbing, not convergence
AFFINE = torch.as_tensor(np.diag([2.5, 2.5, 2.5, 1.0]))


def _pair():
    """A textured chest phantom (HU) and a copy shifted by (6, 0, 3) voxels; the scanned circle's outside marked."""
    img, _ = chest_phantom()
    rng = np.random.default_rng(0)
    texture = ndi.gaussian_filter(rng.standard_normal(img.shape), 1.5) * 400
    body = img > -1020
    fixed = np.where(body, img + texture, -1000.0 + rng.normal(0, 10, img.shape)).astype(np.float32)
    moving = ndi.shift(fixed, (6.0, 0.0, 3.0), order=1, mode="nearest").astype(np.float32)
    x, y = np.meshgrid(np.arange(img.shape[0]) - 35.5, np.arange(img.shape[1]) - 27.5, indexing="ij")
    outside = np.broadcast_to((np.hypot(x, y) > 40)[..., None], img.shape)
    return fixed, moving, outside, body


def _padded(vol, outside, value):
    return MetaTensor(torch.as_tensor(np.where(outside, np.float32(value), vol)), affine=AFFINE)


def _few_steps(preset: str) -> list[str]:
    """FEW_STEPS for a preset with one dense stage; with several (``accurate``) the same on each dense stage's
    schedule; without one (``convex``) no schedule."""
    levels = len(get_preset(preset).dense_stages)
    if levels == 1:
        return FEW_STEPS
    return [f"multilevel.levels.{i}.{o[len('optim.'):]}" for i in range(levels) for o in FEW_STEPS
            if o.startswith("optim.schedule")] + [o for o in FEW_STEPS if not o.startswith("optim.schedule")]


def _field(preset, fixed, moving, outside, padding, extra=()):
    cfg = get_preset(preset).with_overrides([*_few_steps(preset), *extra])
    cfg.engine.num_threads = 1
    res = register(_padded(fixed, outside, padding), _padded(moving, outside, padding), config=cfg)
    return res.ddf.as_tensor()[0].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("preset", preset_names())
def test_padding_value_does_not_change_the_field(preset):
    fixed, moving, outside, body = _pair()
    ref = _field(preset, fixed, moving, outside, -1024.0)
    assert np.abs(ref[:, body]).max() > 0.01  # the run moved something
    for padding in (-2000.0, -3024.0, -32768.0):
        got = _field(preset, fixed, moving, outside, padding)
        assert np.abs(got[:, body] - ref[:, body]).max() < 1e-4, (preset, padding)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["io-authors", "convexadam"])
def test_without_the_floor_padding_changes_min_max_and_raw_presets(preset):
    """The presets the floor protects: min-max scaling and raw-intensity MIND see -32768 padding otherwise."""
    fixed, moving, outside, body = _pair()
    off = ["preprocess.intensity_floor=null"]
    ref = _field(preset, fixed, moving, outside, -1024.0, off)
    got = _field(preset, fixed, moving, outside, -32768.0, off)
    assert np.abs(got[:, body] - ref[:, body]).max() > 0.01
