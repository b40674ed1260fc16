"""Do exported ITK transforms mean in ITK (and ANTs) what they mean in `contreg warp`, for every header kind?

    python benchmarks/export_parity.py [--kinds all] [--ants /work/antsvenv/bin/python] [--json out.json]
    python benchmarks/export_parity.py --issue-pair WORKDIR [--ants PY]   # issue 23's 40x40x32 pair, via the CLI

Header kinds (:data:`KINDS`): NIfTI files whose readers disagree (sform/qform, no codes, sheared sform with a
qform, ...), ones they agree on (qform only with qfac -1, sform with a scanner code), a NRRD with non-orthogonal
directions, and one ITK cannot read at all (a sheared sform without a qform: the export must be refused). For each
kind a fixed and a moving image get that header (the moving one offset differently, so that a correction applied
to the wrong image shows), a smooth known field (voxels of the fixed grid, fixed -> moving) is exported
through :func:`monai_contreg.io.itk_transforms.save_itk_transform` with both files' ITK readings, and:

* ``contreg warp`` (:func:`monai_contreg.apply.apply_to_files` with the Learn2Reg field) warps the moving image
  and maps the fixed voxel centres to moving voxels;
* ITK (``itk.imread`` of the same files, ``itk.transformread`` of the ``.h5``, ``itk.resample_image_filter``
  with the fixed image as reference; ``TransformPoint``) does the same with the export;
* with ``--ants PY`` (a Python with ``antspyx``; it need not have monai_contreg) ANTs does it too
  (``ants.image_read``, ``ants.apply_transforms``, ``ants.apply_transforms_to_points``) with the ``.nii.gz``
  displacement image and the ``.h5``.

Point error: ``|B_m (v_tool - v_contreg)|`` mm, ``v`` the moving voxel a fixed voxel centre maps to and ``B_m``
the tool's reading of the moving image (mm in the tool's moving frame). Image error: mean and max
``|warped_tool - warped_contreg|`` over the fixed voxels whose mapped point lies at least one voxel inside the
moving image (intensities about 100 per standard deviation).

``--issue-pair`` rebuilds the issue's pair (40x40x32 at 1.5 mm; the fixed file's sform (code 2) and qform
(code 1) 6 mm apart; the moving image the fixed content shifted by a known (2.4, -1.6, 1.2) voxels), runs
``contreg register-native F M -o disp.nii.gz --itk tx.h5 --preset io-lr1`` and ``contreg warp --field``, applies
tx.h5 with ITK (the README recipe: reference image = fixed.nii.gz) and prints mean |warped - fixed| HU inside
the image (a 4-voxel margin) for: before registration, contreg warp, ITK; and the point error (mm) of ITK
against contreg warp. It uses only the CLI, nibabel and itk, so it runs on any version of the package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------------------------
# helpers that need only numpy, nibabel and itk (the ANTs worker imports this file too)

def itk_affine(img) -> np.ndarray:
    """An ITK image's geometry as a 4x4 RAS voxel-to-world matrix."""
    import itk

    d = np.asarray(itk.array_from_matrix(img.GetDirection()), dtype=np.float64)
    out = np.eye(4)
    flip = np.diag([-1.0, -1.0, 1.0])
    out[:3, :3] = flip @ d @ np.diag(np.asarray(img.GetSpacing(), dtype=np.float64))
    out[:3, 3] = flip @ np.asarray(img.GetOrigin(), dtype=np.float64)
    return out


def to_world(aff: np.ndarray, vox: np.ndarray) -> np.ndarray:
    return vox @ aff[:3, :3].T + aff[:3, 3]


