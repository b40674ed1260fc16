"""Landmark-free quality signals, the calibrated model's application, the verdict, ``contreg quality``."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_contreg.cli import main
from monai_contreg.errors import UserInputError
from monai_contreg.evaluation.quality import (
    CHECK_MM,
    FAILED_MM,
    MODEL_FEATURES,
    estimate_from_signals,
    estimate_quality,
    load_model,
    model_features,
    quality_signals,
    verdict,
)
from monai_contreg.spatial.warp import warp_image
from tests.conftest import smooth_volume

SHAPE = (48, 40, 44)
SPACING = 1.5
AFF = np.diag([SPACING, SPACING, SPACING, 1.0])


def _pair():
    """Moving: a textured volume; fixed = moving(x + u(x)) for a smooth u of 2-3 voxels (exact known answer)."""
    torch.manual_seed(0)
    moving = smooth_volume(SHAPE, seed=1, sigma=1.5)
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) / n for n in SHAPE], indexing="ij")
    u = torch.stack([2.0 + torch.sin(math.pi * grid[1]), 1.5 * torch.sin(math.pi * grid[2]), torch.cos(math.pi * grid[0])])[None]
    fixed = warp_image(moving, u)
    return fixed[0, 0], moving[0, 0], u


def _sig(fixed, moving, ddf, fm=None, mm=None):
    return quality_signals(fixed, moving, ddf, AFF, AFF, fm, mm)


def test_true_field_scores_better_than_degraded_ones():
    fixed, moving, u = _pair()
    s_true, s_half, s_zero = (_sig(fixed, moving, d) for d in (u, 0.5 * u, torch.zeros_like(u)))
    assert s_zero["mind_ratio"] == pytest.approx(1.0)  # one grid: after == before for the zero field
    assert s_true["mind_ratio"] < s_half["mind_ratio"] < s_zero["mind_ratio"]
    assert s_true["residual_mm"] < s_half["residual_mm"] < s_zero["residual_mm"]
    assert s_true["mind_ratio_worst"] >= s_true["mind_ratio"]
    assert s_true["residual_worst_mm"] >= s_true["residual_mm"]
    assert s_true["folding_percent"] == 0.0 and s_zero["out_of_image"] == 0.0
    assert 0.0 < s_true["out_of_image"] < 0.2  # u shifts 2-3 voxels along axis 0: the last layers map out
    assert math.isnan(s_true["dice"])  # no masks


def test_constant_shift_is_found_by_the_residual_search():
    """fixed(x) = moving(x + t) with t = 1 coarse voxel (3 mm) along axis 0: the zero field leaves a ~3 mm
    residual shift, the right field ~0."""
    moving = smooth_volume(SHAPE, seed=3, sigma=1.5)
    t = torch.zeros((1, 3, *SHAPE))
    t[:, 0] = 2.0  # 2 fine voxels = 3 mm
    fixed = warp_image(moving, t)[0, 0]
    inner = torch.zeros(SHAPE)
    inner[8:-8, 8:-8, 8:-8] = 1
    s_zero = _sig(fixed, moving[0, 0], torch.zeros_like(t), inner)
    s_right = _sig(fixed, moving[0, 0], t, inner)
    assert s_zero["residual_mm"] == pytest.approx(3.0, abs=0.6)
    assert s_right["residual_mm"] < 0.5


def test_masks_dice_out_of_image_and_folding():
    fixed, moving, u = _pair()
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in SHAPE], indexing="ij"))
    centre = torch.tensor([(n - 1) / 2 for n in SHAPE]).view(3, 1, 1, 1)
    ball_m = ((grid - centre).norm(dim=0) < 14).float()
    ball_f = (warp_image(ball_m[None, None], u)[0, 0] > 0.5).float()
    s = _sig(fixed, moving, u, ball_f, ball_m)
    assert s["dice"] > s["dice_before"] and s["dice"] > 0.95
    assert s["region_ml"] == pytest.approx(float(ball_f.sum()) * SPACING**3 / 1000, rel=0.15)
    far = torch.zeros_like(u)
    far[:, 0] = 500.0
    assert _sig(fixed, moving, far, ball_f)["out_of_image"] == 1.0
    fold = torch.zeros_like(u)
    fold[:, 0] = -2.0 * (grid[0] - centre[0])  # x -> -x along axis 0: det J = -1 everywhere
    sf = _sig(fixed, moving, fold, ball_f)
    assert sf["folding_percent"] == pytest.approx(100.0)
    assert verdict(0.3, sf)[0] == "check"


def test_mask_like_tissue_left_out_of_the_mask():
    """Two equal 'lungs' (dark, textured) in a bright body: masking one leaves the other's volume outside."""
    shape = (64, 40, 44)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float32)
    rng = np.random.default_rng(0)
    img = np.full(shape, 1.0, np.float32)
    body = ((grid[0] - 31.5) / 31) ** 2 + ((grid[1] - 19.5) / 18) ** 2 < 1
    img[~body] = 0.0
    left = ((grid[0] - 16) / 9) ** 2 + ((grid[1] - 19.5) / 9) ** 2 + ((grid[2] - 21.5) / 14) ** 2 < 1
    right = ((grid[0] - 47) / 9) ** 2 + ((grid[1] - 19.5) / 9) ** 2 + ((grid[2] - 21.5) / 14) ** 2 < 1
    img[left | right] = 0.3 + 0.05 * rng.standard_normal(int((left | right).sum()))
    t = torch.as_tensor(img)
    zero = torch.zeros((1, 3, *shape))
    s_one = _sig(t, t, zero, torch.as_tensor(left.astype(np.float32)))
    s_both = _sig(t, t, zero, torch.as_tensor((left | right).astype(np.float32)))
    assert s_both["mask_like_outside_ml"] == 0.0
    assert s_one["mask_like_outside_ml"] > 0.4 * s_one["region_ml"]
    assert verdict(0.3, s_one)[0] == "check" and "outside the mask" in verdict(0.3, s_one)[1][0]
    assert verdict(0.3, s_both)[0] == "ok"


