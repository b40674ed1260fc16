"""Resuming an interrupted registration from the command line: ``--checkpoint-dir D [--checkpoint-every N]
[--resume]`` on ``register``, ``register-native`` and ``run`` (per pair).

Before: ``engine.resume`` existed in the config only; no command had a flag for it, a multi-level run could not be
resumed (its later levels had no checkpoint: MissingFileError) and ``run`` could not resume either (the pairs not
reached before the interruption had none). Each test interrupts a run with an exception a handler raises at a
given step (as Ctrl-C would: exit 130), resumes it and compares the field with an uninterrupted run's.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events

import monai_contreg.methods.multilevel as multilevel
from monai_contreg.cli import build_parser, main
from monai_contreg.errors import MissingFileError, UserInputError
from monai_contreg.io.fields import load_field
from monai_contreg.methods.io import latest_checkpoint, registration_checkpoints
from monai_contreg.request import RunRequest
from tests.learn2reg_helpers import make_tiny_learn2reg

STEPS = 12
SCHEDULE = [f"optim.schedule.{k}={v}" for k, v in
            (("total_steps", STEPS), ("constant_steps", 4), ("cosine_end", 10), ("cosine_period", 6), ("peak_lr", 0.5),
             ("final_lr", 0.05))]
COMMON = ["--no-auto-mask", "--no-quality", "--threads", "1", "--quiet", "--set", "engine.fused=false"]


def _sets(items):
    return [a for kv in items for a in ("--set", kv)]


def _smooth(shape, seed, shift=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1, *shape), generator=g)
    for _ in range(3):
        x = torch.nn.functional.avg_pool3d(torch.nn.functional.pad(x, (1,) * 6, mode="replicate"), 3, 1)
    x = torch.roll(x, shift, 2)
    return (x[0, 0].numpy() * 2000 - 1000).astype(np.float32)


@pytest.fixture
def pair(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = []
    for name, shift in (("f", 0), ("m", 1)):
        p = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(_smooth((20, 18, 16), 0, shift), aff), str(p))
        paths.append(str(p))
    return paths


class _Interrupt:
    """Raise KeyboardInterrupt (what Ctrl-C raises) at ``step`` of the run whose name contains ``name``."""

    def __init__(self, step, name=""):
        self.step, self.name = step, name

    def install(self, monkeypatch):
        real = multilevel.instance_optimisation

        def interrupted(*args, handlers=None, name="", **kwargs):
            if self.name in name:
                stop = self.step

                class _Stop:
                    def attach(self, engine):
                        engine.add_event_handler(Events.ITERATION_COMPLETED(once=stop), self)

                    def __call__(self, engine):
                        raise KeyboardInterrupt

                handlers = [*(handlers or []), _Stop()]
            return real(*args, handlers=handlers, name=name, **kwargs)

        monkeypatch.setattr(multilevel, "instance_optimisation", interrupted)


def _field(path):
    return load_field(path)[0]


def test_register_interrupted_then_resumed_gives_the_uninterrupted_field(pair, tmp_path, monkeypatch, capsys):
    fixed, moving = pair
    args = [*COMMON, *_sets(SCHEDULE)]
    assert main(["register", fixed, moving, "-o", str(tmp_path / "whole.nii.gz"), *args]) == 0
    ckpt = tmp_path / "ckpt"
    ck = ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "5"]
    with monkeypatch.context() as mp:
        _Interrupt(7).install(mp)
        assert main(["register", fixed, moving, "-o", str(tmp_path / "d.nii.gz"), *args, *ck]) == 130
    assert not (tmp_path / "d.nii.gz").exists()
    assert latest_checkpoint(ckpt).name == "registration_checkpoint_5.pt"
    capsys.readouterr()
    assert main(["register", fixed, moving, "-o", str(tmp_path / "d.nii.gz"), *args, *ck, "--resume"]) == 0
    assert "steps 12" in capsys.readouterr().out
    assert torch.allclose(_field(tmp_path / "d.nii.gz"), _field(tmp_path / "whole.nii.gz"), rtol=0, atol=1e-6)


def test_register_native_resumes_too(pair, tmp_path, monkeypatch):
    fixed, moving = pair
    args = [*COMMON, *_sets(SCHEDULE), "--working-spacing", "3"]
    assert main(["register-native", fixed, moving, "-o", str(tmp_path / "whole.nii.gz"), *args]) == 0
    ck = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "5"]
    with monkeypatch.context() as mp:
        _Interrupt(8).install(mp)
        assert main(["register-native", fixed, moving, "-o", str(tmp_path / "d.nii.gz"), *args, *ck]) == 130
    assert main(["register-native", fixed, moving, "-o", str(tmp_path / "d.nii.gz"), *args, *ck, "--resume"]) == 0
    assert torch.allclose(_field(tmp_path / "d.nii.gz"), _field(tmp_path / "whole.nii.gz"), rtol=0, atol=1e-6)


ACCURATE = [f"stages.{i}.schedule.{k}={v}" for i in (0, 1) for k, v in
            (("total_steps", STEPS), ("cosine_end", 10), ("constant_steps", 4), ("cosine_period", 6), ("peak_lr", 0.5),
             ("final_lr", 0.05))]


@pytest.mark.parametrize("where, level_files", [("level 0", ["registration_level_0_checkpoint_5.pt"]),
                                                ("level 1", ["registration_level_0_checkpoint_10.pt",
                                                             "registration_level_1_checkpoint_5.pt"])])
def test_a_multilevel_run_resumes_in_either_level(pair, tmp_path, monkeypatch, where, level_files):
    """Before: a level without a checkpoint (not reached, interrupted in level 0) was a MissingFileError."""
    fixed, moving = pair
    args = ["--preset", "accurate", *COMMON, *_sets(ACCURATE), "--set", "multilevel.mask_aware=false"]
    assert main(["register", fixed, moving, "-o", str(tmp_path / "whole.nii.gz"), *args]) == 0
    ckpt = tmp_path / "ckpt"
    ck = ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "5"]
    with monkeypatch.context() as mp:
        _Interrupt(7, name=where).install(mp)
        assert main(["register", fixed, moving, "-o", str(tmp_path / "d.nii.gz"), *args, *ck]) == 130
    assert sorted(p.name for p in registration_checkpoints(ckpt, "", levels=2)) == level_files
    assert main(["register", fixed, moving, "-o", str(tmp_path / "d.nii.gz"), *args, *ck, "--resume"]) == 0
    assert torch.allclose(_field(tmp_path / "d.nii.gz"), _field(tmp_path / "whole.nii.gz"), rtol=0, atol=1e-6)
    # a run none of whose levels was checkpointed is refused, as one level is
    with pytest.raises(MissingFileError, match="no checkpoint of 'other' .*levels other_level_0"):
        multilevel._levels_to_resume(
            build_config(args, ckpt), "other", 2)


def build_config(args, ckpt):
    from monai_contreg.commands import _config

    ns = build_parser().parse_args(["register", "f", "m", "-o", "d.nii.gz", *args, "--checkpoint-dir", str(ckpt), "--resume"])
    return _config(ns, RunRequest.from_args(ns))


def test_run_resumes_the_interrupted_pair_and_starts_the_others(tmp_path, monkeypatch, capsys):
    """``contreg run``: interrupted in the first pair, resumed: that pair from its checkpoint, the second (no
    checkpoint) from step 0; both fields equal the uninterrupted run's."""
    ds = make_tiny_learn2reg(tmp_path / "ds", n_pairs=2)
    args = [*COMMON, *_sets(SCHEDULE), "--no-bar"]
    assert main(["run", str(ds), "-o", str(tmp_path / "whole"), *args]) == 0
    ckpt = tmp_path / "ckpt"
    ck = ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "5"]
    with monkeypatch.context() as mp:
        _Interrupt(7, name="0001_0001").install(mp)
        assert main(["run", str(ds), "-o", str(tmp_path / "out"), *args, *ck]) == 130
    assert [p.name for p in registration_checkpoints(ckpt, "0001_0001", levels=None)] == ["0001_0001_checkpoint_5.pt"]
    assert registration_checkpoints(ckpt, "0002_0002", levels=None) == []
    assert main(["run", str(ds), "-o", str(tmp_path / "out"), *args, *ck, "--resume"]) == 0
    for key in ("0001_0001", "0002_0002"):
        a, b = _field(tmp_path / "out" / f"disp_{key}.nii.gz"), _field(tmp_path / "whole" / f"disp_{key}.nii.gz")
        assert torch.allclose(a, b, rtol=0, atol=1e-6), key
    assert latest_checkpoint(ckpt, "0002_0002").name == "0002_0002_checkpoint_10.pt"  # its run wrote its own


