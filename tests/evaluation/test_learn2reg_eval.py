import csv
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate, distance_transform_edt, map_coordinates

from monai_contreg.cli import main
from monai_contreg.data.learn2reg import Learn2RegDataset
from monai_contreg.evaluation.learn2reg import (
    aggregate,
    evaluate_field,
    evaluate_learn2reg,
    write_evaluation_csv,
    write_evaluation_json,
)
from monai_contreg.evaluation.metrics import hd95
from monai_contreg.io.fields import save_field
from monai_contreg.spatial.conventions import identity_grid
from tests.learn2reg_helpers import make_tiny_learn2reg

SHAPE = (20, 22, 24)


def _official_logjac(arr: np.ndarray, mask: np.ndarray | None = None):
    """Independent re-implementation of the Learn2Reg script's SDlogJ (numpy / scipy, Learn2Reg layout)."""
    disp = arr.transpose(3, 0, 1, 2)[None]  # (1, 3, H, W, D)
    k = np.array([-0.5, 0.0, 0.5])
    grads = []
    for ax in range(3):
        shape = [1, 1, 1]
        shape[ax] = 3
        grads.append(np.stack([correlate(disp[0, c], k.reshape(shape), mode="constant") for c in range(3)]))
    jac = np.stack(grads, 0) + np.eye(3).reshape(3, 3, 1, 1, 1)  # jac[i, c] = d u_c / d x_i + delta
    jac = jac[:, :, 2:-2, 2:-2, 2:-2]
    det = np.linalg.det(jac.transpose(2, 3, 4, 0, 1))
    logj = np.log(np.clip(det + 3, 1e-9, 1e9))
    true = np.log(np.clip(det, 1e-9, 1e9))
    if mask is not None:
        sel = mask[2:-2, 2:-2, 2:-2] > 0
        return logj[sel].std(), true[sel].std(), det
    return logj.std(), true.std(), det


