"""Fit and evaluate the landmark-free error estimate of :mod:`monai_contreg.evaluation.quality`.

    python benchmarks/quality_calibration.py [--work /tmp/quality_calibration] [--threads 1] [--write-model]
        [--stage all|pairs|fields|fit|cost] [--cost-pairs 0101,...]

Everything is generated here, seeded, from the real CT volumes of ``../shared/data`` (nothing else is read):

1. pairs (``--work``/pairs/NAME.npz), each with exact known correspondences, at a REDUCED resolution (3 mm voxels,
   about 112 x 96 x 112; 2 mm for the synthetic abdomen) so that the whole study fits two shared CPU cores. Three
   source anatomies, one group each (the split is by group, so no anatomy is in both halves):

   * ``chestA``: the real chest CT behind nlst_synth (all 8 images of its 4 pairs are that one patient). (a) the 4
     nlst_synth pairs themselves, each image pooled 2x2x2 to 3 mm, keypoints mapped exactly to the pooled grid
     (``(x - 0.5) / 2``); (b) each of the 8 images (pooled) as the moving image of 2 new pairs: fixed = moving
     warped by a smooth breathing-like field (:func:`breathing_field`: cranio-caudal motion of 4-15 mm growing
     towards the lung base, antero-posterior and lateral contraction, a random smooth part of 0.5-3 mm), with
     independent Gaussian intensity noise of 0, 10 or 25 HU on each image. 20 pairs.
   * ``chestB``: a second real chest CT (``sources/chest_ct_b_1p5mm.nii.gz``, another patient and scanner),
     pooled to 3 mm and cropped to its lungs with 24 mm around them, its lungs from
     :func:`~monai_contreg.data.lung_mask.segment_lungs` at 1.5 mm: 8 breathing-like pairs as above; plus
     ``../shared/cases/case_22.py``'s pair rebuilt with that script's construction (field of view cutting one
     lung, its analytic breathing field). 9 pairs.
   * ``abdomen``: ``../shared/cases/case_21.py``'s synthetic abdomen (no lungs, bowel gas) rebuilt with the
     script's construction, its own field and two more (other texture seeds and amplitudes). 3 pairs.

   The keypoints of a new pair are fixed-grid voxel centres (vessel-like voxels: the brightest 15 % inside the
   fixed lung mask eroded by 2 voxels; in the abdomen voxels of strong gradient inside the body), at most 1,000
   per pair; their moving partners are ``x + u(x)`` with ``u`` the known field at that voxel: exact.
2. fields of every kind for every pair (``fields/``, float16): the package's registration with the default ``io``
   preset (masks given for the chest pairs; the abdomen as the registration decides: no lung found, unmasked),
   short and under-converged runs (``io-lr1`` for 10 and 30 steps; ``io`` shortened to 20 steps, a run-away;
   these with the divergence guard off, which only raises), the discrete ``convex`` preset, and fields degraded on purpose from the
   ``io`` field ``u``: ``s u`` for s in 0 (the zero field), 0.25, 0.5, 0.75, 1.25, 1.5; ``u`` plus smooth random
   noise of 1, 2 and 4 mm; ``u`` shifted by 2 and 5 mm; the ``io`` field of another pair of the same group.
3. signals (:func:`monai_contreg.evaluation.quality.quality_signals`) of every field and its true error: the
   mean keypoint TRE (mm).
4. model: log-linear least squares of ``log(TRE)`` on :data:`~monai_contreg.evaluation.quality.MODEL_FEATURES`
   fitted on the CALIBRATION groups only (:data:`CALIBRATION_GROUPS`); its interval is conformal over
   leave-one-pair-out residuals of the calibration pairs, Mondrian by verdict class (one quantile per
   ``ok``/``check``/``failed`` class of the estimate; :func:`fit_model`). Evaluated on the EVALUATION groups
   (:data:`EVALUATION_GROUPS`): Spearman correlation of estimate and TRE, AUC of flagging TRE > 2 mm against
   TRE <= 1 mm, coverage of the interval. A guard refuses to fit when a calibration pair shares a group or a
   source image with an evaluation pair. The reverse split (fit on the evaluation groups, score the calibration
   ones) is printed as a cross-check only. ``--write-model`` writes the calibration-group model to
   ``monai_contreg/evaluation/quality_model.json``.

``--stage cost`` times the estimate after a default registration of the full-resolution nlst_synth pairs
(``--cost-pairs``), as ``contreg register`` runs it (the loaded images passed through, no second read).
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

#: The source-anatomy groups the model is fitted on, and those it is evaluated on (disjoint).
CALIBRATION_GROUPS = ("chestB", "abdomen")
EVALUATION_GROUPS = ("chestA",)
#: Registrations per pair (see the module docstring).
SETTINGS = ("io", "lr1_10", "lr1_30", "io20_runaway", "convex")
CHEST_B = DEFAULT_DATA.parent / "sources" / "chest_ct_b_1p5mm.nii.gz"
MAX_KEYPOINTS = 1000
#: The degraded fields (of :func:`degraded`) whose signals are measured: the zero field, scaled down and up, a
#: perturbed, a shifted one and another pair's (a subset, to fit the study on two shared cores).
DEGRADED = ("scale0", "scale0.5", "scale1.5", "noise2mm", "shift5mm", "other_pair")


# ---------------------------------------------------------------------------------------------------- pairs
def _pool2(a: np.ndarray) -> np.ndarray:
    """Mean over 2x2x2 blocks (an odd last row dropped)."""
    t = torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return torch.nn.functional.avg_pool3d(t, 2)[0, 0].numpy()


def _pooled_affine(aff: np.ndarray) -> np.ndarray:
    """Affine of the 2x2x2-pooled grid: coarse voxel j is the centre of fine voxels 2j, 2j+1."""
    m = np.eye(4)
    m[:3, :3] *= 2.0
    m[:3, 3] = 0.5
    return np.asarray(aff, dtype=np.float64) @ m


def _grid(shape) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))


def _smooth(shape, sigma_vox: float, rng) -> np.ndarray:
    """Three Gaussian-filtered white-noise components, each scaled to a largest magnitude of 1."""
    from scipy import ndimage as ndi

    out = np.stack([ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox) for _ in range(3)])
    return out / np.abs(out).max(axis=(1, 2, 3), keepdims=True)


def breathing_field(shape, affine: np.ndarray, lungs: np.ndarray, rng) -> tuple[np.ndarray, dict]:
    """A smooth breathing-like field ``(3, H, W, D)`` in voxels (fixed voxel ``x`` <-> moving voxel ``x + u(x)``).

    In RAS mm around the lungs' centroid ``c``: ``w = (1 - tanh(z / 50)) / 2 * exp(-r_xy^2 / (2 * 110^2))`` (1 at
    the lung base, 0 at the apex; ``r_xy`` the in-plane distance); ``u_z = a w``, ``u_y = -0.3 a w (y - c_y) / 100``,
    ``u_x = -0.15 a w (x - c_x) / 100`` with ``a`` uniform in [4, 15] mm; plus ``b`` (uniform [0.5, 3] mm) times a
    Gaussian-filtered noise field (sigma 20 mm). Converted to voxels through the affine.
    """
    a = float(rng.uniform(4.0, 15.0))
    b = float(rng.uniform(0.5, 3.0))
    A = np.asarray(affine, dtype=np.float64)
    sp = np.linalg.norm(A[:3, :3], axis=0)
    idx = _grid(shape).reshape(3, -1).astype(np.float64)
    world = A[:3, :3] @ idx + A[:3, 3:]
    c = world[:, lungs.reshape(-1) > 0].mean(axis=1, keepdims=True)
    d = world - c
    w = 0.5 * (1 - np.tanh(d[2] / 50.0)) * np.exp(-(d[0] ** 2 + d[1] ** 2) / (2 * 110.0**2))
    u_mm = np.stack([-0.15 * a * w * d[0] / 100, -0.3 * a * w * d[1] / 100, a * w])
    u_mm += b * _smooth(shape, 20.0 / float(sp.mean()), rng).reshape(3, -1)
    u = np.linalg.solve(A[:3, :3], u_mm).reshape(3, *shape).astype(np.float32)
    return u, {"cc_mm": round(a, 2), "random_mm": round(b, 2)}


def _min_jacobian(u: np.ndarray) -> float:
    g = [np.gradient(u[i]) for i in range(3)]
    J = np.stack([np.stack([g[i][j] + (i == j) for j in range(3)]) for i in range(3)])
    return float(np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1))).min())


def _warp(img: np.ndarray, u: np.ndarray, order: int = 1) -> np.ndarray:
    from scipy import ndimage as ndi

    g = _grid(img.shape)
    return ndi.map_coordinates(img, [g[i] + u[i] for i in range(3)], order=order, mode="nearest").astype(np.float32)


def _keypoints(fixed: np.ndarray, region: np.ndarray, u: np.ndarray, rng, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Fixed voxel centres ``(N, 3)`` and their exact moving partners ``x + u(x)`` (see the module docstring)."""
    from scipy import ndimage as ndi

    inner = ndi.binary_erosion(region, iterations=2)
    inner[:3], inner[-3:], inner[:, :3], inner[:, -3:], inner[:, :, :3], inner[:, :, -3:] = (False,) * 6
    if kind == "chest":
        vals = fixed[inner]
        cand = inner & (fixed >= np.percentile(vals, 85))
    else:
        gm = ndi.gaussian_gradient_magnitude(fixed, 1.0)
        cand = inner & (gm >= np.percentile(gm[inner], 70))
    pts = np.argwhere(cand)
    if len(pts) > MAX_KEYPOINTS:
        pts = pts[np.sort(rng.choice(len(pts), MAX_KEYPOINTS, replace=False))]
    fk = pts.astype(np.float64)
    mk = fk + np.stack([u[i][tuple(pts.T)] for i in range(3)], axis=1)
    return fk, mk


