"""Helpers shared by the benchmark scripts: nlst_synth pairs, per-process peak memory, metrics of a field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "nlst_synth"
REFERENCE_WORKER = Path(__file__).with_name("reference_convexadam_worker.py")


def nlst_pairs(data: Path) -> list[dict[str, str]]:
    """The ``registration_val`` pairs of a Learn2Reg-layout dataset: case id and file paths."""
    desc = next(iter(sorted(data.glob("*_dataset.json"))), None)
    if desc is None:
        raise SystemExit(f"no *_dataset.json in {data}")
    pairs = []
    for p in json.loads(desc.read_text())["registration_val"]:
        f = data / p["fixed"]
        m = data / p["moving"]
        case = f.name.split("_")[1]
        pairs.append({
            "case": case,
            "fixed": str(f), "moving": str(m),
            "fixed_mask": str(data / "masksTr" / f.name), "moving_mask": str(data / "masksTr" / m.name),
            "fixed_kp": str(data / "keypointsTr" / f.name.replace(".nii.gz", ".csv")),
            "moving_kp": str(data / "keypointsTr" / m.name.replace(".nii.gz", ".csv")),
        })
    return pairs


def field_metrics(ddf: torch.Tensor, pair: dict[str, str]) -> dict[str, float]:
    """TRE (mm), true SDlogJ, Learn2Reg SDlogJ and folding % of a (1, 3, H, W, D) voxel field for one pair."""
    import nibabel as nib

    from monai_contreg.data.keypoints import load_keypoints
    from monai_contreg.evaluation.metrics import jacobian_statistics, keypoint_tre
    from monai_contreg.spatial.conventions import spacing_from_affine

    spacing = spacing_from_affine(nib.load(pair["fixed"]).affine)
    fk, mk = load_keypoints(pair["fixed_kp"]), load_keypoints(pair["moving_kp"])
    tre = keypoint_tre(ddf, fk, mk, spacing)
    tre0 = keypoint_tre(torch.zeros_like(ddf), fk, mk, spacing)
    stats = jacobian_statistics(ddf)
    return {
        "tre_initial": float(tre0.mean()), "tre": float(tre.mean()), "tre_p95": float(np.percentile(tre.numpy(), 95)),
        "sdlogj": stats["sdlogj"], "sdlogj_official": stats["sdlogj_official"], "folding_percent": stats["folding_percent"],
    }


def reference_python(arg: str | None) -> str | None:
    """The interpreter of the reference ConvexAdam venv: --reference-python, $CONTREG_REFERENCE_PYTHON, or None."""
    cand = arg or os.environ.get("CONTREG_REFERENCE_PYTHON")
    if cand and Path(cand).is_file():
        return cand
    return None


def add_run_args(ap, with_json: bool = False) -> None:
    """The options every comparison script shares: the reference's interpreter, and the hidden worker mode."""
    import argparse

    ap.add_argument("--reference-python", default=None, help="python of a venv with convexadam (default: $CONTREG_REFERENCE_PYTHON)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference ConvexAdam")
    if with_json:
        ap.add_argument("--json", type=Path, help="also write all figures here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)


def worker_cmd(script: str, pair: dict, preset: str, threads: int, overrides: list[str] = (), *extra: str) -> list[str]:
    """The command line that re-runs ``script`` as a worker for one pair and preset (``--worker`` mode)."""
    cmd = [sys.executable, script, "--worker", json.dumps(pair), "--preset", preset, "--threads", str(threads), *extra]
    for s in overrides:
        cmd += ["--set", s]
    return cmd


def run_process(cmd: list[str], threads: int, env: dict | None = None) -> tuple[int, float, float, str, str]:
    """Run ``cmd`` with ``threads`` OpenMP/MKL threads (and ``env`` added); return its exit status, wall seconds,
    peak RSS (GiB, that process's own ``ru_maxrss`` from ``os.wait4``), stdout and stderr."""
    import tempfile
    import time

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **(env or {}))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 2**20, out.read(), err.read()  # KiB -> GiB


def run_child(cmd: list[str], threads: int) -> dict:
    """Run a worker ``cmd``; return its last stdout JSON line plus ``peak_gib`` and ``process_seconds``.

    ``peak_gib`` is that child's own maximum resident set size, from the kernel's resource usage of the
    finished process (``os.wait4``), so each figure belongs to one pair and one method.
    """
    returncode, wall, peak, stdout, stderr = run_process(cmd, threads)
    if returncode != 0 or not stdout.strip():
        sys.stderr.write(stderr[-4000:])
        return {"error": f"exit {returncode}", "peak_gib": peak, "process_seconds": wall}
    res = json.loads(stdout.strip().splitlines()[-1])
    res.update(peak_gib=peak, process_seconds=wall)
    return res


def run_reference(pair: dict, python: str, threads: int, device: str = "cpu") -> dict:
    """Run the reference ConvexAdam on one pair in its own venv (on ``device``) and score its field with our
    metric code."""
    import tempfile

    from monai_contreg.spatial.conventions import learn2reg_to_ddf

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "disp.npy")
        extra = [] if device == "cpu" else ["--device", device]
        res = run_child([python, str(REFERENCE_WORKER), pair["fixed"], pair["moving"], path, "--threads", str(threads), *extra],
                        threads)
        if "error" in res:
            return res
        res.update(field_metrics(learn2reg_to_ddf(np.load(path)).double(), pair))
    res.setdefault("register_peak_gib", res["peak_gib"])  # its process only registers (scored here, in ours)
    return res


def _vm_hwm_gib() -> float:
    """This process's peak resident set size so far (``VmHWM``, Linux), GiB; NaN where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def register_worker(pair: dict, preset: str, overrides: list[str], threads: int, steps: int | None = None) -> dict:
    """In a worker process: register one pair with a preset (+ overrides); figures and timings as a dict.

    ``steps``: shorten the schedules to this many steps (the longest level; breakpoints in proportion,
    :func:`monai_contreg.tuning.scale_schedule`), for a quick check of a script, not for figures."""
    import time

    from monai_contreg import get_preset, register

    from monai_contreg.kernels import extension_status

    torch.set_num_threads(threads)
    cfg = get_preset(preset).with_overrides(overrides)
    if steps:
        from monai_contreg.tuning import scale_schedule

        cfg = scale_schedule(cfg, steps)
    # the compiled kernels are built (first run on a machine) or loaded (from the cache) once per process, as in a
    # batch run: outside the per-pair time, reported on its own
    t_ext = time.perf_counter()
    kernels = extension_status()
    t_ext = time.perf_counter() - t_ext
    t0 = time.perf_counter()
    res = register(pair["fixed"], pair["moving"], fixed_mask=pair["fixed_mask"], moving_mask=pair["moving_mask"], config=cfg)
    seconds = time.perf_counter() - t0
    # the process's high-water mark now: registration only (scoring the field below allocates full-size
    # Jacobians of its own, which the child's whole-process peak ``peak_gib`` includes)
    out = {"seconds": seconds, "timings": res.timings, "steps": res.steps, "kernels": kernels,
           "kernel_load_s": t_ext, "register_peak_gib": _vm_hwm_gib()}
    out.update(field_metrics(res.ddf.as_tensor(), pair))
    return out