def _smooth_field(seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((1, 3, 4, 4, 4), generator=g, dtype=torch.float64) * scale
    return torch.nn.functional.interpolate(coarse, size=SHAPE, mode="trilinear", align_corners=False)


def test_tre_known_shift():
    ddf = torch.zeros((1, 3, *SHAPE), dtype=torch.float64)
    ddf[:, 0], ddf[:, 1], ddf[:, 2] = 1.0, -2.0, 0.5
    rng = np.random.default_rng(0)
    fk = rng.uniform(4, 15, size=(30, 3))
    offsets = rng.normal(size=(30, 3))
    mk = fk + np.array([1.0, -2.0, 0.5]) + offsets
    spacing = (1.5, 1.5, 2.0)
    res = evaluate_field(ddf, {"fixed_keypoints": torch.from_numpy(fk), "moving_keypoints": torch.from_numpy(mk)},
                         fixed_spacing=spacing, moving_spacing=spacing)
    expected = np.linalg.norm(offsets * np.array(spacing), axis=1)
    assert np.allclose(res["TRE_kp"]["detailed"], expected, atol=1e-3)
    assert res["TRE_kp"]["mean"] == pytest.approx(expected.mean(), abs=1e-6)
    assert res["TRE_kp_official"]["mean"] == pytest.approx(expected.mean(), abs=1e-6)
    initial = np.linalg.norm((fk - mk) * np.array(spacing), axis=1)
    assert res["TRE_kp_initial"]["mean"] == pytest.approx(initial.mean(), abs=1e-6)


def test_tre_official_matches_scipy_cubic_on_a_smooth_field():
    ddf = _smooth_field(1)
    rng = np.random.default_rng(1)
    fk = rng.uniform(3, 16, size=(25, 3))
    mk = fk + rng.normal(size=(25, 3))
    res = evaluate_field(ddf, {"fixed_keypoints": torch.from_numpy(fk), "moving_keypoints": torch.from_numpy(mk)},
                         fixed_spacing=(1, 1, 1), moving_spacing=(2.0, 2.0, 2.0))
    arr = ddf[0].numpy().transpose(1, 2, 3, 0)  # Learn2Reg (H, W, D, 3)
    u3 = np.stack([map_coordinates(arr[..., c], fk.T) for c in range(3)], 1)  # the official call: cubic
    u1 = np.stack([map_coordinates(arr[..., c], fk.T, order=1) for c in range(3)], 1)
    assert np.allclose(res["TRE_kp_official"]["detailed"], np.linalg.norm((fk + u3 - mk) * 2.0, axis=1), atol=1e-3)
    assert np.allclose(res["TRE_kp"]["detailed"], np.linalg.norm((fk + u1 - mk) * 2.0, axis=1), atol=1e-3)


def test_sdlogj_matches_official_formula_masked_and_unmasked():
    ddf = _smooth_field(2)
    arr = ddf[0].numpy().transpose(1, 2, 3, 0)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[5:15, 4:18, 6:20] = 1
    off_all, true_all, det = _official_logjac(arr)
    off_m, true_m, _ = _official_logjac(arr, mask)
    res = evaluate_field(ddf, {}, fixed_spacing=(1, 1, 1), moving_spacing=(1, 1, 1))
    assert res["LogJacDetStd"]["mean"] == pytest.approx(off_all, abs=1e-6)
    assert res["SDlogJ"]["mean"] == pytest.approx(true_all, abs=1e-6)
    assert res["folding_percent"]["mean"] == pytest.approx((det <= 0).mean() * 100, abs=1e-9)
    resm = evaluate_field(ddf, {"fixed_mask": torch.from_numpy(mask)[None].float()}, fixed_spacing=(1, 1, 1),
                          moving_spacing=(1, 1, 1))
    assert resm["LogJacDetStd"]["mean"] == pytest.approx(off_m, abs=1e-6) and off_m != pytest.approx(off_all, abs=1e-4)
    assert resm["SDlogJ"]["mean"] == pytest.approx(true_m, abs=1e-6)
    unmasked = evaluate_field(ddf, {"fixed_mask": torch.from_numpy(mask)[None].float()}, fixed_spacing=(1, 1, 1),
                              moving_spacing=(1, 1, 1), masked=False)
    assert unmasked["LogJacDetStd"]["mean"] == pytest.approx(off_all, abs=1e-6)


def test_jacobian_known_answers():
    x = identity_grid(SHAPE, dtype=torch.float64)
    ddf = torch.zeros((1, 3, *SHAPE), dtype=torch.float64)
    ddf[:, 0] = 0.2 * x[:, 0]  # det 1.2 everywhere
    res = evaluate_field(ddf, {}, fixed_spacing=(1, 1, 1), moving_spacing=(1, 1, 1))
    assert res["LogJacDetStd"]["mean"] == pytest.approx(0.0, abs=1e-6) and res["SDlogJ"]["mean"] == pytest.approx(0.0, abs=1e-6)
    # u_0 = -2 x_0 for x_2 >= 12: det = -1 there, 1 elsewhere; the crossing layer has det 1 (no d/dx2 term in u_0)
    fold = torch.zeros_like(ddf)
    fold[:, 0, :, :, 12:] = -2.0 * x[:, 0, :, :, 12:]
    res = evaluate_field(fold, {}, fixed_spacing=(1, 1, 1), moving_spacing=(1, 1, 1))
    interior = (SHAPE[0] - 4) * (SHAPE[1] - 4) * (SHAPE[2] - 4)
    n_fold = (SHAPE[0] - 4) * (SHAPE[1] - 4) * (SHAPE[2] - 2 - 12)
    assert res["folding_voxels"]["mean"] == n_fold
    # the official key keeps the official meaning: det J tested after its clip of det J + 3 to [1e-9, 1e9] -> 0
    assert res["num_foldings"]["mean"] == 0
    assert res["folding_percent"]["mean"] == pytest.approx(100 * n_fold / interior)
    p = n_fold / interior  # two values: log(1 + 3) and log(-1 + 3)
    assert res["LogJacDetStd"]["mean"] == pytest.approx(abs(np.log(4) - np.log(2)) * np.sqrt(p * (1 - p)), abs=1e-6)


def _brute_hd95(a, b, spacing):
    def surface(m):
        pad = np.pad(m, 1)
        inner = pad[1:-1, 1:-1, 1:-1].copy()
        for ax in range(3):
            for s in (-1, 1):
                inner &= np.roll(pad, s, axis=ax)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~inner) * np.asarray(spacing)

    sa, sb = surface(a), surface(b)
    d = np.linalg.norm(sa[:, None, :] - sb[None, :, :], axis=-1)
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_hd95_against_brute_force_and_known_shift():
    a = np.zeros((16, 16, 16), bool)
    a[4:10, 4:12, 5:11] = True
    b = np.roll(a, 3, axis=0)
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0, abs=1e-3)  # a pure shift: every face moves 3 x 2 mm
    rng = np.random.default_rng(3)
    c = distance_transform_edt(rng.random((16, 16, 16)) > 0.02) > 1.5
    spacing = (1.5, 1.0, 2.5)
    assert hd95(a, c, spacing) == pytest.approx(_brute_hd95(a, c, spacing), abs=1e-3)
    assert np.isnan(hd95(a, np.zeros_like(a)))
    with pytest.raises(ValueError, match="hd95: masks must be 3-D with equal shapes"):
        hd95(a, a[:4])


