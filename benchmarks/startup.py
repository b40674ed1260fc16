"""Start-up time of the command line: ``contreg --help``, a subcommand's ``--help`` and an argument error.

    python benchmarks/startup.py [--repeats 5] [--json out.json] [--repo CHECKOUT]

Each case runs ``python -m monai_contreg.cli ARGS`` in a fresh process ``--repeats`` times and prints the median
wall time (seconds, process start to exit), the exit status and the heavy packages (torch, MONAI, ITK, ignite,
scipy, matplotlib) the process imported. Also the time of ``import torch`` alone, for scale, and the machine's
load average (the figures are wall times: a loaded machine makes them longer). A script that prints figures, not
a test (``tests/test_cli_startup.py`` checks deterministically that nothing heavy is imported).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "contreg --help": ["--help"],
    "contreg register --help": ["register", "--help"],
    "contreg run --help": ["run", "--help"],
    "argument error: --max-memory abc": ["register", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz", "--max-memory", "abc"],
    "argument error: misplaced -v": ["register", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz", "-v"],
    "argument error: --threads two": ["run", "ds", "-o", "out", "--threads", "two"],
    "argument error: --preset i0": ["demo", "--preset", "i0"],
}

_PROBE = """
import json, runpy, sys
sys.argv = ["contreg", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("monai_contreg.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split('.')[0] for m in sys.modules} & {"torch", "monai", "itk", "ignite", "scipy", "matplotlib"})
sys.stdout = sys.__stdout__
print("\\nPROBE " + json.dumps({"code": code, "heavy": heavy}))
"""


def _time(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=env["PYTHONPATH"].split(os.pathsep)[0], env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--repo", type=Path, default=REPO,
                    help="checkout whose monai_contreg is timed (default: this one; another one: before/after)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = {}
    load = os.getloadavg()
    for name, argv in CASES.items():
        times, probe = [], {}
        for _ in range(args.repeats):
            # the plain command is what is timed; the probe (same command, one more run) lists what it imported
            dt, _ = _time([sys.executable, "-m", "monai_contreg.cli", *argv], env)
            times.append(dt)
        out = _time([sys.executable, "-c", _PROBE, *argv], env)[1]
        probe = json.loads(next(ln for ln in out.splitlines() if ln.startswith("PROBE "))[6:])
        rows[name] = {"median_s": st.median(times), "min_s": min(times), "max_s": max(times), **probe}
    torch_times = [_time([sys.executable, "-c", "import torch"], env)[0] for _ in range(args.repeats)]
    rows["import torch (for scale)"] = {"median_s": st.median(torch_times), "min_s": min(torch_times),
                                        "max_s": max(torch_times), "code": 0, "heavy": ["torch"]}
    print(f"{args.repo}: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average before {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}, after {os.getloadavg()[0]:.2f}; median of {args.repeats} runs each")
    width = max(len(k) for k in rows)
    print(f"{'case':<{width}}  {'median s':>8}  {'min':>6}  {'max':>6}  exit  heavy imports")
    for name, r in rows.items():
        print(f"{name:<{width}}  {r['median_s']:8.3f}  {r['min_s']:6.3f}  {r['max_s']:6.3f}  {r['code']!s:>4}  "
              f"{', '.join(r['heavy']) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "repeats": args.repeats, "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
