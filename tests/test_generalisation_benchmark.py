"""The pair builder of benchmarks/generalisation.py, on a synthetic head standing in for the nilearn template."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import generalisation as gen  # noqa: E402


def _template(n: int = 40) -> dict:
    """An ellipsoidal 'brain' on a 2 mm grid: WM core, GM shell, smooth edges; T1-like 0-255; like the template."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for _ in range(3)], indexing="ij"))
    r = np.sqrt((((idx - n / 2) / np.array([15.0, 13.0, 12.0])[:, None, None, None]) ** 2).sum(0))
    brain = 1 / (1 + np.exp((r - 1.0) / 0.06))
    wm = 1 / (1 + np.exp((r - 0.6) / 0.06))
    gm = np.clip(brain - wm, 0, 1)
    t1 = ndi.gaussian_filter(brain * 80 + wm * 150, 0.7)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-40.0, -40.0, -40.0]
    return {"t1": t1.astype(np.float32), "gm": (gm * 255).astype(np.float32), "wm": (wm * 255).astype(np.float32),
            "affine": aff}


def test_no_motion_is_an_exact_zero():
    pair = gen.build_pair(_template(), deformation_mm=0.0, similarity=None, noise=0.0, bias=0.0)
    x = pair["affine"][:3, :3] @ pair["landmarks_fixed"].T + pair["affine"][:3, 3:4]
    np.testing.assert_allclose(pair["landmarks_moving_mm"], x.T, atol=1e-9)
    assert pair["initial"]["tre_mm"] < 1e-9
    assert pair["initial"]["dice_gm"] > 0.999 and pair["initial"]["dice_wm"] > 0.999


def test_a_similarity_alone_has_the_analytic_answer_and_its_exact_field_scores_zero():
    tpl = _template()
    rot, scale = (6.0, -4.0, 5.0), 1.04
    pair = gen.build_pair(tpl, deformation_mm=0.0, similarity=(rot, scale), noise=0.0, bias=0.0)
    aff = pair["affine"]
    brain = (tpl["gm"] + tpl["wm"]) / 255.0 >= 0.5
    idx = np.argwhere(brain)
    centre = aff[:3, :3] @ idx.mean(0) + aff[:3, 3]
    s = scale * gen._rotation(rot)
    # y = S^-1(x): the moving point of the fixed landmark x
    x = aff[:3, :3] @ pair["landmarks_fixed"].T + aff[:3, 3:4]
    y = np.linalg.solve(s, x - centre[:, None]) + centre[:, None]
    np.testing.assert_allclose(pair["landmarks_moving_mm"], y.T, atol=1e-9)
    assert pair["initial"]["tre_mm"] > 1.0
    # the exact field (affine, so trilinear sampling reproduces it) scores TRE 0 and better Dice than no field
    m = np.linalg.inv(aff) @ np.block([[np.linalg.inv(s), (centre - np.linalg.inv(s) @ centre)[:, None]], [np.zeros((1, 3)), 1]]) @ aff
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in tpl["t1"].shape], indexing="ij"))
    phi = np.einsum("ij,j...->i...", m[:3, :3], grid) + m[:3, 3, None, None, None] - grid
    got = gen.score(phi.astype(np.float32), pair)
    assert got["tre_mm"] < 1e-4
    assert got["dice_gm"] > pair["initial"]["dice_gm"] and got["dice_wm"] > 0.97


def test_the_deformation_answer_carries_the_anatomy_and_the_contrasts():
    tpl = _template()
    pair = gen.build_pair(tpl, deformation_mm=6.0, similarity=((6.0, -4.0, 5.0), 1.04), noise=0.0, bias=0.0, seed=3)
    assert pair["inverse_residual_mm"] < 1e-5 and pair["min_jacobian"] > 0.1
    aff_inv = np.linalg.inv(pair["affine"])
    y_vox = (aff_inv[:3, :3] @ pair["landmarks_moving_mm"].T + aff_inv[:3, 3:4])
    x_vox = pair["landmarks_fixed"].T
    # the moving WM map at the answer equals the template's at the fixed landmark (up to interpolation), which
    # the landmark's own position in the moving image does not
    at_answer = ndi.map_coordinates(pair["moving_wm"], y_vox, order=1)
    at_same = ndi.map_coordinates(pair["moving_wm"], x_vox, order=1)
    truth = ndi.map_coordinates(pair["fixed_wm"], x_vox, order=1)
    assert np.abs(at_answer - truth).mean() < 0.25 * np.abs(at_same - truth).mean()
    assert np.abs(at_answer - truth).mean() < 0.02
    # T2-like: inverted inside the brain, 0 outside (no noise, no bias: exactly 255 - T1 through the same map)
    t2 = gen.build_pair(tpl, contrast="t2", deformation_mm=6.0, similarity=((6.0, -4.0, 5.0), 1.04), noise=0.0,
                        bias=0.0, seed=3)
    np.testing.assert_allclose(t2["landmarks_moving_mm"], pair["landmarks_moving_mm"])
    inside = ndi.map_coordinates(tpl["t1"], x_vox, order=1) > 0
    assert np.corrcoef(ndi.map_coordinates(t2["moving"], y_vox, order=1)[inside],
                       ndi.map_coordinates(pair["moving"], y_vox, order=1)[inside])[0, 1] < -0.9


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="contrast must be 't1' or 't2'"):
        gen.build_pair(_template(), contrast="flair")
    with pytest.raises(ValueError, match="the deformation folds"):
        gen.build_pair(_template(), deformation_mm=40.0, smoothness_mm=4.0)
