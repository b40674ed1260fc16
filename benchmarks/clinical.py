"""A COPDgene-like pair, registered as a clinic would: DICOM fixed, NIfTI moving, no masks, defaults, the CLI.

    python benchmarks/clinical.py [--case 0102] [--threads 2] [--work DIR] [--extra "--working-spacing 1.5"]
        [--skip-clinical] [--skip-isotropic] [--json results.json]

1. Builds the pair from nlst_synth pair ``--case`` (224x192x224 at 1.5 mm, int16 HU, lung masks, exact
   keypoints): the fixed image re-gridded (trilinear, world frame kept) to 0.65 x 0.65 x 2.5 mm over the same
   field of view (515x443x134 voxels), int16 HU, source padding (< -1500 HU) written as -3024, stored as a DICOM
   series (rescale slope 1, intercept -1024, LPS identity orientation: RAS affine diag(-0.65, -0.65, 2.5)) in a
   folder that also holds a 3-slice localiser; the moving image re-gridded to 0.70 x 0.70 x 2.5 mm (RAS affine
   diag(0.7, 0.7, 2.5): array axes 0 and 1 run opposite to the fixed image's), padding -2000, as NIfTI.
   The masks are NOT given.
2. DIR-Lab-style landmark files (1-based voxel indices, 3 decimals, one ``x y z`` row per landmark) of the
   exact keypoints on each clinical grid, with their stated spacing.
3. ``contreg register-native FIXED_DIR MOVING.nii.gz -o disp.nii.gz --threads N [EXTRA]`` in a subprocess:
   wall time, peak memory (the child's maximum resident set, VmHWM), and the TRE in world mm of the landmarks
   read back from the files (fixed landmarks mapped by the field, compared with the moving ones).
4. The reference: the original 1.5 mm pair with its lung masks through the same command
   (``--fixed-mask/--moving-mask``), scored with the same world keypoints.

Targets (issue 11): TRE within 0.1 mm of the 1.5 mm masked run, wall time <= 1.5x, peak <= 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA  # noqa: E402

FIXED_SPACING = (0.65, 0.65, 2.5)
MOVING_SPACING = (0.70, 0.70, 2.5)
SERIES_UID = "1.2.826.0.1.3680043.8.498.1111.2"
SCOUT_UID = "1.2.826.0.1.3680043.8.498.1111.1"


def clinical_grid(src_affine: np.ndarray, src_shape, spacing, signs) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A diagonal RAS grid at ``spacing`` over the source's (diagonal, RAS) field of view; axis k runs along
    world axis k in direction ``signs[k]``."""
    lo = src_affine[:3, 3]
    hi = lo + np.diag(src_affine)[:3] * (np.asarray(src_shape) - 1)
    ext = hi - lo
    shape = tuple(int(np.floor(e / s)) + 1 for e, s in zip(ext, spacing))
    aff = np.eye(4)
    for k in range(3):
        aff[k, k] = signs[k] * spacing[k]
        aff[k, 3] = lo[k] if signs[k] > 0 else lo[k] + (shape[k] - 1) * spacing[k]
    return aff, shape


def regrid_hu(img: np.ndarray, src_aff: np.ndarray, dst_aff: np.ndarray, shape, padding: float) -> np.ndarray:
    """Trilinear resampling in the world frame -> int16 HU; source padding (< -1500) -> ``padding``."""
    from monai_contreg.spatial.resample import resample_image

    t = torch.as_tensor(img.astype(np.float32))[None, None]
    out = resample_image(t, src_aff, dst_aff, shape, mode="bilinear", padding_mode="border")[0, 0].numpy()
    pad = resample_image((t < -1500).float(), src_aff, dst_aff, shape, mode="nearest", padding_mode="border")[0, 0].numpy() > 0
    out = np.round(np.clip(out, -1024, 3071))
    out[pad] = padding
    return out.astype(np.int16)


