"""The error estimate inside ``run_split`` / ``contreg run`` / ``contreg evaluate``."""

from __future__ import annotations

import json

import pytest
import torch
from monai.data import MetaTensor

from monai_contreg.api import RegistrationResult
from monai_contreg.cli import main
from monai_contreg.evaluation.learn2reg import evaluate_learn2reg
from monai_contreg.evaluation.quality_cli import suspect_pairs
from monai_contreg.io.images import load_image
from monai_contreg.workflow import PairOutcome, RunSummary, run_split
from tests.learn2reg_helpers import make_tiny_learn2reg


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_learn2reg(tmp_path_factory.mktemp("qwf") / "ds", n_pairs=2)


def _shifted(shift_vox: float):
    """A register() stand-in returning a constant field of ``shift_vox`` voxels along axis 0 (no optimisation)."""

    def fn(fixed, moving, **kwargs):
        img = load_image(fixed)
        ddf = torch.zeros((1, 3, *img.shape[1:]))
        ddf[:, 0] = shift_vox
        return RegistrationResult(ddf=MetaTensor(ddf, affine=torch.as_tensor(img.affine)), timings={"total": 1.0})

    return fn


def test_run_split_records_the_estimate_and_a_shifted_field_is_suspect(dataset, tmp_path):
    out = tmp_path / "out"
    summary = run_split(dataset, "val", out, "io", register_fn=_shifted(4.0), quality=True)  # 8 mm off everywhere
    assert summary.done == ["0001_0001", "0002_0002"]
    log = json.loads((out / "runtimes.json").read_text())
    for key in summary.done:
        q = log["cases"][key]["quality"]
        assert q["verdict"] == "failed" and q["estimated_error_mm"] >= 3.0 and q["seconds"] > 0
    assert [s.split(":")[0] for s in suspect_pairs(summary.outcomes)] == summary.done
    res = evaluate_learn2reg(dataset, out, "val")  # the run's estimates travel into the evaluation JSON
    assert set(res["quality"]) == set(summary.done)
    assert res["cases"]["0001_0001"]["quality_estimated_error_mm"]["mean"] == pytest.approx(
        log["cases"]["0001_0001"]["quality"]["estimated_error_mm"])


def test_run_split_without_quality_records_none(dataset, tmp_path):
    out = tmp_path / "out"
    summary = run_split(dataset, "val", out, "io", register_fn=_shifted(0.0))
    assert all(o.quality is None for o in summary.outcomes)
    assert "quality" not in json.loads((out / "runtimes.json").read_text())["cases"]["0001_0001"]


def test_cli_run_fail_on_suspect(dataset, tmp_path, monkeypatch, capsys):
    flagged = RunSummary(outcomes=[PairOutcome("0001_0001", "done", quality={"verdict": "check", "reasons": ["x"]}),
                                   PairOutcome("0002_0002", "done", quality={"verdict": "ok", "reasons": []})],
                         runtimes_path=tmp_path / "runtimes.json")
    seen = {}

    def fake_run_split(*args, **kwargs):
        seen.update(kwargs)
        return flagged

    monkeypatch.setattr("monai_contreg.workflow.run_split", fake_run_split)
    args = ["run", str(dataset), "-o", str(tmp_path / "out"), "--no-bar"]
    assert main(args) == 0 and seen["quality"] is True
    assert "suspect pairs (landmark-free estimate): 0001_0001: check (x)" in capsys.readouterr().err
    assert main([*args, "--fail-on-suspect"]) == 1
    assert main([*args, "--no-quality"]) == 0 and seen["quality"] is False
    monkeypatch.setattr("monai_contreg.distributed.run_split_distributed", fake_run_split)  # distributed: the same
    seen.clear()
    assert main([*args, "--backend", "gloo", "--fail-on-suspect"]) == 1 and seen["quality"] is True
    assert main([*args, "--backend", "gloo", "--no-quality"]) == 0 and seen["quality"] is False