def _synthetic_pair(name, group, source, src_img, src_mask, affine, rng, kind="chest", u=None, info=None) -> dict:
    """A pair from one source image: moving = the source (+ noise), fixed = the source warped by ``u`` (+ noise)."""
    if u is None:
        for _ in range(10):
            u, info = breathing_field(src_img.shape, affine, src_mask, rng)
            if _min_jacobian(u) > 0.2:
                break
    clean = _warp(src_img, u)
    fm = _warp(src_mask.astype(np.float32), u, order=0) > 0.5
    region = fm if kind == "chest" else clean > -500
    fk, mk = _keypoints(clean, region, u, rng, kind)
    nf, nm = (float(rng.choice([0.0, 10.0, 25.0])) for _ in range(2))
    fixed = clean + nf * rng.standard_normal(clean.shape).astype(np.float32)
    moving = src_img + nm * rng.standard_normal(src_img.shape).astype(np.float32)
    return {"name": name, "group": group, "source": source, "kind": kind, "fixed": fixed, "moving": moving,
            "fixed_mask": fm if kind == "chest" else None, "moving_mask": src_mask > 0 if kind == "chest" else None,
            "affine": np.asarray(affine, np.float64), "fk": fk, "mk": mk,
            "info": {**(info or {}), "noise_hu": [nf, nm], "keypoints": len(fk), "min_jacobian": round(_min_jacobian(u), 3)}}


