"""Run the reference ConvexAdam (PyPI ``convexadam`` 0.2.0) on one pair; used as a peer by the benchmarks.

Runs inside a separate virtual environment that has ``convexadam`` (never imported by monai_contreg):

    REF/bin/python benchmarks/reference_convexadam_worker.py FIXED MOVING OUT.npy [--threads 2] [--niter 80]
        [--lambda-weight 1.25] [--no-ic] [--device cpu|cuda]

Writes the (H, W, D, 3) voxel field (fixed -> moving) as float32 .npy and prints one JSON line with its timing.
"""

import argparse
import json
import os
import time

import nibabel as nib
import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fixed")
    ap.add_argument("moving")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--niter", type=int, default=80)
    ap.add_argument("--lambda-weight", type=float, default=1.25)
    ap.add_argument("--no-ic", action="store_true")
    ap.add_argument("--device", default="cpu", help="torch device of the registration (cpu, cuda)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from convexAdam.convex_adam_MIND import convex_adam_pt

    fixed = torch.from_numpy(nib.load(args.fixed).get_fdata()).float()
    moving = torch.from_numpy(nib.load(args.moving).get_fdata()).float()
    device = torch.device(args.device)
    t0 = time.perf_counter()
    disp = convex_adam_pt(
        fixed, moving, lambda_weight=args.lambda_weight, selected_niter=args.niter, ic=not args.no_ic,
        device=device, dtype=torch.float32,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tmp = args.out + ".tmp.npy"
    np.save(tmp, np.asarray(disp, dtype=np.float32))
    os.replace(tmp, args.out)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