def test_checkpoint_options_reach_the_config_and_are_checked():
    ns = build_parser().parse_args(["run", "ds", "-o", "out", "--checkpoint-dir", "ck", "--checkpoint-every", "7",
                                    "--resume"])
    req = RunRequest.from_args(ns)
    assert (req.checkpoint_dir, req.checkpoint_every, req.resume) == ("ck", 7, True)
    from monai_contreg.commands import _config

    cfg = _config(ns, req)
    assert (cfg.engine.checkpoint_dir, cfg.engine.checkpoint_every, cfg.engine.resume) == ("ck", 7, True)
    with pytest.raises(UserInputError, match=r"^--resume: give --checkpoint-dir DIR too"):
        RunRequest(resume=True)
    with pytest.raises(UserInputError, match=r"^--checkpoint-every: give --checkpoint-dir DIR too"):
        RunRequest(checkpoint_every=5)
    with pytest.raises(UserInputError, match=r"^--checkpoint-every: expected a whole number of steps >= 1"):
        RunRequest(checkpoint_dir="ck", checkpoint_every=0)


def test_resume_without_checkpoint_dir_exits_2(pair, tmp_path, capsys):
    fixed, moving = pair
    assert main(["register", fixed, moving, "-o", str(tmp_path / "d.nii.gz"), "--resume"]) == 2
    assert "contreg register: error: --resume: give --checkpoint-dir DIR too" in capsys.readouterr().err


def test_a_checkpoint_of_another_grid_is_a_user_error(pair, tmp_path, monkeypatch, capsys):
    """A checkpoint written for another image (another field shape) is refused in one line, not a traceback."""
    fixed, moving = pair
    ckpt = tmp_path / "ckpt"
    ck = ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "5"]
    args = [*COMMON, *_sets(SCHEDULE)]
    with monkeypatch.context() as mp:
        _Interrupt(7).install(mp)
        assert main(["register", fixed, moving, "-o", str(tmp_path / "d.nii.gz"), *args, *ck]) == 130
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(_smooth((16, 16, 16), 1), np.diag([2.0, 2.0, 2.0, 1.0])), str(other))
    capsys.readouterr()
    assert main(["register", str(other), str(other), "-o", str(tmp_path / "e.nii.gz"), *args, *ck, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "engine.resume: checkpoint" in err and "does not fit this run" in err and "Traceback" not in err
