"""Issue 19: the affine stage (kind ``affine``): recovery of known maps on anisotropic oblique grids, the composition
affine o dense, the automatic rule, and the stage reached identically by every source of settings."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from monai_contreg.errors import UserInputError
from monai_contreg.methods.affine import (
    alignment_check,
    compose_affine_ddf,
    register_affine,
    resample_through,
    voxel_affine,
)
from monai_contreg.methods.config import RegistrationConfig
from monai_contreg.methods.presets import get_preset
from monai_contreg.methods.stages import AffineStage, AutoAffineConfig
from monai_contreg.spatial.warp import warp_image

from .affine_phantom import corner_error_mm, oblique_grid, on_grid, similarity

SHAPE = (30, 28, 32)
FAST = dict(levels=(2, 1), steps=40)
#: a short constant-rate dense schedule (the paper's peak rate 15 runs off such small volumes)
LR1 = {"peak_lr": 1.0, "final_lr": 1.0, "linear_start_lr": 1.0, "total_steps": 10, "constant_steps": 10, "cosine_end": 10}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_rigid_recovered_on_anisotropic_oblique_grid():
    """A 12-degree rotation and a 6 mm shift on an oblique grid of 2 x 2.5 x 1.8 mm voxels: recovered to about a
    voxel (< 2.5 mm) at the corners of a 40 mm cube about the phantom's centre (from 9 mm at the identity)."""
    v = oblique_grid(SHAPE)
    truth = similarity((6.0, -4.0, 10.0), 1.0, (6.0, -4.0, 3.0))
    fixed, moving = on_grid(SHAPE, v), on_grid(SHAPE, v, np.linalg.inv(truth))
    out = register_affine(fixed, moving, AffineStage(model="rigid", **FAST), v)
    assert out.accepted
    assert corner_error_mm(out.world, truth) < 2.5  # about one voxel (2-2.5 mm) on this 30^3 phantom
    assert out.similarity["final"] < 0.5 * out.similarity["identity"]


def test_affine_recovered_with_scale_and_two_grids():
    """Scale 1.06 plus a rotation, the moving image on its own (coarser, differently oriented) grid: the world map
    is recovered through both grids' matrices to < 5 mm at the corners of a 40 mm cube (from about 10 mm)."""
    vf = oblique_grid(SHAPE)
    mshape = (26, 24, 28)
    vm = oblique_grid(mshape, spacing=(2.4, 2.2, 2.6), angles_deg=(-5.0, 8.0, 3.0), offset=(-1.0, 2.0, 0.0))
    truth = similarity((4.0, 6.0, -8.0), 1.06, (-4.0, 3.0, 5.0))
    fixed, moving = on_grid(SHAPE, vf), on_grid(mshape, vm, np.linalg.inv(truth))
    out = register_affine(fixed, moving, AffineStage(model="affine", **FAST), vf, vm)
    assert out.accepted
    assert corner_error_mm(out.world, truth) < 5.0  # measured 4.3 mm: about two voxels; the dense stages finish


@pytest.mark.xfail(strict=True, reason="issue 19 open: singular values (1.088, 1.063, 1.001) measured for a scale of "
                   "1.06 across two grids; target within 0.04 on every axis")
def test_affine_scale_recovered_on_every_axis_across_two_grids():
    vf = oblique_grid(SHAPE)
    mshape = (26, 24, 28)
    vm = oblique_grid(mshape, spacing=(2.4, 2.2, 2.6), angles_deg=(-5.0, 8.0, 3.0), offset=(-1.0, 2.0, 0.0))
    truth = similarity((4.0, 6.0, -8.0), 1.06, (-4.0, 3.0, 5.0))
    fixed, moving = on_grid(SHAPE, vf), on_grid(mshape, vm, np.linalg.inv(truth))
    out = register_affine(fixed, moving, AffineStage(model="affine", **FAST), vf, vm)
    s = np.linalg.svd(out.world[:3, :3], compute_uv=False)
    assert np.all(np.abs(s - 1.06) < 0.04)


def test_identity_pair_stays_identity():
    """An aligned pair: the stage keeps the identity (no better similarity to find)."""
    v = oblique_grid(SHAPE)
    img = on_grid(SHAPE, v)
    out = register_affine(img, img.clone(), AffineStage(**FAST), v)
    assert corner_error_mm(out.world, np.eye(4)) < 0.2


def test_composition_equals_sequential_mapping_and_warping():
    """phi = M (x + u) - x maps points as u then M; warping by phi equals resampling through A then warping by u."""
    v = oblique_grid(SHAPE)
    a = similarity((3.0, -2.0, 4.0), 1.02, (2.0, 1.0, -1.5))
    m = voxel_affine(a, v)
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 4, 4, generator=g, dtype=torch.float64), size=SHAPE,
                                        mode="trilinear", align_corners=False)
    phi = compose_affine_ddf(u, m)
    x = np.array([3, 7, 11], dtype=np.float64)
    ux = u[0, :, 3, 7, 11].numpy()
    assert np.allclose(phi[0, :, 3, 7, 11].numpy(), m[:3, :3] @ (x + ux) + m[:3, 3] - x, atol=1e-10)
    moving = on_grid(SHAPE, v, np.linalg.inv(a)).double()
    direct = warp_image(moving, phi)
    sequential = warp_image(resample_through(moving, a, v), u)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))  # away from border padding
    diff = (direct - sequential)[inner].abs()  # two trilinear interpolations against one
    assert diff.max() < 0.05 * float(moving.abs().max()) and diff.mean() < 0.002 * float(moving.abs().max())


