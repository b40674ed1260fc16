"""Fault sweep: drive bad-input and fault cases through the ``contreg`` CLI and check each answer.

Every case runs ``python -m monai_contreg.cli ...`` in a fresh process on small synthetic inputs (24^3 volumes,
a 2-pair 32^3 Learn2Reg dataset, 3 optimisation steps) and checks the exit status, the message (a regex on
stderr), that no traceback is printed and that the message is short (at most ``max_lines`` lines). A few cases
inject real faults: Ctrl-C (SIGINT) during a registration, SIGKILL of a run then a resume, two ``contreg run``
processes writing into one folder, and, as root in a private mount namespace (``unshare -m``), a read-only
mount and a 64 KiB tmpfs that is too small for the output (skipped where that is not possible).

Usage (from the repository root):

    python benchmarks/fault_sweep.py [--jobs 2] [-k SUBSTRING] [--keep DIR]

Prints ``PASS``/``FAIL``/``SKIP`` per case with the message the CLI printed, then the totals; exits 1 if any case
failed. Takes about 3-5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.learn2reg_helpers import FAST, make_tiny_learn2reg  # noqa: E402

SETS = [a for s in FAST for a in ("--set", s)]
SHAPE = (24, 24, 24)


@dataclass
class Case:
    name: str
    argv: list[str]
    rc: int
    pattern: str = ""
    max_lines: int | None = 2
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path], str | None] | None = None  # returns a failure reason or None
    namespace: str | None = None  # shell prefix run inside `unshare -m` (a mount), or None
    runner: Callable[[Case, Path], tuple[int, str, str]] | None = None
    stdout_pattern: str = ""


@dataclass
class Result:
    case: Case
    status: str
    detail: str
    seconds: float
    message: str = ""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"  # library warnings are not what this sweep checks
    return env


CLI = [sys.executable, "-m", "monai_contreg.cli"]


# ----------------------------------------------------------------------------------------------------------- inputs
def _smooth(shape, seed):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.random(shape), 2.0)
    return ((x - x.min()) / (x.max() - x.min()) * 1000).astype(np.float32)


def _save(path: Path, arr, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(arr), np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path))


def _save_singular(path: Path, arr) -> None:
    """A NIfTI whose header's voxel-to-world matrix is all zeros (sform code 1, zero rows; no qform)."""
    img = nib.Nifti1Image(np.asarray(arr), np.eye(4))
    hdr = img.header
    for row in ("srow_x", "srow_y", "srow_z"):
        hdr[row] = 0.0
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(np.asarray(arr), None, header=hdr), str(path))


