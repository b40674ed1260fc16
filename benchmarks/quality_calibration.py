"""Fit and evaluate the landmark-free error estimate of :mod:`monai_contreg.evaluation.quality`.

    python benchmarks/quality_calibration.py [--data ../shared/data/nlst_synth] [--cases-work DIR ...]
        [--work /tmp/quality_calibration] [--threads 1] [--write-model]

Stages (each cached in ``--work``, so a second run only refits):

1. fields: every nlst_synth pair registered by the package with three settings of varied quality: the default
   ``io`` preset, ``io`` shortened to 30 steps, and the discrete ``convex`` preset (``--threads`` CPU threads).
2. degraded fields, made on purpose from each pair's ``io`` field ``u``: ``s u`` for s in 0 (the zero field),
   0.25, 0.5, 0.75, 1.25, 1.5; ``u`` plus smooth random noise of 1, 2 and 4 mm amplitude; ``u`` shifted by a constant
   2 mm and 5 mm; another pair's ``io`` field.
3. signals (:func:`monai_contreg.evaluation.quality.quality_signals`) of every field, and its true error: the mean
   keypoint TRE (mm) over the pair's ~1,600 exact keypoints. For the inputs of ``../shared/cases`` (``--cases-work``:
   the work folders the case scripts wrote, see below) the truth is the dense known field: the error is the mean
   ``|u_est - u_true|`` in mm over the true lung / body region.
4. model: log-linear least squares of ``log(TRE)`` on the signals (:data:`~monai_contreg.evaluation.quality.MODEL_FEATURES`)
   fitted on the calibration pairs (nlst_synth 0101, 0102 and case_21's fields); split-conformal interval from
   the absolute log residuals of the calibration fields; evaluated on the OTHER pairs (nlst_synth 0103, 0104 and
   case_22's fields): Spearman correlation of estimate and truth, AUC of flagging TRE > 2 mm against TRE <= 1 mm,
   coverage of the interval. With ``--write-model`` the coefficients are written to the package's
   ``monai_contreg/evaluation/quality_model.json``.

``--stage cost`` times the estimate against a default registration (wall and CPU time) on ``--cost-pairs``.

Case work folders: ``python ../shared/cases/case_21.py /tmp/q/case21`` (and ``case_22.py``) leave
``fixed.nii.gz``, ``moving.nii.gz``, ``d_default.nii.gz``, ``d_noauto.nii.gz``; this script rebuilds each case's
known field with the script's own code (same seed) to score them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATA, nlst_pairs  # noqa: E402

CALIBRATION_CASES = ("0101", "0102")
EVALUATION_CASES = ("0103", "0104")
SETTINGS = ("io", "io30", "convex")


def _register(pair: dict, setting: str, threads: int):
    from monai_contreg.api import register
    from monai_contreg.methods.presets import get_preset
    from monai_contreg.tuning import scale_schedule

    cfg = get_preset("convex" if setting == "convex" else "io")
    if setting == "io30":
        cfg = scale_schedule(cfg, 30)
    cfg.engine.num_threads = threads
    t0 = time.perf_counter()
    res = register(pair["fixed"], pair["moving"], fixed_mask=pair["fixed_mask"], moving_mask=pair["moving_mask"], config=cfg)
    return res, time.perf_counter() - t0


def stage_fields(pairs: list[dict], work: Path, threads: int) -> None:
    """Register every pair with every setting (cached as ``fields/CASE_SETTING.npz``, float16)."""
    (work / "fields").mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        for setting in SETTINGS:
            out = work / "fields" / f"{pair['case']}_{setting}.npz"
            if out.exists():
                continue
            res, sec = _register(pair, setting, threads)
            res.save(out)
            print(f"field {pair['case']} {setting}: {sec:.1f}s", flush=True)



def _smooth_noise(shape, sigma: float, seed: int) -> torch.Tensor:
    """A smooth random field ``(1, 3, H, W, D)``, unit RMS length (Gaussian-filtered white noise)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    comps = [ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma) for _ in range(3)]
    v = torch.as_tensor(np.stack(comps))[None]
    return v / v.norm(dim=1).square().mean().sqrt()