def _texture(shape, sigma, seed):
    from scipy import ndimage as ndi

    t = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), sigma)
    return (t - t.mean()) / (t.std() + 1e-8)


def _abdomen(seeds: tuple[int, int, int]) -> np.ndarray:
    """``../shared/cases/case_21.py``'s abdomen (its construction; ``seeds`` = its texture seeds 6, 9, 7)."""
    shape, sp = (112, 96, 96), (2.0, 2.0, 2.0)
    g = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp)], indexing="ij")
    ext = np.array(shape) * np.array(sp) / 2
    mov = np.full(shape, -1000.0, np.float32)
    body = (g[0] / (0.92 * ext[0])) ** 2 + (g[1] / (0.80 * ext[1])) ** 2 <= 1
    mov[body] = (40 + 30 * _texture(shape, 2.0, seeds[0]))[body]
    spine = (g[0] / 14) ** 2 + ((g[1] - 0.55 * ext[1]) / 14) ** 2 <= 1
    mov[spine & body] = (400 + 80 * _texture(shape, 1.0, seeds[1]))[spine & body]
    liver = ((g[0] + 40) / 45) ** 2 + ((g[1] + 5) / 40) ** 2 + ((g[2] - 20) / 50) ** 2 <= 1
    mov[liver] = (60 + 15 * _texture(shape, 1.5, seeds[2]))[liver]
    gas = ((g[0] - 35) / 45) ** 2 + ((g[1] + 20) / 30) ** 2 + ((g[2] - 25) / 60) ** 2 <= 1
    gas |= ((g[0] - 10) / 55) ** 2 + ((g[1] + 35) / 14) ** 2 + ((g[2] + 40) / 20) ** 2 <= 1
    tex = _texture(shape, 1.0, seeds[1])
    mov[gas] = (-980 + 10 * tex)[gas]
    mov[gas & (tex > 1.2)] = -200
    return mov


def _case22(src: np.ndarray) -> dict:
    """``../shared/cases/case_22.py``'s pair (its construction): chest CT B at 3 mm, the field of view cut."""
    from scipy import ndimage as ndi

    a = ndi.zoom(src[50:280, 40:250, :], 0.5, order=1)
    lab, _ = ndi.label(a < -400)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    lung = None
    for i in np.argsort(sizes)[::-1][:5]:
        sl = ndi.find_objects((lab == i).astype(np.uint8))[0]
        if sl[0].start > 0 and sl[1].start > 0 and sl[0].stop < a.shape[0] and sl[1].stop < a.shape[1]:
            lung = lab == i
            break
    shape = a.shape
    gg = np.meshgrid(*[np.linspace(-1, 1, k) for k in shape], indexing="ij")
    w = np.exp(-(gg[0] ** 2 + gg[1] ** 2) / 0.5)
    u = np.stack([0.25 * 5 * w * gg[0] * (1 - gg[2]) / 2, 0.25 * 5 * w * gg[1] * (1 - gg[2]) / 2,
                  5 * w * (1 - gg[2]) / 2]).astype(np.float32)
    x0 = 20
    A = np.diag([-3.0, -3.0, 3.0, 1.0])
    A[:3, 3] = [100, 80, -150]
    A[:3, 3] += A[:3, 0] * x0
    return {"moving": a[x0:], "lung": lung[x0:], "u": u[:, x0:], "affine": A}


