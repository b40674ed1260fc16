"""A registration is a list of stages; every source of settings reaches a stage field through one function.

The sources: ``--set`` and ``--config`` (the CLI's ``_config``), :meth:`RegistrationConfig.from_dict`, the MONAI
bundle's ``registration_config`` expression with ``method_overrides``, and a ``tune`` search space
(:func:`~monai_contreg.tuning.parse_search_space`, whose trials apply ``base.with_overrides({key: value})``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
import yaml

from monai_contreg.errors import UserInputError
from monai_contreg.features.mind import mind_ssc
from monai_contreg.methods import multilevel, run
from monai_contreg.methods.config import (
    STAGE_KINDS,
    ConvexStage,
    DenseStage,
    RegistrationConfig,
    scale_schedules,
    schedule_steps,
)
from monai_contreg.methods.convex import coupled_convex
from monai_contreg.methods.io import instance_optimisation
from monai_contreg.methods.multilevel import carry_field
from monai_contreg.methods.presets import get_preset, preset_names
from monai_contreg.methods.run import run_method
from monai_contreg.optim.schedule import PiecewiseSchedule
from monai_contreg.spatial.filters import downsample, pooled_shape

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_COMMON = ROOT / "bundles" / "contreg_nlst" / "configs" / "common.yaml"


def _nested(key: str, value):
    """``"a.b.c", v`` -> ``{"a": {"b": {"c": v}}}`` (what a YAML file or a bundle override dict holds)."""
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


# ----------------------------------------------------------------------------------------------- the sources
def _via_set(preset, key, value, tmp_path):
    from monai_contreg.cli import _config

    args = argparse.Namespace(preset=preset, config=None, set=[f"{key}={yaml.safe_dump(value).strip().removesuffix('...').strip()}"],
                              threads=None, quiet=True, progress=False, no_auto_mask=False)
    return _config(args)


def _via_config_file(preset, key, value, tmp_path):
    from monai_contreg.cli import _config

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_nested(key, value)))
    args = argparse.Namespace(preset=preset, config=str(path), set=[], threads=None, quiet=True, progress=False,
                              no_auto_mask=False)
    return _config(args)


def _via_from_dict(preset, key, value, tmp_path):
    return RegistrationConfig.from_dict(_nested(key, value), get_preset(preset))


def _via_bundle(preset, key, value, tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_COMMON))
    parser["preset"] = preset
    parser["method_overrides"] = _nested(key, value)
    try:
        return parser.get_parsed_content("registration_config")
    except RuntimeError as exc:  # MONAI wraps an expression's error: "Failed to evaluate ..."
        if isinstance(exc.__cause__, UserInputError):
            raise exc.__cause__ from None
        raise


def _via_tune_space(preset, key, value, tmp_path):
    from monai_contreg.tuning import parse_search_space

    base = get_preset(preset)
    try:
        parse_search_space({key: [value]}, base)
    except UserInputError as exc:  # the space's own prefix ("search space: ...") before the config's message
        cause = re.search(r"(RegistrationConfig: .*|[A-Za-z]+Stage: .*)", str(exc))
        raise UserInputError(cause.group(1) if cause else str(exc)) from None
    return base.with_overrides({key: value})  # what a trial runs


SOURCES = {"--set": _via_set, "--config": _via_config_file, "from_dict": _via_from_dict,
           "bundle --method_overrides": _via_bundle, "tune space": _via_tune_space}


VALID = [
    # preset, key as given, value, (stage index, stage field) it must reach
    ("io", "optim.reg_weight", 3.0, (0, "reg_weight")),
    ("io", "stages.0.reg_weight", 3.0, (0, "reg_weight")),
    ("io", "field.smoothing_kernel", 5, (0, "smoothing_kernel")),
    ("accurate", "multilevel.levels.1.reg_weight", 3.0, (1, "reg_weight")),
    ("accurate", "stages.1.reg_weight", 3.0, (1, "reg_weight")),
    ("accurate", "stages.0.schedule.peak_lr", 2.0, (0, "schedule.peak_lr")),
    ("convexadam", "optim.reg_weight", 3.0, (1, "reg_weight")),
    ("convexadam", "stages.1.reg_weight", 3.0, (1, "reg_weight")),
    ("convexadam", "convex.disp_hw", 3, (0, "disp_hw")),
    ("convexadam", "stages.0.disp_hw", 3, (0, "disp_hw")),
]

INVALID = [
    # preset, key, value, the one message every source gives
    ("io", "convex.disp_hw", 3,
     "RegistrationConfig: convex.disp_hw has no effect on this config: it has no convex stage (stages: ['dense']); add "
     "one with init=convex (a convex stage first, e.g. preset 'convexadam'), or give stages with kind: convex."),
    ("io", "stages.1.reg_weight", 3.0,
     "RegistrationConfig: stages.1.reg_weight: stage index 1 is out of range; valid indices of stages: [0]."),
    ("accurate", "optim.reg_weight", 3.0,
     "RegistrationConfig: optim.reg_weight is ambiguous on this config: it has 2 dense stages (stages [0, 1], coarse "
     "to fine, e.g. preset 'accurate'), each with its own reg_weight; set stages.I.reg_weight instead (I = 0, 1)."),
    ("accurate", "features.mind_dilation", 3,
     "RegistrationConfig: features.mind_dilation is ambiguous on this config: it has 2 dense stages (stages [0, 1], "
     "coarse to fine, e.g. preset 'accurate'), each with its own mind_dilation; set stages.I.mind_dilation instead "
     "(I = 0, 1)."),
    ("accurate", "stages.1.reg_wieght", 3.0,
     "RegistrationConfig: unknown option stages.1.reg_wieght; valid options of stages.1: ['grid_factor', "
     "'mind_dilation', 'mind_radius', 'reg_weight', 'schedule', 'second_dilation', 'similarity', "
     "'smoothing_kernel', 'smoothing_passes']. Did you mean 'reg_weight'?"),
    ("convexadam", "multilevel.levels.1.reg_weight", 3.0,
     "RegistrationConfig: multilevel.levels.1.reg_weight: level index 1 is out of range; valid indices of "
     "multilevel.levels: [0]."),
    ("convexadam", "stages.0.reg_weight", 3.0,
     "RegistrationConfig: unknown option stages.0.reg_weight; valid options of stages.0: ['chunk_size', "
     "'cost_smoothing_kernel', 'cost_smoothing_passes', 'coupling_weights', 'disp_hw', 'field_smoothing_kernel', "
     "'field_smoothing_passes', 'grid_spacing', 'ic', 'ic_iters', 'mind_dilation', 'mind_radius', 'padding_mode']. "
     "Did you mean 'coupling_weights'?"),
]


def _field_at(stage, path):
    node = stage
    for part in path.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("preset, key, value, target", VALID)
def test_every_source_reaches_the_same_stage_field(source, preset, key, value, target, tmp_path):
    cfg = SOURCES[source](preset, key, value, tmp_path)
    i, path = target
    assert _field_at(cfg.stages[i], path) == value
    # exactly that field changed: the same config as the canonical key set in Python on the preset
    expected = get_preset(preset)
    expected.set(f"stages.{i}.{path}", value)
    assert cfg.stages == expected.stages and cfg == expected
    assert _field_at(get_preset(preset).stages[i], path) != value  # (the value is not the preset's own)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("preset, key, value, message", INVALID)
def test_every_source_gives_the_same_error(source, preset, key, value, message, tmp_path):
    with pytest.raises(UserInputError) as err:
        SOURCES[source](preset, key, value, tmp_path)
    assert str(err.value) == message


def test_python_attributes_are_the_same_keys():
    io = get_preset("io")
    io.optim.reg_weight = 3.0
    assert io.stages[0].reg_weight == 3.0 and io.optim.reg_weight == 3.0
    acc = get_preset("accurate")
    with pytest.raises(UserInputError) as err:
        acc.optim.reg_weight = 3.0
    assert str(err.value) == [m for p, k, _, m in INVALID if (p, k) == ("accurate", "optim.reg_weight")][0]
    with pytest.raises(UserInputError, match=r"optim.reg_weight is ambiguous"):
        acc.optim.reg_weight  # noqa: B018 - reading is refused the same way
    assert acc.multilevel.levels == acc.stages and acc.multilevel.levels[1].reg_weight == 1.75
    with pytest.raises(UserInputError, match=r"convex.disp_hw has no effect on this config: it has no convex stage"):
        io.convex.disp_hw  # noqa: B018


def test_the_issue_defect_accurate_with_a_config_file_setting_optim_reg_weight(tmp_path, capsys):
    """Before: ``--preset accurate --config cfg.yaml`` with ``optim: {reg_weight: 3.0}`` exited 0 and both levels still
    ran with 1.75 (``--set`` refused the same key). After: exit 2 with the ``--set`` message, naming the key to use."""
    from monai_contreg.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("optim:\n  reg_weight: 3.0\n")
    rc = main(["register", "f.nii.gz", "m.nii.gz", "-o", str(tmp_path / "d.nii.gz"), "--preset", "accurate",
               "--config", str(cfg)])
    err_file = capsys.readouterr().err
    rc_set = main(["register", "f.nii.gz", "m.nii.gz", "-o", str(tmp_path / "d.nii.gz"), "--preset", "accurate",
                   "--set", "optim.reg_weight=3.0"])
    err_set = capsys.readouterr().err
    assert rc == rc_set == 2
    assert "optim.reg_weight is ambiguous on this config" in err_file and "set stages.I.reg_weight instead" in err_file
    assert err_file == err_set
    # the key it names works from the file, and reaches the level the optimiser runs
    cfg.write_text("stages:\n  1:\n    reg_weight: 3.0\n")
    from monai_contreg.cli import _config

    out = _config(argparse.Namespace(preset="accurate", config=str(cfg), set=[], threads=None, quiet=True,
                                     progress=False, no_auto_mask=False))
    assert [s.reg_weight for s in out.stages] == [1.75, 3.0]


# -------------------------------------------------------------------------------------------- the stage list
def test_stage_kinds_order_and_whole_lists():
    assert set(STAGE_KINDS) == {"dense", "convex", "affine"}
    cfg = RegistrationConfig.from_dict({"stages": [{"kind": "convex", "disp_hw": 2},
                                                   {"kind": "dense", "grid_factor": 2},
                                                   {"kind": "dense", "grid_factor": 1, "reg_weight": 2.0}]})
    assert [s.kind for s in cfg.stages] == ["convex", "dense", "dense"] and cfg.stages[0].disp_hw == 2
    assert (cfg.method, cfg.init) == ("io", "convex") and RegistrationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserInputError, match=r"stages.0.kind: unknown stage kind 'dens'; expected one of \['affine', "
                                             r"'convex', 'dense'\]. Did you mean 'dense'"):
        RegistrationConfig.from_dict({"stages": [{"kind": "dens"}]})
    with pytest.raises(UserInputError, match=r"stages.0.kind: unknown stage kind 'bspline'; expected one of \['affine', 'convex', 'dense'\]"):
        RegistrationConfig.from_dict({"stages": [{"kind": "bspline"}]})  # not a kind
    with pytest.raises(UserInputError, match=r"stages.0 needs a kind, one of \['affine', 'convex', 'dense'\]"):
        RegistrationConfig.from_dict({"stages": [{"grid_factor": 2}]})
    with pytest.raises(UserInputError, match=r"stages.1 is a convex stage, but a convex stage starts from no field"):
        RegistrationConfig.from_dict({"stages": [{"kind": "dense"}, {"kind": "convex"}]})
    with pytest.raises(UserInputError, match=r"stages is empty"):
        RegistrationConfig.from_dict({"stages": []})
    with pytest.raises(UserInputError, match=r"stages.0.kind: stage 0 is a 'dense' stage and a kind does not change"):
        get_preset("io").with_overrides(["stages.0.kind=convex"])
    # method / init, the keys of earlier versions, add or remove the convex stage
    assert [s.kind for s in get_preset("io").with_overrides(["init=convex"]).stages] == ["convex", "dense"]
    assert [s.kind for s in get_preset("convexadam").with_overrides(["init=zero"]).stages] == ["dense"]
    assert [s.kind for s in get_preset("convexadam").with_overrides(["method=convex"]).stages] == ["convex"]
    with pytest.raises(UserInputError, match=r"init=zero: this config is the convex stage alone"):
        get_preset("convex").with_overrides(["init=zero"])


def test_features_mind_reaches_every_stage_where_they_shared_one_mind():
    # on convexadam the convex and the dense stage computed one MIND (features.mind_*): the key still sets both
    cfg = get_preset("convexadam").with_overrides(["features.mind_dilation=3"])
    assert [s.mind_dilation for s in cfg.stages] == [3, 3] and cfg.features.mind_dilation == 3
    split = cfg.with_overrides(["stages.0.mind_dilation=2"])
    with pytest.raises(UserInputError, match=r"features.mind_dilation: the stages \[0, 1\] hold different values"):
        split.features.mind_dilation  # noqa: B018


def test_scale_schedules_keeps_the_stages_proportions():
    acc = get_preset("accurate")
    assert schedule_steps(acc) == [100, 40] and schedule_steps(get_preset("convexadam")) == [80]
    assert schedule_steps(scale_schedules(acc, 50)) == [50, 20] and schedule_steps(acc) == [100, 40]
    io = scale_schedules(get_preset("io"), 60).stages[0].schedule
    assert (io.total_steps, io.constant_steps, io.cosine_end) == (60, 16, 40)
    with pytest.raises(UserInputError, match=r"scale_schedule: the config has no dense stage"):
        scale_schedules(get_preset("convex"), 10)


# ------------------------------------------------------------------------ the presets' values are unchanged
_PAPER = (15.0, 70, 180, 200.0, 0.1, 1.5, 0.5, 270)  # the authors' schedule (PiecewiseSchedule's defaults)


def _const(lr, n):
    return (lr, n, n, 200.0, 0.1, lr, lr, n)


def _dense(factor, sched, reg, passes=3, kernel=3, radius=1, dilation=2):
    return ("dense", {"grid_factor": factor, "schedule": sched, "reg_weight": reg, "smoothing_passes": passes,
                      "smoothing_kernel": kernel, "mind_radius": radius, "mind_dilation": dilation, "second_dilation": 0})


_CONVEX = ("convex", {"grid_spacing": 6, "disp_hw": 4, "cost_smoothing_kernel": 3, "cost_smoothing_passes": 2,
                      "field_smoothing_kernel": 3, "field_smoothing_passes": 1,
                      "coupling_weights": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0), "ic": True, "ic_iters": 15,
                      "padding_mode": "border", "chunk_size": 64, "mind_radius": 1, "mind_dilation": 2})

#: What each preset ran before the stage list, read from the preset definitions of the previous version
#: (presets.py: FieldConfig / OptimConfig / FeatureConfig / ConvexConfig / MultilevelConfig.levels), per stage.
BEFORE = {
    "io": [_dense(2, _PAPER, 1.75)],
    "io-authors": [_dense(2, _PAPER, 1.25, passes=2)],
    "io-lr1": [_dense(2, _const(1.0, 100), 1.75)],
    "io-lr15": [_dense(2, _const(15.0, 270), 1.75)],
    "convex": [_CONVEX],
    "convexadam": [_CONVEX, _dense(2, _const(1.0, 80), 1.25)],
    "convex+io": [_CONVEX, _dense(2, _PAPER, 1.75)],
    "refine": [_dense(2, _const(1.0, 80), 1.75)],
    "accurate": [_dense(2, _const(1.0, 100), 1.75), _dense(1, (1.0, 0, 0, 200.0, 0.1, None, 0.25, 40), 1.75, kernel=5)],
}
#: Shared settings before: (intensity, use_masks, betas, padding_mode, keep_in_image, design_spacing, storage).
SHARED_BEFORE = {name: ("window", True) for name in BEFORE} | {"io-authors": ("minmax", True), "convex": ("none", False),
                                                              "convexadam": ("none", False)}


def _schedule_tuple(s: PiecewiseSchedule):
    return (s.peak_lr, s.constant_steps, s.cosine_end, s.cosine_period, s.cosine_min_lr, s.linear_start_lr, s.final_lr,
            s.total_steps)


#: presets added after the stage-list change (their stages are tested where they are built: tests/methods/test_affine.py)
NEW_PRESETS = {"unaligned"}


def test_every_preset_is_listed():
    assert set(BEFORE) | NEW_PRESETS == set(preset_names())


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_preset_stages_hold_todays_values_and_reach_the_optimiser(name, monkeypatch):
    cfg = get_preset(name)
    got = []
    for s in cfg.stages:
        d = {k: getattr(s, k) for k in BEFORE[name][len(got)][1]}
        if "schedule" in d:
            d["schedule"] = _schedule_tuple(d["schedule"])
        got.append((s.kind, d))
    assert got == BEFORE[name]
    assert (cfg.preprocess.intensity, cfg.preprocess.use_masks) == SHARED_BEFORE[name]
    assert (cfg.optim.betas, cfg.optim.padding_mode, cfg.optim.keep_in_image, cfg.field.design_spacing,
            cfg.features.storage) == ((0.9, 0.999), "border", True, 1.5, "float32")

    # the same values reach the solvers: record what each stage's solver is called with on a small image
    seen = []

    def fake_io(ff, mf, config, *, stage, init_ddf=None, **kw):
        seen.append(("dense", {"grid": tuple(ff.shape[2:]), "channels": ff.shape[1], "schedule": _schedule_tuple(stage.schedule),
                               "reg_weight": stage.reg_weight, "smoothing": (stage.smoothing_passes, stage.smoothing_kernel),
                               "init": None if init_ddf is None else tuple(init_ddf.shape[2:]),
                               "shared": (config.optim.betas, config.optim.padding_mode, config.optim.keep_in_image)}))
        from monai_contreg.methods.io import MethodOutput
        from monai_contreg.optim.field import DisplacementField

        return MethodOutput(field=DisplacementField(tuple(ff.shape[2:])), steps=stage.schedule.total_steps)

    def fake_convex(ff, mf, c):
        seen.append(("convex", {"grid": tuple(ff.shape[2:]), "disp_hw": c.disp_hw, "ic": c.ic,
                                "weights": tuple(c.coupling_weights)}))
        return torch.zeros(1, 3, *ff.shape[2:])

    monkeypatch.setattr(multilevel, "instance_optimisation", fake_io)
    monkeypatch.setattr(run, "coupled_convex", fake_convex)
    cfg.engine.divergence_check = False
    img = torch.rand(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    run_method(img, img.clone(), cfg)
    expected, prev = [], None
    for kind, d in BEFORE[name]:
        if kind == "convex":
            grid = pooled_shape((24, 24, 24), d["grid_spacing"])
            expected.append(("convex", {"grid": grid, "disp_hw": d["disp_hw"], "ic": d["ic"], "weights": d["coupling_weights"]}))
        else:
            grid = pooled_shape((24, 24, 24), d["grid_factor"])
            # the first dense stage starts from the convex field (on its grid) or zero; a later one from the
            # previous dense stage's field carried onto its own grid
            init = prev if prev is None or prev[0] == "convex" else grid
            expected.append(("dense", {"grid": grid, "channels": 12, "schedule": d["schedule"], "reg_weight": d["reg_weight"],
                                       "smoothing": (d["smoothing_passes"], d["smoothing_kernel"]),
                                       "init": init if init is None or init is grid else init[1],
                                       "shared": ((0.9, 0.999), "border", True)}))
        prev = (kind, grid)
    assert seen == expected


def _short(schedule_steps_: int) -> PiecewiseSchedule:
    return PiecewiseSchedule(peak_lr=1.0, constant_steps=schedule_steps_, cosine_end=schedule_steps_, linear_start_lr=1.0,
                             final_lr=1.0, total_steps=schedule_steps_)


def _pair():
    g = torch.Generator().manual_seed(3)
    base = torch.nn.functional.interpolate(torch.rand(1, 1, 5, 5, 5, generator=g), size=(16, 14, 12), mode="trilinear",
                                           align_corners=False)
    return base, torch.roll(base, shifts=(1, 0, -1), dims=(2, 3, 4)) * 0.9 + 0.05


@pytest.mark.parametrize("name", ["io", "accurate", "convexadam"])
def test_a_short_run_of_the_stages_is_bit_identical_to_the_solvers_called_by_hand(name):
    """``run_method`` on the stage list gives bit for bit the field of the previous version's code path: the solvers
    called by hand with the preset's literal values (single level: contiguous features; several levels:
    channels-last features carried by carry_field; ConvexAdam: one MIND pooled for both stages)."""
    torch.manual_seed(0)
    fixed, moving = _pair()
    steps = 6
    cfg = get_preset(name)
    stages = list(cfg.stages)
    for i, s in enumerate(stages):
        if s.kind == "dense":
            stages[i] = DenseStage(**{**{k: getattr(s, k) for k in ("grid_factor", "reg_weight", "smoothing_passes",
                                                                     "smoothing_kernel")}, "schedule": _short(steps)})
        else:
            stages[i] = ConvexStage(grid_spacing=2, disp_hw=1, ic=True)
    cfg.stages = tuple(stages)
    cfg.engine.divergence_check = False
    out = run_method(fixed, moving, cfg).field().detach()

    shared = RegistrationConfig()
    shared.engine.divergence_check = False
    with torch.no_grad():
        mf_full, mm_full = mind_ssc(fixed, 1, 2), mind_ssc(moving, 1, 2)
    if name == "io":
        ff, mf = downsample(mf_full, 2).contiguous(), downsample(mm_full, 2).contiguous()
        ref = instance_optimisation(ff, mf, shared, stage=DenseStage(grid_factor=2, reg_weight=1.75, schedule=_short(steps)))
    elif name == "convexadam":
        coarse = coupled_convex(downsample(mf_full, 2).contiguous(), downsample(mm_full, 2).contiguous(),
                                ConvexStage(grid_spacing=2, disp_hw=1, ic=True))
        ff, mf = downsample(mf_full, 2).contiguous(), downsample(mm_full, 2).contiguous()
        ref = instance_optimisation(ff, mf, shared, init_ddf=coarse,
                                    stage=DenseStage(grid_factor=2, reg_weight=1.25, schedule=_short(steps)))
    else:
        ddf, ref = None, None
        for factor, kernel in ((2, 3), (1, 5)):
            cl = torch.channels_last_3d
            ff = downsample(mf_full.contiguous(memory_format=cl), factor).contiguous(memory_format=cl)
            mf = downsample(mm_full.contiguous(memory_format=cl), factor).contiguous(memory_format=cl)
            if ddf is not None:
                ddf = carry_field(ddf, tuple(ff.shape[2:]))
            ref = instance_optimisation(ff, mf, shared, init_ddf=ddf, image_shape=(16, 14, 12), stage=DenseStage(
                grid_factor=factor, reg_weight=1.75, smoothing_kernel=kernel, schedule=_short(steps)))
            with torch.no_grad():
                ddf = ref.field().detach()
    expected = ref.field().detach()
    assert out.shape == expected.shape and torch.equal(out, expected)
    assert out.abs().max() > 0  # it moved


# ------------------------------------------------------------------------------------ the guide's YAML blocks
GUIDE = ROOT / "docs" / "guides" / "configuration.md"


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_every_yaml_block_of_the_configuration_guide_loads():
    """Each ```yaml block of docs/guides/configuration.md is accepted by ``--config`` on its preset (a first
    comment ``# --preset NAME``, else ``io``); a block saying ``# error: MESSAGE`` is refused with that message; a
    block saying ``# search space`` is a tune search space accepted by :func:`~monai_contreg.tuning.parse_search_space`."""
    from monai_contreg.tuning import parse_search_space

    blocks = _yaml_blocks(GUIDE.read_text())
    assert len(blocks) >= 8
    for block in blocks:
        m = re.match(r"# --preset (\S+)\n", block)
        preset = m.group(1) if m else "io"
        err = re.search(r"^# error: (.*)$", block, flags=re.M)
        data = yaml.safe_load(block) or {}
        if re.search(r"^# search space$", block, flags=re.M):
            assert len(parse_search_space(data, get_preset(preset))) == len(data), block
        elif err:
            with pytest.raises(UserInputError) as exc:
                RegistrationConfig.from_dict(data, get_preset(preset))
            assert err.group(1) in str(exc.value), block
        else:
            cfg = RegistrationConfig.from_dict(data, get_preset(preset))
            assert data and cfg != get_preset(preset), block


def test_the_python_example_of_the_configuration_guide_runs(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    exec(compile(code, str(GUIDE), "exec"), {})  # noqa: S102 - the guide's own example
    assert capsys.readouterr().out == "['convex', 'dense']\n"
