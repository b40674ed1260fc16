"""Per-kernel times of the compiled CPU kernels on the NLST working grid, optionally beside another build.

    python benchmarks/kernel_times.py [--threads 2] [--repeats 15] [--shape 112 96 112]
        [--baseline-source OLD/contreg_cpu.cpp]

Times, on random inputs of the `io` step's sizes (a (1, 3, h, w, d) float32 field, (h, w, d, 12) channels-last
features): ``warp_ssd`` (warp + SSD + gradient), ``box_smooth`` forward and adjoint (width 3, 3 passes: the
field's smoothing on read and its backward) and ``diffusion`` (loss + gradient). With ``--baseline-source`` the
given C++ file is built as a second extension and the two builds are timed in alternation (one call of each in
turn, so the machine's load falls on both alike); the largest difference of their outputs is printed too. Prints
the median milliseconds, the bytes each kernel must touch (its inputs read once, its outputs written once) and the
effective bandwidth that gives. A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics as st
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load_baseline(path: Path):
    from torch.utils.cpp_extension import load

    from monai_contreg.kernels import _ninja_on_path

    _ninja_on_path()
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:10]
    return load(name=f"contreg_cpu_baseline_{digest}", sources=[str(path)], extra_cflags=["-O3", "-fopenmp", "-march=native"],
                extra_ldflags=["-fopenmp"], verbose=False)


def _cases(mod, shape):
    import torch

    g = torch.Generator().manual_seed(0)
    h, w, d = shape
    # a smooth field as the step sees it: N(0, 2) voxels, smoothed as DisplacementField does on read
    u = mod.box_smooth((torch.randn((1, 3, h, w, d), generator=g) * 2).contiguous(), 3, 3, False, False)
    mov = torch.rand((h, w, d, 12), generator=g)
    fix = torch.rand((h, w, d, 12), generator=g)
    n = h * w * d
    f4 = 4  # bytes per float32
    return {
        # read ddf (3) + moving (12, sampled: at least once) + fixed (12); write grad (3)
        "warp_ssd": (lambda: mod.warp_ssd(u[0], mov, fix, False, False)[:2], (3 + 12 + 12 + 3) * n * f4),
        # read x (3), write y (3)
        "box_smooth fwd": (lambda: [mod.box_smooth(u, 3, 3, False, False)], 6 * n * f4),
        "box_smooth adj": (lambda: [mod.box_smooth(u, 3, 3, True, False)], 6 * n * f4),
        # read u (3), write grad (3)
        "diffusion": (lambda: mod.diffusion(u, True), 6 * n * f4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--shape", type=int, nargs=3, default=[112, 96, 112])
    ap.add_argument("--baseline-source", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from monai_contreg.kernels import load_extension

    torch.set_num_threads(args.threads)
    builds = {"current": load_extension()}
    if builds["current"] is None:
        raise SystemExit("kernel_times: the compiled kernels are unavailable here")
    if args.baseline_source is not None:
        builds = {"baseline": _load_baseline(args.baseline_source), **builds}
    cases = {name: _cases(mod, tuple(args.shape)) for name, mod in builds.items()}
    times: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], list] = {}
    for kernel in cases["current"]:
        for name in builds:  # warm-up, and the outputs for the comparison
            outputs[name, kernel] = cases[name][kernel][0]()
        for _ in range(args.repeats):
            for name in builds:
                fn = cases[name][kernel][0]
                t = time.perf_counter()
                fn()
                times.setdefault((name, kernel), []).append(time.perf_counter() - t)
    print(f"kernels on {tuple(args.shape)}, float32, {args.threads} thread(s), median of {args.repeats} (interleaved)")
    print(f"{'kernel':16s} {'build':9s} {'ms':>8s} {'MB touched':>11s} {'GB/s':>6s} {'max |diff| vs current':>22s}")
    for kernel, (_, nbytes) in cases["current"].items():
        for name in builds:
            ms = 1e3 * st.median(times[name, kernel])
            diff = max(float((a.double() - b.double()).abs().max()) for a, b in zip(outputs[name, kernel], outputs["current", kernel]))
            print(f"{kernel:16s} {name:9s} {ms:8.2f} {nbytes / 1e6:11.1f} {nbytes / ms / 1e6:6.1f} {diff:22.3g}")
        if "baseline" in builds:
            ratio = st.median(times["baseline", kernel]) / st.median(times["current", kernel])
            print(f"{kernel:16s} speed-up baseline / current: {ratio:.2f}x")


if __name__ == "__main__":
    main()
