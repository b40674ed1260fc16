"""One `io` optimisation step at NLST working-grid size: compiled kernels, PyTorch path, PyTorch + torch.compile.

    python benchmarks/step.py [--threads 2] [--repeats 10] [--shape 112 96 112]

Each variant runs in its own process (the kernels are switched off with CONTREG_EXTENSIONS=0 for the PyTorch
paths). A step = smoothed field, warped-feature SSD, diffusion, backward, fused Adam, on random 12-channel
features. Prints the first step (includes torch.compile's compilation) and the median of the next ones.

Beside the time it prints the step's memory-traffic lower bound, measured in the same process on the same
threads: the bytes the step must touch, divided by the bandwidth of a large tensor copy (``dst.copy_(src)``,
256 MiB, read + write counted) and of a triad (``a = b + s * c``), the higher of the two. The bytes are counted
from the tensors the step really uses (their ``nbytes``):

* ``fused`` bound: what no step can avoid: the moving and fixed features read once, the parameter and both Adam
  moments read and written once (42 floats per voxel for 12 channels): the smoothed field and the gradients
  could stay in cache in a fully fused step;
* ``unfused`` bound: additionally every intermediate the step materialises (smoothed field, its gradient, the
  parameter's gradient) written once and read once.

``ratio`` = median step time / fused bound: the issue's target (<= 3x) in one command. A script that prints
figures, not a test.
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
    traffic = _traffic(field, opt, sim)
    print(json.dumps({"first": first, "median": st.median(times), "fused": sim.fused, **traffic,
                      **_bandwidth(args.repeats)}))


def _engines_worker(args: argparse.Namespace) -> None:
    """The engine's whole step, unfused (autograd, torch's fused Adam, KeepInImage's separate clamp) and fused
    (FieldAdam with the clamp in its update, the fused gradient into kept buffers), with the handlers every preset
    attaches. Each engine runs ``repeats + 1`` steps in one ``engine.run`` (as a registration does), twice, the two
    engines in turn; a step's time is the interval between consecutive ITERATION_COMPLETED events of one run, so
    what ignite and the handlers do once per run (STARTED / COMPLETED, the guard's end-of-run checks) is not
    counted as step time. Faults and CPU times are per step of the whole runs."""
    import resource

    import torch
    from ignite.engine import Events

    from monai_contreg.optim import DivergenceGuard, HistoryRecorder, KeepInImage, NaNGuard, create_registration_engine
    from monai_contreg.optim.adam import FieldAdam
    from monai_contreg.optim.field import DisplacementField

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    moving, fixed = torch.rand(1, 12, *shape), torch.rand(1, 12, *shape)
    runs = {}
    for name in ("unfused", "fused"):
        field = DisplacementField(shape)
        field.displacement.data.normal_(0, 2)
        opt = (FieldAdam(field.parameters(), lr=1.0, keep_in_image=True) if name == "fused"
               else torch.optim.Adam(field.parameters(), lr=1.0, fused=True))
        eng = create_registration_engine(field, fixed, moving, opt, reg_weight=1.75)
        HistoryRecorder(opt).attach(eng)
        NaNGuard().attach(eng)
        KeepInImage().attach(eng)
        DivergenceGuard(loss_ratio=1e9, max_displacement=1e9, final_loss_ratio=1e9, final_max_displacement=1e9,
                        max_folding=100.0).attach(eng)
        r = {"engine": eng, "path": eng.state.step_path, "times": [], "last": None, "steps": 0, "minflt": 0,
             "utime": 0.0, "stime": 0.0}

        def _started(_e, r=r):
            r["last"] = None

        def _completed(_e, r=r):
            now = time.perf_counter()
            if r["last"] is not None:
                r["times"].append(now - r["last"])
            r["last"] = now

        eng.add_event_handler(Events.STARTED, _started)
        eng.add_event_handler(Events.ITERATION_COMPLETED, _completed)
        runs[name] = r
    for rnd in range(2):
        for name, r in runs.items():
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            r["engine"].run(data=None, max_epochs=rnd + 1, epoch_length=args.repeats + 1)
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            r["steps"] += args.repeats + 1
            r["minflt"] += u1.ru_minflt - u0.ru_minflt
            r["utime"] += u1.ru_utime - u0.ru_utime
            r["stime"] += u1.ru_stime - u0.ru_stime
    eng = runs["fused"]["engine"]
    traffic = _traffic(eng.state.field, eng.state.optimizer, None, moving)
    out = {name: {"median": st.median(r["times"]), "path": r["path"], "minflt_per_step": r["minflt"] / r["steps"],
                  "sys_share": r["stime"] / max(r["utime"] + r["stime"], 1e-9)} for name, r in runs.items()}
    print(json.dumps({"engines": out, **traffic, **_bandwidth(args.repeats)}))


def _traffic(field, opt, sim, features=None) -> dict:
    """Bytes one step must touch, from the tensors it uses (see the module docstring)."""
    p = field.displacement
    state = opt.state[p]
    feats = (features, features) if sim is None else (sim._mcl, sim._fcl) if sim.fused else (sim.moving, sim.fixed)
    read_once = sum(t.nbytes for t in feats)
    read_write = p.nbytes + state["exp_avg"].nbytes + state["exp_avg_sq"].nbytes
    fused = read_once + 2 * read_write
    # smoothed field, d loss / d smoothed field, d loss / d parameter: each written once and read once
    intermediates = 2 * 3 * p.nbytes
    return {"bytes_fused": fused, "bytes_unfused": fused + intermediates, "voxels": p[0, 0].numel()}


def _bandwidth(repeats: int) -> dict:
    """Streaming bandwidth (bytes/s) on this process's threads: a large copy and a triad, median of ``repeats``."""
    import torch

    n = 64 * 2**20  # 64 Mi floats = 256 MiB per array: far beyond the caches
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    copy, triad = [], []
    for _ in range(max(3, repeats)):
        t = time.perf_counter()
        a.copy_(b)
        copy.append(2 * a.nbytes / (time.perf_counter() - t))
        t = time.perf_counter()
        torch.add(b, c, alpha=0.5, out=a)
        triad.append(3 * a.nbytes / (time.perf_counter() - t))
    return {"bw_copy": st.median(copy), "bw_triad": st.median(triad)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shape", type=int, nargs=3, default=[112, 96, 112])
    ap.add_argument("--variants", nargs="*", default=["kernels", "pytorch", "compile"],
                    choices=["kernels", "pytorch", "compile", "engines"],
                    help="which variants to run (default: the first three); engines: the engine's whole step, "
                         "unfused and fused, in one process (steps timed inside each engine.run)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant == "engines":
        _engines_worker(args)
        return
    if args.variant:
        _worker(args)
        return
    print(f"one io step on {tuple(args.shape)}, 12 channels, {args.threads} thread(s), median of {args.repeats}")
    for variant, ext in (("kernels", "1"), ("pytorch", "0"), ("compile", "0"), ("engines", "1")):
        if variant not in args.variants:
            continue
        cmd = [sys.executable, __file__, "--variant", variant, "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--shape", *map(str, args.shape)]
        env = dict(os.environ, CONTREG_EXTENSIONS=ext, OMP_NUM_THREADS=str(args.threads))
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not lines:
            print(f"{variant:8s} failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}")
            continue
        r = json.loads(lines[-1])
        bw = max(r["bw_copy"], r["bw_triad"])
        bound, unfused = r["bytes_fused"] / bw, r["bytes_unfused"] / bw
        if variant == "engines":
            print(f"engine steps (handlers of every preset, KeepInImage on; timed inside engine.run); bandwidth copy "
                  f"{r['bw_copy'] / 1e9:.1f} GB/s, triad {r['bw_triad'] / 1e9:.1f} GB/s; lower bound {bound * 1e3:.1f} ms "
                  f"({r['bytes_fused'] / 1e6:.0f} MB)")
            for name, e in r["engines"].items():
                print(f"  {name:8s} ({e['path']:8s}) median step {e['median']:.4f} s   ratio {e['median'] / bound:5.1f}x   "
                      f"minor faults/step {e['minflt_per_step']:8.0f}   system share of CPU time {100 * e['sys_share']:.1f} %")
            continue
        path = "compiled kernels" if r["fused"] else "PyTorch ops"
        print(f"{variant:8s} first step {r['first']:6.2f} s   median step {r['median']:.4f} s   ({path})")
        print(f"{'':8s} traffic: {r['bytes_fused'] / 1e6:.0f} MB fused ({r['bytes_fused'] / 4 / r['voxels']:.0f} floats/voxel), "
              f"{r['bytes_unfused'] / 1e6:.0f} MB unfused; bandwidth copy {r['bw_copy'] / 1e9:.1f} GB/s, "
              f"triad {r['bw_triad'] / 1e9:.1f} GB/s")
        print(f"{'':8s} lower bound {bound * 1e3:.1f} ms (unfused {unfused * 1e3:.1f} ms)   "
              f"ratio {r['median'] / bound:.1f}x (unfused {r['median'] / unfused:.1f}x)")


if __name__ == "__main__":
    main()