def build_pairs(data: Path, seed: int = 20) -> list[dict]:
    """Every pair of the study (module docstring), seeded; images float32 HU, masks bool, keypoints voxels."""
    import nibabel as nib

    from monai_contreg.data.keypoints import load_keypoints
    from monai_contreg.data.lung_mask import segment_lungs

    rng = np.random.default_rng(seed)
    pairs = []
    # chestA (a): the nlst_synth pairs pooled to 3 mm, their keypoints mapped exactly
    for p in nlst_pairs(data):
        img = {k: nib.load(p[k]) for k in ("fixed", "moving", "fixed_mask", "moving_mask")}
        arr = {k: _pool2(np.asarray(v.dataobj, dtype=np.float32)) for k, v in img.items()}
        fk = (load_keypoints(p["fixed_kp"]).numpy() - 0.5) / 2
        mk = (load_keypoints(p["moving_kp"]).numpy() - 0.5) / 2
        pairs.append({"name": f"nlst{p['case']}", "group": "chestA", "source": f"NLSTB_{p['case']}", "kind": "chest",
                      "fixed": arr["fixed"], "moving": arr["moving"], "fixed_mask": arr["fixed_mask"] > 0.5,
                      "moving_mask": arr["moving_mask"] > 0.5, "affine": _pooled_affine(img["fixed"].affine),
                      "fk": fk, "mk": mk, "info": {"keypoints": len(fk), "motion": "nlst_synth's own"}})
    # chestA (b): each of the 8 images, 2 breathing-like pairs each
    for p in nlst_pairs(data):
        for role, mkey in (("0000", "fixed"), ("0001", "moving")):
            nimg = nib.load(p[mkey])
            src = _pool2(np.asarray(nimg.dataobj, dtype=np.float32))
            msk = _pool2(np.asarray(nib.load(p[f"{mkey}_mask"]).dataobj, dtype=np.float32)) > 0.5
            for k in range(2):
                pairs.append(_synthetic_pair(f"A{p['case']}_{role}_d{k}", "chestA", f"NLSTB_{p['case']}_{role}", src, msk,
                                             _pooled_affine(nimg.affine), rng))
    # chestB: the second real CT, 8 breathing-like pairs and case_22
    bimg = nib.load(str(CHEST_B))
    b = np.asarray(bimg.dataobj, dtype=np.float32)
    lungs = segment_lungs(b, np.asarray(bimg.affine)).mask
    bp, lp = _pool2(b), _pool2(lungs.astype(np.float32)) > 0.5
    box = np.argwhere(lp)  # the lungs and 8 voxels (24 mm) around them
    lo = np.maximum(box.min(0) - 8, 0)
    hi = np.minimum(box.max(0) + 9, bp.shape)
    crop = tuple(slice(int(a), int(c)) for a, c in zip(lo, hi))
    ab = _pooled_affine(bimg.affine)
    ab[:3, 3] += ab[:3, :3] @ lo
    for k in range(8):
        pairs.append(_synthetic_pair(f"B_d{k}", "chestB", "chest_ct_b", bp[crop], lp[crop], ab, rng))
    c22 = _case22(b)
    pairs.append(_synthetic_pair("case22", "chestB", "chest_ct_b", c22["moving"], c22["lung"], c22["affine"], rng,
                                 u=c22["u"], info={"motion": "case_22.py's analytic field", "fov": "cut"}))
    # abdomen: case_21's pair and two more
    for k, (seeds, useed, amp) in enumerate((((6, 9, 7), 13, 5.0), ((106, 109, 107), 113, 3.0), ((206, 209, 207), 213, 4.0))):
        mov = _abdomen(seeds)
        u = np.stack([_texture(mov.shape, 10.0, useed + i) for i in range(3)])
        u *= amp / np.abs(u).max()
        pairs.append(_synthetic_pair("case21" if k == 0 else f"abdomen{k}", "abdomen", f"abdomen_seed{seeds[0]}", mov,
                                     np.zeros(mov.shape, bool), np.diag([2.0, 2.0, 2.0, 1.0]), rng, kind="abdomen",
                                     u=u.astype(np.float32), info={"motion": f"case_21.py's texture field, max {amp:g} voxels"}))
    return pairs


def stage_pairs(data: Path, work: Path) -> list[dict]:
    """Build (or load the cached) pairs: ``pairs/NAME.npz`` and ``pairs.json``."""
    d = work / "pairs"
    index = work / "pairs.json"
    if index.exists():
        meta = json.loads(index.read_text())
        out = []
        for m in meta:
            z = np.load(d / f"{m['name']}.npz")
            out.append({**m, **{k: (z[k] if k in z.files else None) for k in
                                ("fixed", "moving", "fixed_mask", "moving_mask", "affine", "fk", "mk")}})
        return out
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pairs = build_pairs(data)
    meta = []
    for p in pairs:
        arrays = {k: p[k] for k in ("fixed", "moving", "fixed_mask", "moving_mask", "affine", "fk", "mk") if p[k] is not None}
        np.savez_compressed(d / f"{p['name']}.npz", **arrays)
        meta.append({k: p[k] for k in ("name", "group", "source", "kind", "info")} | {"shape": list(p["fixed"].shape)})
        tre0 = float(np.linalg.norm((p["mk"] - p["fk"]) * np.linalg.norm(p["affine"][:3, :3], axis=0), axis=1).mean())
        meta[-1]["initial_tre_mm"] = tre0
        print(f"pair {p['name']:16s} {p['group']:8s} {tuple(p['fixed'].shape)} keypoints {len(p['fk'])} "
              f"initial TRE {tre0:.2f} mm  {p['info']}", flush=True)
    index.write_text(json.dumps(meta, indent=1))
    print(f"{len(pairs)} pairs in {time.perf_counter() - t0:.0f}s", flush=True)
    return stage_pairs(data, work)


# ---------------------------------------------------------------------------------------------------- fields
def _config(setting: str, threads: int):
    from monai_contreg.methods.presets import get_preset
    from monai_contreg.tuning import scale_schedule

    if setting == "io":
        cfg = get_preset("io")
    elif setting.startswith("lr1_"):
        cfg = scale_schedule(get_preset("io-lr1"), int(setting.split("_")[1]))
    elif setting == "io20_runaway":
        cfg = scale_schedule(get_preset("io"), 20)
    else:
        cfg = get_preset(setting)
    if setting != "io":  # a poor field is what these settings are for: the divergence guard (which only raises) off
        cfg.engine.divergence_check = False
    cfg.engine.num_threads = threads
    return cfg


