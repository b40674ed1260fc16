"""Every layer that handles geometry takes, returns or carries a Grid (monai_contreg.spatial.grid), and decides
"same grid" with its one tolerance (GRID_ATOL_MM, every affine entry, no relative part).

Each test names what the layer did before: a loose matrix handled on its own terms (np.allclose with numpy's
default relative tolerance, a header read again, a moving image on another grid warped as if on the DDF's)."""

from __future__ import annotations

import json
import pickle
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_contreg.errors import UserInputError
from monai_contreg.io.fields import field_grid, load_field, save_field
from monai_contreg.io.images import save_image
from monai_contreg.spatial.grid import GRID_ATOL_MM, Grid
from tests.learn2reg_helpers import FAST, make_tiny_learn2reg

A2 = np.diag([2.0, 2.0, 2.0, 1.0])


# ------------------------------------------------------------------------------------------------- the type
def test_a_grid_sent_to_another_process_stays_checked_and_frozen():
    """Before: pickle restored the affine as a writeable array (a distributed run's outcomes cross processes)."""
    g = Grid((4, 5, 6), A2)
    back = pickle.loads(pickle.dumps(g))
    assert back == g and back.shape == (4, 5, 6) and not back.affine.flags.writeable
    with pytest.raises(ValueError):
        back.affine[0, 0] = 3.0


def test_for_array_converts_a_matrix_or_checks_a_grid_once():
    assert Grid.for_array("f", (4, 5, 6), A2) == Grid((4, 5, 6), A2)
    assert Grid.for_array("f", (4, 5, 6)) == Grid((4, 5, 6), np.eye(4))
    g = Grid((4, 5, 6), A2)
    assert Grid.for_array("f", (4, 5, 6), g) is g
    with pytest.raises(UserInputError, match=r"^f: the grid .* is for another shape than the array's, \(4, 5, 7\)"):
        Grid.for_array("f", (4, 5, 7), g)
    with pytest.raises(UserInputError, match=r"^f: affine must be a finite, invertible 4x4"):
        Grid.for_array("f", (4, 5, 6), np.diag([2.0, 0.0, 2.0, 1.0]))


# ------------------------------------------------------------------------------------------------------ io
def test_writers_take_a_grid_and_refuse_a_wrong_one(tmp_path):
    """Before: save_image/save_field took a matrix only (a Grid was a raw TypeError) and a singular matrix reached
    nibabel (HeaderDataError, a traceback): now a UserInputError before anything is written."""
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    g = Grid.from_spacing((4, 5, 6), (1.5, 2.0, 2.5), origin=(-10.0, 3.0, 7.0))
    p = save_image(tmp_path / "a.nii.gz", arr, g)
    assert np.allclose(nib.load(str(p)).affine, g.affine)
    with pytest.raises(UserInputError, match="save_image: the grid .* another shape"):
        save_image(tmp_path / "b.nii.gz", arr, Grid((4, 5, 7), g.affine))
    with pytest.raises(UserInputError, match="save_image: affine must be a finite, invertible 4x4"):
        save_image(tmp_path / "c.nii.gz", arr, np.diag([1.0, 0.0, 1.0, 1.0]))
    assert not (tmp_path / "b.nii.gz").exists() and not (tmp_path / "c.nii.gz").exists()
    ddf = torch.zeros(1, 3, 4, 5, 6)
    f = save_field(tmp_path / "d.nii.gz", ddf, g)
    assert field_grid(f) == g and np.allclose(load_field(f)[1], g.affine)
    assert field_grid(save_field(tmp_path / "d.npz", ddf, g)) is None  # .npz: no geometry
    with pytest.raises(UserInputError, match="save_field: the grid .* another shape"):
        save_field(tmp_path / "e.nii.gz", ddf, Grid((4, 5, 7), g.affine))


# ------------------------------------------------------------------------- same-grid decisions: one tolerance
def _offset(affine, mm):
    out = np.array(affine, dtype=np.float64)
    out[0, 3] += mm
    return out


def test_contreg_warp_reference_check_uses_the_one_tolerance(tmp_path):
    """Before: np.allclose(atol=1e-3) with numpy's relative 1e-5 accepted a reference 2e-3 mm off at an origin
    300 mm out, a grid register() itself calls another."""
    from monai_contreg.apply import load_displacement

    aff = A2.copy()
    aff[:3, 3] = (-300.0, -200.0, 100.0)
    field = save_field(tmp_path / "f.nii.gz", torch.zeros(1, 3, 6, 6, 6), aff)
    ok = save_image(tmp_path / "ok.nii.gz", np.zeros((6, 6, 6), np.float32), _offset(aff, 0.5 * GRID_ATOL_MM))
    off = save_image(tmp_path / "off.nii.gz", np.zeros((6, 6, 6), np.float32), _offset(aff, 2 * GRID_ATOL_MM))
    assert load_displacement(field, reference=ok)[0].shape == (1, 3, 6, 6, 6)
    assert not Grid((6, 6, 6), aff).same_as(Grid((6, 6, 6), _offset(aff, 2 * GRID_ATOL_MM)))
    with pytest.raises(UserInputError, match=r"differs from the field's .*another grid"):
        load_displacement(field, reference=off)


