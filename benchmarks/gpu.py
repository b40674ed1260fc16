"""Per-pair time and TRE of the `io`, `accurate` and `convexadam` presets and the reference ConvexAdam on a GPU.

    python benchmarks/gpu.py [--device cuda] [--data ../shared/data/nlst_synth] [--pairs 0101 0102 ...]
        [--presets io accurate convexadam] [--reference-python REF/bin/python | --no-reference]
        [--steps N] [--threads 2] [--in-process]

One worker process per method (``--in-process``: all in this process). On CUDA each worker first registers the
first pair once untimed (CUDA context, cuDNN/cuBLAS handles, allocator warm-up), then times every pair with
``torch.cuda.synchronize()`` before the clock stops; the reference runs in its own venv (``--reference-python``
or ``$CONTREG_REFERENCE_PYTHON``) with ``--device`` passed on. Prints, per pair and method: registration seconds,
steps, TRE (mm), and the peak memory (CUDA: max allocated; CPU: the worker's peak RSS), then the mean over pairs
and the reference's mean time over each preset's. A pair whose registration is refused as diverged
(:class:`monai_contreg.errors.RegistrationDivergedError`) is a row that says so; the others go on.

Smoke mode without a GPU: ``--device cpu --pairs 0101 --steps 5`` runs the same code paths on the CPU with the
schedules shortened to 5 steps (:func:`monai_contreg.tuning.scale_schedule`): it checks the script, its figures
mean nothing (5 steps of `io` at its peak rate may well be refused as diverged). A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, add_run_args, field_metrics, nlst_pairs, reference_python, run_child, run_reference  # noqa: E402

PRESETS = ["io", "accurate", "convexadam"]


def _register_pairs(preset: str, pairs: list[dict], device: str, threads: int, steps: int | None, overrides: list[str]) -> list[dict]:
    """Register ``pairs`` with ``preset`` on ``device`` in this process: one dict of figures per pair."""
    import torch

    from monai_contreg import get_preset, register
    from monai_contreg.errors import RegistrationDivergedError

    torch.set_num_threads(threads)
    cfg = get_preset(preset).with_overrides(overrides)
    if steps:
        from monai_contreg.tuning import scale_schedule

        cfg = scale_schedule(cfg, steps)
    cuda = device.startswith("cuda")

    def run(pair: dict):
        return register(pair["fixed"], pair["moving"], fixed_mask=pair["fixed_mask"], moving_mask=pair["moving_mask"],
                        config=cfg, device=device)

    if cuda:
        run(pairs[0])  # warm-up: CUDA context, library handles, caching allocator
        torch.cuda.synchronize()
    out = []
    for pair in pairs:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            res = run(pair)
        except RegistrationDivergedError as exc:  # one pair's failure is a row of the table, not the end of the run
            out.append({"case": pair["case"], "error": f"{type(exc).__name__}: {str(exc).split('. ')[0]}"})
            continue
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row = {"case": pair["case"], "seconds": seconds, "steps": res.steps, "timings": res.timings}
        if cuda:
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row.update(field_metrics(res.ddf.as_tensor().detach().cpu().double(), pair))
        out.append(row)
    return out


def _worker(args: argparse.Namespace) -> None:
    job = json.loads(args.worker)
    rows = _register_pairs(args.preset, job["pairs"], args.device, args.threads, args.steps, args.set)
    print(json.dumps({"rows": rows}))


def _run_preset(preset: str, pairs: list[dict], args: argparse.Namespace) -> list[dict]:
    if args.in_process:
        return _register_pairs(preset, pairs, args.device, args.threads, args.steps, args.set)
    cmd = [sys.executable, __file__, "--worker", json.dumps({"pairs": pairs}), "--preset", preset, "--device", args.device,
           "--threads", str(args.threads)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    for s in args.set:
        cmd += ["--set", s]
    res = run_child(cmd, args.threads)
    if "error" in res:
        return [{"case": p["case"], "error": res["error"]} for p in pairs]
    for row in res["rows"]:
        row.setdefault("peak_gib", res["peak_gib"])  # CPU: the worker's peak RSS over all its pairs
    return res["rows"]


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--pairs", nargs="*", default=None, help="case ids (default: every registration_val pair)")
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--device", default="cuda", help="torch device: cuda (default), cuda:N, or cpu (smoke mode)")
    ap.add_argument("--steps", type=int, default=None, help="shorten every schedule to this many steps (smoke runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="config override for every preset")
    ap.add_argument("--in-process", action="store_true", help="run the presets in this process (no worker processes)")
    add_run_args(ap)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return {}
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu: --device cuda but torch sees no CUDA device here (use --device cpu for a smoke run)")
    pairs = nlst_pairs(args.data)
    if args.pairs:
        missing = sorted(set(args.pairs) - {p["case"] for p in pairs})
        if missing:
            raise SystemExit(f"gpu: --pairs {' '.join(missing)} not among {args.data}'s registration_val pairs")
        pairs = [p for p in pairs if p["case"] in args.pairs]
    ref_py = None if args.no_reference else reference_python(args.reference_python)
    results: dict[str, list[dict]] = {}
    for preset in args.presets:
        results[preset] = _run_preset(preset, pairs, args)
    if ref_py:
        results["reference"] = [{"case": p["case"], **run_reference(p, ref_py, args.threads, args.device)} for p in pairs]
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU (smoke mode)"
    print(f"device {args.device} ({name}), {len(pairs)} pair(s), {args.threads} thread(s)"
          + (f", schedules shortened to {args.steps} steps" if args.steps else ""))
    print(f"{'pair':6s} {'method':11s} {'seconds':>8s} {'steps':>6s} {'TRE mm':>7s} {'TRE0 mm':>8s} {'peak GiB':>9s}")
    means = {}
    for method, rows in results.items():
        for r in rows:
            if "error" in r:
                print(f"{r['case']:6s} {method:11s} failed: {r['error']}")
                continue
            print(f"{r['case']:6s} {method:11s} {r['seconds']:8.2f} {r.get('steps', 0) or 0:6d} {r['tre']:7.3f} "
                  f"{r['tre_initial']:8.3f} {r.get('peak_gib', float('nan')):9.2f}")
        ok = [r for r in rows if "error" not in r]
        if ok:
            means[method] = (st.mean(r["seconds"] for r in ok), st.mean(r["tre"] for r in ok))
    for method, (sec, tre) in means.items():
        print(f"mean   {method:11s} {sec:8.2f} {'':6s} {tre:7.3f}")
    if "reference" in means:
        for preset in args.presets:
            if preset in means:
                print(f"reference / {preset}: {means['reference'][0] / means[preset][0]:.2f}x (mean time per pair)")
    return results


if __name__ == "__main__":
    main()
