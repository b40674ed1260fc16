"""The landmark-free error estimate on a gantry-tilted CT series, read as straight and read correctly.

The series is :mod:`dicom_tilt`'s (an nlst_synth image, default ``NLSTB_0101_0000``, sampled on 96 slices tilted by
``--degrees`` about the left-right axis, written as DICOM with ITK's GDCM writer); the truth is zero motion. Two
runs of ``contreg register-native FIXED VOLUME.nii.gz --preset io --threads 1 --quality-json Q.json``:

* ``straight``: FIXED is the series as a reader that stacks the slices straight reads it (ITK's
  ``ImageSeriesReader`` through ``itk.imread`` of the folder, saved as NIfTI): the anatomy is sheared by the tilt,
  so the registration reports the shear as motion; the estimate must not say ``ok``;
* ``corrected``: FIXED is the DICOM folder itself, read by this package from the slices' own positions
  (:mod:`monai_contreg.io.dicom_geometry`, issue 22): the motion is ~0 and the estimate should say ``ok``.

Printed per run: the verdict, the estimate and its interval, the reasons, and the mean / largest field magnitude
(mm, on the fixed grid): the motion the user would be told about.

    python benchmarks/quality_tilt.py [--degrees 5 15] [--work /tmp/contreg_quality_tilt]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicom_tilt import field_mm, source_volume, tilt_arguments, write_tilted_series  # noqa: E402


def main(argv=None) -> int:
    args = tilt_arguments(__doc__.splitlines()[0], Path("/tmp/contreg_quality_tilt"), "io", argv)

    import itk

    from monai_contreg.io.images import load_image

    vol, vol_aff, moving = source_volume(args.image, args.work)
    for deg in args.degrees:
        folder = args.work / f"tilt_{deg:g}"
        if not folder.exists():
            write_tilted_series(vol, vol_aff, folder, deg)
        straight = args.work / f"straight_{deg:g}.nii.gz"
        if not straight.exists():
            itk.imwrite(itk.imread(str(folder)), str(straight))  # ITK's straight stack of the slices
        for name, fixed in (("straight", straight), ("corrected", folder)):
            out = args.work / f"disp_{name}_{deg:g}.nii.gz"
            qj = args.work / f"quality_{name}_{deg:g}.json"
            t0 = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "monai_contreg.cli", "register-native", str(fixed), str(moving),
                                  "-o", str(out), "--preset", args.preset, "--threads", "1", "--quiet",
                                  "--quality-json", str(qj)], capture_output=True, text=True)
            res = {"degrees": deg, "read": name, "exit": run.returncode, "seconds": round(time.perf_counter() - t0, 1)}
            if run.returncode == 0 and qj.exists():
                q = json.loads(qj.read_text())
                mm = field_mm(out, load_image(fixed).affine)
                res.update(verdict=q["verdict"], estimated_error_mm=round(q["estimated_error_mm"], 2),
                           interval_mm=[round(v, 2) for v in q["interval_mm"]], region=q["region"],
                           reasons=q["reasons"], field_mean_mm=round(float(mm.mean()), 2),
                           field_max_mm=round(float(mm.max()), 2))
            else:
                res["stderr"] = run.stderr.strip().splitlines()[-3:]
            print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