def test_cli_memory_preflight_decides_same_grid_as_register(tmp_path, monkeypatch):
    """Before: the pre-flight called two grids 2e-3 mm apart at 150 mm "one grid" (numpy's relative tolerance) and
    checked the fixed grid's estimate, while register() resampled them onto the working grid."""
    import monai_contreg.methods.memory as memory
    from monai_contreg.commands import _check_memory_before
    from monai_contreg.methods.presets import get_preset
    from monai_contreg.preflight import read_header
    from monai_contreg.request import RunRequest

    aff = A2.copy()
    aff[:3, 3] = (-150.0, -150.0, -150.0)
    f = save_image(tmp_path / "f.nii.gz", np.zeros((40, 40, 40), np.float32), aff)
    m = save_image(tmp_path / "m.nii.gz", np.zeros((40, 40, 40), np.float32), _offset(aff, 2 * GRID_ATOL_MM))
    same = save_image(tmp_path / "s.nii.gz", np.zeros((40, 40, 40), np.float32), aff)
    checked = []
    monkeypatch.setattr(memory, "check_memory", lambda where, shape, *a, **k: checked.append(tuple(shape)))
    cfg = get_preset("io")
    working = Grid((40, 40, 40), aff).working(cfg.field.design_spacing).shape
    assert working != (40, 40, 40)
    for moving, expected in ((m, working), (same, (40, 40, 40))):
        headers = {"fixed": read_header("t", "fixed", f), "moving": read_header("t", "moving", moving)}
        _check_memory_before("register", headers, cfg, RunRequest())
        assert checked[-1] == expected


# ------------------------------------------------------------------------------------------------ workflow
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_learn2reg(tmp_path_factory.mktemp("grid_wf") / "ds", n_pairs=1)


def _cfg():
    from monai_contreg.methods.presets import get_preset

    return get_preset("io").with_overrides([*FAST[:3], "optim.schedule.peak_lr=0.2"])


def test_run_outcomes_carry_the_field_grid_and_a_field_of_another_grid_is_not_skipped(dataset, tmp_path):
    """Before: an existing field was skipped whatever grid it lay on (a field of another resolution or image left
    in OUT passed for this pair's); outcomes carried no geometry."""
    from monai_contreg.data.learn2reg import image_grid
    from monai_contreg.workflow import outcome_dict, run_split

    cfg, out = _cfg(), tmp_path / "out"
    fixed = image_grid(dataset / "imagesTr" / "TINY_0001_0000.nii.gz")
    done = run_split(dataset, "val", out, cfg).outcomes[0]
    assert done.status == "done" and done.grid == fixed
    assert json.loads(json.dumps(outcome_dict(done)))["grid"]["shape"] == list(fixed.shape)
    again = run_split(dataset, "val", out, cfg).outcomes[0]
    assert again.status == "skipped" and again.grid == fixed
    # a field of another grid (here: 1 mm voxels over the same array) in the folder: registered again
    save_field(out / "disp_0001_0001.nii.gz", torch.zeros(1, 3, *fixed.shape), np.eye(4))
    redo = run_split(dataset, "val", out, cfg).outcomes[0]
    assert redo.status == "done" and field_grid(out / "disp_0001_0001.nii.gz") == fixed
    # a .npz field carries no grid: kept as before
    (out / "disp_0001_0001.nii.gz").unlink()
    save_field(out / "disp_0001_0001.npz", torch.zeros(1, 3, *fixed.shape))
    kept = run_split(dataset, "val", out, cfg).outcomes[0]
    assert kept.status == "skipped" and kept.grid is None


def test_submission_made_from_npz_fields_carries_the_fixed_grid(dataset, tmp_path):
    """Before: a .npz field converted to NIfTI for the submission got the identity affine (it has no geometry)."""
    from monai_contreg.data.learn2reg import image_grid
    from monai_contreg.workflow import make_submission

    fixed = image_grid(dataset / "imagesTr" / "TINY_0001_0000.nii.gz")
    (tmp_path / "fields").mkdir()
    save_field(tmp_path / "fields" / "disp_0001_0001.npz", torch.zeros(1, 3, *fixed.shape))
    zpath = make_submission(tmp_path / "fields", dataset, tmp_path / "sub.zip", fmt=".nii.gz")
    with zipfile.ZipFile(zpath) as zf:
        zf.extract("disp_0001_0001.nii.gz", tmp_path / "x")
    assert field_grid(tmp_path / "x" / "disp_0001_0001.nii.gz") == fixed and fixed != Grid(fixed.shape, np.eye(4))


