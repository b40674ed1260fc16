"""Another anatomy: brain MR pairs with a known answer, built on a real anatomy, against ANTs (Affine then SyN).

    python benchmarks/generalisation.py [--spacing 2] [--threads 2] [--cache DIR] [--kinds all]
        [--ours "io" "io --similarity lncc" ...] [--no-ants] [--ants-python /work/antsvenv/bin/python]
        [--json results.json]

1. The anatomy: the MNI ICBM152 2009a symmetric T1 template and its GM / WM probability maps (197x233x189 at
   1 mm, skull-stripped, 0-255), read from the nilearn wheel, which is fetched at benchmark time with
   ``pip download nilearn --no-deps`` into ``--cache`` (default ``~/.cache/monai_contreg/nilearn``; nothing is
   downloaded when a wheel is there already). Block-averaged to ``--spacing`` mm (2: 98x116x94 voxels; 1: as
   shipped).
2. The pairs (:func:`build_pair`; one grid, the template's): the fixed image is the template T1 with Gaussian noise
   (1 % of 255); the moving image is the template (T1, or the T2-like contrast: ``255 - T1`` inside the brain,
   0 outside) resampled through a known map ``G`` (moving world -> template world), times a smooth bias field
   (``exp(b)``, ``|b| <= 0.2``), with its own noise: ``moving(y) = bias(y) * template(G(y))``, ``G = D o S``,
   ``S`` a similarity about the brain's centre (rotation about x, y, z then scale; identity for the aligned
   kinds) and ``D(z) = z + w(z)`` a smooth deformation (Gaussian-filtered noise, sigma 16 mm, scaled to a
   largest displacement of 4-8 mm inside the brain, trilinear between grid points). The answer: a fixed
   landmark ``x`` corresponds to the moving point ``y = S^-1(D^-1(x))`` (``D^-1`` by fixed-point iteration to
   1e-6 mm). Landmarks: a grid every 8 mm inside the brain (GM + WM >= 0.5). Dice: the moving GM / WM maps
   (resampled through ``G`` too) warped by each method's field onto the fixed grid, thresholded at 0.5, against
   the template's.
3. Each method gives a field ``phi`` on the fixed grid (voxels, fixed -> moving, the Learn2Reg convention); all
   are scored by the same code (:func:`score`): landmark TRE in world mm (``phi`` sampled trilinearly at the
   landmarks) and Dice of GM and WM.
4. ANTs (antspyx, in its own venv, ``--ants-python``): ``ants.registration(type_of_transform="SyN")`` (an affine
   stage, then SyN; antspyx's defaults), run in a subprocess with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` =
   ``--threads``; its seconds are those of that call. Its field: voxel-index images of the moving grid warped by
   its forward transforms (linear interpolation: exact for a linear function) minus the fixed voxel indices.
5. Ours: :func:`monai_contreg.api.register` on the arrays for each ``--ours`` entry (a preset and ``--set`` /
   ``--similarity`` options as on the command line), timed in this process (``--threads`` torch threads; the
   compiled kernels built before the clock starts). Every row says whether any of its settings was chosen on these
   pairs (the defaults were chosen on lung CT only).

The pairs are synthetic deformations of one real anatomy, not subject pairs: say so with every figure.
Target (issue 19): Dice and landmark TRE at least ANTs SyN's, at most 1/3 of its time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

TEMPLATE_FILES = {k: f"nilearn/datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
DEFAULT_CACHE = Path.home() / ".cache" / "monai_contreg" / "nilearn"
DEFAULT_ANTS_PYTHON = "/work/antsvenv/bin/python"

#: The kinds of pair: contrast of the moving image, largest deformation (mm), similarity misalignment
#: (rotation about x, y, z in degrees, scale) or None.
KINDS = {
    "t1-t1 6mm misaligned": ("t1", 6.0, ((6.0, -4.0, 5.0), 1.04)),
    "t1-t2 6mm misaligned": ("t2", 6.0, ((6.0, -4.0, 5.0), 1.04)),
    "t1-t1 4mm": ("t1", 4.0, None),
    "t1-t2 4mm": ("t2", 4.0, None),
    "t1-t1 8mm": ("t1", 8.0, None),
    "t1-t2 8mm": ("t2", 8.0, None),
}
#: Our rows: (label, command-line options on top of the preset, the contrasts they run on, whether only on the
#: misaligned kinds).
OURS = [
    ("io (default)", "--preset io", ("t1", "t2"), False),
    ("io --similarity lncc", "--preset io --similarity lncc", ("t1",), False),
    ("io --similarity mi", "--preset io --similarity mi", ("t2",), False),
    ("unaligned (affine then dense)", "--preset unaligned", ("t1", "t2"), True),
]


# ------------------------------------------------------------------------------------------------- the anatomy
def fetch_template(cache: Path) -> dict[str, Path]:
    """The template's three files, extracted from the nilearn wheel in ``cache`` (``pip download`` if none)."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {k: cache / Path(v).name for k, v in TEMPLATE_FILES.items()}
    if all(p.is_file() for p in out.values()):
        return out
    wheels = sorted(cache.glob("nilearn-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "nilearn", "--no-deps", "-d", str(cache), "-q"]
        print("fetching the nilearn wheel:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob("nilearn-*.whl"))
        if not wheels:
            raise SystemExit(f"pip download left no nilearn wheel in {cache}")
    with zipfile.ZipFile(wheels[-1]) as z:
        for k, name in TEMPLATE_FILES.items():
            out[k].write_bytes(z.read(name))
    return out


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Average over blocks of ``f^3`` voxels (the array cropped to a multiple of ``f``)."""
    if f == 1:
        return a.astype(np.float32)
    s = [n // f * f for n in a.shape]
    a = a[: s[0], : s[1], : s[2]].astype(np.float64)
    return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5)).astype(np.float32)


def load_template(cache: Path, spacing: int = 2) -> dict:
    """``{"t1", "gm", "wm"}`` arrays (0-255, float32) at ``spacing`` mm (block means) and their RAS ``affine``."""
    import nibabel as nib

    files = fetch_template(cache)
    imgs = {k: nib.load(str(p)) for k, p in files.items()}
    aff = np.asarray(imgs["t1"].affine, dtype=np.float64)
    out = {k: block_mean(np.asarray(im.dataobj), spacing) for k, im in imgs.items()}
    a = aff.copy()
    a[:3, :3] = aff[:3, :3] * spacing
    a[:3, 3] = aff[:3, :3] @ np.full(3, (spacing - 1) / 2.0) + aff[:3, 3]  # the block's centre
    out["affine"] = a
    return out


# -------------------------------------------------------------------------------------------------- the pairs
def _rotation(deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(np.asarray(deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sample(vol: np.ndarray, vox: np.ndarray, order: int) -> np.ndarray:
    """``vol`` at voxel positions ``vox`` ``(3, ...)`` (0 outside)."""
    from scipy import ndimage as ndi

    return ndi.map_coordinates(vol, vox.reshape(3, -1), order=order, mode="constant", cval=0.0).reshape(vox.shape[1:])


def _smooth_field(rng, shape, sigma_vox: float, amplitude: float, inside: np.ndarray, ncomp: int) -> np.ndarray:
    """``(ncomp, *shape)`` Gaussian-filtered noise whose largest magnitude inside ``inside`` is ``amplitude``."""
    from scipy import ndimage as ndi

    f = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="nearest") for _ in range(ncomp)])
    norm = np.sqrt((f ** 2).sum(0)) if ncomp == 3 else np.abs(f[0])
    return (f * (amplitude / norm[inside].max())).astype(np.float64)


def build_pair(
    template: dict, *, contrast: str = "t1", deformation_mm: float = 6.0, similarity=None, bias: float = 0.2,
    noise: float = 0.01, seed: int = 0, landmark_mm: float = 8.0, smoothness_mm: float = 16.0,
) -> dict:
    """A fixed/moving pair with its exact answer from ``template`` (``t1``, ``gm``, ``wm``, ``affine``).

    Args:
        template: arrays on one grid (0-255) and its RAS voxel-to-world ``affine`` (mm).
        contrast: the moving image's contrast: ``"t1"`` or ``"t2"`` (``255 - T1`` inside the brain, ``T1 > 0``).
        deformation_mm: largest displacement of ``D`` inside the brain (mm).
        similarity: ``((rx, ry, rz) degrees, scale)`` of ``S`` about the brain's centre, or ``None``.
        bias: largest ``|b|`` of the bias field ``exp(b)`` on the moving image.
        noise: Gaussian noise (std, fraction of 255) added to each image, independently.
        landmark_mm: spacing of the landmark grid inside the brain (GM + WM >= 0.5).
        smoothness_mm: Gaussian sigma of the deformation's and the bias field's noise (mm).

    Returns:
        ``fixed``, ``moving`` (float32), ``fixed_gm/wm``, ``moving_gm/wm`` (0-1), ``affine``, ``landmarks_fixed``
        (voxels) and ``landmarks_moving_mm`` (world), ``min_jacobian`` of ``D`` and the initial TRE.

    Raises:
        ValueError: a deformation that folds (det J of ``D`` <= 0.1) or whose inverse did not converge.
    """
    if contrast not in ("t1", "t2"):
        raise ValueError(f"build_pair: contrast must be 't1' or 't2', got {contrast!r}")
    rng = np.random.default_rng(seed)
    aff = np.asarray(template["affine"], dtype=np.float64)
    lin, off = aff[:3, :3], aff[:3, 3]
    inv_lin = np.linalg.inv(lin)
    t1 = template["t1"].astype(np.float64)
    gm, wm = template["gm"] / 255.0, template["wm"] / 255.0
    shape = t1.shape
    sp = float(np.abs(np.linalg.det(lin)) ** (1 / 3))
    brain = (gm + wm) >= 0.5
    src = t1 if contrast == "t1" else np.where(t1 > 0, 255.0 - t1, 0.0)

    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    world = np.einsum("ij,j...->i...", lin, idx) + off[:, None, None, None]
    centre = world[:, brain].mean(axis=1)
    if similarity is None:
        rot, scale = np.eye(3), 1.0
    else:
        rot, scale = _rotation(similarity[0]), float(similarity[1])
    s_mat = scale * rot

    def s_map(y):  # moving world -> S(y)
        return np.einsum("ij,j...->i...", s_mat, y - centre.reshape(3, *([1] * (y.ndim - 1)))) + centre.reshape(3, *([1] * (y.ndim - 1)))

    w = _smooth_field(rng, shape, smoothness_mm / sp, deformation_mm, brain, 3)  # mm, on the grid

    def w_at(z):  # the deformation at world points z (3, ...), trilinear on the grid
        v = np.einsum("ij,j...->i...", inv_lin, z - off.reshape(3, *([1] * (z.ndim - 1))))
        return np.stack([_sample(w[c], v, 1) for c in range(3)])

    # det J of D on the grid (central differences, world mm): a fold would make the answer ambiguous
    grads = [np.gradient(w[c], sp) for c in range(3)]
    jac = np.empty((*shape, 3, 3))
    for a in range(3):
        for b in range(3):
            jac[..., a, b] = (a == b) + grads[a][b]
    min_det = float(np.linalg.det(jac[brain]).min())
    if min_det <= 0.1:
        raise ValueError(f"build_pair: the deformation folds (min det J {min_det:.3f}); lower deformation_mm or smooth more")

    g = s_map(world)
    g = g + w_at(g)  # G(y) = D(S(y)) for every moving voxel y
    gv = np.einsum("ij,j...->i...", inv_lin, g - off[:, None, None, None])
    moving = _sample(src, gv, 3)
    moving_gm, moving_wm = _sample(gm, gv, 1), _sample(wm, gv, 1)
    b = _smooth_field(rng, shape, 2 * smoothness_mm / sp, bias, brain, 1)[0]
    moving = moving * np.exp(b)
    fixed = t1 + rng.normal(0.0, noise * 255.0, shape)
    moving = moving + rng.normal(0.0, noise * 255.0, shape)

    step = max(1, int(round(landmark_mm / sp)))
    sel = np.zeros(shape, bool)
    sel[step // 2::step, step // 2::step, step // 2::step] = True
    lm = np.argwhere(sel & brain).astype(np.float64)  # (N, 3) fixed voxels
    x = (lin @ lm.T + off[:, None])  # (3, N) world
    z = x.copy()
    for _ in range(200):  # D(z) = x: z = x - w(z), a contraction (|grad w| < 1)
        z_new = x - w_at(z)
        done = np.abs(z_new - z).max() < 1e-7
        z = z_new
        if done:
            break
    resid = float(np.abs(z + w_at(z) - x).max())
    if resid > 1e-5:
        raise ValueError(f"build_pair: the inverse deformation did not converge (residual {resid:.2e} mm)")
    y = np.linalg.solve(s_mat, z - centre[:, None]) + centre[:, None]  # S^-1(z)
    pair = {
        "fixed": fixed.astype(np.float32), "moving": moving.astype(np.float32),
        "fixed_gm": gm.astype(np.float32), "fixed_wm": wm.astype(np.float32),
        "moving_gm": moving_gm.astype(np.float32), "moving_wm": moving_wm.astype(np.float32),
        "affine": aff, "landmarks_fixed": lm, "landmarks_moving_mm": y.T, "min_jacobian": min_det,
        "inverse_residual_mm": resid,
    }
    pair["initial"] = score(np.zeros((3, *shape), np.float32), pair)
    return pair


# ----------------------------------------------------------------------------------------------- the scoring
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def score(phi: np.ndarray, pair: dict) -> dict:
    """Landmark TRE (world mm: mean, 95th percentile, max) and Dice of GM and WM of a field ``phi``.

    Args:
        phi: ``(3, H, W, D)`` on the fixed grid, voxels, fixed -> moving (fixed voxel x <-> moving voxel x + phi(x)).
        pair: :func:`build_pair`'s output.
    """
    aff = pair["affine"]
    lm = pair["landmarks_fixed"].T  # (3, N)
    u = np.stack([_sample(phi[c].astype(np.float64), lm, 1) for c in range(3)])
    pred = aff[:3, :3] @ (lm + u) + aff[:3, 3:4]
    err = np.linalg.norm(pred - pair["landmarks_moving_mm"].T, axis=0)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in phi.shape[1:]], indexing="ij"))
    at = idx + phi
    out = {"tre_mm": float(err.mean()), "tre_p95_mm": float(np.percentile(err, 95)), "tre_max_mm": float(err.max()),
           "landmarks": int(err.size)}
    for t in ("gm", "wm"):
        warped = _sample(pair[f"moving_{t}"].astype(np.float64), at, 1)
        out[f"dice_{t}"] = _dice(warped >= 0.5, pair[f"fixed_{t}"] >= 0.5)
    return out


# ------------------------------------------------------------------------------------------------------- ours
def run_ours(pair: dict, options: str, threads: int) -> tuple[np.ndarray, float, dict]:
    """``phi`` (3, H, W, D), seconds and notes of :func:`monai_contreg.api.register` under CLI-like ``options``."""
    import torch

    from monai_contreg.api import register
    from monai_contreg.kernels import load_extension
    from monai_contreg.methods.presets import get_preset

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="io")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--similarity")
    ap.add_argument("--modality")
    o = ap.parse_args(shlex.split(options))
    cfg = get_preset(o.preset).with_overrides(o.set)
    if o.similarity:
        cfg.set("features.similarity", o.similarity)
    if o.modality:
        cfg.set("preprocess.modality", o.modality)
    cfg.engine.num_threads = threads
    torch.set_num_threads(threads)
    load_extension()
    t0 = time.perf_counter()
    res = register(pair["fixed"], pair["moving"], config=cfg, affine=pair["affine"])
    seconds = time.perf_counter() - t0
    phi = res.ddf.as_tensor()[0].detach().cpu().numpy()
    notes = {"modality": (res.mask_report or {}).get("modality"), "masked": (res.mask_report or {}).get("masked"),
             "kernels": res.kernels, "steps": res.steps,
             "stages": [s.kind for s in getattr(res.config, "stages", ())]}  # with an affine stage the auto rule added
    return phi, seconds, notes


# ------------------------------------------------------------------------------------------------------- ANTs
def _write_nifti(path: Path, arr: np.ndarray, aff: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), aff), str(path))


def run_ants(pair: dict, work: Path, python: str, threads: int) -> tuple[np.ndarray, float, dict]:
    """``phi``, seconds (of ``ants.registration`` itself) and notes of ANTs ``SyN`` in a subprocess of ``python``."""
    work.mkdir(parents=True, exist_ok=True)
    _write_nifti(work / "fixed.nii.gz", pair["fixed"], pair["affine"])
    _write_nifti(work / "moving.nii.gz", pair["moving"], pair["affine"])
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    cmd = [python, str(Path(__file__).resolve()), "--ants-worker", str(work)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"ANTs worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    info = json.loads((work / "ants.json").read_text())
    phi = np.load(work / "ants_phi.npy")
    return phi, float(info["seconds"]), {"transforms": info["transforms"], "ants": info["version"]}


def ants_worker(work: Path) -> None:
    """In the ANTs venv: register ``work/fixed`` and ``work/moving`` (SyN), write the field and the time."""
    import ants

    fixed = ants.image_read(str(work / "fixed.nii.gz"))
    moving = ants.image_read(str(work / "moving.nii.gz"))
    t0 = time.perf_counter()
    reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN")
    seconds = time.perf_counter() - t0
    shape = moving.numpy().shape
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    phi = []
    for c in range(3):  # a voxel-index image of the moving grid, pulled onto the fixed grid: T(x) in moving voxels
        index = moving.new_image_like(grids[c])
        out = ants.apply_transforms(fixed=fixed, moving=index, transformlist=reg["fwdtransforms"], interpolator="linear")
        phi.append(out.numpy() - np.arange(fixed.shape[c], dtype=np.float32).reshape([-1 if k == c else 1 for k in range(3)]))
    np.save(work / "ants_phi.npy", np.stack(phi).astype(np.float32))
    (work / "ants.json").write_text(json.dumps({"seconds": seconds, "transforms": [Path(p).name for p in reg["fwdtransforms"]],
                                                "version": getattr(ants, "__version__", "?")}))


# ------------------------------------------------------------------------------------------------------- main
def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ants-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--spacing", type=int, default=2, choices=(1, 2), help="brain grid spacing, mm (default 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the nilearn wheel is kept")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: CACHE/work)")
    ap.add_argument("--kinds", default="all", help=f"comma-separated kinds of pair, or all: {list(KINDS)}")
    ap.add_argument("--ours", action="append", default=None,
                    help="our row: 'LABEL=OPTIONS' or OPTIONS (--preset P [--set K=V] [--similarity S]); repeatable "
                         "(default: io, and io --similarity lncc / mi on the T1 / T2 pairs)")
    ap.add_argument("--chosen-on-these-pairs", action="append", default=[], metavar="LABEL",
                    help="label of an --ours row whose settings were chosen on these pairs (said with its figures)")
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--ants-python", default=DEFAULT_ANTS_PYTHON)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.ants_worker:
        ants_worker(args.ants_worker)
        return 0
    kinds = list(KINDS) if args.kinds == "all" else [k.strip() for k in args.kinds.split(",")]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"unknown kinds {unknown}; expected some of {list(KINDS)}")
    if args.ours:
        ours = [(o.split("=", 1)[0], o.split("=", 1)[1], ("t1", "t2"), False) if "=" in o.split("--")[0]
                else (o, o, ("t1", "t2"), False) for o in args.ours]
    else:
        ours = OURS
    template = load_template(args.cache, args.spacing)
    work = args.work or args.cache / "work"
    print(f"anatomy: MNI ICBM152 2009a sym (nilearn wheel), {args.spacing} mm grid {template['t1'].shape}; "
          f"synthetic deformations of one real anatomy; threads {args.threads}; load {_load()}", flush=True)
    rows = []
    for i, kind in enumerate(kinds):
        contrast, amp, sim = KINDS[kind]
        pair = build_pair(template, contrast=contrast, deformation_mm=amp, similarity=sim, seed=args.seed + i)
        ini = pair["initial"]
        print(f"\n[{kind}] {ini['landmarks']} landmarks, initial TRE {ini['tre_mm']:.3f} mm (max {ini['tre_max_mm']:.2f}), "
              f"Dice GM {ini['dice_gm']:.3f} WM {ini['dice_wm']:.3f}; min det J of D {pair['min_jacobian']:.3f}", flush=True)
        rows.append({"kind": kind, "method": "initial", **ini})
        methods = []
        if not args.no_ants:
            methods.append(("ANTs SyN (Affine then SyN, antspyx defaults)", lambda p=pair, k=i: run_ants(p, work / f"pair{k}", args.ants_python, args.threads)))
        for label, options, contrasts, misaligned_only in ours:
            if contrast in contrasts and (sim is not None or not misaligned_only):
                methods.append((label, lambda p=pair, o=options: run_ours(p, o, args.threads)))
        for label, fn in methods:
            load = _load()
            phi, seconds, notes = fn()
            s = score(phi, pair)
            chosen = label in args.chosen_on_these_pairs
            row = {"kind": kind, "method": label, **s, "seconds": seconds, "load": load,
                   "settings_chosen_on_these_pairs": chosen, **notes}
            rows.append(row)
            print(f"  {label:45s} TRE {s['tre_mm']:.3f} mm (p95 {s['tre_p95_mm']:.3f}, max {s['tre_max_mm']:.2f})  "
                  f"Dice GM {s['dice_gm']:.4f} WM {s['dice_wm']:.4f}  {seconds:7.1f} s  "
                  f"[{'settings chosen on these pairs' if chosen else 'no setting chosen on these pairs'}; load {load}]",
                  flush=True)
            if args.json:  # after every row: a long run leaves its figures so far
                args.json.write_text(json.dumps({"spacing_mm": args.spacing, "threads": args.threads, "rows": rows},
                                                indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