def _register(pair: dict, setting: str, threads: int) -> tuple[torch.Tensor, str]:
    """The field of one registration (voxels) and what ran (``io`` falls back to ``io-lr1`` if it diverges)."""
    from monai_contreg.api import register
    from monai_contreg.errors import RegistrationDivergedError

    kw = {"fixed_mask": pair["fixed_mask"].astype(np.float32), "moving_mask": pair["moving_mask"].astype(np.float32)} \
        if pair["fixed_mask"] is not None else {}
    try:
        res = register(pair["fixed"], pair["moving"], affine=pair["affine"], config=_config(setting, threads), **kw)
        return res.ddf.as_tensor().float(), setting
    except RegistrationDivergedError:
        if setting != "io":
            raise
        res = register(pair["fixed"], pair["moving"], affine=pair["affine"], config=_config("io-lr1", threads), **kw)
        return res.ddf.as_tensor().float(), "io-lr1 (io diverged)"


def _shard(items: list, shard: tuple[int, int]) -> list:
    """Items ``i, i + n, i + 2n, ...`` of ``shard = (i, n)``: one of ``n`` processes that share a stage."""
    return items[shard[0]::shard[1]]


def stage_fields(pairs: list[dict], work: Path, threads: int, shard: tuple[int, int] = (0, 1)) -> None:
    """Register every pair with every setting (cached as ``fields/NAME_SETTING.npz``, float16)."""
    d = work / "fields"
    d.mkdir(parents=True, exist_ok=True)
    log = work / f"fields.{shard[0]}.json"
    ran = json.loads(log.read_text()) if log.exists() else {}
    for pair in _shard(pairs, shard):
        for setting in SETTINGS:
            out = d / f"{pair['name']}_{setting}.npz"
            if out.exists():
                continue
            t0 = time.perf_counter()
            ddf, what = _register(pair, setting, threads)
            np.savez_compressed(out, ddf=ddf.numpy().astype(np.float16))
            ran[f"{pair['name']}_{setting}"] = {"ran": what, "seconds": round(time.perf_counter() - t0, 2)}
            log.write_text(json.dumps(ran, indent=1))
            print(f"field {pair['name']} {setting}: {time.perf_counter() - t0:.1f}s ({what})", flush=True)


def _field(work: Path, name: str, setting: str) -> torch.Tensor:
    return torch.as_tensor(np.load(work / "fields" / f"{name}_{setting}.npz")["ddf"].astype(np.float32))


def _smooth_noise(shape, sigma: float, seed: int) -> torch.Tensor:
    """A smooth random field ``(1, 3, H, W, D)``, unit RMS length (Gaussian-filtered white noise)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    comps = [ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma) for _ in range(3)]
    v = torch.as_tensor(np.stack(comps))[None]
    return v / v.norm(dim=1).square().mean().sqrt()


def degraded(u: torch.Tensor, other: torch.Tensor | None, spacing, seed: int) -> dict[str, torch.Tensor]:
    """The fields degraded on purpose from a pair's field ``u`` (voxels); ``other``: another pair's field."""
    sp = torch.as_tensor(np.asarray(spacing, dtype=np.float32)).view(1, 3, 1, 1, 1)
    out = {f"scale{s:g}": u * s for s in (0.0, 0.25, 0.5, 0.75, 1.25, 1.5)}
    noise = _smooth_noise(tuple(u.shape[2:]), 12.0 / float(sp.mean()), seed)
    for a in (1.0, 2.0, 4.0):
        out[f"noise{a:g}mm"] = u + noise * a / sp
    direction = torch.tensor([0.6, -0.48, 0.64]).view(1, 3, 1, 1, 1)
    for a in (2.0, 5.0):
        out[f"shift{a:g}mm"] = u + direction * a / sp
    if other is not None and tuple(other.shape) == tuple(u.shape):
        out["other_pair"] = other.clone()
    return out


def stage_signals(pairs: list[dict], work: Path, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Signals and true TRE of every field of every pair (cached in ``signals.SHARD.json``); all shards' rows."""
    cache = work / f"signals.{shard[0]}.json"
    rows = json.loads(cache.read_text()) if cache.exists() else []
    seen = {(r["pair"], r["field"]) for r in rows}
    mine = {p["name"] for p in _shard(pairs, shard)}
    have = lambda name, setting: (work / "fields" / f"{name}_{setting}.npz").exists()  # noqa: E731
    todo = [(i, p) for i, p in enumerate(pairs) if p["name"] in mine]
    while todo:  # pairs whose fields another process still registers wait their turn
        ready = []
        for i, pair in todo:
            same = [p for p in pairs if p["group"] == pair["group"] and p["name"] != pair["name"]
                    and tuple(p["fixed"].shape) == tuple(pair["fixed"].shape)]
            if all(have(pair["name"], s) for s in SETTINGS) and (not same or have(same[i % len(same)]["name"], "io")):
                ready.append((i, pair))
        if not ready:
            time.sleep(10)
            continue
        done = {i for i, _ in ready}
        todo = [t for t in todo if t[0] not in done]
        _signals_of(ready, pairs, work, rows, seen, cache)
    every = [r for f in sorted(work.glob("signals.*.json")) for r in json.loads(f.read_text())]
    return list({(r["pair"], r["field"]): r for r in every}.values())