def test_dice_and_hd95_of_warped_mask():
    fixed = np.zeros(SHAPE, np.uint8)
    fixed[5:12, 6:14, 7:15] = 1
    fixed[13:17, 6:14, 7:15] = 2
    moving = np.roll(fixed, 2, axis=0)  # fixed voxel x shows at moving x + 2
    ddf = torch.zeros((1, 3, *SHAPE), dtype=torch.float64)
    data = {"fixed_mask": torch.from_numpy(fixed)[None].float(), "moving_mask": torch.from_numpy(moving)[None].float()}
    zero = evaluate_field(ddf, data, fixed_spacing=(1.5, 1, 1), moving_spacing=(1.5, 1, 1))
    ref = [2 * ((fixed == k) & (moving == k)).sum() / ((fixed == k).sum() + (moving == k).sum()) for k in (1, 2)]
    assert zero["Dice"]["detailed"] == pytest.approx(ref, abs=1e-5) and zero["Dice_initial"]["mean"] == pytest.approx(np.mean(ref))
    assert zero["HD95_mm"]["detailed"] == pytest.approx([3.0, 3.0], abs=1e-3)  # 2 voxels x 1.5 mm
    assert zero["HD95"]["detailed"] == pytest.approx([2.0, 2.0], abs=1e-9)  # official: voxels (unit spacing)
    ddf[:, 0] = 2.0
    moved = evaluate_field(ddf, data, fixed_spacing=(1.5, 1, 1), moving_spacing=(1.5, 1, 1))
    assert moved["Dice"]["detailed"] == [1.0, 1.0] and moved["HD95"]["mean"] == 0.0 and moved["HD95_mm"]["mean"] == 0.0


def test_aggregate_statistics():
    cases = {f"{i:04d}_{i:04d}": {"TRE_kp": {"mean": v}} for i, v in enumerate([1.0, 2.0, 4.0, float("nan")])}
    agg = aggregate(cases)["TRE_kp"]
    vals = np.array([1.0, 2.0, 4.0])
    assert agg["mean"] == pytest.approx(vals.mean()) and agg["std"] == pytest.approx(vals.std())
    # the official "30": 70th percentile for TRE (worst 30 %): 2.8 here; it stored the 30th (1.6) before
    assert agg["30"] == pytest.approx(np.quantile(vals, 0.7)) == pytest.approx(2.8)
    assert agg["n"] == 3 and agg["median"] == 2.0
    table = {"TRE_kp": 0.7, "TRE_kp_official": 0.7, "LogJacDetStd": 0.7, "SDlogJ": 0.7, "Dice": 0.3, "HD95": 0.3,
             "HD95_mm": 0.7, "Dice_initial": 0.3, "runtime": 0.7}
    cases = {f"{i:04d}_{i:04d}": {m: {"mean": v} for m in table} for i, v in enumerate([1.0, 2.0, 4.0])}
    agg = aggregate(cases)
    for m, q in table.items():
        assert agg[m]["30"] == pytest.approx(np.quantile(vals, q)), m


