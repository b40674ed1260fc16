"""Reliability: every failure is one line before the work starts (pre-flight), with the exact message; nothing
is lost when processes share an output folder."""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_contreg import preflight
from monai_contreg.cli import main
from monai_contreg.errors import MissingFileError, UserInputError, cli_error, describe_read_error
from monai_contreg.workflow import locked_log, merge_rank_logs, run_split

from .learn2reg_helpers import FAST, make_tiny_learn2reg

SETS = [a for s in FAST for a in ("--set", s)]
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def _smooth(shape=(24, 24, 24), seed=0):
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return ((x - x.min()) / (x.max() - x.min()) * 1000).astype(np.float32)


def _save(path, arr, affine=AFF):
    nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))
    return str(path)


@pytest.fixture
def pair(tmp_path):
    f = _save(tmp_path / "fixed.nii.gz", _smooth())
    m = _save(tmp_path / "moving.nii.gz", np.roll(_smooth(), 1, axis=0))
    return f, m


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_error(err: str, pattern: str, command: str = "register") -> None:
    # messages only: progress-bar redraws (carriage returns, "NN%|") are not lines a user reads
    lines = [ln for ln in re.split(r"[\r\n]+", err) if ln.strip() and not re.search(r"\d+%\|", ln)]
    assert len(lines) == 1, err
    assert re.match(rf"contreg {command}: error: {pattern}", lines[0]), lines[0]


# ------------------------------------------------------------------------------------------------- the one handler
def test_cli_error_kinds():
    import io

    buf = io.StringIO()
    assert cli_error("register", UserInputError("register: bad"), 0, buf) == 2
    assert buf.getvalue() == "contreg register: error: register: bad\n"
    buf = io.StringIO()
    assert cli_error("run", OSError(errno.ENOSPC, "No space left on device", "/x/disp.nii.gz"), 0, buf) == 1
    assert buf.getvalue() == "contreg run: error: No space left on device: '/x/disp.nii.gz'\n"
    buf = io.StringIO()
    assert cli_error("register", KeyboardInterrupt(), 0, buf) == 130
    assert re.fullmatch(r"contreg register: interrupted \(Ctrl-C\)[^\n]*\n", buf.getvalue())
    # programming errors are not turned into user errors: the caller re-raises them with their traceback
    for exc in (TypeError("x"), KeyError("k"), ValueError("plain"), RuntimeError("bug"), FileNotFoundError("plain")):
        assert cli_error("register", exc, 0, io.StringIO()) is None
    # -v: the traceback, then the line
    buf = io.StringIO()
    try:
        raise UserInputError("register: bad")
    except UserInputError as exc:
        assert cli_error("register", exc, 1, buf) == 2
    assert buf.getvalue().startswith("Traceback") and buf.getvalue().endswith("contreg register: error: register: bad\n")


def test_missing_file_is_a_user_error_and_a_file_not_found_error():
    exc = MissingFileError("load_field: field file 'x' does not exist.")
    assert isinstance(exc, FileNotFoundError) and isinstance(exc, ValueError) and str(exc) == "load_field: field file 'x' does not exist."


def test_internal_error_keeps_its_traceback(pair, tmp_path, monkeypatch):
    import monai_contreg.api as api

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(api, "register", broken)
    with pytest.raises(KeyError):
        main(["register", *pair, "-o", str(tmp_path / "d.nii.gz")])


def test_ctrl_c_is_one_line_exit_130(pair, tmp_path, monkeypatch, capsys):
    import monai_contreg.api as api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "register", interrupted)
    rc, _, err = _cli(capsys, "register", *pair, "-o", tmp_path / "d.nii.gz")
    assert rc == 130 and re.fullmatch(r"contreg register: interrupted \(Ctrl-C\); [^\n]*\n", err)


