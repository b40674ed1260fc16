"""Speed and memory of one NLST-size pair: our `io` and `convexadam` presets beside the reference ConvexAdam.

    python benchmarks/speed.py [--case 0102] [--threads 2] [--repeats 1] [--presets io convexadam]
        [--reference-python REF/bin/python | --no-reference] [--device cpu|cuda]

Each run is its own process (peak RSS per run via os.wait4; on CUDA, max allocated memory). Prints, per
method: features, discrete stage, optimisation per step, total registration time, peak memory of the whole
worker process (registration, then scoring the field), the peak at the end of the registration itself
("(reg.)", VmHWM read before scoring; the reference's worker scores in another process), and the ratio of the
median total time of the reference to ours. A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, add_run_args, nlst_pairs, reference_python, register_worker, run_child, run_reference, worker_cmd  # noqa: E402


def _worker(args: argparse.Namespace) -> None:
    import torch

    pair = json.loads(args.worker)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = register_worker(pair, args.preset, args.set, args.threads) if args.device == "cpu" else _cuda(pair, args)
    print(json.dumps(out))


def _cuda(pair: dict, args) -> dict:
    import time

    import torch

    from _common import field_metrics
    from monai_contreg import get_preset, register

    cfg = get_preset(args.preset).with_overrides(args.set)
    register(pair["fixed"], pair["moving"], fixed_mask=pair["fixed_mask"], moving_mask=pair["moving_mask"], config=cfg, device="cuda")  # warm-up
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = register(pair["fixed"], pair["moving"], fixed_mask=pair["fixed_mask"], moving_mask=pair["moving_mask"], config=cfg, device="cuda")
    out = {"seconds": time.perf_counter() - t0, "timings": res.timings, "steps": res.steps,
           "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    out.update(field_metrics(res.ddf.as_tensor().cpu(), pair))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--case", default="0102")
    ap.add_argument("--presets", nargs="*", default=["io", "convexadam"])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_run_args(ap)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    pair = next((p for p in nlst_pairs(args.data) if p["case"] == args.case), None)
    if pair is None:
        raise SystemExit(f"speed: case {args.case} not in {args.data}")
    ref_py = None if args.no_reference else reference_python(args.reference_python)
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for preset in args.presets:
            cmd = worker_cmd(__file__, pair, preset, args.threads, args.set, "--device", args.device)
            runs.setdefault(preset, []).append(run_child(cmd, args.threads))
        if ref_py and args.device == "cpu":
            runs.setdefault("reference", []).append(run_reference(pair, ref_py, args.threads))
    print(f"case {args.case}, {args.threads} thread(s), {args.repeats} repeat(s), device {args.device}")
    for name, rs in runs.items():
        if rs and "kernels" in rs[0]:
            print(f"{name}: kernels {rs[0]['kernels']} (load {rs[0]['kernel_load_s']:.1f} s, not in the totals)")
    print(f"{'method':11s} {'features':>9s} {'discrete':>9s} {'per step':>9s} {'steps':>6s} {'total s':>8s} {'peak GiB':>9s} "
          f"{'(reg.)':>7s} {'TRE mm':>7s}")
    medians = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            print(f"{name:11s} failed: {rs[0].get('error')}")
            continue
        medians[name] = st.median(r["seconds"] for r in ok)
        r = ok[0]
        t = r.get("timings", {})
        steps = r.get("steps", 0) or 0
        per_step = t.get("optimisation", float("nan")) / steps if steps else float("nan")
        peak = r.get("cuda_peak_gib", r["peak_gib"])
        print(f"{name:11s} {t.get('features', float('nan')):9.2f} {t.get('discrete', 0.0):9.2f} {per_step:9.4f} {steps:6d} "
              f"{medians[name]:8.1f} {peak:9.2f} {r.get('register_peak_gib', float('nan')):7.2f} {r['tre']:7.3f}")
    if "reference" in medians:
        for name in args.presets:
            if name in medians:
                print(f"reference / {name}: {medians['reference'] / medians[name]:.2f}x (median total time)")


if __name__ == "__main__":
    main()
