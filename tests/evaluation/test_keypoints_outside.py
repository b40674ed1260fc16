"""Keypoints outside their image: an error naming the file and the count, or (--exclude-outside-keypoints) left out
with a warning and counted per pair. The field is exact (u(x) = 0.05 x + 1 along axis 0, moving = p + u(p)), so
the TRE over the keypoints inside is 0 and any keypoint outside would score the field's extrapolation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from monai_contreg.cli import main
from monai_contreg.data.keypoints import keypoints_outside
from monai_contreg.data.learn2reg import Learn2RegDataset
from monai_contreg.errors import UserInputError
from monai_contreg.evaluation.learn2reg import evaluate_learn2reg
from monai_contreg.io.fields import save_field
from tests.learn2reg_helpers import make_tiny_learn2reg

SHAPE = (32, 32, 32)


def test_keypoints_outside_uses_the_voxels_extent():
    pts = np.array([[0, 0, 0], [-0.5, 31.5, 10], [-0.51, 3, 3], [3, 31.51, 3], [3, 3, 40], [31, 31, 31]], float)
    assert keypoints_outside(pts, SHAPE).tolist() == [False, False, True, True, True, False]
    with pytest.raises(UserInputError, match=r"expected \(N, 3\) points"):
        keypoints_outside(np.zeros((4, 2)), SHAPE)


def _u(p: np.ndarray) -> np.ndarray:
    return np.stack([0.05 * p[:, 0] + 1.0, np.zeros(len(p)), np.zeros(len(p))], axis=1)


@pytest.fixture()
def outside_case(tmp_path):
    root = make_tiny_learn2reg(tmp_path / "ds", n_pairs=1, shape=SHAPE)
    ds = Learn2RegDataset(root)
    pair = ds.pairs("val")[0]
    rng = np.random.default_rng(0)
    fixed = rng.uniform(2, 25, size=(20, 3))
    fixed[[3, 7, 11]] = [[40.0, 5.0, 5.0], [5.0, -3.0, 5.0], [5.0, 5.0, 33.0]]  # outside the fixed image
    moving = fixed + _u(fixed)
    moving[[3, 7, 11]] = [10.0, 10.0, 10.0]  # partners inside the moving image
    moving[15] = [5.0, 5.0, -2.0]  # one moving point outside the moving image
    np.savetxt(pair.fixed_keypoints, fixed, delimiter=",", fmt="%.6f")
    np.savetxt(pair.moving_keypoints, moving, delimiter=",", fmt="%.6f")
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij"), axis=0)
    ddf = torch.zeros((1, 3, *SHAPE), dtype=torch.float32)
    ddf[0, 0] = torch.from_numpy(0.05 * grid[0] + 1.0)
    fields = tmp_path / "fields"
    save_field(fields / pair.disp_name, ddf, np.diag([2.0, 2.0, 2.0, 1.0]))
    return root, fields, pair


def test_outside_keypoints_are_an_error_naming_file_and_count(outside_case):
    root, fields, pair = outside_case
    with pytest.raises(UserInputError) as err:
        evaluate_learn2reg(root, fields, "val")
    msg = str(err.value)
    assert f"fixed keypoints {str(pair.fixed_keypoints)!r}: 3 of 20 keypoints lie outside the image (shape (32, 32, 32)" in msg
    assert "e.g. row 4 (40.0, 5.0, 5.0), row 8 (5.0, -3.0, 5.0), row 12 (5.0, 5.0, 33.0)" in msg
    assert f"moving keypoints {str(pair.moving_keypoints)!r}: 1 of 20 keypoints" in msg and "row 16 (5.0, 5.0, -2.0)" in msg
    assert "--exclude-outside-keypoints" in msg and "pair 0001_0001" in msg


def test_exclude_outside_keypoints_scores_the_rest_and_counts_them(outside_case, caplog, tmp_path, capsys):
    root, fields, pair = outside_case
    with caplog.at_level(logging.WARNING, logger="monai_contreg.evaluation.learn2reg"):
        res = evaluate_learn2reg(root, fields, "val", exclude_outside_keypoints=True)
    case = res["cases"]["0001_0001"]
    assert case["keypoints_excluded"] == {"mean": 4.0, "detailed": [4, 8, 12, 16]}
    assert len(case["TRE_kp"]["detailed"]) == 16 and case["TRE_kp"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert res["settings"]["exclude_outside_keypoints"] is True
    assert "4 of 20 keypoint pairs left out of the TRE" in caplog.text and "pair 0001_0001" in caplog.text
    # the CLI: exit 2 and the message without the flag, the count in the JSON with it
    capsys.readouterr()
    assert main(["evaluate", str(root), str(fields)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("contreg evaluate: error: ") and "3 of 20 keypoints lie outside" in err[0]
    out = tmp_path / "e.json"
    assert main(["evaluate", str(root), str(fields), "--exclude-outside-keypoints", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["cases"]["0001_0001"]["keypoints_excluded"]["mean"] == 4.0
    assert saved["aggregates"]["keypoints_excluded"]["mean"] == 4.0


def test_keypoints_inside_are_scored_as_before(outside_case):
    root, fields, pair = outside_case
    fixed = np.random.default_rng(1).uniform(0, 28, size=(10, 3))
    np.savetxt(pair.fixed_keypoints, fixed, delimiter=",", fmt="%.6f")
    np.savetxt(pair.moving_keypoints, fixed + _u(fixed), delimiter=",", fmt="%.6f")
    res = evaluate_learn2reg(root, fields, "val")
    assert "keypoints_excluded" not in res["cases"]["0001_0001"]
    assert res["cases"]["0001_0001"]["TRE_kp"]["mean"] == pytest.approx(0.0, abs=1e-5)
    res = evaluate_learn2reg(root, fields, "val", exclude_outside_keypoints=True)
    assert res["cases"]["0001_0001"]["keypoints_excluded"] == {"mean": 0.0, "detailed": []}