@pytest.fixture(scope="module")
def tiny_with_fields(tmp_path_factory):
    root = tmp_path_factory.mktemp("l2r_eval")
    ds = make_tiny_learn2reg(root / "ds", n_pairs=2)
    fields = root / "fields"
    for k, pair in enumerate(Learn2RegDataset(ds).pairs("val")):
        ddf = torch.zeros(1, 3, 32, 32, 32)
        ddf[:, 2] = 0.5 * k
        save_field(fields / pair.disp_name, ddf, np.diag([2.0, 2.0, 2.0, 1.0]))
    (fields / "runtimes.json").write_text(json.dumps({"cases": {"0001_0001": {"seconds": 12.5}}}))
    return ds, fields


def test_evaluate_split_layout_and_files(tiny_with_fields, tmp_path):
    ds, fields = tiny_with_fields
    res = evaluate_learn2reg(ds, fields, "val")
    assert res["name"] == "TINY" and res["split"] == "registration_val"
    assert list(res["cases"]) == ["0001_0001", "0002_0002"]
    c0 = res["cases"]["0001_0001"]
    assert c0["TRE_kp"]["mean"] == pytest.approx(c0["TRE_kp_initial"]["mean"])  # zero field
    assert c0["LogJacDetStd"]["mean"] == pytest.approx(0.0, abs=1e-9) and c0["runtime"]["mean"] == 12.5
    assert "runtime" not in res["cases"]["0002_0002"] and res["aggregates"]["runtime"]["n"] == 1
    for m in ("TRE_kp", "TRE_kp_official", "LogJacDetStd", "SDlogJ", "folding_percent", "Dice", "HD95", "HD95_mm"):
        assert set(res["aggregates"][m]) >= {"mean", "std", "30"}
    assert res["settings"]["masked_evaluation"] is True and res["settings"]["unmasked_cases"] == []
    write_evaluation_json(res, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["cases"]["0002_0002"]["Dice"]["mean"] == pytest.approx(res["cases"]["0002_0002"]["Dice"]["mean"])
    write_evaluation_csv(res, tmp_path / "r.csv")
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[0][0] == "case" and [r[0] for r in rows[1:]] == ["0001_0001", "0002_0002", "mean", "std", "30"]


def test_evaluate_errors(tiny_with_fields, tmp_path):
    ds, fields = tiny_with_fields
    with pytest.raises(FileNotFoundError, match=r"2 of 2 field\(s\) missing"):
        evaluate_learn2reg(ds, tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="fields folder or zip .* does not exist"):
        evaluate_learn2reg(ds, tmp_path / "none.zip", "val")
    with pytest.raises(ValueError, match="Did you mean 'val'"):
        evaluate_learn2reg(ds, fields, "vla")


def test_cli_evaluate(tiny_with_fields, tmp_path, capsys):
    ds, fields = tiny_with_fields
    rc = main(["evaluate", str(ds), str(fields), "--json", str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv")])
    out = capsys.readouterr().out
    assert rc == 0 and "TRE_kp" in out and "0002_0002" in out and "LogJacDetStd" in out
    assert (tmp_path / "e.json").is_file() and (tmp_path / "e.csv").is_file()
    rc = main(["evaluate", str(ds), str(tmp_path / "missing")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_masked_sdlogj_fallback_is_reported():
    """A fixed mask empty inside the 2-voxel border: the statistics cover the whole grid and the report says so."""
    ddf = torch.zeros((1, 3, *SHAPE), dtype=torch.float64)
    mask = torch.zeros((1, *SHAPE))
    mask[0, :2] = 1  # only in the cropped border
    seen = {}
    res = evaluate_field(ddf, {"fixed_mask": mask}, fixed_spacing=(1, 1, 1), moving_spacing=(1, 1, 1), report=seen)
    assert seen == {"masked": False} and res["LogJacDetStd"]["mean"] == pytest.approx(0.0, abs=1e-9)
    mask[0, 5:9, 5:9, 5:9] = 1
    evaluate_field(ddf, {"fixed_mask": mask}, fixed_spacing=(1, 1, 1), moving_spacing=(1, 1, 1), report=seen)
    assert seen == {"masked": True}
