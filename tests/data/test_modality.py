"""Modality of an image (CT in HU or MR), and the CT-only preprocessing that depends on it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_contreg.data.lung_mask import auto_lung_masks
from monai_contreg.data.modality import AIR_HU, decide_modalities, detect_modality
from monai_contreg.data.transforms import apply_intensity_floor, normalisation_transforms
from monai_contreg.errors import UserInputError
from monai_contreg.methods.config import RegistrationConfig
from monai_contreg.registration import preprocess


def _ct(seed: int = 0, padding: float | None = -3024.0) -> np.ndarray:
    """A CT-like volume in HU: air (-1000) around a body of soft tissue (40) with lung (-850) and bone (700)."""
    rng = np.random.default_rng(seed)
    a = np.full((32, 32, 32), -1000.0)
    a[4:28, 4:28, 2:30] = 40.0
    a[8:15, 8:24, 6:26] = -850.0
    a[17:24, 8:24, 6:26] = -850.0
    a[14:17, 14:17, :] = 700.0
    a += rng.normal(0, 10, a.shape)
    if padding is not None:
        a[:2] = padding
    return a.astype(np.float32)


def _mr(seed: int = 0) -> np.ndarray:
    """An MR-like volume: 0 background, a head of 60 ... 255 with a few bright voxels."""
    rng = np.random.default_rng(seed)
    a = np.zeros((32, 32, 32))
    a[6:26, 6:26, 6:26] = rng.uniform(60, 200, (20, 20, 20))
    a[10, 10, 10:14] = 900.0
    return a.astype(np.float32)


def test_ct_is_recognised_from_air_and_a_hu_range():
    assert detect_modality(_ct())[0] == "ct"
    assert detect_modality(_ct(padding=None))[0] == "ct"
    assert detect_modality(torch.as_tensor(_ct()))[0] == "ct"
    kind, why = detect_modality(_mr())
    assert kind == "mr" and "no air" in why
    z = (_mr() - _mr().mean()) / _mr().std()  # a z-scored MR: negative, but nowhere near air
    assert detect_modality(z)[0] == "mr"
    raw = _ct(padding=None) + 1024.0  # CT in raw scanner units without its rescale: no air at -1000 -> read as MR
    assert detect_modality(raw)[0] == "mr"
    hot = _mr()
    hot[:1] = AIR_HU - 100  # air-like values, but the range is far beyond HU
    hot[2:20] = 20000.0
    kind, why = detect_modality(hot)
    assert kind == "mr" and "not a HU range" in why


def test_the_decision_is_logged_and_a_given_modality_wins(caplog):
    pre = RegistrationConfig().preprocess
    with caplog.at_level(logging.INFO, logger="monai_contreg.data.modality"):
        got = decide_modalities({"fixed": _ct(), "moving": _mr()}, pre, "here")
    assert (got["fixed"], got["moving"]) == ("ct", "mr")
    assert "here: fixed image read as CT" in caplog.text and "here: moving image read as MR" in caplog.text
    pre.modality = "mr"
    assert decide_modalities({"fixed": _ct(), "moving": _ct()}, pre)["fixed"] == "mr"
    with pytest.raises(UserInputError, match=r"preprocess.modality 'xr'; expected one of \['auto', 'ct', 'mr'\]"):
        RegistrationConfig().set("preprocess.modality", "xr")
    with pytest.raises(UserInputError, match="preprocess.mr_percentiles must be"):
        RegistrationConfig().set("preprocess.mr_percentiles", [99, 1])


def _pair(fixed: np.ndarray, moving: np.ndarray) -> dict:
    return {k: MetaTensor(torch.as_tensor(v)[None], affine=torch.eye(4, dtype=torch.float64))
            for k, v in (("fixed", fixed), ("moving", moving))}


def test_mr_skips_the_hu_floor_and_the_window_and_is_normalised_by_percentiles():
    cfg = RegistrationConfig()
    mr = _mr()
    mr[0, 0, 0] = -5000.0  # below the HU floor: a CT would have it raised to -1024; an MR keeps it
    t = MetaTensor(torch.as_tensor(mr)[None])
    assert torch.equal(apply_intensity_floor(t, cfg.preprocess, "mr"), t)
    assert float(apply_intensity_floor(t, cfg.preprocess, "ct").min()) == -1024.0
    out = normalisation_transforms(cfg.preprocess, modalities={"fixed": "mr", "moving": "ct"})(_pair(mr, _ct()))
    lo, hi = np.percentile(mr, cfg.preprocess.mr_percentiles)
    expected = np.clip((mr - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out["fixed"][0].numpy(), expected, atol=1e-5)
    ct = _ct()  # the moving image, CT: floor then the HU window, as before
    np.testing.assert_allclose(out["moving"][0].numpy(), np.clip((np.maximum(ct, -1024) + 1000) / 2000, 0, 1), atol=1e-6)


def test_on_ct_nothing_changes():
    """Auto-detected CT goes through exactly the chain of before (no modalities given = CT)."""
    cfg = RegistrationConfig()
    data = _pair(_ct(0), _ct(1))
    mods = decide_modalities(data, cfg.preprocess)
    assert (mods["fixed"], mods["moving"]) == ("ct", "ct")
    a = normalisation_transforms(cfg.preprocess, modalities=mods)(dict(data))
    b = normalisation_transforms(cfg.preprocess)(dict(data))
    for k in ("fixed", "moving"):
        assert torch.equal(a[k].as_tensor(), b[k].as_tensor())


def test_mr_gets_no_automatic_lung_mask(monkeypatch, caplog):
    import monai_contreg.data.lung_mask as lm

    def never(*a, **k):
        raise AssertionError("the lung segmentation ran on an MR pair")

    monkeypatch.setattr(lm, "segment_lungs", never)
    cfg = RegistrationConfig()
    assert cfg.preprocess.use_masks and cfg.preprocess.auto_mask
    report: dict = {}
    with caplog.at_level(logging.INFO, logger="monai_contreg.data.lung_mask"):
        out = auto_lung_masks(_pair(_mr(0), _mr(1)), cfg, "here", report, {"fixed": "mr", "moving": "mr"})
    assert "fixed_mask" not in out and "moving_mask" not in out
    assert report["fixed"]["source"] == "none" and "MR" in report["fixed"]["reason"]
    assert "no automatic lung mask: the fixed and moving images are MR" in caplog.text
    report = {}
    out = preprocess("here", _pair(_mr(0), _mr(1)), cfg, report)  # decided on the values: MR
    assert report["modality"] == {"fixed": "mr", "moving": "mr"} and report["masked"] is False
    assert 0.0 <= float(out["fixed"].min()) and float(out["fixed"].max()) <= 1.0
