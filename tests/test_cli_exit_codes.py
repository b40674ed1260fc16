"""One exit-status table for every command (docs/guides/cli.md): a user error of each command is exit 2 with one
line ``contreg COMMAND: error: ...`` on stderr and no traceback."""

import re

import nibabel as nib
import numpy as np
import pytest

from monai_contreg import errors
from monai_contreg.cli import build_parser, main

COMMANDS = ["register", "register-native", "run", "submit", "evaluate", "download", "demo", "mask", "warp", "tune", "quality"]


def _image(path, arr, spacing=2.0):
    nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), np.diag([spacing] * 3 + [1.0])), str(path))
    return str(path)


def _lines(err: str) -> list[str]:
    # messages only: progress-bar redraws and third-party import notices (MONAI's nvImageCodec) are not ours
    return [ln for ln in re.split(r"[\r\n]+", err) if ln.strip() and not re.search(r"\d+%\||nvimgcodec|NvImgCodec", ln)]


def _user_error_cases(tmp):
    ct = _image(tmp / "ct.nii.gz", np.full((24, 24, 24), 40.0))  # soft tissue only: no lungs in it
    disp = tmp / "disp.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 24, 3), np.float32), np.eye(4)), str(disp))
    missing = str(tmp / "missing.nii.gz")
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    return {
        "register": (["register", missing, ct, "-o", str(tmp / "d.nii.gz")], "register: fixed file"),
        "register-native": (["register-native", ct, missing, "-o", str(tmp / "d.nii.gz")], "register-native: moving file"),
        "run": (["run", str(tmp), "-o", str(tmp / "out")], "no Learn2Reg description"),
        "submit": (["submit", str(tmp), "-o", str(tmp / "s.tar"), "--dataset", str(tmp)], "must be a .zip file"),
        "evaluate": (["evaluate", str(tmp / "no_dataset"), str(tmp)], "evaluate: dataset"),
        "download": (["download", "no-such-dataset", str(tmp / "dl")], "unknown dataset 'no-such-dataset'"),
        "demo": (["demo", "--out", str(a_file)], "--out"),
        "mask": (["mask", ct, "-o", str(tmp / "mask.nii.gz")], "does not look like a chest CT"),
        "warp": (["warp", "--field", str(disp)], "nothing to warp"),
        "tune": (["tune", str(tmp / "no_dataset"), "-o", str(tmp / "best.yaml")], "no_dataset"),
        "quality": (["quality", ct, ct], "give the field"),
    }


def test_every_command_is_covered(tmp_path):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS) == sorted(_user_error_cases(tmp_path))


@pytest.mark.parametrize("command", COMMANDS)
def test_user_error_is_exit_2_and_one_line(command, tmp_path, capsys):
    argv, message = _user_error_cases(tmp_path)[command]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == errors.EXIT_USER_ERROR == 2, err
    lines = _lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"contreg {command}: error: ") and message in lines[0], err
    assert "Traceback" not in err


def test_exit_status_constants_match_the_table():
    from pathlib import Path

    table = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "cli.md").read_text()
    for code, name in ((errors.EXIT_USER_ERROR, "user error"), (errors.EXIT_ENVIRONMENT, "environment"),
                       (errors.EXIT_DIVERGED, "diverged"), (errors.EXIT_INTERRUPTED, "interrupted")):
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| {code} |"))
        assert name in row.lower(), row
    for command in COMMANDS:
        assert f"`contreg {command}`" in table


def test_warp_refuses_an_image_given_as_transform(tmp_path, capsys):
    """A scalar image as --transform was read into vectors in silence (exit 0, a wrong output)."""
    ct = _image(tmp_path / "ct.nii.gz", np.full((24, 24, 24), 40.0))
    rc = main(["warp", "--transform", ct, "--image", ct, str(tmp_path / "w.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds 1 component(s) per voxel, not a displacement field image" in err
    assert not (tmp_path / "w.nii.gz").exists()