# ------------------------------------------------------------------------------------------- MONAI transforms
def _blob(shape, centre, sigma, spacing):
    idx = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    return np.exp(-((idx - np.asarray(centre)) ** 2).sum(-1) / (2 * sigma**2)).astype(np.float32)


def test_apply_ddf_warps_a_moving_image_on_another_grid_between_the_grids():
    """Before: ApplyDDFd sampled every moving image in the DDF's voxels: a moving MetaTensor of another shape (a
    two-grid registration's moving image) was refused (warp_image: shape must equal the ddf's) and one of the
    DDF's shape on another affine came out misplaced. Now both are warped between the grids, as
    RegistrationResult.warp does."""
    from monai_contreg.pipeline import ApplyDDFd
    from monai_contreg.result import RegistrationResult

    f_grid = Grid.from_spacing((16, 16, 16), 2.0)
    m_grid = Grid.from_spacing((32, 30, 28), 1.0)
    moving = _blob(m_grid.shape, (15.0, 14.0, 13.0), 4.0, (1.0, 1.0, 1.0))
    ddf = torch.zeros(3, *f_grid.shape)
    ddf[0] = 0.5  # half a fixed voxel (1 mm) along axis 0
    data = {"ddf": MetaTensor(ddf, affine=f_grid.affine_tensor()),
            "img": MetaTensor(torch.from_numpy(moving)[None], affine=m_grid.affine_tensor()),
            "lab": MetaTensor(torch.from_numpy((moving > 0.5).astype(np.int64))[None], affine=m_grid.affine_tensor())}
    out = ApplyDDFd(["img", "lab"], mode=["bilinear", "nearest"])(data)
    res = RegistrationResult(ddf=MetaTensor(ddf[None], affine=f_grid.affine_tensor()), moving_grid=m_grid)
    expect = res.warp(torch.from_numpy(moving)[None, None])[0]
    assert out["img"].shape == (1, 16, 16, 16) and Grid.of(out["img"]) == f_grid
    assert torch.allclose(out["img"].as_tensor(), expect, atol=1e-5)
    # the analytic answer: fixed voxel x (at 2x mm) samples the moving image at 2x + 1 mm
    x = np.arange(16) * 2.0 + 1.0
    want = np.exp(-((x[:, None, None] - 15.0) ** 2 + (np.arange(16)[None, :, None] * 2.0 - 14.0) ** 2
                    + (np.arange(16)[None, None, :] * 2.0 - 13.0) ** 2) / (2 * 16.0))
    inside = (slice(0, 13), slice(0, 15), slice(0, 14))  # samples within the moving image
    assert np.abs(out["img"][0].numpy()[inside] - want[inside]).max() < 0.02
    assert out["lab"].dtype == torch.int64 and torch.equal(out["lab"].as_tensor(), res.warp(data["lab"][None], labels=True)[0])
    # the DDF's shape, another affine (shifted 3 mm along axis 0): sampled 3 mm further, not voxel to voxel
    shifted = Grid.from_spacing((16, 16, 16), 2.0, origin=(-3.0, 0.0, 0.0))
    img = _blob(shifted.shape, (18.0, 14.0, 13.0), 4.0, (2.0, 2.0, 2.0))  # centre 15 mm in world
    got = ApplyDDFd("img")({"ddf": data["ddf"], "img": MetaTensor(torch.from_numpy(img)[None], affine=shifted.affine_tensor())})
    inside = (slice(0, 14), slice(0, 15), slice(0, 14))
    assert np.abs(got["img"][0].numpy()[inside] - want[inside]).max() < 0.02
    # a plain tensor off the DDF's grid cannot be placed
    with pytest.raises(UserInputError, match="ApplyDDFd: 'img' is a plain tensor of spatial shape"):
        ApplyDDFd("img")({"ddf": data["ddf"], "img": torch.from_numpy(moving)[None]})


# ---------------------------------------------------------------------------------------------------- tune
def test_tuning_measures_with_the_result_grids(dataset, monkeypatch):
    """Before: every trial read both images' headers again for their spacings; the registration's result
    carries its grids."""
    import monai_contreg.data.learn2reg as l2r
    from monai_contreg.data.learn2reg import Learn2RegDataset
    from monai_contreg.tuning.measure import _PairCache, _register_and_measure

    cache = _PairCache(str(dataset), "val", ["0001_0001"], with_labels=False)
    pair = cache.pairs[0]
    grid = cache.grid(pair)
    assert grid == l2r.image_grid(pair.fixed) and cache.grid(pair) is grid  # read once

    data = cache.data(pair)  # the evaluation data, loaded once per process

    def no_header(*a, **k):
        raise AssertionError("a header read again")

    monkeypatch.setattr(l2r, "image_affine", no_header)
    monkeypatch.setattr(l2r, "image_grid", no_header)
    m = _register_and_measure(pair, data, _cfg(), None)
    assert m.tre is not None and np.isfinite(m.tre) and m.steps == 3
    assert Learn2RegDataset(dataset).pairs("val")[0].key == m.key
