"""Single-process against distributed `contreg run` on nlst_synth: the same fields, one evaluation each, wall times.

    python benchmarks/distributed.py [--data ../shared/data/nlst_synth] [--preset convexadam] [--set KEY=VALUE ...]
        [--threads 1] [--nproc 2] [--backend gloo] [--keep DIR]

Runs, each in its own process and output folder,

    python -m monai_contreg.cli run DATA --split val -o single/ --preset P --threads T --evaluate
    python -m monai_contreg.cli run DATA --split val -o distributed/ --preset P --threads T --evaluate \\
        --nproc-per-node N --backend B

(T torch threads per process in both), then prints per pair the largest |difference| between the two fields
and each run's registration seconds, both evaluations' mean TRE and SDlogJ, and each run's wall time
(process start to exit: imports, process start-up, registration, evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, REPO  # noqa: E402


def run_cli(args: list[str], threads: int) -> tuple[float, list[str]]:
    """Run ``contreg run ...`` in a fresh interpreter; return its wall time and stdout lines (exit on failure)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "monai_contreg.cli", "run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"contreg run exited with {proc.returncode}: {' '.join(args)}")
    return wall, proc.stdout.splitlines()


def _field(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", default="convexadam")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process in both runs (default 1)")
    ap.add_argument("--nproc", type=int, default=2, help="processes of the distributed run (default 2)")
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--keep", type=Path, help="write the two output folders here instead of a temporary folder")
    args = ap.parse_args()
    if not any(args.data.glob("*_dataset.json")):
        raise SystemExit(f"no *_dataset.json in {args.data}")

    with tempfile.TemporaryDirectory(prefix="contreg_dist_bench_") as tmp:
        root = args.keep or Path(tmp)
        common = [str(args.data), "--split", "val", "--preset", args.preset, "--threads", str(args.threads), "--evaluate",
                  "--no-bar", *(a for s in args.set for a in ("--set", s))]
        runs = {
            "single-process": (root / "single", []),
            f"distributed ({args.nproc} x {args.backend})": (
                root / "distributed", ["--nproc-per-node", str(args.nproc), "--backend", args.backend]),
        }
        print(f"data {args.data}, preset {' '.join([args.preset, *args.set])}, {args.threads} torch thread(s) per process, "
              f"{len(os.sched_getaffinity(0))} CPU(s)")
        results = {}
        for name, (out, extra) in runs.items():
            if out.exists() and any(out.iterdir()):
                raise SystemExit(f"{out} is not empty: the benchmark registers every pair afresh")
            wall, lines = run_cli([*common, "-o", str(out), *extra], args.threads)
            results[name] = {
                "out": out, "wall": wall,
                "eval": json.loads((out / "evaluation.json").read_text()),
                "log": json.loads((out / "runtimes.json").read_text()),
            }
            print(f"{name}: wall {wall:.1f} s; " + next(line for line in lines if line.startswith("registered")), flush=True)

        (single, dist) = results.values()
        keys = list(single["eval"]["cases"])
        worst = 0.0
        identical = 0
        print(f"{'pair':<12}{'max |diff| (voxels)':>22}{'single s':>10}{'dist s':>9}{'rank':>6}")
        for key in keys:
            name = f"disp_{key}.nii.gz"
            diff = float(np.abs(_field(single["out"] / name) - _field(dist["out"] / name)).max())
            worst = max(worst, diff)
            identical += diff == 0.0
            s_case, d_case = single["log"]["cases"][key], dist["log"]["cases"][key]
            print(f"{key:<12}{diff:>22.3g}{s_case['seconds']:>10.1f}{d_case['seconds']:>9.1f}{d_case.get('rank', '-'):>6}")
        print(f"bitwise identical fields: {identical}/{len(keys)}; largest |difference| {worst:.3g} voxels")
        for name, r in results.items():
            agg = r["eval"]["aggregates"]
            print(f"{name:<24} mean TRE_kp {agg['TRE_kp']['mean']:.4f} mm (initial {agg['TRE_kp_initial']['mean']:.4f}), "
                  f"SDlogJ {agg['SDlogJ']['mean']:.4f}, wall {r['wall']:.1f} s")
        print(f"wall time ratio single / distributed: {single['wall'] / dist['wall']:.2f}")


if __name__ == "__main__":
    main()
