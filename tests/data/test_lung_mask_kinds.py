"""The automatic lung mask on the kinds of CT it must tell apart (tests/data/ct_kinds.py), each with its true answer.

Before the plausibility checks, the mask took bowel gas for lungs (abdomen: 441 mL "lungs"), dropped a lung cut
by the field of view (1386 of 2603 mL), counted a pneumothorax as lung and took a gas-filled colon below the
diaphragm for the second lung (94 % of the colon in the mask).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_contreg.data.lung_mask import LungMaskError, auto_lung_masks, segment_lungs
from monai_contreg.errors import UserInputError
from monai_contreg.methods.presets import get_preset
from tests.data.ct_kinds import abdomen, chest, crop, reorient

VOXEL_ML = 0.027  # 3 mm voxels


def _dice(a, b):
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def normal():
    return chest()


def test_normal_chest(normal):
    res = segment_lungs(normal.image, normal.affine)
    rep = res.report
    assert rep["found"] and rep["lungs"] == 2 and not rep["touches_border"] and rep["airway_found"]
    assert _dice(res.mask, normal.lungs) >= 0.98
    x = np.arange(normal.image.shape[0])[:, None, None] * 3.0 + normal.affine[0, 3]  # world x (RAS: + = right)
    for side, sel in (("right", x > 0), ("left", x < 0)):
        true_ml = float((normal.lungs & sel).sum()) * VOXEL_ML
        assert abs(rep[f"{side}_ml"] - true_ml) <= 0.03 * true_ml, (side, rep[f"{side}_ml"], true_ml)
    sides = sorted(r["side"] for r in rep["regions"] if r["accepted"])
    assert sides == ["left", "right"]


def test_lung_cut_by_the_field_of_view_is_kept_and_reported(normal):
    """The FOV ends at x = +84 mm, through the right lung (its lateral 20 % outside): both lungs, border flagged."""
    cut = crop(normal, 0, 0, 83)
    assert cut.lungs[-1].any()  # the true lung reaches the image border
    res = segment_lungs(cut.image, cut.affine)
    rep = res.report
    assert rep["lungs"] == 2 and rep["touches_border"] and rep["border_faces"] == ["right"]
    true_ml = float(cut.lungs.sum()) * VOXEL_ML
    assert abs(rep["volume_ml"] - true_ml) <= 0.02 * true_ml
    assert _dice(res.mask, cut.lungs) >= 0.98
    right = [r for r in rep["regions"] if r["accepted"] and r["side"] == "right"]
    assert right and right[0]["touches_border"] and right[0]["border_faces"] == ["right"]


def test_same_cut_in_another_array_orientation(normal):
    """Geometry from the affine: the cut chest stored superior-first and reversed gives the same voxels and faces."""
    cut = crop(normal, 0, 0, 83)
    ref = segment_lungs(cut.image, cut.affine)
    b, aff_b, back = reorient(cut.image, cut.affine)
    res = segment_lungs(b, aff_b)
    assert np.array_equal(back(res.mask), ref.mask)
    assert res.report["border_faces"] == ["right"] and res.report["right_ml"] == ref.report["right_ml"]


def test_pneumothorax_air_is_not_lung():
    k = chest(pneumothorax=True)
    res = segment_lungs(k.image, k.affine)
    ptx = k.extra["pneumothorax"]
    assert res.report["lungs"] == 2
    assert (res.mask & ptx).sum() <= 0.06 * ptx.sum()  # the free air around the collapsed lung stays out
    assert _dice(res.mask, k.lungs) >= 0.97
    true_ml = float(ptx.sum()) * VOXEL_ML
    assert abs(res.report["free_gas_next_to_lungs_ml"] - true_ml) <= 0.1 * true_ml


def test_severe_emphysema_is_lung_not_free_gas():
    """Emphysematous lung and bullae are air enclosed by lung: not removed as free gas (as a pneumothorax is)."""
    k = chest(emphysema=True)
    assert (k.image[k.lungs] < -950).mean() > 0.4
    res = segment_lungs(k.image, k.affine)
    assert res.report["lungs"] == 2 and res.report["free_gas_ml"] == 0.0
    assert _dice(res.mask, k.lungs) >= 0.98


def test_pneumonectomy_one_lung():
    k = chest(left_lung=False)
    res = segment_lungs(k.image, k.affine)
    rep = res.report
    assert rep["lungs"] == 1 and [r["side"] for r in rep["regions"] if r["accepted"]] == ["right"]
    assert rep["left_ml"] <= 0.01 * rep["volume_ml"]
    assert _dice(res.mask, k.lungs) >= 0.98


def test_colon_full_of_gas_below_the_diaphragm_is_excluded():
    k = chest((-200.0, 250.0), colon=True)
    res = segment_lungs(k.image, k.affine)
    gas = k.extra["gas"]
    assert gas.sum() * VOXEL_ML > 1000  # larger than the left lung: the old mask took it for the second lung
    assert (res.mask & gas).sum() == 0
    assert _dice(res.mask, k.lungs) >= 0.98
    b, aff_b, back = reorient(k.image, k.affine)  # superior along array axis 0, reversed
    assert np.array_equal(back(segment_lungs(b, aff_b).mask), res.mask)


def test_lung_like_region_below_the_diaphragm_is_not_the_second_lung():
    """A parenchyma-like region (what the HU check cannot tell from lung) low on the left, one lung above it: it is
    on the other side but not level with the lung (below the diaphragm), so it is not taken."""
    k = chest((-200.0, 250.0), left_lung=False)
    x, y, z = np.meshgrid(*[np.arange(n) * 3.0 + k.affine[i, 3] for i, n in enumerate(k.image.shape)], indexing="ij")
    blob = ((x + 70) / 45) ** 2 + ((y - 10) / 50) ** 2 + ((z + 120) / 55) ** 2 <= 1
    img = k.image.copy()
    img[blob] = -850.0
    res = segment_lungs(img, k.affine)
    assert res.report["lungs"] == 1 and not (res.mask & blob).any()
    cand = [r for r in res.report["regions"] if r["side"] == "left" and r["volume_ml"] > 300]
    assert cand and not cand[0]["accepted"]
    assert cand[0]["checks"]["opposite_side"]["passed"] and not cand[0]["checks"]["level_with_first"]["passed"]
    assert _dice(res.mask, k.lungs) >= 0.98


@pytest.mark.parametrize("variant", [{}, {"content_above": 0.8}, {"noise": 40.0}])
def test_abdomen_bowel_gas_is_no_lung(variant):
    k = abdomen(**variant)
    gas_ml = float(k.extra["gas"].sum()) * VOXEL_ML
    assert 380 <= gas_ml <= 480
    with pytest.raises(LungMaskError, match="no plausible lung.*does not look like a chest CT") as info:
        segment_lungs(k.image, k.affine)
    assert isinstance(info.value, UserInputError)  # CLI exit 2
    rep = info.value.report
    assert rep["found"] is False and rep["free_gas_ml"] <= gas_ml
    if not variant:  # homogeneous gas: most of it is free gas (mottled content lifts the smoothed HU above -950)
        assert rep["free_gas_ml"] >= 0.7 * gas_ml
    assert all(not all(c["passed"] for c in r["checks"].values()) for r in rep["regions"])


def _pair(kind):
    t = MetaTensor(torch.as_tensor(kind.image[None]), affine=torch.as_tensor(kind.affine))
    return {"fixed": t, "moving": t.clone()}


def test_auto_masks_abdomen_unmasked_with_a_warning_or_stopped(caplog):
    k = abdomen()
    report: dict = {}
    with caplog.at_level(logging.WARNING, logger="monai_contreg.data.lung_mask"):
        data = auto_lung_masks(_pair(k), get_preset("io"), where="register", report=report)
    assert "fixed_mask" not in data and "moving_mask" not in data
    assert "no plausible lung" in caplog.text and "registering WITHOUT masks" in caplog.text
    assert report["masked"] is False and report["fixed"]["source"] == "not found"
    assert report["fixed"]["found"] is False and "regions" in report["fixed"]
    strict = get_preset("io").with_overrides(["preprocess.require_mask=true"])
    with pytest.raises(LungMaskError, match="--require-mask.*fixed image"):
        auto_lung_masks(_pair(k), strict, where="register")


def test_auto_masks_record_volumes_and_border(normal, caplog):
    cut = crop(normal, 0, 0, 83)
    report: dict = {}
    with caplog.at_level(logging.WARNING, logger="monai_contreg.data.lung_mask"):
        data = auto_lung_masks(_pair(cut), get_preset("io"), report=report)
    assert data["fixed_mask"].shape == (1, *cut.image.shape)
    assert "touches the image border (right)" in caplog.text
    assert report["masked"] is True
    assert json.loads(json.dumps(report)) == report  # it goes into runtimes.json as it is
    for key in ("fixed", "moving"):
        rep = report[key]
        assert rep["source"] == "automatic" and rep["lungs"] == 2 and rep["touches_border"]
        assert rep["right_ml"] + rep["left_ml"] == pytest.approx(rep["volume_ml"], abs=0.2)
    # given masks: recorded as given, nothing segmented
    given = {**_pair(cut), "fixed_mask": data["fixed_mask"], "moving_mask": data["moving_mask"]}
    report = {}
    auto_lung_masks(given, get_preset("io"), report=report)
    assert report == {"masked": True, "fixed": {"source": "given"}, "moving": {"source": "given"}}
