"""One `io` optimisation step at NLST working-grid size: compiled kernels, PyTorch path, PyTorch + torch.compile.

    python benchmarks/step.py [--threads 2] [--repeats 10] [--shape 112 96 112]

Each variant runs in its own process (the kernels are switched off with CONTREG_EXTENSIONS=0 for the PyTorch
paths). A step = smoothed field, warped-feature SSD, diffusion, backward, fused Adam, on random 12-channel
features. Prints the first step (includes torch.compile's compilation) and the median of the next ones.
A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st
import subprocess
import sys
import time


def _worker(args: argparse.Namespace) -> None:
    import torch

    from monai_contreg.losses import WarpedSSD, diffusion
    from monai_contreg.optim.field import DisplacementField

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    moving, fixed = torch.rand(1, 12, *shape), torch.rand(1, 12, *shape)
    field = DisplacementField(shape)
    field.displacement.data.normal_(0, 2)
    opt = torch.optim.Adam(field.parameters(), lr=1.0, fused=True)
    sim = WarpedSSD(moving, fixed, "border")

    def loss_fn():
        ddf = field()
        loss, _ = sim(ddf, return_warped=False)
        return loss + 1.75 * diffusion(ddf)

    fn = torch.compile(loss_fn) if args.variant == "compile" else loss_fn

    def step():
        opt.zero_grad()
        fn().backward()
        opt.step()

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"first": first, "median": st.median(times), "fused": sim.fused}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shape", type=int, nargs=3, default=[112, 96, 112])
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        _worker(args)
        return
    print(f"one io step on {tuple(args.shape)}, 12 channels, {args.threads} thread(s), median of {args.repeats}")
    for variant, ext in (("kernels", "1"), ("pytorch", "0"), ("compile", "0")):
        cmd = [sys.executable, __file__, "--variant", variant, "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--shape", *map(str, args.shape)]
        env = dict(os.environ, CONTREG_EXTENSIONS=ext, OMP_NUM_THREADS=str(args.threads))
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not lines:
            print(f"{variant:8s} failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}")
            continue
        r = json.loads(lines[-1])
        path = "compiled kernels" if r["fused"] else "PyTorch ops"
        print(f"{variant:8s} first step {r['first']:6.2f} s   median step {r['median']:.4f} s   ({path})")


if __name__ == "__main__":
    main()
