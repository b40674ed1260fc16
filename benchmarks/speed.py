"""Speed and memory of one NLST-size pair: our `io` and `convexadam` presets beside the reference ConvexAdam.

    python benchmarks/speed.py [--case 0102] [--threads 2] [--repeats 1] [--presets io convexadam]
        [--reference-python REF/bin/python | --no-reference] [--device cpu|cuda]
    python benchmarks/speed.py --cli [--cases 0103 0104] [--presets io accurate convexadam] [--unfused]
        [--threads 2] [--repeats 1] --reference-python REF/bin/python

Each run is its own process (peak RSS per run via os.wait4; on CUDA, max allocated memory). Prints, per
method: features, discrete stage, optimisation per step, total registration time, peak memory of the whole
worker process (registration, then scoring the field), the peak at the end of the registration itself
("(reg.)", VmHWM read before scoring; the reference's worker scores in another process), and the ratio of the
median total time of the reference to ours. A script that prints figures, not a test.

``--cli`` times whole command-line calls instead: ``contreg register FIXED MOVING -o OUT.nii --fixed-mask ...
--moving-mask ... --preset P --threads T --quiet`` as one process (start-up, reading, preprocessing, registration,
the default quality estimate and writing the field included) against the reference's whole worker process
(start-up, reading, registration, writing its ``.npy``), interleaved per repeat and case: each preset, (with
``--unfused``, each preset again with ``CONTREG_FUSED_STEP=0``: the unfused step), then the reference. Prints
per call the wall time, peak RSS, TRE of the written field and the 1-minute load average at its start, then per
preset the median wall time over the reference's median wall time on the same cases.
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


def _cli_calls(args: argparse.Namespace) -> None:
    import os
    import shutil
    import tempfile

    from _common import field_metrics, run_process
    from monai_contreg.io.fields import load_field

    pairs = {p["case"]: p for p in nlst_pairs(args.data)}
    missing = [c for c in args.cases if c not in pairs]
    if missing:
        raise SystemExit(f"speed --cli: cases {missing} not in {args.data}")
    ref_py = None if args.no_reference else reference_python(args.reference_python)
    exe = shutil.which("contreg")
    base = [exe] if exe else [sys.executable, "-c", "from monai_contreg.cli import main; main()"]
    variants = [(p, "1") for p in args.presets] + ([(p, "0") for p in args.presets] if args.unfused else [])
    rows: list[dict] = []
    print(f"whole CLI calls, {args.threads} thread(s), cases {args.cases}, {args.repeats} repeat(s); "
          f"reference: {ref_py or 'none'}", flush=True)
    print(f"{'call':22s} {'case':5s} {'load':>5s} {'wall s':>7s} {'peak GiB':>8s} {'TRE mm':>8s}", flush=True)
    for rep in range(args.repeats):
        for case in args.cases:
            pair = pairs[case]
            for preset, fused in variants:
                with tempfile.TemporaryDirectory() as tmp:
                    out = str(Path(tmp) / "field.nii")
                    cmd = [*base, "register", pair["fixed"], pair["moving"], "-o", out, "--fixed-mask", pair["fixed_mask"],
                           "--moving-mask", pair["moving_mask"], "--preset", preset, "--threads", str(args.threads), "--quiet"]
                    load = os.getloadavg()[0]
                    rc, wall, peak, _, err = run_process(cmd, args.threads, {"CONTREG_FUSED_STEP": fused})
                    tre = float("nan")
                    if rc == 0:
                        tre = field_metrics(load_field(out)[0].double(), pair)["tre"]
                    else:
                        sys.stderr.write(err[-2000:])
                name = preset if fused == "1" else f"{preset} (unfused)"
                rows.append({"name": name, "case": case, "load": load, "wall": wall, "peak": peak, "tre": tre, "rc": rc})
                print(f"{name:22s} {case:5s} {load:5.1f} {wall:7.1f} {peak:8.2f} {tre:8.4f}" + ("" if rc == 0 else f" exit {rc}"),
                      flush=True)
            if ref_py:
                load = os.getloadavg()[0]
                r = run_reference(pair, ref_py, args.threads)
                ok = "error" not in r
                rows.append({"name": "reference", "case": case, "load": load, "wall": r["process_seconds"],
                             "peak": r["peak_gib"], "tre": r.get("tre", float("nan")), "rc": 0 if ok else 1})
                print(f"{'reference':22s} {case:5s} {load:5.1f} {r['process_seconds']:7.1f} {r['peak_gib']:8.2f} "
                      f"{r.get('tre', float('nan')):8.4f}", flush=True)
    print("medians over the calls (wall s, TRE mm per case) and ratio to the reference's median wall time:")
    ref = [r["wall"] for r in rows if r["name"] == "reference" and r["rc"] == 0]
    ref_med = st.median(ref) if ref else float("nan")
    for name in dict.fromkeys(r["name"] for r in rows):
        ok = [r for r in rows if r["name"] == name and r["rc"] == 0]
        if not ok:
            print(f"{name:22s} failed")
            continue
        med = st.median(r["wall"] for r in ok)
        tres = " ".join(f"{c}:{st.median(r['tre'] for r in ok if r['case'] == c):.4f}" for c in args.cases
                        if any(r["case"] == c for r in ok))
        loads = [r["load"] for r in ok]
        print(f"{name:22s} wall {med:7.1f} s  / reference {med / ref_med:5.2f}x  TRE {tres}  "
              f"load {min(loads):.1f}-{max(loads):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--case", default="0102")
    ap.add_argument("--presets", nargs="*", default=["io", "convexadam"])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cli", action="store_true", help="time whole `contreg register` calls against the reference's process")
    ap.add_argument("--cases", nargs="*", default=["0103", "0104"], help="--cli: the cases (default 0103 0104)")
    ap.add_argument("--unfused", action="store_true", help="--cli: also run each preset with CONTREG_FUSED_STEP=0")
    add_run_args(ap)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.cli:
        _cli_calls(args)
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