def degraded(u: torch.Tensor, other: torch.Tensor | None, spacing, seed: int) -> dict[str, torch.Tensor]:
    """The fields degraded on purpose from a pair's field ``u`` (voxels); ``other``: another pair's field."""
    sp = torch.as_tensor(spacing, dtype=torch.float32).view(1, 3, 1, 1, 1)
    out = {f"scale{s:g}": u * s for s in (0.0, 0.25, 0.5, 0.75, 1.25, 1.5)}
    noise = _smooth_noise(tuple(u.shape[2:]), 6.0, seed)
    for a in (1.0, 2.0, 4.0):
        out[f"noise{a:g}mm"] = u + noise * a / sp
    direction = torch.tensor([0.6, -0.48, 0.64]).view(1, 3, 1, 1, 1)
    for a in (2.0, 5.0):
        out[f"shift{a:g}mm"] = u + direction * a / sp
    if other is not None and tuple(other.shape) == tuple(u.shape):
        out["other_pair"] = other.clone()
    return out


def _signals_row(fixed, moving, ddf, fa, ma, fm, mm) -> dict:
    from monai_contreg.evaluation.quality import quality_signals

    return quality_signals(fixed, moving, ddf, fa, ma, fm, mm)


def stage_signals(pairs: list[dict], work: Path) -> list[dict]:
    """Signals and true TRE of every nlst_synth field (cached in ``signals_nlst.json``)."""
    from monai_contreg.data.keypoints import load_keypoints
    from monai_contreg.evaluation.metrics import keypoint_tre
    from monai_contreg.io.fields import load_field
    from monai_contreg.io.images import load_image
    from monai_contreg.spatial.conventions import spacing_from_affine

    cache = work / "signals_nlst.json"
    rows = json.loads(cache.read_text()) if cache.exists() else []
    seen = {(r["pair"], r["field"]) for r in rows}
    io_fields = {p["case"]: work / "fields" / f"{p['case']}_io.npz" for p in pairs}
    for i, pair in enumerate(pairs):
        f, m = load_image(pair["fixed"]), load_image(pair["moving"])
        fm, mm = load_image(pair["fixed_mask"]), load_image(pair["moving_mask"])
        fa, ma = np.asarray(f.affine), np.asarray(m.affine)
        sp = spacing_from_affine(fa)
        fk, mk = load_keypoints(pair["fixed_kp"]), load_keypoints(pair["moving_kp"])
        u, _ = load_field(io_fields[pair["case"]])
        other_case = pairs[(i + 1) % len(pairs)]["case"]
        other, _ = load_field(io_fields[other_case])
        fields = {s: load_field(work / "fields" / f"{pair['case']}_{s}.npz")[0] for s in SETTINGS}
        fields.update(degraded(u, other, sp, seed=int(pair["case"])))
        for name, ddf in fields.items():
            if (pair["case"], name) in seen:
                continue
            sig = _signals_row(f.as_tensor()[0], m.as_tensor()[0], ddf, fa, ma, fm.as_tensor()[0], mm.as_tensor()[0])
            tre = float(keypoint_tre(ddf.double(), fk, mk, sp).mean())
            rows.append({"pair": pair["case"], "kind": "nlst_synth", "field": name, "tre_mm": tre, **sig})
            print(f"{pair['case']} {name:12s} TRE {tre:6.2f}  est-signals: ratio {sig['mind_ratio']:.3f} "
                  f"residual {sig['residual_mm']:.2f} mm  ({sig['seconds']:.1f}s)", flush=True)
            cache.write_text(json.dumps(rows, indent=1))
    return rows