# ------------------------------------------------------------------------------------------------- unreadable inputs
@pytest.mark.parametrize(
    "name, content, pattern",
    [
        ("trunc.nii.gz", "truncate", r"register: cannot read fixed file '.*trunc\.nii\.gz': truncated gzip data: the compressed stream ends early"),
        ("text.nii.gz", b"this is text\n", r"register: cannot read fixed file '.*text\.nii\.gz': the name ends in \.gz but the file is not gzip-compressed: it holds text starting 'this is text'"),
        ("empty.nii.gz", b"", r"register: cannot read fixed file '.*empty\.nii\.gz': the file is empty \(0 bytes\)"),
        ("junk.nii.gz", gzip.compress(b"\x00junk" * 50), r"register: cannot read fixed file '.*junk\.nii\.gz': not a NIfTI file: no valid header"),
        ("text.nrrd", b"hello\n", r"register: cannot read fixed file '.*text\.nrrd': ITK cannot read it: it holds text"),
    ],
)
def test_unreadable_input_says_what_is_wrong(pair, tmp_path, capsys, name, content, pattern):
    bad = tmp_path / name
    if content == "truncate":
        data = Path(pair[0]).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(content)
    rc, _, err = _cli(capsys, "register", bad, pair[1], "-o", tmp_path / "d.nii.gz")
    assert rc == 2
    _one_error(err, pattern)
    assert "LoadImaged" not in err


def test_describe_read_error_unwraps_monai(tmp_path, pair):
    from monai_contreg.io.images import load_image

    bad = tmp_path / "t.nii.gz"
    data = Path(pair[0]).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"load_image: cannot read image '.*t\.nii\.gz' with the nibabel reader: truncated gzip data"):
        load_image(bad)
    assert describe_read_error(RuntimeError("x"), None) == "RuntimeError: x"


# ------------------------------------------------------------------------------------------------- geometry
def _singular(path, arr):
    img = nib.Nifti1Image(arr, np.eye(4))
    hdr = img.header
    for row in ("srow_x", "srow_y", "srow_z"):
        hdr[row] = 0.0
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(arr, None, header=hdr), str(path))
    return str(path)


def test_singular_affine_refused_before_work(pair, tmp_path, capsys):
    bad = _singular(tmp_path / "sing.nii.gz", _smooth())
    rc, _, err = _cli(capsys, "register", bad, pair[1], "-o", tmp_path / "d.nii.gz")
    assert rc == 2
    _one_error(err, r"register: fixed file '.*sing\.nii\.gz' has a singular voxel-to-world matrix \(spacing \[0\.0, 0\.0, 0\.0\] mm")
    rc, _, err = _cli(capsys, "register-native", bad, pair[1], "-o", tmp_path / "d.nii.gz")
    assert rc == 2
    _one_error(err, r"register-native: fixed file '.*sing\.nii\.gz' has a singular voxel-to-world matrix", "register-native")


def test_thin_slab_refused(tmp_path, capsys):
    slab = _save(tmp_path / "slab.nii.gz", _smooth((48, 48, 3)))
    rc, _, err = _cli(capsys, "register", slab, slab, "-o", tmp_path / "d.nii.gz")
    assert rc == 2 and not (tmp_path / "d.nii.gz").exists()
    _one_error(err, r"register: fixed file '.*slab\.nii\.gz' has shape \(48, 48, 3\): too thin to register \(every axis needs >= 5 voxels")
    # what the check protects: the Jacobian statistics of such a grid now fail with a message, not a torch error
    import torch

    from monai_contreg.evaluation.metrics import jacobian_statistics

    with pytest.raises(UserInputError, match=r"jacobian_statistics: grid \(48, 48, 3\) is too small for the 2-voxel border"):
        jacobian_statistics(torch.zeros(1, 3, 48, 48, 3))