def _hand_model(q=0.4):
    return {"features": list(MODEL_FEATURES), "intercept": math.log(0.8), "coef": [1.0, 0.0, 0.0, 0.0],
            "mean": [0.0, 0.0, 0.0, 0.0], "scale": [1.0, 1.0, 1.0, 1.0], "conformal_q": q, "alpha": 0.1}


def test_estimate_from_signals_is_the_documented_log_linear_model():
    sig = {"residual_mm": 0.9, "residual_worst_mm": 1.0, "mind_ratio": 0.3, "mind_ratio_worst": 0.4}
    est, lo, hi = estimate_from_signals(sig, _hand_model())
    assert est == pytest.approx(0.8 * math.exp(math.log(0.1 + 0.9)))  # exp(b0 + 1 * log_residual)
    assert lo == pytest.approx(est * math.exp(-0.4)) and hi == pytest.approx(est * math.exp(0.4))
    assert model_features(sig)["log_residual"] == pytest.approx(0.0)


def test_verdict_thresholds():
    sig = {"folding_percent": 0.0, "out_of_image": 0.0, "mind_ratio": 0.3}
    assert verdict(CHECK_MM - 0.01, sig)[0] == "ok"
    assert verdict(CHECK_MM, sig)[0] == "check"
    assert verdict(FAILED_MM, sig)[0] == "failed"
    small = {**sig, "region_ml": 400.0}
    assert verdict(0.5, small, "automatic lung mask")[0] == "check"
    assert verdict(0.5, small, "fixed mask")[0] == "ok"  # a given small mask (a lobe) is the user's choice


def test_shipped_model_loads_and_orders_fields():
    model = load_model()
    assert model["features"] == list(MODEL_FEATURES)
    assert model["conformal_q"] > 0
    fixed, moving, u = _pair()
    e_true = estimate_from_signals(_sig(fixed, moving, u), model)[0]
    e_zero = estimate_from_signals(_sig(fixed, moving, torch.zeros_like(u)), model)[0]
    assert e_true < e_zero