def _case21_truth() -> tuple[np.ndarray, np.ndarray]:
    """case_21's known field (voxels) and its scoring region, rebuilt with the script's own construction."""
    from scipy import ndimage as ndi

    def texture(shape, sigma, seed):
        t = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), sigma)
        return (t - t.mean()) / (t.std() + 1e-8)

    shape = (112, 96, 96)
    u = np.stack([texture(shape, 10.0, 13 + i) for i in range(3)])
    u *= 5.0 / np.abs(u).max()
    return u, None


def _case22_truth(shape) -> np.ndarray:
    """case_22's known field (voxels) on its cut grid (the script's analytic breathing field, first 20 rows cut)."""
    full = (shape[0] + 20, shape[1], shape[2])
    gg = np.meshgrid(*[np.linspace(-1, 1, k) for k in full], indexing="ij")
    w = np.exp(-(gg[0] ** 2 + gg[1] ** 2) / 0.5)
    u = np.stack([0.25 * 5 * w * gg[0] * (1 - gg[2]) / 2, 0.25 * 5 * w * gg[1] * (1 - gg[2]) / 2, 5 * w * (1 - gg[2]) / 2])
    return u[:, 20:]


def stage_cases(case_dirs: list[Path], work: Path) -> list[dict]:
    """Signals and dense true error of the case scripts' fields and of fields degraded from them."""
    from monai_contreg.io.fields import load_field
    from monai_contreg.io.images import load_image
    from monai_contreg.spatial.conventions import spacing_from_affine

    cache = work / "signals_cases.json"
    rows = json.loads(cache.read_text()) if cache.exists() else []
    seen = {(r["pair"], r["field"]) for r in rows}
    for d in case_dirs:
        name = d.name
        if not (d / "fixed.nii.gz").exists():
            print(f"skip {d}: no fixed.nii.gz (run the case script first)")
            continue
        f, m = load_image(d / "fixed.nii.gz"), load_image(d / "moving.nii.gz")
        fa = np.asarray(f.affine)
        sp = spacing_from_affine(fa)
        fix = f.as_tensor()[0].numpy()
        if (d / "fixed_mask.nii.gz").exists():  # case_22: the true lungs
            fm = load_image(d / "fixed_mask.nii.gz").as_tensor()[0]
            mm = load_image(d / "moving_mask.nii.gz").as_tensor()[0]
            truth = _case22_truth(fix.shape)
            region = fm.numpy() > 0
            base = "d_truemask"
        else:  # case_21: no lungs; the body
            fm = mm = None
            truth, _ = _case21_truth()
            region = fix > -500
            base = "d_noauto"
        inner = np.zeros(region.shape, bool)
        inner[3:-3, 3:-3, 3:-3] = True
        region &= inner
        fields = {p.name.split(".")[0]: load_field(p)[0] for p in sorted(d.glob("d_*.nii.gz"))}
        if base in fields:
            for k, v in degraded(fields[base], None, sp, seed=21).items():
                if not k.startswith("scale1"):
                    fields[k] = v
        for fname, ddf in fields.items():
            if (name, fname) in seen:
                continue
            err = np.linalg.norm((ddf[0].numpy() - truth) * np.asarray(sp).reshape(3, 1, 1, 1), axis=0)[region].mean()
            sig = _signals_row(f.as_tensor()[0], m.as_tensor()[0], ddf, fa, fa, fm, mm)
            rows.append({"pair": name, "kind": "case", "field": fname, "tre_mm": float(err), **sig})
            print(f"{name} {fname:12s} error {err:6.2f}  ratio {sig['mind_ratio']:.3f} residual {sig['residual_mm']:.2f} mm", flush=True)
            cache.write_text(json.dumps(rows, indent=1))
    return rows


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def auc(scores_pos, scores_neg) -> float:
    """Probability that a positive scores above a negative (ties count half): the Mann-Whitney AUC."""
    pos, neg = np.asarray(scores_pos, float), np.asarray(scores_neg, float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (pos.size * neg.size))