def test_geometry_and_grid_checks(tmp_path, pair):
    two = _save(tmp_path / "two.nii.gz", _smooth()[:, :, 0])
    with pytest.raises(UserInputError, match=r"x: fixed file '.*two\.nii\.gz' must hold one 3-D volume, its header gives shape \(24, 24\)"):
        preflight.check_pair("x", {"fixed": two, "moving": pair[1]})
    other = _save(tmp_path / "other.nii.gz", _smooth()[:20])
    with pytest.raises(UserInputError, match=r"x: all inputs must share one grid; got fixed \(24, 24, 24\), moving \(20, 24, 24\)"):
        preflight.check_pair("x", {"fixed": pair[0], "moving": other})
    with pytest.raises(UserInputError, match=r"x: fixed_mask has grid \(20, 24, 24\), its image fixed has \(24, 24, 24\)"):
        preflight.check_pair("x", {"fixed": pair[0], "moving": other, "fixed_mask": other}, same_grid=False)
    folder = tmp_path / "dir.nii.gz"
    folder.mkdir()
    with pytest.raises(UserInputError, match=r"x: fixed file '.*dir\.nii\.gz' is a folder, not an image file"):
        preflight.check_pair("x", {"fixed": folder, "moving": pair[1]})


def test_memory_check_hook(pair):
    seen = []

    def check(fixed_shape, moving_shape):
        seen.append((fixed_shape, moving_shape))
        raise UserInputError("--max-memory: needs 9 GB")

    with pytest.raises(UserInputError, match="--max-memory: needs 9 GB"):
        preflight.check_pair("x", {"fixed": pair[0], "moving": pair[1]}, memory_check=check)
    assert seen == [((24, 24, 24), (24, 24, 24))]


# ------------------------------------------------------------------------------------------------- outputs
def test_output_problems_found_before_work(pair, tmp_path, capsys, monkeypatch):
    (tmp_path / "outdir").mkdir()
    rc, _, err = _cli(capsys, "register", *pair, "-o", tmp_path / "outdir")
    assert rc == 2
    _one_error(err, r"register: -o/--output '.*outdir' is an existing folder; give a file name inside it\.")
    (tmp_path / "afile").write_text("x")
    rc, _, err = _cli(capsys, "register", *pair, "-o", tmp_path / "afile" / "d.nii.gz")
    assert rc == 2
    _one_error(err, r"register: -o/--output '.*afile/d\.nii\.gz': '.*afile' is a file, not a folder\.")

    class Usage:
        free = 100_000

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: Usage)
    rc, _, err = _cli(capsys, "register", *pair, "-o", tmp_path / "new" / "d.nii.gz")
    assert rc == 2 and not (tmp_path / "new").exists()
    _one_error(err, r"register: -o/--output '.*new/d\.nii\.gz': not enough free disk space in '.*': 0\.1 MB free, the output needs about 1\.2 MB\.")


def test_unwritable_folder_found_by_a_probe(tmp_path, pair, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(preflight.tempfile, "mkstemp", refuse)
    with pytest.raises(UserInputError, match=r"run: -o/--output '.*out': cannot write into '.*' \(Read-only file system\); choose a writable folder\."):
        preflight.check_output_dir("run", "-o/--output", tmp_path / "out")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_unwritable_folder_real(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: make the folder immutable instead
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode:
            pytest.skip("root without chattr +i")
    else:
        ro.chmod(0o555)
    try:
        with pytest.raises(UserInputError, match=r"register: -o/--output '.*ro/d\.nii\.gz': cannot write into '.*ro' \((Permission denied|Operation not permitted)\)"):
            preflight.check_output_file("register", "-o/--output", ro / "d.nii.gz")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)], capture_output=True)
        else:
            ro.chmod(0o755)


# ------------------------------------------------------------------------------------------------- no information
def test_constant_images_refused(pair, tmp_path, capsys):
    const = _save(tmp_path / "const.nii.gz", np.full((24, 24, 24), 100, np.float32))
    rc, _, err = _cli(capsys, "register", const, pair[1], "-o", tmp_path / "d.nii.gz", *SETS)
    assert rc == 2 and not (tmp_path / "d.nii.gz").exists()
    _one_error(err, r"register: fixed image is constant \(every voxel 100\): it has no structure to register; check the file\.")
    mask = np.zeros((24, 24, 24), np.uint8)
    mask[4:20, 4:20, 4:20] = 1
    img = _smooth()
    img[mask > 0] = 500
    rc, _, err = _cli(capsys, "register", _save(tmp_path / "c.nii.gz", img), pair[1], "-o", tmp_path / "d.nii.gz",
                      "--fixed-mask", _save(tmp_path / "m.nii.gz", mask), *SETS)
    assert rc == 2
    _one_error(err, r"register: fixed image is constant inside its mask \(every voxel [0-9.]+ after preprocessing")
    with pytest.raises(UserInputError, match=r"prepare_pair: moving image is constant"):
        from monai_contreg.api import prepare_pair

        prepare_pair(_smooth(), np.zeros((24, 24, 24), np.float32), spacing=1.5)