def make_inputs(ws: Path) -> None:
    """Write every input file the cases use into ``ws``."""
    fixed = _smooth(SHAPE, 0)
    _save(ws / "fixed.nii.gz", fixed)
    _save(ws / "moving.nii.gz", np.roll(fixed, 1, axis=0))
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:20, 4:20, 4:20] = 1
    _save(ws / "mask.nii.gz", mask)
    _save(ws / "mask_other.nii.gz", mask[:20])
    _save(ws / "empty_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    _save(ws / "constant.nii.gz", np.full(SHAPE, 100, np.float32))
    inside = fixed.copy()
    inside[mask > 0] = 500
    _save(ws / "constant_in_mask.nii.gz", inside)
    nan = fixed.copy()
    nan[3, 4, 5] = np.nan
    _save(ws / "nan.nii.gz", nan)
    _save(ws / "other_shape.nii.gz", fixed[:20])
    _save(ws / "twod.nii.gz", fixed[:, :, 0])
    _save(ws / "fourd.nii.gz", np.stack([fixed, fixed], -1))
    _save(ws / "slab.nii.gz", _smooth((48, 48, 3), 1))
    _save_singular(ws / "singular.nii.gz", fixed)
    data = (ws / "fixed.nii.gz").read_bytes()
    (ws / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    (ws / "text.nii.gz").write_text("this is not an image\n")
    (ws / "empty.nii.gz").write_bytes(b"")
    (ws / "junk.nii.gz").write_bytes(gzip.compress(b"\x00junk" * 100))
    (ws / "text.nrrd").write_text("hello\n")
    (ws / "folder.nii.gz").mkdir()
    (ws / "outdir").mkdir()
    (ws / "bad.yaml").write_text("optim:\n  reg_weight: [1\n  peak_lr: : 3\n")
    (ws / "list.yaml").write_text("- 1\n- 2\n")
    (ws / "points.csv").write_text("x,y,z\n1,2,3\n4,5,6\n")
    (ws / "bad_points.csv").write_text("1,2\n3,4\n")
    # a zero field on the fixed grid for warp
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 3), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(ws / "zero_field.nii.gz"))
    # the tiny Learn2Reg dataset and zero fields for it
    ds = make_tiny_learn2reg(ws / "ds", n_pairs=2)
    fields = ws / "fields"
    fields.mkdir()
    for key in ("0001_0001", "0002_0002"):
        nib.save(nib.Nifti1Image(np.zeros((32, 32, 32, 3), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])),
                 str(fields / f"disp_{key}.nii.gz"))
    for name in ("ds_corrupt", "ds_trunc", "ds_kp_rows", "ds_kp_header"):
        shutil.copytree(ds, ws / name)
    (ws / "ds_corrupt" / "imagesTr" / "TINY_0001_0001.nii.gz").write_bytes(b"not a nifti")
    m = ws / "ds_trunc" / "imagesTr" / "TINY_0001_0001.nii.gz"
    m.write_bytes(m.read_bytes()[: m.stat().st_size // 2])
    kp = ws / "ds_kp_rows" / "keypointsTr" / "TINY_0001_0001.csv"
    kp.write_text("\n".join(kp.read_text().splitlines()[:-5]) + "\n")  # 5 rows fewer than the fixed file
    kp = ws / "ds_kp_header" / "keypointsTr" / "TINY_0001_0000.csv"
    kp.write_text("x,y,z\n" + kp.read_text())
    nan_fields = ws / "fields_nan"
    shutil.copytree(fields, nan_fields)
    arr = np.zeros((32, 32, 32, 3), np.float32)
    arr[5, 6, 7, 0] = np.nan
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0])), str(nan_fields / "disp_0001_0001.nii.gz"))
    bad_shape = ws / "fields_shape"
    shutil.copytree(fields, bad_shape)
    nib.save(nib.Nifti1Image(np.zeros((30, 32, 32, 3), np.float32), np.eye(4)), str(bad_shape / "disp_0002_0002.nii.gz"))
    missing = ws / "fields_missing"
    shutil.copytree(fields, missing)
    (missing / "disp_0002_0002.nii.gz").unlink()
    (ws / "ds_badjson").mkdir()
    (ws / "ds_badjson" / "TINY_dataset.json").write_text("{ not json")
    (ws / "afile").write_text("a file\n")
    (ws / "ro").mkdir()
    (ws / "small").mkdir()


# ----------------------------------------------------------------------------------------------------------- runners
def _run(argv, cwd: Path, timeout=240, prefix=None):
    cmd = [*CLI, *argv]
    if prefix:
        cmd = ["unshare", "-m", "sh", "-c", prefix + " && exec " + " ".join(_q(c) for c in cmd)]
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _q(s: str) -> str:
    return "'" + str(s).replace("'", "'\\''") + "'"


def run_ctrl_c(case: Case, ws: Path):
    """Start a long registration, send SIGINT once it optimises, expect exit 130 and one line."""
    out = ws / "ctrlc" / "disp.nii.gz"
    argv = ["-v", "register", str(ws / "fixed.nii.gz"), str(ws / "moving.nii.gz"), "-o", str(out), "--threads", "1",
            "--set", "optim.schedule.total_steps=100000", "--set", "engine.log_every=1"]
    proc = subprocess.Popen([*CLI, *argv], cwd=ws, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait until the optimisation logs its first steps (-v, engine.log_every=1), at most 240 s
    t0 = time.time()
    while time.time() - t0 < 240:
        line = proc.stderr.readline()
        if not line or re.search(r"step\s*\d+", line, re.I):
            break
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=60)
    err = rest  # lines after the interrupt (the -v log before it is not the answer)
    if out.exists():
        return proc.returncode, stdout, err + "\n(output exists after Ctrl-C)"
    return proc.returncode, stdout, err