def build(case: str, data: Path, work: Path) -> dict:
    import nibabel as nib

    from monai_contreg.data.keypoints import load_keypoints
    from monai_contreg.data.landmarks import save_landmarks_voxel
    from monai_contreg.io.images import save_dicom_series
    from monai_contreg.spatial.conventions import points_voxel_to_world, points_world_to_voxel

    f_nii = nib.load(str(data / "imagesTr" / f"NLSTB_{case}_0000.nii.gz"))
    m_nii = nib.load(str(data / "imagesTr" / f"NLSTB_{case}_0001.nii.gz"))
    f_aff, m_aff = f_nii.affine, m_nii.affine
    fk = points_voxel_to_world(load_keypoints(data / "keypointsTr" / f"NLSTB_{case}_0000.csv"), f_aff)
    mk = points_voxel_to_world(load_keypoints(data / "keypointsTr" / f"NLSTB_{case}_0001.csv"), m_aff)
    cf_aff, cf_shape = clinical_grid(f_aff, f_nii.shape, FIXED_SPACING, (-1, -1, 1))  # LPS identity
    cm_aff, cm_shape = clinical_grid(m_aff, m_nii.shape, MOVING_SPACING, (1, 1, 1))
    fixed = regrid_hu(np.asarray(f_nii.dataobj), f_aff, cf_aff, cf_shape, -3024)
    moving = regrid_hu(np.asarray(m_nii.dataobj), m_aff, cm_aff, cm_shape, -2000)
    dicom = work / "fixed_dicom"
    save_dicom_series(dicom, fixed, cf_aff, SERIES_UID, description="CHEST INSP 2.5mm", series_number=2,
                      rescale=(1.0, -1024.0))
    scout_aff = np.diag([-2.0, -2.0, 10.0, 1.0])
    scout_aff[:3, 3] = cf_aff[:3, 3]
    save_dicom_series(dicom, fixed[::3, ::3, ::40][:, :, :3].astype(np.float32), scout_aff, SCOUT_UID,
                      description="TOPOGRAM", series_number=1, rescale=(1.0, -1024.0))
    nib.save(nib.Nifti1Image(moving, cm_aff), str(work / "moving.nii.gz"))
    save_landmarks_voxel(work / "fixed_landmarks.txt", points_world_to_voxel(fk, cf_aff))
    save_landmarks_voxel(work / "moving_landmarks.txt", points_world_to_voxel(mk, cm_aff))
    return {"fixed_shape": cf_shape, "moving_shape": cm_shape, "fixed_affine": cf_aff, "moving_affine": cm_aff,
            "fixed_kp_world": fk, "moving_kp_world": mk}


