"""Peak memory of real registrations against :func:`monai_contreg.methods.memory.estimate_memory`.

One fresh process per preset (``--child``): the pair's images and masks are loaded, a 16^3 warm-up registration
builds the compiled kernels and the allocator's pools, then ``VmHWM`` is reset to the resident size
(``/proc/self/clear_refs``) and the registration of the whole pair runs with ``torch.set_num_threads(1)``. The
measured peak is ``VmHWM - VmRSS`` before the run (what the run adds, the quantity the estimate models); the
process's whole peak (``ru_maxrss``, what ``/usr/bin/time -v`` reports) is printed too. Linux only.

    python benchmarks/memory_peak.py --data ../shared/data/nlst_synth --pair 0101 --presets accurate io convexadam
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


def child(data: Path, pair: str, preset: str, overrides: list[str]) -> dict:
    import resource

    import torch

    from monai_contreg.api import register
    from monai_contreg.io.images import load_image
    from monai_contreg.methods.memory import estimate_memory
    from monai_contreg.methods.presets import get_preset

    torch.set_num_threads(1)
    name = f"NLSTB_{pair}"
    f = load_image(data / "imagesTr" / f"{name}_0000.nii.gz")
    m = load_image(data / "imagesTr" / f"{name}_0001.nii.gz")
    fm = load_image(data / "masksTr" / f"{name}_0000.nii.gz")
    mm = load_image(data / "masksTr" / f"{name}_0001.nii.gz")
    cfg = get_preset(preset).with_overrides(overrides) if overrides else get_preset(preset)
    masks = 2 if cfg.preprocess.use_masks else 0
    crop = (slice(None), *(slice(n // 2 - 8, n // 2 + 8) for n in f.shape[1:]))  # inside the lungs' masks
    warm = cfg.with_overrides(["engine.divergence_check=false"])
    register(f[crop][0].numpy().copy(), m[crop][0].numpy().copy(), config=warm, spacing=1.5,
             fixed_mask=fm[crop][0].numpy().copy(), moving_mask=mm[crop][0].numpy().copy())
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    base = _status("VmRSS:")
    t0 = time.perf_counter()
    register(f, m, config=cfg, fixed_mask=fm, moving_mask=mm)
    seconds = time.perf_counter() - t0
    est = estimate_memory(tuple(f.shape[1:]), cfg, masks=masks)
    return {"preset": preset, "shape": list(f.shape[1:]), "measured": _status("VmHWM:") - base, "base": base,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "estimate": est.total,
            "parts": est.parts, "seconds": round(seconds, 1), "overrides": overrides}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "nlst_synth")
    ap.add_argument("--pair", default="0101")
    ap.add_argument("--presets", nargs="+", default=["accurate", "io", "convexadam"])
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="config override (all presets)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.data, args.pair, args.child, args.overrides)))
        return 0
    gib = 2.0**30
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--data", str(args.data), "--pair", args.pair, "--child", preset]
        cmd += [a for o in args.overrides for a in ("--set", o)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{preset}: failed\n{out.stderr[-3000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{preset:11s} estimate {r['estimate'] / gib:.2f} GiB  measured {r['measured'] / gib:.2f} GiB "
              f"({(r['estimate'] / r['measured'] - 1) * 100:+.0f} %)  process peak {r['ru_maxrss'] / gib:.2f} GiB  "
              f"{r['seconds']} s")
        print("  " + json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