def test_bad_inputs_raise_user_errors():
    fixed, moving, u = _pair()
    with pytest.raises(UserInputError, match="ddf must be"):
        quality_signals(fixed, moving, u[:, :, :10], AFF, AFF)
    with pytest.raises(UserInputError, match="fixed_mask shape"):
        quality_signals(fixed, moving, u, AFF, AFF, torch.ones(4, 4, 4))
    with pytest.raises(UserInputError, match="exactly one"):
        estimate_quality(fixed, moving, fixed_affine=AFF)


def _write(tmp_path, fixed, moving, u):
    from monai_contreg.io.fields import save_field

    paths = {}
    for name, arr in (("fixed", fixed), ("moving", moving)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), AFF), str(paths[name]))
    paths["field"] = save_field(tmp_path / "disp.nii.gz", u, AFF)
    return paths


def test_cli_quality_writes_json_and_html(tmp_path, capsys):
    fixed, moving, u = _pair()
    p = _write(tmp_path, fixed, moving, u)
    code = main(["quality", str(p["fixed"]), str(p["moving"]), str(p["field"]), "--no-auto-mask", "--threads", "1",
                 "--json", str(tmp_path / "q.json"), "--html", str(tmp_path / "q.html")])
    assert code == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("estimated error ") and " verdict " in line
    q = json.loads((tmp_path / "q.json").read_text())
    assert set(q) >= {"estimated_error_mm", "interval_mm", "verdict", "signals", "reasons"}
    assert q["interval_mm"][0] <= q["estimated_error_mm"] <= q["interval_mm"][1]
    assert q["verdict"] in ("ok", "check", "failed") and q["region"] == "body"
    assert (tmp_path / "q.html").read_text().startswith("<!DOCTYPE html>")


def test_cli_quality_needs_a_field(tmp_path, capsys):
    fixed, moving, u = _pair()
    p = _write(tmp_path, fixed, moving, u)
    assert main(["quality", str(p["fixed"]), str(p["moving"])]) == 2
    assert "FIELD" in capsys.readouterr().err


def test_registration_result_quality():
    from monai.data import MetaTensor

    from monai_contreg.api import RegistrationResult

    fixed, moving, u = _pair()
    res = RegistrationResult(ddf=MetaTensor(u, affine=torch.as_tensor(AFF)))
    rep = res.quality(fixed.numpy(), moving.numpy(), auto_mask=False)
    assert rep.region == "body" and rep.verdict in ("ok", "check", "failed")
    assert rep.interval_mm[0] <= rep.estimated_error_mm <= rep.interval_mm[1]
    assert rep.to_dict()["signals"]["mind_ratio"] == pytest.approx(rep.signals["mind_ratio"])