def fit_model(rows: list[dict], features: tuple[str, ...], alpha: float = 0.1, ridge: float = 1e-2) -> dict:
    """Least squares (small ridge on standardised features) of ``log TRE`` on the features; split-conformal ``q``."""
    from monai_contreg.evaluation.quality import model_features

    X = np.array([[model_features(r)[k] for k in features] for r in rows])
    y = np.log(np.maximum([r["tre_mm"] for r in rows], 0.05))
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd
    A = np.c_[np.ones(len(Z)), Z]
    reg = ridge * np.eye(A.shape[1])
    reg[0, 0] = 0
    coef = np.linalg.solve(A.T @ A + reg, A.T @ y)
    resid = np.abs(y - A @ coef)
    n = len(resid)
    k = min(n, int(math.ceil((n + 1) * (1 - alpha))))
    q = float(np.sort(resid)[k - 1])
    return {"features": list(features), "intercept": float(coef[0]), "coef": [float(c) for c in coef[1:]],
            "mean": [float(v) for v in mu], "scale": [float(v) for v in sd], "conformal_q": q, "alpha": alpha,
            "n_calibration": n}


def evaluate_model(rows: list[dict], model: dict) -> dict:
    from monai_contreg.evaluation.quality import estimate_from_signals, verdict

    est = np.array([estimate_from_signals(r, model) for r in rows])
    tre = np.array([r["tre_mm"] for r in rows])
    flag = np.array([{"ok": 0, "check": 1, "failed": 2}[verdict(e[0], r)[0]] for e, r in zip(est, rows)])
    return {
        "n": len(rows),
        "spearman": spearman(est[:, 0], tre),
        "auc_gt2_vs_le1": auc(est[tre > 2, 0], est[tre <= 1, 0]),
        "n_gt2": int((tre > 2).sum()), "n_le1": int((tre <= 1).sum()),
        "coverage": float(((tre >= est[:, 1]) & (tre <= est[:, 2])).mean()),
        "flagged_gt2": float((flag[tre > 2] >= 1).mean()) if (tre > 2).any() else float("nan"),
        "ok_le1": float((flag[tre <= 1] == 0).mean()) if (tre <= 1).any() else float("nan"),
        "median_abs_log_error": float(np.median(np.abs(np.log(est[:, 0]) - np.log(np.maximum(tre, 0.05))))),
    }