# ------------------------------------------------------------------------------------------------- options
def test_small_ones(pair, tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        main(["register-native", *pair, "-o", str(tmp_path / "d.nii.gz"), "--working-spacing", "abc"])
    assert ex.value.code == 2
    assert re.search(r"contreg register-native: error: argument --working-spacing: expected one spacing in mm or three "
                     r"comma-separated \(e\.g\. 1\.5 or 1\.5,1\.5,2\), each > 0; got 'abc'\.", capsys.readouterr().err)
    assert preflight.parse_spacing("1.5") == 1.5 and preflight.parse_spacing("1,2,3") == (1.0, 2.0, 3.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  reg_weight: [1\n  peak_lr: : 3\n")
    rc, _, err = _cli(capsys, "register", *pair, "-o", tmp_path / "d.nii.gz", "--config", bad)
    assert rc == 2
    _one_error(err, r"RegistrationConfig\.from_file: cannot parse '.*bad\.yaml': line 3, column \d+: expected ',' or '\]', but got ':'")
    rc, _, err = _cli(capsys, "download", "nlst", tmp_path / "dl", "--url", "http://127.0.0.1:9/NLST.zip")
    assert rc == 1
    _one_error(err, r"download_file: cannot reach http://127\.0\.0\.1:9/NLST\.zip: .*refused", "download")


# ------------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_learn2reg(tmp_path_factory.mktemp("rel_ds"), n_pairs=2)


def _zero_fields(folder: Path, nan: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("0001_0001", "0002_0002"):
        arr = np.zeros((32, 32, 32, 3), np.float32)
        if nan and key == "0001_0001":
            arr[5, 6, 7, 0] = np.nan
        nib.save(nib.Nifti1Image(arr, AFF), str(folder / f"disp_{key}.nii.gz"))
    return folder


def test_evaluate_nan_field_is_an_error(dataset, tmp_path, capsys):
    fields = _zero_fields(tmp_path / "f", nan=True)
    rc, _, err = _cli(capsys, "evaluate", dataset, fields)
    assert rc == 2
    _one_error(err, r"evaluate_learn2reg: pair 0001_0001 \(field disp_0001_0001\.nii\.gz in '.*f'\): the field holds 1 NaN "
                    r"or infinite value\(s\) of 98304; it cannot be scored\.", "evaluate")


def test_evaluate_keypoint_rows_and_header(dataset, tmp_path, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    fields = _zero_fields(tmp_path / "f")
    moving_kp = ds / "keypointsTr" / "TINY_0001_0001.csv"
    rows = moving_kp.read_text().splitlines()
    n = len(rows)
    moving_kp.write_text("\n".join(rows[:-5]) + "\n")
    rc, _, err = _cli(capsys, "evaluate", ds, fields)
    assert rc == 2
    _one_error(err, rf"evaluate_learn2reg: pair 0001_0001 \(.*\): fixed keypoints '.*TINY_0001_0000\.csv' have {n} rows, "
                    rf"moving keypoints '.*TINY_0001_0001\.csv' have {n - 5}; they must pair up row by row\.", "evaluate")
    moving_kp.write_text("x,y,z\n" + "\n".join(rows) + "\n")  # a header row is skipped
    rc, out, _ = _cli(capsys, "evaluate", ds, fields)
    assert rc == 0 and "TINY registration_val: 2 pairs" in out
    from monai_contreg.data.keypoints import load_keypoints

    assert load_keypoints(moving_kp).shape == (n, 3)
    moving_kp.write_text("1,2,abc\n3,4,5\n")  # a broken data row is not a header
    with pytest.raises(UserInputError, match=r"load_keypoints: keypoints file '.*TINY_0001_0001\.csv' is not a CSV of numbers"):
        load_keypoints(moving_kp)


# ------------------------------------------------------------------------------------------------- concurrency
def test_records_of_another_process_are_kept(dataset, tmp_path):
    """A record written into runtimes.json by another process while this run works survives this run's writes."""
    from monai_contreg.api import register

    out = tmp_path / "out"

    def other_process_writes(*args, **kwargs):
        if kwargs["name"] == "0002_0002":  # meanwhile, another run recorded a pair of its own
            log = json.loads((out / "runtimes.json").read_text())
            log["cases"]["9999_9999"] = {"seconds": 1.0}
            (out / "runtimes.json").write_text(json.dumps(log))
        return register(*args, **kwargs)

    summary = run_split(dataset, "val", out, _fast(), register_fn=other_process_writes)
    assert summary.done == ["0001_0001", "0002_0002"]
    assert sorted(json.loads((out / "runtimes.json").read_text())["cases"]) == ["0001_0001", "0002_0002", "9999_9999"]


def _fast():
    from monai_contreg.methods.presets import get_preset

    return get_preset("io").with_overrides(FAST)


def test_lock_serialises_writers(tmp_path):
    log = tmp_path / "runtimes.json"
    order = []
    def other():
        with locked_log(log):
            order.append("other")

    with locked_log(log):
        t = threading.Thread(target=other)
        t.start()
        t.join(0.3)  # blocked on the lock meanwhile
        order.append("first")
    t.join(5)
    assert order == ["first", "other"]


def test_merge_of_rank_logs_keeps_single_process_records(tmp_path):
    (tmp_path / "runtimes.json").write_text(json.dumps({"cases": {"0001_0001": {"seconds": 1}}, "failures": {}}))
    (tmp_path / "runtimes.rank0.json").write_text(json.dumps({"cases": {"0002_0002": {"seconds": 2}}, "failures": {}}))
    merge_rank_logs(tmp_path)
    assert sorted(json.loads((tmp_path / "runtimes.json").read_text())["cases"]) == ["0001_0001", "0002_0002"]


def test_live_writers_temporaries_are_spared(tmp_path):
    from monai_contreg.workflow import _clean_stale_temporaries

    live = tmp_path / f".disp_0001_0001.nii.gz.{os.getppid()}.abcd1234.tmp.nii.gz"
    dead = tmp_path / ".disp_0002_0002.nii.gz.999999999.abcd1234.tmp.nii.gz"
    old = tmp_path / ".disp_0003_0003.nii.gz.abcd1234.tmp.nii.gz"
    for p in (live, dead, old):
        p.write_bytes(b"x")
    _clean_stale_temporaries(tmp_path)
    assert live.exists() and not dead.exists() and not old.exists()


def test_two_concurrent_runs_keep_every_pair(tmp_path):
    ds = make_tiny_learn2reg(tmp_path / "ds", n_pairs=4)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai_contreg.cli", "run", str(ds), "-o", str(out), "--no-bar", "--threads", "1", *SETS]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=3600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    log = json.loads((out / "runtimes.json").read_text())
    keys = ["0001_0001", "0002_0002", "0003_0003", "0004_0004"]
    assert sorted(log["cases"]) == keys and log["failures"] == {}
    assert sorted(p.name for p in out.glob("disp_*.nii.gz")) == [f"disp_{k}.nii.gz" for k in keys]


def test_readme_error_example(pair, tmp_path, capsys, monkeypatch):
    """The example of the errors guide (docs/guides/errors.md) prints exactly the line shown there."""
    assert Path(pair[0]) == tmp_path / "fixed.nii.gz" and Path(pair[1]) == tmp_path / "moving.nii.gz"
    (tmp_path / "outdir").mkdir()
    monkeypatch.chdir(tmp_path)
    page = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "errors.md").read_text()
    block = page.split("# Errors and exit codes", 1)[1].split("```console\n", 1)[1].split("```", 1)[0].splitlines()
    command, expected = block[0].removeprefix("$ contreg ").split(), block[1]
    rc = main(command)
    assert rc == 2 and capsys.readouterr().err == expected + "\n"