def to_voxel(aff: np.ndarray, pts: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(aff)
    return pts @ inv[:3, :3].T + inv[:3, 3]


LPS = np.array([-1.0, -1.0, 1.0])


def itk_map_voxels(tx, fixed_aff_itk: np.ndarray, moving_aff_itk: np.ndarray, vox: np.ndarray) -> np.ndarray:
    """Fixed voxel centres ``(N, 3)`` -> moving voxels through an ITK transform, both images as ITK reads them."""
    pts = to_world(fixed_aff_itk, vox) * LPS
    out = np.array([list(tx.TransformPoint([float(v) for v in p])) for p in pts]) * LPS
    return to_voxel(moving_aff_itk, out)


def itk_warp(fixed_path: str, moving_path: str, tx) -> np.ndarray:
    """The moving image resampled by ITK onto the fixed image's grid, as ``[x, y, z]`` numpy (NaN outside)."""
    import itk

    fixed = itk.imread(fixed_path, itk.F)
    moving = itk.imread(moving_path, itk.F)
    out = itk.resample_image_filter(moving, transform=tx, use_reference_image=True, reference_image=fixed,
                                    default_pixel_value=float("nan"))
    return itk.array_from_image(out).transpose(2, 1, 0).astype(np.float64)


def read_h5(path: str):
    import itk

    (tx,) = itk.transformread(path)
    return tx


# ----------------------------------------------------------------------------------------------------------------
# the issue's pair, through the command line only

def issue_pair(work: Path, ants: str | None) -> dict:
    import nibabel as nib
    import itk
    from scipy import ndimage as ndi

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = (40, 40, 32)
    f = ndi.gaussian_filter(rng.standard_normal(n), 2.0)
    f = ((f - f.min()) / np.ptp(f) * 1300 - 1000).astype(np.float32)
    shift = np.array([2.4, -1.6, 1.2])  # voxels; moving(x) = fixed(x - shift): fixed x <-> moving x + shift
    m = ndi.shift(f.astype(np.float64), shift, order=3, mode="nearest").astype(np.float32)
    sform = np.diag([1.5, 1.5, 1.5, 1.0])
    qform = sform.copy()
    qform[:3, 3] = [6.0, 0.0, 0.0]  # the qform 6 mm away along x
    fimg = nib.Nifti1Image(f, sform)
    fimg.set_qform(qform, code=1)
    fimg.set_sform(sform, code=2)
    nib.save(fimg, work / "fixed.nii.gz")
    nib.save(nib.Nifti1Image(m, sform), work / "moving.nii.gz")
    run = lambda *a: subprocess.run(["contreg", *a], capture_output=True, text=True)  # noqa: E731
    fixed, moving = str(work / "fixed.nii.gz"), str(work / "moving.nii.gz")
    for p in ("disp.nii.gz", "tx.h5", "tx.nii.gz", "ours.nii.gz"):
        (work / p).unlink(missing_ok=True)
    r = run("register-native", fixed, moving, "-o", str(work / "disp.nii.gz"), "--itk", str(work / "tx.h5"),
            "--preset", "io-lr1", "--threads", "1")
    out = {"register_rc": r.returncode, "register_out": (r.stdout + r.stderr).strip().splitlines()[-3:]}
    if ants:  # the displacement-image form too, for ANTs (the same registration: deterministic on one thread)
        run("register-native", fixed, moving, "-o", str(work / "disp2.nii.gz"), "--itk", str(work / "tx.nii.gz"),
            "--preset", "io-lr1", "--threads", "1")
    w = run("warp", "--field", str(work / "disp.nii.gz"), "--image", moving, str(work / "ours.nii.gz"))
    out["warp_rc"] = w.returncode
    inside = (slice(4, -4),) * 3
    ours = np.asarray(nib.load(work / "ours.nii.gz").dataobj, dtype=np.float64)
    out["hu_before"] = float(np.abs(m - f)[inside].mean())
    out["hu_contreg_warp"] = float(np.abs(ours - f)[inside].mean())
    # contreg's correspondence: fixed voxel x -> moving voxel x + u(x) (both grids equal in the package's reading)
    disp = np.asarray(nib.load(work / "disp.nii.gz").dataobj, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in n], indexing="ij"), -1)
    sel = np.zeros(n, bool)
    sel[inside] = True
    sel &= (grid.sum(-1) % 7) == 0  # a subsample of the inside voxels
    vox = grid[sel].astype(np.float64)
    v_contreg = vox + disp[sel]
    out["contreg_shift_error_vox"] = float(np.abs(disp[inside].reshape(-1, 3).mean(0) - shift).max())
    if (work / "tx.h5").is_file():
        tx = read_h5(str(work / "tx.h5"))
        theirs = itk_warp(fixed, moving, tx)
        valid = np.isfinite(theirs)[inside]
        out["hu_itk"] = float(np.abs(theirs - f)[inside][valid].mean())
        fi, mi = itk.imread(fixed, itk.F), itk.imread(moving, itk.F)
        v_itk = itk_map_voxels(tx, itk_affine(fi), itk_affine(mi), vox)
        err = np.linalg.norm((v_itk - v_contreg) @ itk_affine(mi)[:3, :3].T, axis=-1)
        out["itk_point_error_mm"] = {"mean": float(err.mean()), "max": float(err.max())}
    if ants and (work / "tx.h5").is_file():
        np.save(work / "vox.npy", vox)
        res = subprocess.run([ants, str(HERE), "--ants-worker", str(work), fixed, moving, str(work / "tx.h5"),
                              str(work / "tx.nii.gz")], capture_output=True, text=True)
        if res.returncode != 0:
            out["ants_error"] = res.stderr.strip().splitlines()[-1:]
        else:
            a = json.loads(res.stdout.strip().splitlines()[-1])
            for key in ("h5", "nii"):
                if key not in a:
                    continue
                warped = np.load(work / f"ants_warped_{key}.npy")
                v_ants = np.load(work / f"ants_vox_{key}.npy")
                err = np.linalg.norm((v_ants - v_contreg) @ np.asarray(a["moving_affine"])[:3, :3].T, axis=-1)
                out[f"hu_ants_{key}"] = float(np.abs(warped - f)[inside].mean())
                out[f"ants_{key}_point_error_mm"] = {"mean": float(err.mean()), "max": float(err.max())}
    return out