def run_cli(args: list[str], threads: int) -> dict:
    """Run ``contreg ARGS`` in a child process: exit code, wall time, peak resident memory (GiB), output."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "monai_contreg.cli", *args]
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read()
    return {"cmd": "contreg " + shlex.join(args), "rc": os.waitstatus_to_exitcode(status), "seconds": wall,
            "peak_gib": usage.ru_maxrss / 2**20, "output": text.strip().splitlines()[-3:]}


def score(field: Path, fixed_affine, fixed_world, moving_world) -> dict:
    import nibabel as nib

    from monai_contreg.spatial.conventions import learn2reg_to_ddf
    from monai_contreg.spatial.resample import map_points_world

    ddf = learn2reg_to_ddf(np.asarray(nib.load(str(field)).dataobj)).double()
    moved = map_points_world(torch.as_tensor(fixed_world), ddf, fixed_affine)
    tre = (moved - torch.as_tensor(moving_world)).norm(dim=-1)
    tre0 = (torch.as_tensor(fixed_world) - torch.as_tensor(moving_world)).norm(dim=-1)
    return {"tre": float(tre.mean()), "tre_p95": float(np.percentile(tre.numpy(), 95)), "tre_initial": float(tre0.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("CONTREG_NLST_SYNTH", DEFAULT_DATA)))
    ap.add_argument("--case", default="0102")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, help="folder for the built pair and fields (default: a temporary one)")
    ap.add_argument("--extra", default="", help="extra options for the clinical run, e.g. '--working-spacing 1.5'")
    ap.add_argument("--skip-clinical", action="store_true")
    ap.add_argument("--skip-isotropic", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from monai_contreg.data.landmarks import load_dirlab_landmarks
    from monai_contreg.io.images import load_image

    tmp = None if args.work else tempfile.TemporaryDirectory()
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pair = build(args.case, args.data, work)
    print(f"built {args.case}: fixed DICOM {pair['fixed_shape']} at {FIXED_SPACING} mm (+ a 3-slice localiser), "
          f"moving NIfTI {pair['moving_shape']} at {MOVING_SPACING} mm ({time.perf_counter() - t0:.0f} s); {work}", flush=True)
    results = {"case": args.case, "threads": args.threads}
    threads = ["--threads", str(args.threads)]
    if not args.skip_clinical:
        out = work / "disp_clinical.nii.gz"
        run = run_cli(["register-native", str(work / "fixed_dicom"), str(work / "moving.nii.gz"), "-o", str(out),
                       *threads, *shlex.split(args.extra)], args.threads)
        if run["rc"] == 0:
            f_aff = np.asarray(load_image(work / "fixed_dicom").affine)
            fixed_world = load_dirlab_landmarks(work / "fixed_landmarks.txt", FIXED_SPACING, affine=f_aff)
            moving_world = load_dirlab_landmarks(work / "moving_landmarks.txt", MOVING_SPACING, affine=pair["moving_affine"])
            run.update(score(out, f_aff, fixed_world, moving_world))
        results["clinical"] = run
        _print("clinical (DICOM + NIfTI, no masks, defaults)", run)
    if not args.skip_isotropic:
        d = args.data
        out = work / "disp_isotropic.nii.gz"
        run = run_cli(["register-native", str(d / "imagesTr" / f"NLSTB_{args.case}_0000.nii.gz"),
                       str(d / "imagesTr" / f"NLSTB_{args.case}_0001.nii.gz"), "-o", str(out),
                       "--fixed-mask", str(d / "masksTr" / f"NLSTB_{args.case}_0000.nii.gz"),
                       "--moving-mask", str(d / "masksTr" / f"NLSTB_{args.case}_0001.nii.gz"), *threads], args.threads)
        if run["rc"] == 0:
            import nibabel as nib

            run.update(score(out, nib.load(str(d / "imagesTr" / f"NLSTB_{args.case}_0000.nii.gz")).affine,
                             pair["fixed_kp_world"], pair["moving_kp_world"]))
        results["isotropic"] = run
        _print("isotropic 1.5 mm with masks", run)
    c, i = results.get("clinical", {}), results.get("isotropic", {})
    if "tre" in c and "tre" in i:
        results["targets"] = {
            "tre_diff_mm": c["tre"] - i["tre"], "tre_ok": c["tre"] - i["tre"] <= 0.1,
            "time_ratio": c["seconds"] / i["seconds"], "time_ok": c["seconds"] <= 1.5 * i["seconds"],
            "peak_gib": c["peak_gib"], "peak_ok": c["peak_gib"] <= 4.0,
        }
        t = results["targets"]
        print(f"targets: TRE diff {t['tre_diff_mm']:+.3f} mm (<= 0.1: {t['tre_ok']}), time ratio {t['time_ratio']:.2f} "
              f"(<= 1.5: {t['time_ok']}), peak {t['peak_gib']:.2f} GiB (<= 4: {t['peak_ok']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()


def _print(label: str, run: dict) -> None:
    if run["rc"] != 0:
        print(f"{label}: FAILED rc {run['rc']}: {run['output']}", flush=True)
        return
    print(f"{label}: TRE {run['tre']:.3f} mm (p95 {run['tre_p95']:.2f}, initial {run['tre_initial']:.2f})  "
          f"wall {run['seconds']:.1f} s  peak {run['peak_gib']:.2f} GiB\n    {run['cmd']}\n    {run['output'][-1]}", flush=True)


if __name__ == "__main__":
    main()
