"""A gantry-tilted CT series registered to the very volume it was sampled from (truth: zero motion).

The volume is an nlst_synth image (default ``NLSTB_0101_0000``, 224 x 192 x 224 at 1.5 mm). The series has 96 axial
slices of 224 x 192 pixels (1.5 mm) whose table positions advance 1.5 mm along the volume's z axis while their
column direction is tilted by ``--degrees`` about the x (left-right) axis, as a tilted gantry records them; each
pixel is the volume's trilinear value at its position (-1024 HU outside). The slices are written with ITK's GDCM
writer directly (this script does not use the package's writer, so it runs against any version of the package),
then registered with ``contreg register-native SERIES VOLUME.nii.gz --preset io-lr1 --threads 1`` (whatever
``contreg``/``PYTHONPATH`` the environment gives: run it once with the old code on the path, once with the new).
The field (fixed voxels) is converted to mm with the fixed grid as the package under test reads it, and its mean
and largest magnitude over the fixed grid are printed: the motion a user would be told about.

    PYTHONPATH=/work/main python benchmarks/dicom_tilt.py --degrees 5 15     # before
    PYTHONPATH=.          python benchmarks/dicom_tilt.py --degrees 5 15     # after
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "nlst_synth" / "imagesTr" / "NLSTB_0101_0000.nii.gz"


def write_tilted_series(volume: np.ndarray, vol_affine: np.ndarray, folder: Path, degrees: float,
                        slices: int = 96, size=(224, 192), pixel: float = 1.5, table: float = 1.5) -> np.ndarray:
    """Sample ``volume`` on a tilted stack and write it as a DICOM series; returns the stack's (sheared) RAS affine."""
    import itk
    from scipy.ndimage import map_coordinates

    th = math.radians(degrees)
    ax = vol_affine[:3, :3] / np.linalg.norm(vol_affine[:3, :3], axis=0)  # the volume's RAS axis directions
    row, col, step = ax[:, 0], math.cos(th) * ax[:, 1] + math.sin(th) * ax[:, 2], ax[:, 2]
    centre = vol_affine[:3, :3] @ ((np.array(volume.shape) - 1) / 2) + vol_affine[:3, 3]
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = row * pixel, col * pixel, step * table
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.array([*size, slices]) - 1) / 2)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in (*size, slices)], indexing="ij")).reshape(3, -1)
    world = aff[:3, :3] @ idx + aff[:3, 3:]
    vox = np.linalg.solve(vol_affine[:3, :3], world - vol_affine[:3, 3:])
    vals = map_coordinates(volume.astype(np.float32), vox, order=1, mode="constant", cval=-1024.0)
    vals = np.round(vals.reshape(*size, slices)).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0])
    r, c = lps @ row, lps @ col
    uid = "1.2.826.0.1.3680043.8.498.7722." + str(int(degrees * 100))
    for k in range(slices):
        sl = itk.image_from_array(np.ascontiguousarray(vals[:, :, k].T))
        sl.SetSpacing([pixel, pixel])
        pos = lps @ (aff[:3, 3] + k * aff[:3, 2])
        md = sl.GetMetaDataDictionary()
        for key, val in {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 1}", "0008|0060": "CT",
            "0020|000d": f"{uid}.0", "0020|000e": uid, "0020|0011": "1", "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos), "0020|0037": "\\".join(f"{v:.6f}" for v in (*r, *c)),
            "0028|0030": f"{pixel:.6f}\\{pixel:.6f}", "0018|0050": f"{table * math.cos(th):.6f}",
            "0018|1120": f"{degrees:g}", "0028|1052": "0", "0028|1053": "1",
        }.items():
            md[key] = val
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        itk.ImageFileWriter[type(sl)].New(Input=sl, FileName=str(folder / f"{k + 1:04d}.dcm"), ImageIO=io).Update()
    return aff


def tilt_arguments(description: str, work: Path, preset: str, argv=None) -> argparse.Namespace:
    """The options of the tilt benchmarks: ``--image``, ``--degrees``, ``--work`` (default ``work``), ``--preset``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--degrees", type=float, nargs="+", default=[5.0, 15.0])
    ap.add_argument("--work", type=Path, default=work)
    ap.add_argument("--preset", default=preset)
    return ap.parse_args(argv)


def source_volume(image: Path, work: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """The volume the series is sampled from: ``(array float32, affine, work/volume.nii.gz)`` (written there)."""
    import nibabel as nib

    img = nib.load(str(image))
    vol, vol_aff = np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)
    work.mkdir(parents=True, exist_ok=True)
    moving = work / "volume.nii.gz"
    nib.save(nib.Nifti1Image(vol, vol_aff), str(moving))
    return vol, vol_aff, moving


def field_mm(field: Path, fixed_affine) -> np.ndarray:
    """``(H, W, D)`` magnitude (mm) of a displacement image in fixed voxels (``(H, W, D, 3)``, as ``contreg`` writes it)."""
    import nibabel as nib

    a = np.asarray(fixed_affine)
    u = np.asarray(nib.load(str(field)).dataobj, dtype=np.float64)
    return np.linalg.norm(u @ a[:3, :3].T, axis=-1)


def main(argv=None) -> int:
    args = tilt_arguments(__doc__.splitlines()[0], Path("/tmp/contreg_dicom_tilt"), "io-lr1", argv)

    import monai_contreg
    from monai_contreg.io.images import load_image

    vol, vol_aff, moving = source_volume(args.image, args.work)
    print(f"package: {Path(monai_contreg.__file__).parent}")
    for deg in args.degrees:
        folder = args.work / f"tilt_{deg:g}"
        if not folder.exists():
            write_tilted_series(vol, vol_aff, folder, deg)
        out = args.work / f"disp_{deg:g}.nii.gz"
        t0 = time.perf_counter()
        run = subprocess.run(["contreg", "register-native", str(folder), str(moving), "-o", str(out), "--preset",
                              args.preset, "--threads", "1", "--quiet"], capture_output=True, text=True, env=os.environ)
        seconds = time.perf_counter() - t0
        res = {"degrees": deg, "exit": run.returncode, "seconds": round(seconds, 1)}
        if run.returncode == 0:
            fixed = load_image(folder)
            mm = field_mm(out, fixed.affine)
            res.update(fixed_shape=list(fixed.shape[1:]), mean_mm=round(float(mm.mean()), 3),
                       max_mm=round(float(mm.max()), 3))
        else:
            res["stderr"] = run.stderr.strip().splitlines()[-1:]
        warn = [line for line in run.stderr.splitlines() if "tilt" in line]
        res["warning"] = warn[0][:300] if warn else None
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