def test_cli_quality_reads_an_itk_transform_like_the_field(tmp_path, capsys):
    from monai_contreg.io.itk_transforms import save_itk_transform

    fixed, moving, u = _pair()
    p = _write(tmp_path, fixed, moving, u)
    save_itk_transform(tmp_path / "tx.h5", u, AFF)
    common = [str(p["fixed"]), str(p["moving"])]
    assert main(["quality", *common, str(p["field"]), "--no-auto-mask", "--json", str(tmp_path / "a.json")]) == 0
    assert main(["quality", *common, "--transform", str(tmp_path / "tx.h5"), "--no-auto-mask", "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert b["estimated_error_mm"] == pytest.approx(a["estimated_error_mm"], rel=1e-3)


def test_interval_takes_the_quantile_of_the_estimates_class():
    """Mondrian interval: an estimate below CHECK_MM uses the 'ok' class's quantile, one above FAILED_MM the
    'failed' one; a model without classes keeps its pooled quantile."""
    from monai_contreg.evaluation.quality import estimate_class

    model = {**_hand_model(0.4), "conformal_q_by_class": {"ok": 0.2, "check": 0.5, "failed": 0.9}}
    for residual, q in ((0.2, 0.2), (2.0, 0.5), (9.0, 0.9)):
        sig = {"residual_mm": residual, "residual_worst_mm": 1.0, "mind_ratio": 0.3, "mind_ratio_worst": 0.4}
        est, lo, hi = estimate_from_signals(sig, model)
        assert estimate_class(est) == {0.2: "ok", 0.5: "check", 0.9: "failed"}[q]
        assert lo == pytest.approx(est * math.exp(-q)) and hi == pytest.approx(est * math.exp(q))
        assert estimate_from_signals(sig, _hand_model(0.4))[2] == pytest.approx(est * math.exp(0.4))
    assert (estimate_class(CHECK_MM - 1e-6), estimate_class(CHECK_MM), estimate_class(FAILED_MM)) == ("ok", "check", "failed")


def _case21_abdomen():
    """../shared/cases/case_21.py's input (its construction, reduced to the fixed image's anatomy): an abdomen CT
    at 2 mm with ~400 mL of stomach and colon gas and no lungs."""
    from scipy import ndimage as ndi

    def texture(shape, sigma, seed):
        t = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), sigma)
        return (t - t.mean()) / (t.std() + 1e-8)

    shape, sp = (112, 96, 96), (2.0, 2.0, 2.0)
    g = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp)], indexing="ij")
    ext = np.array(shape) * np.array(sp) / 2
    img = np.full(shape, -1000.0, np.float32)
    body = (g[0] / (0.92 * ext[0])) ** 2 + (g[1] / (0.80 * ext[1])) ** 2 <= 1
    img[body] = (40 + 30 * texture(shape, 2.0, 6))[body]
    gas = ((g[0] - 35) / 45) ** 2 + ((g[1] + 20) / 30) ** 2 + ((g[2] - 25) / 60) ** 2 <= 1
    gas |= ((g[0] - 10) / 55) ** 2 + ((g[1] + 35) / 14) ** 2 + ((g[2] + 40) / 20) ** 2 <= 1
    tex = texture(shape, 1.0, 9)
    img[gas] = (-980 + 10 * tex)[gas]
    img[gas & (tex > 1.2)] = -200
    return img, np.diag([2.0, 2.0, 2.0, 1.0])


def test_standalone_estimate_takes_the_registrations_mask_decision(monkeypatch):
    """Without masks, `contreg quality` decides as the registration does (the full-resolution segment_lungs and its
    checks on both images): case_21's bowel gas is no lung (the region is the body, as its unmasked run was); a
    chest's masks are exactly segment_lungs' on the full grid; a chest against an abdomen: the body, as the
    registration then runs unmasked."""
    import monai_contreg.evaluation.quality as quality
    from monai_contreg.data.lung_mask import LungMaskError, segment_lungs
    from tests.data.ct_kinds import chest

    abd, a_aff = _case21_abdomen()
    with pytest.raises(LungMaskError):
        segment_lungs(abd, a_aff)
    zero = torch.zeros((1, 3, *abd.shape))
    rep = estimate_quality(abd, abd, zero, fixed_affine=a_aff)
    assert rep.region == "body" and rep.verdict == "ok"  # identical images, zero field: right

    kind = chest()
    img, aff = kind.image, kind.affine
    seen = {}
    real = quality.quality_signals
    monkeypatch.setattr(quality, "quality_signals", lambda *a, **k: seen.update(fm=a[5], mm=a[6]) or real(*a, **k))
    rep = estimate_quality(img, img, torch.zeros((1, 3, *img.shape)), fixed_affine=aff)
    expected = segment_lungs(img, aff).mask
    assert rep.region == "automatic lung mask"
    assert np.array_equal(np.asarray(seen["fm"]), expected) and np.array_equal(np.asarray(seen["mm"]), expected)
    with pytest.raises(UserInputError):  # the chest and the abdomen differ in shape: not one pair
        quality_signals(img, abd, torch.zeros((1, 3, *img.shape)), aff, a_aff, expected, np.ones(img.shape))
    fm, mm, region = quality.automatic_lung_masks(img, aff, abd, a_aff)
    assert (fm, mm, region) == (None, None, "body")