def stage_cost(pairs: list[dict], cases: list[str], threads: int) -> None:
    """Time of the error estimate against the registration's (default ``io`` preset, ``threads`` threads), wall
    clock and CPU time of this process (``time.process_time``: what the process itself used, less sensitive to
    other jobs sharing the machine). The estimate runs as ``contreg register`` runs it: from the files."""
    from monai_contreg.api import register
    from monai_contreg.kernels import load_extension
    from monai_contreg.methods.presets import get_preset

    load_extension()
    for pair in pairs:
        if pair["case"] not in cases:
            continue
        cfg = get_preset("io")
        cfg.engine.num_threads = threads
        w, c = time.perf_counter(), time.process_time()
        res = register(pair["fixed"], pair["moving"], fixed_mask=pair["fixed_mask"], moving_mask=pair["moving_mask"], config=cfg)
        reg_w, reg_c = time.perf_counter() - w, time.process_time() - c
        for masks in (True, False):
            w, c = time.perf_counter(), time.process_time()
            rep = res.quality(pair["fixed"], pair["moving"], fixed_mask=pair["fixed_mask"] if masks else None,
                              moving_mask=pair["moving_mask"] if masks else None)
            q_w, q_c = time.perf_counter() - w, time.process_time() - c
            print(f"cost {pair['case']} ({'given masks' if masks else 'automatic mask'}): registration wall {reg_w:.1f}s "
                  f"cpu {reg_c:.1f}s; quality wall {q_w:.1f}s cpu {q_c:.1f}s = {100 * q_c / reg_c:.1f} % of the "
                  f"registration's CPU time ({100 * q_w / reg_w:.1f} % wall); {rep.line()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=Path("/tmp/quality_calibration"))
    ap.add_argument("--cases-work", type=Path, nargs="*", default=[],
                    help="work folders of ../shared/cases/case_21.py and case_22.py (named case21, case22)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stage", default="all", help="fields (registrations only) | cases (signals of --cases-work only) | cost (time of the estimate) | all")
    ap.add_argument("--cost-pairs", default="0101", help="--stage cost: pairs to time (comma-separated)")
    ap.add_argument("--write-model", action="store_true", help="write monai_contreg/evaluation/quality_model.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        alt = Path(__file__).resolve().parents[2] / "shared" / "data" / "nlst_synth"
        args.data = alt if alt.is_dir() else Path("/work/shared/data/nlst_synth")
    pairs = nlst_pairs(args.data)
    if args.stage == "cost":
        stage_cost(pairs, args.cost_pairs.split(","), args.threads)
        return 0
    if args.stage == "cases":  # the case scripts' fields only (no registration)
        stage_cases(args.cases_work, args.work)
        return 0
    stage_fields(pairs, args.work, args.threads)
    if args.stage == "fields":
        return 0
    rows = stage_signals(pairs, args.work) + stage_cases(args.cases_work, args.work)
    from monai_contreg.evaluation.quality import MODEL_FEATURES, MODEL_PATH, model_features

    calib = [r for r in rows if r["pair"] in CALIBRATION_CASES or r["pair"] == "case21"]
    evals = [r for r in rows if r not in calib]
    print(f"\n{len(rows)} fields: calibration {len(calib)} (pairs {sorted({r['pair'] for r in calib})}), "
          f"evaluation {len(evals)} (pairs {sorted({r['pair'] for r in evals})})")
    print("Spearman of each signal with the true error, calibration fields:")
    for k in ("mind_ratio", "mind_ratio_worst", "residual_mm", "residual_worst_mm", "dice", "sdlogj",
              "folding_percent", "out_of_image", "outside_mind_ratio"):
        vals = [(r[k], r["tre_mm"]) for r in calib if r.get(k) is not None and math.isfinite(r[k])]
        if len(vals) > 3:
            a, b = zip(*vals)
            rho = spearman(a, b) if np.std(a) > 0 else float("nan")
            print(f"  {k:20s} rho {rho:+.3f}  (n {len(vals)})")
    model = fit_model(calib, MODEL_FEATURES)
    model["fitted_on"] = {"calibration_pairs": sorted({r["pair"] for r in calib}),
                          "evaluation_pairs": sorted({r["pair"] for r in evals}),
                          "fields": sorted({r["field"] for r in calib})}
    for name, subset in (("calibration", calib), ("evaluation", evals)):
        ev = evaluate_model(subset, model)
        model[f"{name}_metrics"] = ev
        print(f"{name}: n {ev['n']}  Spearman {ev['spearman']:.3f}  AUC(TRE>2 vs <=1) {ev['auc_gt2_vs_le1']:.3f} "
              f"({ev['n_gt2']} vs {ev['n_le1']})  interval coverage {ev['coverage']:.3f} (nominal {1 - model['alpha']:.2f})  "
              f"flagged TRE>2 {ev['flagged_gt2']:.3f}  ok TRE<=1 {ev['ok_le1']:.3f}  median |log err| {ev['median_abs_log_error']:.3f}")
    print("\nper field (evaluation):")
    from monai_contreg.evaluation.quality import estimate_from_signals, verdict

    for r in evals:
        e, lo, hi = estimate_from_signals(r, model)
        print(f"  {r['pair']:7s} {r['field']:12s} true {r['tre_mm']:6.2f}  estimate {e:6.2f} ({lo:.2f}-{hi:.2f})  {verdict(e, r)[0]}")
    if args.write_model:
        MODEL_PATH.write_text(json.dumps(model, indent=1) + "\n")
        print(f"wrote {MODEL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
