"""Accuracy, smoothness, time and memory of monai_contreg on nlst_synth, beside the reference ConvexAdam.

    python benchmarks/nlst_synth.py [--preset io] [--set KEY=VALUE ...] [--threads 2] [--pairs 0101 0102]
        [--reference-python /path/to/ref-venv/bin/python] [--json results.json]

Each pair runs in its own process (so peak memory is per pair). The reference (PyPI convexadam 0.2.0,
ic=True, 80 Adam steps, MIND, no masks, CPU) runs when an interpreter of a venv that has it is given
(--reference-python or $CONTREG_REFERENCE_PYTHON); its field is scored with the same metric code.
Prints per pair and mean: TRE (mm), true SDlogJ, folding %, wall time (s), peak RSS (GiB).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, nlst_pairs, reference_python, register_worker, run_child, run_reference, worker_cmd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", default="io")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", nargs="*")
    ap.add_argument("--reference-python")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(register_worker(json.loads(args.worker), args.preset, args.set, args.threads)))
        return
    pairs = [p for p in nlst_pairs(args.data) if not args.pairs or p["case"] in args.pairs]
    ref_py = None if args.no_reference else reference_python(args.reference_python)
    if ref_py is None and not args.no_reference:
        print("reference ConvexAdam: no interpreter given (--reference-python / $CONTREG_REFERENCE_PYTHON); skipped")
    rows = []
    for pair in pairs:
        ours = run_child(worker_cmd(__file__, pair, args.preset, args.threads, args.set), args.threads)
        row = {"case": pair["case"], "ours": ours}
        if ref_py:
            row["reference"] = run_reference(pair, ref_py, args.threads)
        rows.append(row)
        _print_row(row)
    _print_summary(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "overrides": args.set, "threads": args.threads, "pairs": rows}, indent=2))


def _fmt(r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    return (f"TRE {r['tre']:.3f} mm (initial {r['tre_initial']:.2f})  SDlogJ {r['sdlogj']:.4f}  "
            f"fold {r['folding_percent']:.4f}%  {r['seconds']:.1f} s  {r['peak_gib']:.2f} GiB")


def _print_row(row: dict) -> None:
    print(f"{row['case']}  ours      {_fmt(row['ours'])}", flush=True)
    if "reference" in row:
        print(f"{row['case']}  reference {_fmt(row['reference'])}", flush=True)


def _print_summary(rows: list[dict], args) -> None:
    import statistics as st

    for who in ("ours", "reference"):
        ok = [r[who] for r in rows if who in r and "error" not in r[who]]
        if not ok:
            continue
        print(
            f"mean {who:9s} TRE {st.mean(r['tre'] for r in ok):.3f} mm  SDlogJ {st.mean(r['sdlogj'] for r in ok):.4f} "
            f"(max {max(r['sdlogj'] for r in ok):.4f})  fold max {max(r['folding_percent'] for r in ok):.4f}%  "
            f"time {st.mean(r['seconds'] for r in ok):.1f} s (median {st.median(r['seconds'] for r in ok):.1f})  "
            f"peak {max(r['peak_gib'] for r in ok):.2f} GiB  [{len(ok)} pairs, preset {args.preset}, {args.threads} threads]"
        )


if __name__ == "__main__":
    main()