def _signals_of(ready, pairs, work, rows, seen, cache) -> None:
    from monai_contreg.evaluation.metrics import keypoint_tre
    from monai_contreg.evaluation.quality import quality_signals

    for i, pair in ready:
        sp = tuple(float(v) for v in np.linalg.norm(pair["affine"][:3, :3], axis=0))
        same = [p for p in pairs if p["group"] == pair["group"] and p["name"] != pair["name"]
                and tuple(p["fixed"].shape) == tuple(pair["fixed"].shape)]
        other = _field(work, same[i % len(same)]["name"], "io") if same else None
        fields = {s: _field(work, pair["name"], s) for s in SETTINGS}
        fields.update({k: v for k, v in degraded(fields["io"], other, sp, seed=1000 + i).items() if k in DEGRADED})
        fk, mk = torch.as_tensor(pair["fk"]), torch.as_tensor(pair["mk"])
        for name, ddf in fields.items():
            if (pair["name"], name) in seen:
                continue
            sig = quality_signals(pair["fixed"], pair["moving"], ddf, pair["affine"], pair["affine"],
                                  pair["fixed_mask"], pair["moving_mask"])
            tre = float(keypoint_tre(ddf.double(), fk, mk, sp).mean())
            rows.append({"pair": pair["name"], "group": pair["group"], "source": pair["source"], "field": name,
                         "tre_mm": tre, **sig})
            print(f"{pair['name']:16s} {name:13s} TRE {tre:6.2f}  ratio {sig['mind_ratio']:.3f} "
                  f"residual {sig['residual_mm']:.2f} mm  ({sig['seconds']:.1f}s)", flush=True)
        cache.write_text(json.dumps(rows, indent=1))


# ---------------------------------------------------------------------------------------------------- model
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


def _lstsq(rows: list[dict], features, ridge: float) -> dict:
    from monai_contreg.evaluation.quality import model_features

    X = np.array([[model_features(r)[k] for k in features] for r in rows])
    y = np.log(np.maximum([r["tre_mm"] for r in rows], 0.05))
    mu, sd = X.mean(0), X.std(0) + 1e-9
    A = np.c_[np.ones(len(X)), (X - mu) / sd]
    reg = ridge * np.eye(A.shape[1])
    reg[0, 0] = 0
    coef = np.linalg.solve(A.T @ A + reg, A.T @ y)
    return {"features": list(features), "intercept": float(coef[0]), "coef": [float(c) for c in coef[1:]],
            "mean": [float(v) for v in mu], "scale": [float(v) for v in sd], "conformal_q": 0.0}


