"""Ablation on nlst_synth: every preset (discrete stage, ConvexAdam, the paper's schedule, constant-lr variants,
the multi-resolution ``accurate``) and the reference ConvexAdam, on the same pairs in the same run.

    python benchmarks/ablation.py [--pairs 0101 0102] [--presets convex convexadam io convex+io io-lr1 io-lr15 accurate]
        [--threads 2] [--reference-python REF/bin/python | --no-reference] [--json out.json]
        [--steps N] [--in-process]   (a quick check of the rows, e.g. by the tests: no figures to compare)

Besides preset names, ``--presets`` takes the ``accurate`` preset with one component turned off (rows
``accurate-<component>``, see ``ACCURATE_ABLATIONS``: e.g. ``accurate-fine`` without its full-resolution level).

Each (pair, method) runs in its own process; peak memory is that child's maximum resident set size, read from
the kernel's resource usage of the finished child (``os.wait4``, the per-child value that
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` aggregates, which is printed as a cross-check). The
reference (PyPI ``convexadam`` 0.2.0: MIND, ic=True, 80 Adam steps, no masks, CPU, float32) runs through
``reference_convexadam_worker.py`` in its own venv; its (H, W, D, 3) voxel field is scored with the same
metric code (:mod:`monai_contreg.evaluation.metrics`) as ours. Prints per pair and mean: TRE (mm), true SDlogJ,
folding %, wall time (s, the registration call; process time with start-up in brackets), peak RSS (GiB) of the
whole worker (registration, then scoring) and at the end of the registration ("(reg.)"; for the reference, whose
worker only registers, the whole worker).
This is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics as st
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, add_run_args, nlst_pairs, reference_python, register_worker, run_child, run_reference, worker_cmd  # noqa: E402

PRESETS = ("convex", "convexadam", "io", "convex+io", "io-lr1", "io-lr15", "accurate")
REFERENCE = "reference"


def _accurate_ablations() -> dict[str, list[str]]:
    """``accurate`` with one component off: row name -> overrides of the ``accurate`` preset."""
    from monai_contreg.methods.presets import get_preset

    cfg = get_preset("accurate")
    levels = [dataclasses.asdict(lv) for lv in cfg.multilevel.levels]

    def with_levels(lv: list[dict]) -> list[str]:
        return [f"multilevel.levels={json.dumps(lv)}"]

    rows = {
        # the full-resolution (finest) level dropped: the coarser levels alone
        "accurate-fine": with_levels(levels[:-1]),
        # the coarser levels dropped: the finest level alone, from zero
        "accurate-coarse": with_levels(levels[-1:]),
    }
    if cfg.multilevel.mask_aware:
        rows["accurate-sliding"] = ["multilevel.mask_aware=false"]
    if any(lv["second_dilation"] for lv in levels):
        rows["accurate-scale2"] = with_levels([{**lv, "second_dilation": 0} for lv in levels])
    if levels[-1]["smoothing_kernel"] != 3:
        rows["accurate-kernel5"] = with_levels([*levels[:-1], {**levels[-1], "smoothing_kernel": 3}])
    return rows


def _split(name: str) -> tuple[str, list[str]]:
    """(preset, overrides) of a method row name: a preset, or an ``accurate-<component>`` ablation."""
    abl = _accurate_ablations()
    return ("accurate", abl[name]) if name in abl else (name, [])


def _worker(args: argparse.Namespace) -> None:
    """In the child: register one pair with one preset (or ablation row) and print one JSON line of figures."""
    preset, overrides = _split(args.preset)
    print(json.dumps(register_worker(json.loads(args.worker), preset, overrides, args.threads, args.steps)))


def _run_here(pair: dict, method: str, args: argparse.Namespace) -> dict:
    """One (pair, method) in this process (``--in-process``): the worker's figures; ``peak_gib`` and
    ``process_seconds`` are this process's high-water mark and the call's wall time."""
    import time

    from _common import _vm_hwm_gib

    preset, overrides = _split(method)
    t0 = time.perf_counter()
    try:
        r = register_worker(pair, preset, overrides, args.threads, args.steps)
    except Exception as exc:  # reported as a failed row, as a failed child is
        return {"error": f"{type(exc).__name__}: {exc}", "peak_gib": _vm_hwm_gib(),
                "process_seconds": time.perf_counter() - t0}
    r.update(peak_gib=_vm_hwm_gib(), process_seconds=time.perf_counter() - t0)
    return r


def _fmt(r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    return (
        f"{r['tre']:7.3f} {r['tre_initial']:7.2f} {r['sdlogj']:8.4f} {r['folding_percent']:8.4f} "
        f"{r['seconds']:8.1f} ({r['process_seconds']:6.1f}) {r['peak_gib']:7.2f} {r.get('register_peak_gib', float('nan')):7.2f}"
    )


HEADER = f"{'case':6s} {'method':15s} {'TRE mm':>7s} {'initial':>7s} {'SDlogJ':>8s} {'fold %':>8s} {'time s':>8s} {'(proc)':>8s} {'peak GiB':>8s} {'(reg.)':>7s}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Learn2Reg-layout dataset (default: nlst_synth)")
    ap.add_argument("--pairs", nargs="*", help="case ids to run, e.g. 0101 0102 (default: all registration_val pairs)")
    ap.add_argument("--presets", nargs="*", default=list(PRESETS), help=f"presets to run (default: {' '.join(PRESETS)})")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads of every run, ours and the reference")
    ap.add_argument("--steps", type=int, default=None,
                    help="shorten every row's schedules to this many steps (the longest level; breakpoints in "
                         "proportion): a quick check that every row runs, not figures to compare")
    ap.add_argument("--in-process", action="store_true",
                    help="run every (pair, method) in this process (no start-up per run; the peaks are then this "
                         "process's high-water mark, not one run's): a quick check, not figures to compare")
    add_run_args(ap, with_json=True)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return

    from monai_contreg.methods.presets import preset_names

    unknown = [p for p in args.presets if p not in preset_names() and p not in _accurate_ablations()]
    if unknown:
        raise SystemExit(f"ablation: unknown preset(s) {unknown}; known: {preset_names() + list(_accurate_ablations())}")
    pairs = [p for p in nlst_pairs(args.data) if not args.pairs or p["case"] in args.pairs]
    if args.pairs and len(pairs) != len(set(args.pairs)):
        raise SystemExit(f"ablation: --pairs {args.pairs} not all found in {args.data}")
    ref_py = None
    if not args.no_reference:
        ref_py = reference_python(args.reference_python)
        if ref_py is None:
            print("reference ConvexAdam: no interpreter given or found; skipped (use --reference-python or "
                  "$CONTREG_REFERENCE_PYTHON)")
    methods = [*args.presets, *([REFERENCE] if ref_py else [])]

    print(f"{len(pairs)} pair(s), methods {methods}, {args.threads} thread(s)", flush=True)
    print(HEADER, flush=True)
    results: dict[str, dict[str, dict]] = {m: {} for m in methods}
    for pair in pairs:
        for method in methods:
            if method == REFERENCE:
                r = run_reference(pair, ref_py, args.threads)
            elif args.in_process:
                r = _run_here(pair, method, args)
            else:
                extra = ["--steps", str(args.steps)] if args.steps else []
                r = run_child(worker_cmd(__file__, pair, method, args.threads, (), *extra), args.threads)
            results[method][pair["case"]] = r
            print(f"{pair['case']:6s} {method:15s} {_fmt(r)}", flush=True)

    print("\nmean over pairs")
    print(HEADER.replace("case  ", "pairs "))
    for method in methods:
        ok = [r for r in results[method].values() if "error" not in r]
        if not ok:
            print(f"{'-':6s} {method:15s} no successful run")
            continue
        mean = {k: st.mean(r[k] for r in ok) for k in ("tre", "tre_initial", "sdlogj", "folding_percent", "seconds", "process_seconds")}
        mean["peak_gib"] = max(r["peak_gib"] for r in ok)
        mean["register_peak_gib"] = max(r.get("register_peak_gib", float("nan")) for r in ok)
        mean["median_seconds"] = st.median(r["seconds"] for r in ok)
        print(f"{len(ok):<6d} {method:15s} {_fmt(mean)}   (peaks = max over pairs; median time {mean['median_seconds']:.1f} s)")
    print("\nper-pair TRE (mm)")
    print(f"{'method':15s} " + " ".join(f"{p['case']:>7s}" for p in pairs))
    for method in methods:
        cells = [results[method].get(p["case"], {}) for p in pairs]
        print(f"{method:15s} " + " ".join(f"{c['tre']:7.3f}" if "tre" in c else f"{'-':>7s}" for c in cells))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"\nRUSAGE_CHILDREN ru_maxrss (largest child of this run): {children:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