def test_cli_register_prints_the_estimate(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    from monai_contreg.data.demo import make_demo_pair

    pair = make_demo_pair(shape=(32, 32, 32), n_keypoints=10)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    for k in ("fixed", "moving"):
        nib.save(nib.Nifti1Image(getattr(pair, k), aff), str(tmp_path / f"{k}.nii.gz"))
    steps = [a for s in ("total_steps=5", "constant_steps=5", "cosine_end=5", "peak_lr=1") for a in ("--set", f"optim.schedule.{s}")]
    base = ["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "-o", str(tmp_path / "d.nii.gz"), *steps]
    assert main([*base, "--quality-json", str(tmp_path / "q.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("quality: estimated error ") and " verdict " in out[1]
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["verdict"] in ("ok", "check", "failed") and q["interval_mm"][0] <= q["estimated_error_mm"]
    assert main([*base, "--no-quality"]) == 0
    assert "quality:" not in capsys.readouterr().out


@pytest.mark.parametrize("source, segmented", [("not found", False), ("none", False), ("automatic", True), (None, True)])
def test_quality_takes_the_registrations_mask_decision(monkeypatch, source, segmented):
    """A registration that found no plausible lung ran unmasked: its estimate must not segment one on its own
    (case_21: the quality grid's mask took bowel gas for lungs and said 'check' for a correct unmasked run)."""
    import monai_contreg.evaluation.quality as quality

    seen = {}
    monkeypatch.setattr(quality, "estimate_quality", lambda *a, **kw: seen.update(kw) or "report")
    ddf = MetaTensor(torch.zeros(1, 3, 6, 6, 6), affine=torch.eye(4, dtype=torch.float64))
    report = None if source is None else {"masked": source == "automatic", "fixed": {"source": source}}
    res = RegistrationResult(ddf=ddf, mask_report=report)
    assert res.quality("f.nii.gz", "m.nii.gz") == "report"
    assert seen["auto_mask"] is segmented
    res.quality("f.nii.gz", "m.nii.gz", fixed_mask="given.nii.gz")  # a given mask is used whatever the report says
    assert seen["fixed_mask"] == "given.nii.gz"


def test_quality_after_register_reuses_the_loaded_images(dataset, monkeypatch):
    """register() keeps the images (and masks) it read; the estimate after it reads nothing again and equals the
    estimate from the files."""
    import monai_contreg.io.images as images
    from monai_contreg.api import register
    from monai_contreg.methods.presets import get_preset
    from tests.learn2reg_helpers import FAST

    f, m = (dataset / "imagesTr" / f"TINY_0001_000{k}.nii.gz" for k in (0, 1))
    fm, mm = (dataset / "masksTr" / p.name for p in (f, m))
    res = register(f, m, fixed_mask=fm, moving_mask=mm, config=get_preset("io").with_overrides(FAST))
    assert set(res.inputs) == {"fixed", "moving", "fixed_mask", "moving_mask"}
    from_files = res.quality(f, m, fixed_mask=fm, moving_mask=mm)

    def no_reading(*args, **kwargs):
        raise AssertionError("an image was read again")

    monkeypatch.setattr(images, "load_image", no_reading)
    kept = res.quality()
    assert kept.region == from_files.region == "fixed mask"
    assert kept.estimated_error_mm == pytest.approx(from_files.estimated_error_mm, rel=1e-5)
    with pytest.raises(Exception, match="give both fixed and moving"):
        res.quality(f)


def test_distributed_run_records_the_same_estimate_and_suspects(dataset, tmp_path):
    """`contreg run` across processes (here a group of one, gloo) estimates each pair as the single-process run
    does: the same quality entries in runtimes.json and the same suspect list."""
    from monai_contreg.distributed import run_split_distributed

    single = run_split(dataset, "val", tmp_path / "single", "io", register_fn=_shifted(4.0), quality=True)
    dist = run_split_distributed(dataset, "val", tmp_path / "dist", "io", backend="gloo", register_fn=_shifted(4.0),
                                 quality=True, threads=1)
    assert dist.done == single.done == ["0001_0001", "0002_0002"]
    logs = [json.loads((tmp_path / d / "runtimes.json").read_text())["cases"] for d in ("single", "dist")]
    for key in single.done:
        a, b = (log[key]["quality"] for log in logs)
        assert set(a) == set(b) and b["verdict"] == "failed"
        assert b["estimated_error_mm"] == pytest.approx(a["estimated_error_mm"], rel=1e-5)
    assert suspect_pairs(dist.outcomes) == suspect_pairs(single.outcomes) != []
    off = run_split_distributed(dataset, "val", tmp_path / "off", "io", backend="gloo", register_fn=_shifted(4.0), threads=1)
    assert all(o.quality is None for o in off.outcomes)
