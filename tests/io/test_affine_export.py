"""Issue 19: an affine stage's export. ``.h5`` is a CompositeTransform (the affine and the dense displacement field)
that ITK (and ANTs, with CONTREG_ANTS_PYTHON) applies as ``contreg warp`` applies the total Learn2Reg field, within
1e-3 mm; the affine alone (``.txt``, ``.mat``) as ``contreg warp`` of an affine-only registration."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

itk = pytest.importorskip("itk")

from monai.data import MetaTensor  # noqa: E402

from monai_contreg.api import RegistrationResult, itk_readings, load_inputs  # noqa: E402
from monai_contreg.errors import UserInputError  # noqa: E402
from monai_contreg.methods.affine import compose_affine_ddf, voxel_affine  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("export_parity", REPO / "benchmarks" / "export_parity.py")
ep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ep)

POINT_MM = 1e-3


def _linear() -> np.ndarray:
    lin = np.eye(4)
    lin[:3, :3] = ep._rot(2, 0.12) @ ep._rot(0, -0.08) * 1.04  # about 7 + 5 degrees, scale 1.04 (overlap kept)
    lin[:3, 3] = [2.0, -3.0, 1.5]
    return lin


def _result(case: dict, lin: np.ndarray, dense: bool = True) -> RegistrationResult:
    """A result as the registration builds it with an affine stage: total field = A_f^-1 L A_f (x + u) - x."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_inputs(case["fixed"], case["moving"], where="test")
    a_f = np.asarray(data["fixed"].affine, dtype=np.float64)
    u = case["ddf"] if dense else torch.zeros_like(case["ddf"])
    total = compose_affine_ddf(u, voxel_affine(lin, a_f))
    return RegistrationResult(
        ddf=MetaTensor(total.float(), affine=torch.as_tensor(a_f)), moving_affine=np.asarray(data["moving"].affine),
        moving_shape=ep.M_SHAPE, linear=lin, dense_ddf=MetaTensor(u.float(), affine=torch.as_tensor(a_f)),
        **itk_readings(data))


@pytest.mark.parametrize("kind", ["consistent", "sform_qform"])
def test_composite_h5_applied_by_itk_as_contreg_warp(kind, tmp_path):
    case = ep.make_case(kind, tmp_path)
    res = _result(case, _linear())
    disp = res.save(tmp_path / "disp.nii.gz")
    path = res.save_itk(tmp_path / "tx.h5")
    (tx,) = itk.transformread(str(path))
    assert tx.GetNameOfClass() == "CompositeTransform"
    assert [tx.GetNthTransform(i).GetNameOfClass() for i in range(2)] == ["AffineTransform", "DisplacementFieldTransform"]
    ours_img, ours_vox = ep.contreg_warp(case, {"disp": str(disp)})
    theirs_img, theirs_vox, m_aff = ep.itk_apply(case, str(path))
    c = ep.compare(ours_img, ours_vox, theirs_img, theirs_vox, m_aff)
    assert c["point_mm_max"] < POINT_MM, c
    assert c["image_max"] < 1e-2, c


@pytest.mark.parametrize("ext", [".txt", ".mat"])
def test_affine_alone_applied_by_itk_as_contreg_warp(ext, tmp_path):
    case = ep.make_case("sform_qform", tmp_path)
    res = _result(case, _linear(), dense=False)
    disp = res.save(tmp_path / "disp.nii.gz")
    path = res.save_itk_affine(tmp_path / f"affine{ext}")
    (tx,) = itk.transformread(str(path))
    assert tx.GetNameOfClass() == "AffineTransform"
    _, ours_vox = ep.contreg_warp(case, {"disp": str(disp)})
    fi, mi = itk.imread(case["fixed"], itk.F), itk.imread(case["moving"], itk.F)
    theirs_vox = ep.itk_map_voxels(tx, ep.itk_affine(fi), ep.itk_affine(mi), case["vox"])
    err = np.linalg.norm((theirs_vox - ours_vox) @ ep.itk_affine(mi)[:3, :3].T, axis=-1)
    assert err.max() < POINT_MM


def test_affine_export_needs_an_affine_stage(tmp_path):
    case = ep.make_case("consistent", tmp_path)
    res = _result(case, _linear())
    res.linear = None
    with pytest.raises(UserInputError, match="no affine stage"):
        res.save_itk_affine(tmp_path / "a.txt")
    with pytest.raises(UserInputError, match="must end with"):
        _result(case, _linear()).save_itk_affine(tmp_path / "a.nii.gz")


@pytest.mark.skipif(not os.environ.get("CONTREG_ANTS_PYTHON"), reason="set CONTREG_ANTS_PYTHON to a Python with antspyx")
def test_ants_applies_composite_and_affine_as_contreg_warp(tmp_path):
    """ANTs (antspyx in its own venv) applies the composite .h5 and the affine .mat as contreg warp does."""
    out = {}
    for name, dense, ext in (("composite", True, ".h5"), ("affine", False, ".mat")):
        folder = tmp_path / name
        case = ep.make_case("consistent", folder)
        res = _result(case, _linear(), dense=dense)
        disp = res.save(folder / "disp.nii.gz")
        path = res.save_itk(folder / "tx.h5") if dense else res.save_itk_affine(folder / f"tx{ext}")
        ours_img, ours_vox = ep.contreg_warp(case, {"disp": str(disp)})
        np.save(folder / "vox.npy", case["vox"])
        r = subprocess.run([os.environ["CONTREG_ANTS_PYTHON"], str(REPO / "benchmarks" / "export_parity.py"),
                            "--ants-worker", str(folder), case["fixed"], case["moving"], str(path)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        info = json.loads(r.stdout.strip().splitlines()[-1])
        key = "h5" if ext == ".h5" else "nii"  # the worker's key: .h5 or any other file
        theirs_vox = np.load(folder / f"ants_vox_{key}.npy")
        err = np.linalg.norm((theirs_vox - ours_vox) @ np.asarray(info["moving_affine"])[:3, :3].T, axis=-1)
        out[name] = float(err.max())
        assert err.max() < POINT_MM, (name, err.max())
        theirs_img = np.load(folder / f"ants_warped_{key}.npy")
        inside = (theirs_img != 0) & np.isfinite(ours_img)  # ANTs pads with 0 outside the moving image
        inside[:2], inside[-2:], inside[:, :2], inside[:, -2:], inside[:, :, :2], inside[:, :, -2:] = (False,) * 6
        assert inside.sum() > 100 and np.abs(theirs_img - ours_img)[inside].max() < 1e-2 * np.abs(ours_img[inside]).max(), name