def run_sigkill_resume(case: Case, ws: Path):
    """SIGKILL a run after its first pair, run it again: every pair ends up done and in runtimes.json."""
    out = ws / "killed"
    argv = ["run", str(ws / "ds"), "-o", str(out), "--no-bar", "--threads", "1", *SETS]
    proc = subprocess.Popen([*CLI, *argv], cwd=ws, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 120 and not list(out.glob("disp_*.nii.gz")):
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    rc, stdout, err = _run(argv, ws)
    log = json.loads((out / "runtimes.json").read_text()) if (out / "runtimes.json").is_file() else {}
    if sorted(log.get("cases", {})) != ["0001_0001", "0002_0002"]:
        err += f"\nruntimes.json cases after resume: {sorted(log.get('cases', {}))}"
        rc = 99
    return rc, stdout, err


def run_concurrent(case: Case, ws: Path):
    """Two `contreg run` processes on one folder, started 1 s apart: both exit 0, runtimes.json keeps every pair."""
    ds = ws / "ds4"
    if not ds.exists():
        make_tiny_learn2reg(ds, n_pairs=4)
    out = ws / "concurrent"
    argv = ["run", str(ds), "-o", str(out), "--no-bar", "--threads", "1", *SETS]
    a = subprocess.Popen([*CLI, *argv], cwd=ws, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    b = subprocess.Popen([*CLI, *argv], cwd=ws, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (oa, ea), (ob, eb) = a.communicate(timeout=300), b.communicate(timeout=300)
    log = json.loads((out / "runtimes.json").read_text())
    keys = sorted(log["cases"])
    rc = a.returncode or b.returncode
    msg = f"runtimes.json cases {keys}"
    if keys != ["0001_0001", "0002_0002", "0003_0003", "0004_0004"]:
        rc = 99
    return rc, oa + ob + msg, ea + eb


# ----------------------------------------------------------------------------------------------------------- checks
def _no_file(rel: str) -> Callable[[Path], str | None]:
    def check(ws: Path) -> str | None:
        return f"{rel} was written" if (ws / rel).exists() else None
    return check


def _log_has(rel: str, failure: str, done: str) -> Callable[[Path], str | None]:
    def check(ws: Path) -> str | None:
        log = json.loads((ws / rel).read_text())
        if failure not in log.get("failures", {}) or done not in log.get("cases", {}):
            return f"runtimes.json: failures {list(log.get('failures', {}))}, cases {list(log.get('cases', {}))}"
        return None
    return check


def cases(ws: Path, can_mount: bool) -> list[Case]:
    W = str(ws)
    f, m = f"{W}/fixed.nii.gz", f"{W}/moving.nii.gz"
    out = f"{W}/out/disp.nii.gz"
    reg = ["register", "--threads", "1", *SETS]

    def R(fixed=f, moving=m, *extra, o=out):
        return [*reg, fixed, moving, "-o", o, *extra]

    ro_prefix = f"mount --bind -o ro {_q(W + '/ro')} {_q(W + '/ro')}" if can_mount else None
    small_prefix = f"mount -t tmpfs -o size=64k tmpfs {_q(W + '/small')}" if can_mount else None
    L = []
    add = L.append
    # ---- register: inputs
    add(Case("register/missing fixed", R(f"{W}/nope.nii.gz"), 2, r"register: fixed file '.*nope\.nii\.gz' does not exist"))
    add(Case("register/missing mask", R(f, m, "--fixed-mask", f"{W}/nomask.nii.gz"), 2, r"fixed_mask file '.*nomask\.nii\.gz' does not exist"))
    add(Case("register/text named .nii.gz", R(f"{W}/text.nii.gz"), 2,
             r"cannot read fixed file '.*text\.nii\.gz': the name ends in \.gz but the file is not gzip-compressed: it holds text"))
    add(Case("register/truncated .nii.gz", R(f"{W}/trunc.nii.gz"), 2,
             r"cannot read fixed file '.*trunc\.nii\.gz': truncated gzip data: the compressed stream ends early"))
    add(Case("register/empty file", R(f"{W}/empty.nii.gz"), 2, r"cannot read fixed file '.*empty\.nii\.gz': the file is empty \(0 bytes\)"))
    add(Case("register/gzip of junk", R(f"{W}/junk.nii.gz"), 2, r"cannot read fixed file '.*junk\.nii\.gz': not a NIfTI file"))
    add(Case("register/text named .nrrd", R(f"{W}/text.nrrd"), 2, r"cannot read fixed file '.*text\.nrrd': ITK cannot read it: it holds text"))
    add(Case("register/folder named .nii.gz", R(f"{W}/folder.nii.gz"), 2, r"fixed file '.*folder\.nii\.gz' is a folder, not an image file"))
    add(Case("register/shape mismatch", R(f, f"{W}/other_shape.nii.gz"), 2,
             r"all inputs must share one grid; got fixed \(24, 24, 24\), moving \(20, 24, 24\)"))
    add(Case("register/mask shape mismatch", R(f, m, "--fixed-mask", f"{W}/mask_other.nii.gz"), 2,
             r"all inputs must share one grid; got .*fixed_mask \(20, 24, 24\)"))
    add(Case("register/2-D image", R(f"{W}/twod.nii.gz"), 2, r"fixed file '.*twod\.nii\.gz' must hold one 3-D volume, its header gives shape \(24, 24\)"))
    add(Case("register/4-D image", R(f"{W}/fourd.nii.gz"), 2, r"must hold one 3-D volume, its header gives shape \(24, 24, 24, 2\)"))
    add(Case("register/NaN voxel", R(f"{W}/nan.nii.gz"), 2, r"register: fixed contains 1 NaN or infinite value"))
    add(Case("register/empty mask", R(f, m, "--fixed-mask", f"{W}/empty_mask.nii.gz"), 2, r"fixed_mask is empty"))
    add(Case("register/constant fixed", R(f"{W}/constant.nii.gz"), 2, r"register: fixed image is constant \(every voxel 100\): it has no structure to register",
             check=_no_file("out/disp.nii.gz")))
    add(Case("register/constant inside mask", R(f"{W}/constant_in_mask.nii.gz", m, "--fixed-mask", f"{W}/mask.nii.gz"), 2,
             r"register: fixed image is constant inside its mask"))
    add(Case("register/singular affine", R(f"{W}/singular.nii.gz"), 2, r"fixed file '.*singular\.nii\.gz' has a singular voxel-to-world matrix"))
    add(Case("register/48x48x3 slab", R(f"{W}/slab.nii.gz", f"{W}/slab.nii.gz"), 2, r"has shape \(48, 48, 3\): too thin to register"))
    # ---- register: outputs and options
    add(Case("register/bad output extension", R(o=f"{W}/out/disp.txt"), 2, r"output path '.*disp\.txt' must end with one of"))
    add(Case("register/output is a folder", R(o=f"{W}/outdir"), 2, r"-o/--output '.*outdir' is an existing folder"))
    add(Case("register/output below a file", R(o=f"{W}/afile/disp.nii.gz"), 2, r"'.*afile' is a file, not a folder"))
    add(Case("register/read-only output folder", R(o=f"{W}/ro/disp.nii.gz"), 2, r"cannot write into '.*ro' \(Read-only file system\)",
             namespace=ro_prefix))
    add(Case("register/disk full", R(o=f"{W}/small/disp.nii.gz"), 2, r"not enough free disk space in '.*small': 0\.1 MB free",
             namespace=small_prefix))
    add(Case("register/unknown preset", [*R(), "--preset", "i0"], 2, r"unknown preset 'i0'.*Did you mean"))
    add(Case("register/unknown --set key", [*R(), "--set", "optim.reg_weigth=1"], 2, r"Did you mean 'reg_weight'"))
    add(Case("register/ill-typed --set value", [*R(), "--set", "optim.reg_weight=abc"], 2, r"config\.optim\.reg_weight expects float, got 'abc'"))
    add(Case("register/--set without =", [*R(), "--set", "optim.reg_weight"], 2, r"must look like 'key\.sub=value'"))
    add(Case("register/missing --config", [*R(), "--config", f"{W}/nope.yaml"], 2, r"config file '.*nope\.yaml' does not exist"))
    add(Case("register/malformed --config YAML", [*R(), "--config", f"{W}/bad.yaml"], 2,
             r"cannot parse '.*bad\.yaml': line 3, column \d+: ", max_lines=1))
    add(Case("register/--config not a mapping", [*R(), "--config", f"{W}/list.yaml"], 2, r"must hold a mapping, got list"))
    add(Case("register/--threads abc", [*R(), "--threads", "abc"], 2, r"argument --threads: invalid int value: 'abc'", max_lines=None))
    add(Case("register/--device cuda without CUDA", [*R(), "--device", "cuda"], 2, r"CUDA is not available"))
    add(Case("register/Ctrl-C during optimisation", [], 130, r"contreg register: interrupted \(Ctrl-C\)[^\n]*\s*\Z", max_lines=None,
             runner=run_ctrl_c))
    add(Case("register/valid pair (control)", R(o=f"{W}/ok/disp.nii.gz"), 0, "", stdout_pattern=r"wrote .*disp\.nii\.gz  steps 3"))
    # ---- register-native
    nat = ["register-native", "--threads", "1", *SETS, f, m]
    add(Case("register-native/--working-spacing abc", [*nat, "-o", out, "--working-spacing", "abc"], 2,
             r"argument --working-spacing: expected one spacing in mm or three comma-separated .* got 'abc'", max_lines=None))
    add(Case("register-native/--working-spacing 0", [*nat, "-o", out, "--working-spacing=0,1,1"], 2,
             r"argument --working-spacing: .*each > 0; got '0,1,1'", max_lines=None))
    add(Case("register-native/no output", nat, 2, r"give -o/--output \(Learn2Reg field\) and/or --itk"))
    add(Case("register-native/bad --itk extension", [*nat, "--itk", f"{W}/t.txt"], 2, r"--itk: path '.*t\.txt' must end with one of"))
    add(Case("register-native/singular affine", ["register-native", f"{W}/singular.nii.gz", m, "-o", out], 2, r"singular voxel-to-world matrix"))
    add(Case("register-native/mask on another grid", [*nat, "-o", out, "--fixed-mask", f"{W}/mask_other.nii.gz"], 2,
             r"fixed_mask has grid \(20, 24, 24\), its image fixed has \(24, 24, 24\)"))
    # ---- run
    run = ["run", "--no-bar", "--threads", "1", *SETS]
    add(Case("run/missing dataset", [*run, f"{W}/nods", "-o", f"{W}/r1"], 2, r"does not exist"))
    add(Case("run/malformed dataset json", [*run, f"{W}/ds_badjson", "-o", f"{W}/r1"], 2, r"TINY_dataset\.json"))
    add(Case("run/unknown split", [*run, f"{W}/ds", "--split", "vall", "-o", f"{W}/r1"], 2, r"Did you mean 'val'"))
    add(Case("run/unknown --format", [*run, f"{W}/ds", "--format", "mha", "-o", f"{W}/r1"], 2, r"--format: unknown field format 'mha'"))
    add(Case("run/output is a file", [*run, f"{W}/ds", "-o", f"{W}/afile"], 2, r"-o/--output '.*afile' is a file; give a folder"))
    add(Case("run/read-only output folder", [*run, f"{W}/ds", "-o", f"{W}/ro/run"], 2, r"cannot write into '.*ro' \(Read-only file system\)",
             namespace=ro_prefix))
    add(Case("run/disk too small", [*run, f"{W}/ds", "-o", f"{W}/small/run"], 2, r"not enough free disk space in '.*small'",
             namespace=small_prefix))
    add(Case("run/unreadable pair (pre-flight)", [*run, f"{W}/ds_corrupt", "-o", f"{W}/r2"], 2,
             r"run: 1 of 2 pairs have unusable inputs: pair 0001_0001: cannot read moving file '.*TINY_0001_0001\.nii\.gz': the name ends in \.gz",
             max_lines=1, check=_no_file("r2")))
    add(Case("run/failing pair (truncated voxels)", [*run, f"{W}/ds_trunc", "-o", f"{W}/r3"], 1,
             r"\[1/2\] 0001_0001 FAILED after [0-9.]+s: UserInputError: register: cannot read moving file '.*': truncated gzip data",
             check=_log_has("r3/runtimes.json", "0001_0001", "0002_0002")))
    add(Case("run/SIGKILL then resume", [], 0, "", runner=run_sigkill_resume))
    add(Case("run/two runs on one folder", [], 0, "", runner=run_concurrent, max_lines=None,
             stdout_pattern=r"runtimes\.json cases \['0001_0001', '0002_0002', '0003_0003', '0004_0004'\]"))
    # ---- evaluate
    ev = ["evaluate", f"{W}/ds"]
    add(Case("evaluate/NaN in a field", [*ev, f"{W}/fields_nan"], 2,
             r"pair 0001_0001 \(field disp_0001_0001\.nii\.gz in '.*fields_nan'\): the field holds 1 NaN or infinite value"))
    add(Case("evaluate/keypoint row counts differ", ["evaluate", f"{W}/ds_kp_rows", f"{W}/fields"], 2,
             r"pair 0001_0001 .*fixed keypoints '.*TINY_0001_0000\.csv' have (\d+) rows, moving keypoints '.*TINY_0001_0001\.csv' have \d+; they must pair up"))
    add(Case("evaluate/keypoint CSV with a header", ["evaluate", f"{W}/ds_kp_header", f"{W}/fields"], 0, "",
             stdout_pattern=r"TINY registration_val: 2 pairs"))
    add(Case("evaluate/missing field", [*ev, f"{W}/fields_missing"], 2, r"0002_0002"))
    add(Case("evaluate/field of the wrong shape", [*ev, f"{W}/fields_shape"], 2, r"disp_0002_0002.*\(30, 32, 32"))
    add(Case("evaluate/missing fields folder", [*ev, f"{W}/nofields"], 2, r"fields '.*nofields' does not exist"))
    add(Case("evaluate/--json is a folder", [*ev, f"{W}/fields", "--json", f"{W}/outdir"], 2, r"--json '.*outdir' is an existing folder"))
    # ---- submit
    add(Case("submit/missing field", ["submit", f"{W}/fields_missing", "--dataset", f"{W}/ds", "-o", f"{W}/s.zip"], 2, r"0002_0002"))
    add(Case("submit/output not .zip", ["submit", f"{W}/fields", "--dataset", f"{W}/ds", "-o", f"{W}/s.tar"], 2, r"must be a \.zip file"))
    add(Case("submit/read-only output", ["submit", f"{W}/fields", "--dataset", f"{W}/ds", "-o", f"{W}/ro/s.zip"], 2,
             r"cannot write into '.*ro' \(Read-only file system\)", namespace=ro_prefix))
    # ---- warp
    add(Case("warp/missing field", ["warp", "--field", f"{W}/nofield.nii.gz", "--image", m, f"{W}/w.nii.gz"], 2,
             r"--field '.*nofield\.nii\.gz' does not exist"))
    add(Case("warp/missing image", ["warp", "--field", f"{W}/zero_field.nii.gz", "--image", f"{W}/noimg.nii.gz", f"{W}/w.nii.gz"], 2,
             r"--image IN '.*noimg\.nii\.gz' does not exist"))
    add(Case("warp/output is a folder", ["warp", "--field", f"{W}/zero_field.nii.gz", "--image", m, f"{W}/outdir"], 2,
             r"--image OUT '.*outdir' is an existing folder"))
    add(Case("warp/malformed points CSV", ["warp", "--field", f"{W}/zero_field.nii.gz", "--points", f"{W}/bad_points.csv", f"{W}/p.csv"], 2,
             r"bad_points\.csv"))
    add(Case("warp/points CSV with a header", ["warp", "--field", f"{W}/zero_field.nii.gz", "--points", f"{W}/points.csv", f"{W}/p.csv"], 0,
             "", stdout_pattern=r"wrote .*p\.csv"))
    # ---- download
    add(Case("download/unreachable host", ["download", "nlst", f"{W}/dl", "--url", "http://127.0.0.1:9/NLST.zip"], 1,
             r"cannot reach http://127\.0\.0\.1:9/NLST\.zip"))
    add(Case("download/unknown dataset", ["download", "nlsd", f"{W}/dl"], 2, r"Did you mean 'nlst'"))
    return L


def _can_mount(ws: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    d = ws / ".probe"
    d.mkdir(exist_ok=True)
    p = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {_q(str(d))}"], capture_output=True)
    return p.returncode == 0


def _meaningful(stderr: str) -> list[str]:
    """stderr lines that are messages (progress-bar redraws dropped)."""
    lines = []
    for line in re.split(r"[\r\n]+", stderr):
        if not line.strip() or re.search(r"\d+%\|", line):
            continue
        lines.append(line)
    return lines


def run_case(case: Case, ws: Path) -> Result:
    t0 = time.time()
    if case.namespace is None and case.name.endswith(("read-only output folder", "disk full", "disk too small", "read-only output")):
        return Result(case, "SKIP", "needs root and unshare -m (a private mount)", 0.0)
    if case.name.endswith("without CUDA"):
        import torch

        if torch.cuda.is_available():
            return Result(case, "SKIP", "CUDA is available here", 0.0)
    try:
        if case.runner is not None:
            rc, out, err = case.runner(case, ws)
        else:
            rc, out, err = _run(case.argv, ws, prefix=case.namespace)
    except subprocess.TimeoutExpired:
        return Result(case, "FAIL", "timed out", time.time() - t0)
    lines = _meaningful(err)
    message = lines[-1] if lines else (out.strip().splitlines()[-1] if out.strip() else "")
    problems = []
    if rc != case.rc:
        problems.append(f"exit {rc}, expected {case.rc}")
    if case.pattern and not re.search(case.pattern, err, re.M):
        problems.append(f"stderr does not match {case.pattern!r}")
    if case.stdout_pattern and not re.search(case.stdout_pattern, out, re.M):
        problems.append(f"stdout does not match {case.stdout_pattern!r}")
    if "Traceback" in err:
        problems.append("traceback printed")
    if case.max_lines is not None and len(lines) > case.max_lines:
        problems.append(f"{len(lines)} stderr lines (at most {case.max_lines})")
    if case.check is not None and not problems:
        why = case.check(ws)
        if why:
            problems.append(why)
    status = "FAIL" if problems else "PASS"
    detail = "; ".join(problems)
    if problems:
        detail += "\n      stderr: " + "\n      ".join(err.strip().splitlines()[-12:])
    return Result(case, status, detail, time.time() - t0, message)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("-k", default="", help="run only cases whose name contains this")
    ap.add_argument("--keep", help="workspace folder to keep (default: a temporary one, deleted)")
    args = ap.parse_args(argv)
    tmp = None
    if args.keep:
        ws = Path(args.keep).resolve()
        ws.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="contreg_faults_")
        ws = Path(tmp.name)
    t0 = time.time()
    make_inputs(ws)
    all_cases = [c for c in cases(ws, _can_mount(ws)) if args.k in c.name]
    # the fault injections that time themselves run alone, after the others
    timed = [c for c in all_cases if c.runner is not None]
    plain = [c for c in all_cases if c.runner is None]
    results: list[Result] = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for res in pool.map(lambda c: run_case(c, ws), plain):
            results.append(res)
            _print(res)
    for c in timed:
        res = run_case(c, ws)
        results.append(res)
        _print(res)
    n = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(f"\n{n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped of {len(results)} cases in {time.time() - t0:.0f}s")
    if tmp is not None:
        tmp.cleanup()
    return 1 if n["FAIL"] else 0


def _print(res: Result) -> None:
    line = f"{res.status}  {res.case.name:<42} ({res.seconds:4.1f}s)  {res.message}"
    print(line + (f"\n      {res.detail}" if res.detail else ""), flush=True)


if __name__ == "__main__":
    sys.exit(main())