# ----------------------------------------------------------------------------------------------------------------
# ANTs worker: runs in the ANTs venv (no monai_contreg there)

def ants_worker(work: Path, fixed: str, moving: str, *transforms: str) -> None:
    import ants

    fi, mi = ants.image_read(fixed), ants.image_read(moving)

    def aff(img):
        out = np.eye(4)
        flip = np.diag([-1.0, -1.0, 1.0])
        out[:3, :3] = flip @ np.asarray(img.direction) @ np.diag(img.spacing)
        out[:3, 3] = flip @ np.asarray(img.origin)
        return out

    fa, ma = aff(fi), aff(mi)
    vox = np.load(work / "vox.npy")
    import pandas as pd

    result = {"fixed_affine": fa.tolist(), "moving_affine": ma.tolist(), "version": getattr(ants, "__version__", "")}
    for path in transforms:
        if not Path(path).is_file():
            continue
        key = "h5" if path.endswith(".h5") else "nii"
        warped = ants.apply_transforms(fixed=fi, moving=mi, transformlist=[path], interpolator="linear")
        np.save(work / f"ants_warped_{key}.npy", warped.numpy().astype(np.float64))
        pts = to_world(fa, vox) * LPS
        df = pd.DataFrame(pts, columns=["x", "y", "z"])
        moved = ants.apply_transforms_to_points(3, df, [path]).to_numpy()[:, :3] * LPS
        np.save(work / f"ants_vox_{key}.npy", to_voxel(ma, moved))
        result[key] = True
    print(json.dumps(result))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--issue-pair", type=Path, help="rebuild and measure the issue's pair in this folder")
    p.add_argument("--ants", help="a Python interpreter with antspyx installed")
    p.add_argument("--ants-worker", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.ants_worker:
        work, fixed, moving, *tx = args.ants_worker
        ants_worker(Path(work), fixed, moving, *tx)
        return 0
    if args.issue_pair:
        res = issue_pair(args.issue_pair, args.ants)
    else:
        raise SystemExit("header kinds: not yet")
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