def _conformal_quantile(resid, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``n`` residuals (split-conformal; the largest when that
    exceeds ``n``)."""
    r = np.sort(np.asarray(resid, float))
    k = min(len(r), int(math.ceil((len(r) + 1) * (1 - alpha))))
    return float(r[k - 1])


def fit_model(rows: list[dict], features: tuple[str, ...], alpha: float = 0.1, ridge: float = 1e-2) -> dict:
    """Least squares (small ridge on standardised features) of ``log TRE`` on the features, and its interval.

    The interval's half-width (in log mm) comes from leave-one-pair-out residuals: for every calibration pair the
    model is refitted without that pair's fields and the absolute log residuals of its fields are kept (a new
    pair's fields are never seen by the fit that scores them, as at use). The split-conformal quantile of these
    residuals is taken per class of the estimate (Mondrian: ``ok`` < CHECK_MM <= ``check`` < FAILED_MM <=
    ``failed``; classes with fewer than ``ceil(1 / alpha) * 2 - 1`` residuals use the pooled quantile), so a
    class that is harder to estimate gets its own, wider interval.
    """
    from monai_contreg.evaluation.quality import estimate_from_signals, estimate_class

    model = _lstsq(rows, features, ridge)
    pairs = sorted({r["pair"] for r in rows})
    loo: list[tuple[str, float]] = []
    for p in pairs:
        m = _lstsq([r for r in rows if r["pair"] != p], features, ridge)
        for r in rows:
            if r["pair"] == p:
                e = estimate_from_signals(r, m)[0]
                loo.append((estimate_class(e), abs(math.log(e) - math.log(max(r["tre_mm"], 0.05)))))
    pooled = _conformal_quantile([v for _, v in loo], alpha)
    need = int(math.ceil(1 / alpha)) * 2 - 1
    by_class = {}
    counts = {}
    for c in ("ok", "check", "failed"):
        vals = [v for k, v in loo if k == c]
        counts[c] = len(vals)
        by_class[c] = _conformal_quantile(vals, alpha) if len(vals) >= need else pooled
    model.update(conformal_q=pooled, conformal_q_by_class=by_class, alpha=alpha, n_calibration=len(rows),
                 interval="split-conformal over leave-one-pair-out residuals of the calibration pairs, Mondrian by "
                          "the estimate's class (ok/check/failed)", n_residuals_by_class=counts)
    return model


def evaluate_model(rows: list[dict], model: dict) -> dict:
    from monai_contreg.evaluation.quality import estimate_from_signals, verdict

    est = np.array([estimate_from_signals(r, model) for r in rows])
    tre = np.array([r["tre_mm"] for r in rows])
    flag = np.array([{"ok": 0, "check": 1, "failed": 2}[verdict(e[0], r)[0]] for e, r in zip(est, rows)])
    inside = (tre >= est[:, 1]) & (tre <= est[:, 2])
    return {
        "n": len(rows), "pairs": len({r["pair"] for r in rows}),
        "spearman": spearman(est[:, 0], tre),
        "auc_gt2_vs_le1": auc(est[tre > 2, 0], est[tre <= 1, 0]),
        "n_gt2": int((tre > 2).sum()), "n_le1": int((tre <= 1).sum()),
        "coverage": float(inside.mean()),
        "coverage_tre_le1": float(inside[tre <= 1].mean()) if (tre <= 1).any() else float("nan"),
        "coverage_tre_gt2": float(inside[tre > 2].mean()) if (tre > 2).any() else float("nan"),
        "flagged_gt2": float((flag[tre > 2] >= 1).mean()) if (tre > 2).any() else float("nan"),
        "ok_le1": float((flag[tre <= 1] == 0).mean()) if (tre <= 1).any() else float("nan"),
        "median_abs_log_error": float(np.median(np.abs(np.log(est[:, 0]) - np.log(np.maximum(tre, 0.05))))),
    }


def check_split(calib: list[dict], evals: list[dict]) -> None:
    """Refuse a split in which a calibration field shares a pair, a group or a source image with an evaluation one.

    Raises:
        SystemExit: a leak, naming it.
    """
    for key in ("pair", "group", "source"):
        both = {r[key] for r in calib} & {r[key] for r in evals}
        if both:
            raise SystemExit(f"quality_calibration: {key}s in both calibration and evaluation: {sorted(both)}")
    if not calib or not evals:
        raise SystemExit("quality_calibration: an empty calibration or evaluation set")


def _print_metrics(name: str, ev: dict, alpha: float) -> None:
    print(f"{name}: {ev['n']} fields of {ev['pairs']} pairs  Spearman {ev['spearman']:.3f}  AUC(TRE>2 vs <=1) "
          f"{ev['auc_gt2_vs_le1']:.3f} ({ev['n_gt2']} vs {ev['n_le1']})  interval coverage {ev['coverage']:.3f} "
          f"(nominal {1 - alpha:.2f}; TRE<=1 {ev['coverage_tre_le1']:.3f}, TRE>2 {ev['coverage_tre_gt2']:.3f})  "
          f"flagged TRE>2 {ev['flagged_gt2']:.3f}  ok TRE<=1 {ev['ok_le1']:.3f}  median |log err| "
          f"{ev['median_abs_log_error']:.3f}", flush=True)


def stage_fit(rows: list[dict], write: bool) -> dict:
    from monai_contreg.evaluation.quality import MODEL_FEATURES, MODEL_PATH, estimate_from_signals, verdict

    calib = [r for r in rows if r["group"] in CALIBRATION_GROUPS]
    evals = [r for r in rows if r["group"] in EVALUATION_GROUPS]
    check_split(calib, evals)
    print(f"\n{len(rows)} fields: calibration {len(calib)} (groups {CALIBRATION_GROUPS}, {len({r['pair'] for r in calib})} "
          f"pairs), evaluation {len(evals)} (groups {EVALUATION_GROUPS}, {len({r['pair'] for r in evals})} pairs)")
    print("Spearman of each signal with the true error, calibration fields:")
    for k in ("mind_ratio", "mind_ratio_worst", "residual_mm", "residual_worst_mm", "dice", "sdlogj",
              "folding_percent", "out_of_image", "outside_mind_ratio"):
        vals = [(r[k], r["tre_mm"]) for r in calib if r.get(k) is not None and math.isfinite(r[k])]
        if len(vals) > 3 and np.std([a for a, _ in vals]) > 0:
            a, b = zip(*vals)
            print(f"  {k:20s} rho {spearman(a, b):+.3f}  (n {len(vals)})")
    model = fit_model(calib, MODEL_FEATURES)  # the calibration groups only
    model["fitted_on"] = {"calibration_groups": list(CALIBRATION_GROUPS), "evaluation_groups": list(EVALUATION_GROUPS),
                          "calibration_pairs": sorted({r["pair"] for r in calib}),
                          "evaluation_pairs": sorted({r["pair"] for r in evals}),
                          "fields": sorted({r["field"] for r in calib}),
                          "resolution": "3 mm grids (chest), 2 mm (abdomen): benchmarks/quality_calibration.py"}
    print(f"interval half-widths (log mm) by class: {model['conformal_q_by_class']} (residuals {model['n_residuals_by_class']}), "
          f"pooled {model['conformal_q']:.3f}")
    for name, subset in (("calibration (in-sample)", calib), ("evaluation (held out)", evals)):
        ev = evaluate_model(subset, model)
        model[f"{name.split()[0]}_metrics"] = ev
        _print_metrics(name, ev, model["alpha"])
    print("held-out by field kind (evaluation):")
    kinds = {"registrations": set(SETTINGS), "scaled": {f for f in {r['field'] for r in evals} if f.startswith("scale")},
             "noise/shift/other": {f for f in {r['field'] for r in evals} if f.startswith(("noise", "shift", "other"))}}
    for k, names in kinds.items():
        sub = [r for r in evals if r["field"] in names]
        if len(sub) > 3:
            ev = evaluate_model(sub, model)
            print(f"  {k:18s} n {ev['n']:4d}  Spearman {ev['spearman']:.3f}  coverage {ev['coverage']:.3f}")
    rev = fit_model(evals, MODEL_FEATURES)  # the reverse split: a cross-check only, never written
    _print_metrics("cross-check, fitted on the evaluation groups, scored on the calibration groups",
                   evaluate_model(calib, rev), rev["alpha"])
    print("\nper field (evaluation):")
    for r in evals:
        e, lo, hi = estimate_from_signals(r, model)
        print(f"  {r['pair']:16s} {r['field']:13s} true {r['tre_mm']:6.2f}  estimate {e:6.2f} ({lo:.2f}-{hi:.2f})  {verdict(e, r)[0]}")
    if write:
        MODEL_PATH.write_text(json.dumps(model, indent=1) + "\n")
        print(f"wrote {MODEL_PATH}")
    return model


# ---------------------------------------------------------------------------------------------------- cost
def stage_cost(pairs: list[dict], cases: list[str], threads: int) -> None:
    """Time of the error estimate against the registration's (default ``io`` preset, ``threads`` threads, the
    full-resolution nlst_synth pair), wall clock and CPU time of this process (``time.process_time``: what the
    process itself used, less sensitive to other jobs sharing the machine). The estimate runs as ``contreg
    register`` runs it: on the images the registration loaded (:meth:`RegistrationResult.quality` without paths)."""
    from monai_contreg.api import register
    from monai_contreg.kernels import load_extension
    from monai_contreg.methods.presets import get_preset

    load_extension()
    for pair in pairs:
        if pair["case"] not in cases:
            continue
        cfg = get_preset("io")
        cfg.engine.num_threads = threads
        for masks in (True, False):
            w, c = time.perf_counter(), time.process_time()
            res = register(pair["fixed"], pair["moving"], fixed_mask=pair["fixed_mask"] if masks else None,
                           moving_mask=pair["moving_mask"] if masks else None, config=cfg)
            reg_w, reg_c = time.perf_counter() - w, time.process_time() - c
            w, c = time.perf_counter(), time.process_time()
            rep = res.quality()
            q_w, q_c = time.perf_counter() - w, time.process_time() - c
            print(f"cost {pair['case']} ({'given masks' if masks else 'automatic masks'}): registration wall {reg_w:.1f}s "
                  f"cpu {reg_c:.1f}s; quality wall {q_w:.1f}s cpu {q_c:.1f}s = {100 * q_c / reg_c:.1f} % of the "
                  f"registration's CPU time ({100 * q_w / reg_w:.1f} % wall); {rep.line()}", flush=True)


def _expected_rows(pairs: list[dict]) -> int:
    """Fields of the study: per pair the settings and :data:`DEGRADED` (``other_pair`` where the group has another
    pair of its shape)."""
    n = 0
    for p in pairs:
        same = [q for q in pairs if q["group"] == p["group"] and q["name"] != p["name"]
                and tuple(q["fixed"].shape) == tuple(p["fixed"].shape)]
        n += len(SETTINGS) + len(DEGRADED) - (0 if same else 1)
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the nlst_synth folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/quality_calibration"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stage", default="all", choices=("pairs", "fields", "signals", "fit", "cost", "all"),
                    help="pairs (build), fields (+ registrations), signals (+ this shard's signals), fit (the model "
                         "from the signals computed so far, nothing else), cost, all (every stage in turn)")
    ap.add_argument("--cost-pairs", default="0101", help="--stage cost: nlst_synth pairs to time (comma-separated)")
    ap.add_argument("--write-model", action="store_true", help="write monai_contreg/evaluation/quality_model.json")
    ap.add_argument("--shard", default="0/1", help="I/N: this process does pairs I, I+N, ... of the fields and signals "
                    "stages (N processes share them; run --stage fit once after all)")
    args = ap.parse_args(argv)
    shard = tuple(int(v) for v in args.shard.split("/"))
    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        args.data = Path("/work/shared/data/nlst_synth")
    global CHEST_B
    if not CHEST_B.is_file():
        CHEST_B = args.data.parent / "sources" / "chest_ct_b_1p5mm.nii.gz"
    if args.stage == "cost":
        stage_cost(nlst_pairs(args.data), args.cost_pairs.split(","), args.threads)
        return 0
    pairs = stage_pairs(args.data, args.work)
    if args.stage == "pairs":
        return 0
    from monai_contreg.kernels import load_extension

    load_extension()
    if args.stage in ("fields", "all"):
        stage_fields(pairs, args.work, args.threads, shard)
    if args.stage == "fields":
        return 0
    if args.stage in ("signals", "all"):
        stage_signals(pairs, args.work, shard)
    if args.stage == "signals":
        return 0
    rows = [r for f in sorted(args.work.glob("signals.*.json")) for r in json.loads(f.read_text())]
    rows = list({(r["pair"], r["field"]): r for r in rows}.values())
    if len(rows) < _expected_rows(pairs):
        print(f"note: {len(rows)} of {_expected_rows(pairs)} fields have signals (the other shards are not done)")
    stage_fit(rows, args.write_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