ELONGATED = dict(body=(32.0, 18.0, 24.0))  # second moments 1.8x apart: every principal axis defined


def _alignment(a, shape=SHAPE):
    v = oblique_grid(shape)
    return alignment_check(on_grid(shape, v, **ELONGATED)[0, 0], v, on_grid(shape, v, np.linalg.inv(a), **ELONGATED)[0, 0], v)


def test_auto_rule_triggers_on_shift_rotation_scale_and_not_on_aligned():
    assert not _alignment(np.eye(4)).needed
    assert not _alignment(similarity((1.0, -1.0, 1.0), 1.01, (2.0, -1.0, 1.0))).needed
    shifted = _alignment(similarity((0, 0, 0), 1.0, (18.0, 0.0, 0.0)))
    assert shifted.needed and "centres of mass" in shifted.describe() and shifted.content_shift_mm > 15
    turned = _alignment(similarity((0, 0, 12.0)))
    assert turned.needed and "principal axes" in turned.describe()
    scaled = _alignment(similarity((0, 0, 0), 1.12))
    assert scaled.needed and "scale" in scaled.describe()
    v = oblique_grid(SHAPE)
    far = v.copy()
    far[:3, 3] += [40.0, 0.0, 0.0]
    img = on_grid(SHAPE, v)[0, 0]
    check = alignment_check(img, v, img, far)
    assert check.needed and "grid centres" in check.describe()


def test_stage_reaches_the_config_identically_from_every_source(tmp_path):
    """from_dict, --set style overrides, a YAML --config file and attribute access give one and the same config."""
    d = {"stages": [{"kind": "affine", "model": "rigid", "levels": [4, 2], "steps": 30, "lr": 0.05},
                    {"kind": "dense"}]}
    a = RegistrationConfig.from_dict(d)
    b = get_preset("unaligned").with_overrides(
        ["stages.0.model=rigid", "stages.0.levels=[4, 2]", "stages.0.steps=30", "stages.0.lr=0.05"])
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  - {kind: affine, model: rigid, levels: [4, 2], steps: 30, lr: 0.05}\n  - {kind: dense}\n")
    c = RegistrationConfig.from_file(path)
    e = get_preset("unaligned")
    e.stages[0].model, e.stages[0].steps, e.stages[0].lr, e.stages[0].levels = "rigid", 30, 0.05, (4, 2)
    assert a == b == c == e
    assert a.stages[0].levels == (4, 2) and isinstance(a.stages[0].levels[0], int)
    assert RegistrationConfig.from_dict(a.to_dict()) == a
    assert a.get("stages.0.kind") == "affine" and a.affine_stage is a.stages[0]


def test_stage_errors_name_the_key():
    with pytest.raises(UserInputError, match="stages.0.model"):
        get_preset("unaligned").set("stages.0.model", "similarity")
    with pytest.raises(UserInputError, match="levels must run coarse to fine"):
        RegistrationConfig.from_dict({"stages": [{"kind": "affine", "levels": [1, 4]}]})
    with pytest.raises(UserInputError, match="only be the first"):
        RegistrationConfig.from_dict({"stages": [{"kind": "dense"}, {"kind": "affine"}]})
    with pytest.raises(UserInputError, match="auto_affine.max_shift_mm"):
        RegistrationConfig().set("auto_affine.max_shift_mm", -1)


def test_method_init_aliases_keep_the_affine_stage_first():
    cfg = get_preset("unaligned")
    cfg.set("init", "convex")
    assert [s.kind for s in cfg.stages] == ["affine", "convex", "dense"] and cfg.init == "convex"
    cfg.set("init", "zero")
    assert [s.kind for s in cfg.stages] == ["affine", "dense"]
    only = RegistrationConfig.from_dict({"stages": [{"kind": "affine"}]})
    assert only.method == "affine" and not only.dense_stages


def test_register_with_affine_stage_composes_total_field(caplog):
    """register() with the unaligned preset (short schedules): the field is the total x -> A(x + u(x)); the result
    carries A (world) and u; map_points agrees with A applied after u."""
    from monai_contreg.api import register

    v = oblique_grid(SHAPE)
    truth = similarity((0.0, 0.0, 10.0), 1.0, (5.0, -3.0, 2.0))
    fixed, moving = on_grid(SHAPE, v)[0, 0], on_grid(SHAPE, v, np.linalg.inv(truth))[0, 0]
    cfg = RegistrationConfig.from_dict({
        "stages": [{"kind": "affine", "levels": [2, 1], "steps": 40}, {"kind": "dense", "schedule": LR1}],
        "preprocess": {"intensity": "minmax", "use_masks": False}})
    res = register(fixed, moving, affine=v, config=cfg)
    assert res.linear is not None and res.dense_ddf is not None
    assert corner_error_mm(res.linear, truth, half=15.0) < 2.5
    nodes = np.array([[9.0, 10.0, 12.0], [20.0, 15.0, 18.0]])
    u = np.stack([res.dense_ddf.as_tensor()[0, :, int(x), int(y), int(z)].double().numpy() for x, y, z in nodes])
    expected = (res.linear @ v @ np.c_[nodes + u, np.ones(2)].T).T[:, :3]  # A(V (x + u(x)))
    got = res.map_points((v @ np.c_[nodes, np.ones(2)].T).T[:, :3]).numpy()
    assert np.allclose(got, expected, atol=1e-3)


def _shifted_20mm_pair():
    """The phantom and its copy shifted 20 mm in the world, on one oblique grid, and a short default-like config."""
    v = oblique_grid(SHAPE)
    truth = similarity((0, 0, 0), 1.0, (20.0, 0.0, 0.0))
    fixed, moving = on_grid(SHAPE, v)[0, 0], on_grid(SHAPE, v, np.linalg.inv(truth))[0, 0]
    # the end-of-run guard's plausible bound (0.25 of the extent) is raised: on this 60 mm phantom the 20 mm shift
    # alone is 0.33 of it, and the dense stage's final check stopped the run (6.3 of 15 voxels; issue 19 open)
    cfg = RegistrationConfig.from_dict({
        "stages": [{"kind": "dense", "schedule": LR1}], "preprocess": {"intensity": "minmax", "use_masks": False},
        "engine": {"divergence_final_max_displacement": 0.6}})
    return v, fixed, moving, cfg


def test_auto_rule_adds_the_stage_and_logs(caplog):
    """The default config on an unaligned pair (a 20 mm shift): an affine stage runs first, saying so; disabled,
    it does not."""
    from monai_contreg.api import register

    v, fixed, moving, cfg = _shifted_20mm_pair()
    with caplog.at_level(logging.INFO, logger="monai_contreg"):
        res = register(fixed, moving, affine=v, config=cfg)
    assert any("an affine stage runs first" in r.getMessage() for r in caplog.records)
    assert res.linear is not None and res.config.stages[0].kind == "affine"
    assert res.linear[0, 3] > 5.0  # the shift's direction and a good part of it (its accuracy: the test below)
    off = RegistrationConfig.from_dict({**cfg.to_dict(), "auto_affine": {"enabled": False}})
    assert register(fixed, moving, affine=v, config=off).linear is None


@pytest.mark.xfail(strict=True, reason="issue 19 open: the affine stage recovers 15.4 of a 20 mm shift on this 60 mm "
                   "phantom (a third of it shifted out of the image); target within 2 mm")
def test_auto_rule_recovers_a_20mm_shift_within_2mm():
    from monai_contreg.api import register

    v, fixed, moving, cfg = _shifted_20mm_pair()
    res = register(fixed, moving, affine=v, config=cfg)
    assert abs(res.linear[0, 3] - 20.0) < 2.0


def test_auto_bounds_validate():
    assert AutoAffineConfig().max_shift_mm == 15.0
    with pytest.raises(UserInputError, match="axis_separation"):
        AutoAffineConfig(axis_separation=0.5).validate()


@pytest.mark.parametrize("crop", [(slice(None), slice(None), slice(0, 14)), (slice(0, 14), slice(None), slice(None)),
                                  (slice(4, 26), slice(3, 25), slice(10, 22))])
def test_a_partial_field_of_view_is_not_read_as_misalignment(crop):
    """Before: a fixed scan covering part of the moving one (a shorter series: the tilted DICOM series of
    `benchmarks/quality_tilt.py` against its volume) looked unaligned: contents' centres of mass 23.8 mm apart,
    principal axes 80 degrees, scale 1.25 there; grid centres 16 mm apart for a series at one end. Both are now
    measured on the field of view the two share, and nested grids are not a shift."""
    v = oblique_grid(SHAPE)
    moving = on_grid(SHAPE, v, **ELONGATED)[0, 0]
    start = np.array([c.start or 0 for c in crop] + [1.0])
    vf = v.copy()
    vf[:3, 3] = (v @ start)[:3]
    check = alignment_check(moving[crop].clone(), vf, moving, v)
    assert not check.needed, check.describe()
    # (every second voxel: a crop at an odd offset samples other points; 0.5 mm, 2.4 deg, 0.976 measured)
    assert check.content_shift_mm < 2.0 and check.rotation_deg < 3.0 and abs(check.scale - 1) < 0.03
    # the same partial scan, its content shifted by 18 mm in the world, is still flagged
    shifted = on_grid(SHAPE, v, np.linalg.inv(similarity((0, 0, 0), 1.0, (18.0, 0.0, 0.0))), **ELONGATED)[0, 0]
    assert alignment_check(moving[crop].clone(), vf, shifted, v).needed
