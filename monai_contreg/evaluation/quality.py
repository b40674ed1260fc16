"""A registration's error estimated without landmarks: signals of a field, a calibrated model, a verdict.

Given the fixed image, the moving image and a field (of this package or of another tool), the
:func:`quality_signals` measure, on a coarse copy of the fixed grid (about 3 mm voxels, :data:`TARGET_SPACING_MM`):

* ``mind_ratio``: the residual MIND-SSC mismatch (:func:`~monai_contreg.features.mind.mind_ssc`, mean absolute
  difference over the 12 channels) between the fixed image and the moving image warped by the field, divided by
  the same mismatch before registration (the moving image resampled onto the fixed grid through the identity of
  world coordinates), inside the region (the fixed mask, given or automatic); ``mind_ratio_worst``: the largest
  ratio over the eight octants of the region (split at its centroid).
* ``residual_mm``: a consistency test of the field against the images: at every second voxel of the coarse grid
  inside the region, the shift (within +-2 coarse voxels, about +-6 mm, refined to sub-voxel by a parabola through
  the costs along each axis) that best matches the fixed MIND to the warped moving MIND (sum of squared
  differences over a 3x3x3 neighbourhood of the strided grid); its mean length in mm. A correct field needs no
  shift; a wrong one leaves a shift up to the search range. ``residual_worst_mm``: the largest octant mean.
* ``dice`` / ``dice_before``: overlap of the fixed mask with the warped moving mask (when both exist).
* ``sdlogj``, ``folding_percent``: Jacobian statistics (:func:`~monai_contreg.spatial.jacobian.jacobian_determinant`)
  of the field on the coarse grid inside the region.
* ``out_of_image``: fraction of the region that the field maps outside the moving image.
* ``outside_mind_ratio``: the MIND ratio over the body (voxels brighter than an Otsu threshold of the fixed image)
  outside the region, where the mask leaves body out (reported only: a lung-masked registration leaves the body
  outside the lungs unregistered by design).
* ``linear_mm``, ``nonlinear_mm`` (:func:`linear_part`): the field's global linear (shear, scaling) part and what
  is left beside it, in mm (reported only: a gantry tilt read as straight shows as an almost pure shear).
* ``region_ml``: the region's volume; ``mask_like_outside_ml``: volume outside the mask with the mask's intensities,
  in solid components that are not the air around the body (touching at most three faces of the grid).

The estimate is a model, not a measurement: :func:`estimate_from_signals` applies the log-linear model of the
JSON file :data:`MODEL_PATH` (``log TRE = b0 + sum_i b_i f_i`` over :data:`MODEL_FEATURES`), fitted by
``benchmarks/quality_calibration.py`` on fields with a known answer (nlst_synth keypoints, the synthetic inputs of
the failing-input cases, fields degraded on purpose), with a split-conformal interval. Its verdict
(:func:`verdict`): ``ok`` below :data:`CHECK_MM`, ``check`` up to :data:`FAILED_MM`, ``failed`` above, raised to at
least ``check`` when the field folds (> :data:`CHECK_FOLDING_PERCENT` %), maps > :data:`CHECK_OUT_OF_IMAGE` of the
region out of the image, when tissue like the masked one lies outside the mask (``mask_like_outside_ml`` above
:data:`CHECK_MASK_LIKE_OUTSIDE` of the mask's volume: a lung cut by the field of view) or when an automatic lung
mask is implausibly small (< :data:`CHECK_AUTO_MASK_ML` mL: bowel gas taken for lungs). See
``docs/guides/quality.md``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserInputError
from ..features.mind import mind_ssc
from ..spatial.conventions import spacing_from_affine
from ..spatial.filters import downsample
from ..spatial.jacobian import jacobian_determinant
from ..spatial.resample import warp_between_grids

__all__ = [
    "CHECK_MM",
    "FAILED_MM",
    "MODEL_FEATURES",
    "MODEL_PATH",
    "QualityReport",
    "automatic_lung_masks",
    "estimate_class",
    "estimate_from_signals",
    "estimate_quality",
    "linear_part",
    "load_model",
    "quality_signals",
    "verdict",
]

#: Voxel size (mm) of the coarse grid the signals are measured on (the fixed grid pooled by an integer factor).
TARGET_SPACING_MM = 3.0
#: Half-width of the residual-shift search, in coarse voxels.
SEARCH_RADIUS = 2
#: The calibrated model shipped with the package (written by ``benchmarks/quality_calibration.py --write-model``).
MODEL_PATH = Path(__file__).with_name("quality_model.json")
#: Verdict thresholds on the estimated mean error (mm): ``ok`` below CHECK_MM, ``failed`` at FAILED_MM and above.
CHECK_MM = 1.5
FAILED_MM = 3.0
#: A field folding more than this percentage of the region is at least ``check``.
CHECK_FOLDING_PERCENT = 0.5
#: A field mapping more than this fraction of the region out of the moving image is at least ``check``.
CHECK_OUT_OF_IMAGE = 0.05
#: Tissue like the masked one outside the mask, above this fraction of the mask's volume: at least ``check``.
CHECK_MASK_LIKE_OUTSIDE = 0.25
#: An automatic lung mask below this volume (mL; adult lungs hold 2,500-6,000 mL) is at least ``check``.
CHECK_AUTO_MASK_ML = 1000.0
#: The model's input features, names of :func:`model_features`.
MODEL_FEATURES = ("log_residual", "mind_ratio", "mind_ratio_worst", "log_residual_worst")


def _as5(where: str, name: str, x) -> torch.Tensor:
    t = x.as_tensor() if hasattr(x, "as_tensor") else x
    t = torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t).detach().cpu()
    if t.ndim == 3:
        t = t[None, None]
    elif t.ndim == 4 and t.shape[0] == 1:
        t = t[None]
    if t.ndim != 5 or t.shape[:2] != (1, 1):
        raise UserInputError(f"{where}: {name} must be a 3-D volume (H, W, D) or (1, 1, H, W, D), got {tuple(t.shape)}.")
    return t.float()


def _coarse_affine(affine: np.ndarray, factors: Sequence[int], shape: Sequence[int], coarse: Sequence[int]) -> np.ndarray:
    """Affine of a grid pooled from ``shape`` to ``coarse`` over the same field of view (align_corners=False)."""
    s = np.array([n / c for n, c in zip(shape, coarse)], dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(s)
    m[:3, 3] = (s - 1) / 2
    return affine @ m


def _factors(spacing: Sequence[float], target: float) -> tuple[int, int, int]:
    return tuple(max(1, int(round(target / float(s)))) for s in spacing)  # type: ignore[return-value]


def _robust_scale(x: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Clip to the 0.5-99.5 percentiles (of ``region`` when given) and map to [0, 1]."""
    vals = x[region] if region is not None and bool(region.any()) else x.reshape(-1)
    if vals.numel() > 200_000:
        vals = vals[:: vals.numel() // 100_000]
    lo, hi = (float(v) for v in torch.quantile(vals.float(), torch.tensor([0.005, 0.995])))
    return ((x - lo) / max(hi - lo, 1e-6)).clamp(0, 1)


def _otsu(x: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (Otsu 1979: the level maximising the between-class variance) of a 256-bin histogram."""
    v = x.reshape(-1)
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    mu0 = s0 / np.maximum(w0, 1)
    mu1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _mask_like_outside(image: torch.Tensor, region: torch.Tensor) -> float:
    """Voxels outside the (2-voxel dilated) mask whose intensity lies in the mask's 10-90 % range, closed and eroded
    by one voxel (solid structure, not the partial-volume shell of a body surface), in connected components that touch at
    most three of the grid's six faces (the air around a body touches more) and hold at least 2 % of the mask's
    voxels: structure like the masked one that the mask leaves out (a lung cut by the field of view)."""
    from scipy import ndimage as ndi

    img = image.numpy()
    reg = region.numpy()
    lo, hi = np.percentile(img[reg], [10, 90])
    near = ndi.binary_dilation(reg, iterations=2)
    # solid structure (closed over noise-sized holes, then eroded), not the partial-volume shell of a body surface
    cand = ndi.binary_erosion(ndi.binary_closing((img >= lo) & (img <= hi)) & ~near)
    lab, n = ndi.label(cand)
    if n == 0:
        return 0.0
    sizes = np.bincount(lab.ravel())
    faces = np.zeros(n + 1, dtype=np.int64)
    for a in range(3):
        for sl in (0, -1):
            face = np.take(lab, sl, axis=a)
            faces[np.unique(face[face > 0])] += 1
    keep = (faces <= 3) & (sizes >= 0.02 * reg.sum())
    keep[0] = False
    return float(sizes[keep].sum())


def _octants(region: torch.Tensor) -> list[torch.Tensor]:
    """The region split into eight octants at its centroid (only non-empty ones)."""
    idx = torch.nonzero(region)
    if idx.numel() == 0:
        return []
    c = idx.float().mean(0)
    grids = torch.meshgrid(*[torch.arange(n) for n in region.shape], indexing="ij")
    out = []
    for bits in range(8):
        sel = region.clone()
        for a in range(3):
            sel &= (grids[a] >= c[a]) if (bits >> a) & 1 else (grids[a] < c[a])
        if int(sel.sum()) >= 20:
            out.append(sel)
    return out


def _residual_shift(mf: torch.Tensor, mw: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best shift (coarse voxels, sub-voxel) of ``mw`` onto ``mf`` on the stride-2 grid: ``(3, h, w, d)``, cost ok.

    Costs: sum over channels of squared MIND differences between ``mf`` at stride-2 voxel ``x`` and ``mw`` at
    ``x + s``, box-filtered over the 3x3x3 neighbourhood of the strided grid; ``s`` in ``{-r..r}^3``. The integer
    minimum is refined along each axis by the vertex of the parabola through the costs at ``s - e``, ``s``,
    ``s + e`` (where both neighbours lie in the search window).
    """
    c = mf.shape[1]
    pad = F.pad(mw, (r, r, r, r, r, r), mode="replicate")[0]
    ref = mf[0, :, ::2, ::2, ::2].contiguous()
    h, w, d = ref.shape[1:]
    n = 2 * r + 1
    # the padded features split into its 8 parity lattices (contiguous): shift (i, j, k) of the stride-2 grid is
    # a plain slice of lattice (i % 2, j % 2, k % 2)
    lattices = {(a, b, e): pad[:, a::2, b::2, e::2].contiguous() for a in (0, 1) for b in (0, 1) for e in (0, 1)}
    ref2 = ref.square().sum(0)
    sq = {key: lat.square().sum(0) for key, lat in lattices.items()}
    costs = torch.empty((n, n, n, h, w, d))
    for i in range(n):
        for j in range(n):
            for k in range(n):
                key = (i % 2, j % 2, k % 2)
                o = (i // 2, j // 2, k // 2)
                sl = (slice(o[0], o[0] + h), slice(o[1], o[1] + w), slice(o[2], o[2] + d))
                cross = (ref * lattices[key][(slice(None), *sl)]).sum(0)
                costs[i, j, k] = (ref2 + sq[key][sl] - 2 * cross) / c
    flat = costs.reshape(n**3, 1, h, w, d)
    flat = F.avg_pool3d(F.pad(flat, (1, 1, 1, 1, 1, 1), mode="replicate"), 3, stride=1)
    costs = flat.reshape(n, n, n, h, w, d)
    best = flat.reshape(n**3, h, w, d).argmin(0)
    bi, bj, bk = best // (n * n), (best // n) % n, best % n
    disp = torch.stack([bi, bj, bk]).float() - r
    index = [bi, bj, bk]
    for a in range(3):
        lo = [t.clone() for t in index]
        hi = [t.clone() for t in index]
        lo[a] = (lo[a] - 1).clamp(0, n - 1)
        hi[a] = (hi[a] + 1).clamp(0, n - 1)
        valid = (index[a] > 0) & (index[a] < n - 1)

        def at(ix):
            lin = (ix[0] * n * n + ix[1] * n + ix[2]).reshape(1, -1)
            return flat.reshape(n**3, -1).gather(0, lin).reshape(h, w, d)

        c0, cm, cp = at(index), at(lo), at(hi)
        denom = cm - 2 * c0 + cp
        off = torch.where(valid & (denom > 1e-12), 0.5 * (cm - cp) / denom.clamp(min=1e-12), torch.zeros_like(c0))
        disp[a] += off.clamp(-0.5, 0.5)
    return disp, costs


def quality_signals(
    fixed,
    moving,
    ddf,
    fixed_affine,
    moving_affine=None,
    fixed_mask=None,
    moving_mask=None,
    *,
    target_spacing: float = TARGET_SPACING_MM,
    keep_maps: bool = False,
) -> dict[str, Any]:
    """The landmark-free signals of a field (see the module docstring), measured on a ~3 mm copy of the fixed grid.

    Args:
        fixed: fixed image ``(H, W, D)`` or ``(1, 1, H, W, D)`` (any intensity unit; CT in HU for the automatic mask).
        moving: moving image on its own grid ``(H_m, W_m, D_m)`` (or with leading 1-sized dims).
        ddf: MONAI DDF ``(1, 3, H, W, D)`` on the fixed grid, fixed voxels, fixed -> moving (fixed voxel ``x``
            <-> moving world point ``A_f (x + u(x))``).
        fixed_affine, moving_affine: 4x4 voxel-to-world matrices (RAS mm); ``moving_affine`` defaults to the fixed one.
        fixed_mask, moving_mask: optional region masks on their image's grid (``> 0`` inside). Without a fixed
            mask the region is the body (Otsu threshold of the fixed image).
        target_spacing: voxel size (mm) of the coarse grid (an integer pooling factor per axis).
        keep_maps: also return ``"maps"``: numpy arrays on the coarse grid (``fixed``, ``warped``, ``before``
            scaled to [0, 1]; ``jacobian``; ``residual_mm``: the residual-shift length at every coarse voxel of the
            region's bounding box, nearest-upsampled from the stride-2 grid, 0 elsewhere; ``region``) and ``"coarse_spacing"`` (mm).

    Returns:
        A dict of floats: ``mind_ratio``, ``mind_ratio_worst``, ``mind_before``, ``mind_after``, ``residual_mm``,
        ``residual_worst_mm``, ``dice``, ``dice_before`` (NaN without both masks), ``sdlogj``,
        ``folding_percent``, ``out_of_image``, ``outside_mind_ratio`` (NaN without body outside the region),
        ``linear_mm``, ``nonlinear_mm``,
        ``region_voxels``, ``region_ml``, ``mask_like_outside_ml`` (NaN without a fixed mask), ``seconds``.

    Raises:
        UserInputError: shapes that do not match (the field not on the fixed grid, a mask off its image's grid),
            an empty region.
    """
    where = "quality_signals"
    t0 = time.perf_counter()
    f = _as5(where, "fixed", fixed)
    m = _as5(where, "moving", moving)
    u = torch.as_tensor(ddf.as_tensor() if hasattr(ddf, "as_tensor") else ddf).detach().cpu().float()
    if u.ndim == 4:
        u = u[None]
    if u.ndim != 5 or u.shape[:2] != (1, 3) or tuple(u.shape[2:]) != tuple(f.shape[2:]):
        raise UserInputError(
            f"{where}: ddf must be a (1, 3, H, W, D) field on the fixed grid {tuple(f.shape[2:])}, got {tuple(u.shape)}."
        )
    a_f = np.asarray(torch.as_tensor(fixed_affine).double().cpu().reshape(4, 4))
    a_m = a_f if moving_affine is None else np.asarray(torch.as_tensor(moving_affine).double().cpu().reshape(4, 4))
    masks = {}
    for name, mk, img in (("fixed_mask", fixed_mask, f), ("moving_mask", moving_mask, m)):
        if mk is None:
            continue
        t = _as5(where, name, mk)
        if tuple(t.shape) != tuple(img.shape):
            raise UserInputError(f"{where}: {name} shape {tuple(t.shape[2:])} must equal its image's {tuple(img.shape[2:])}.")
        masks[name] = (t > 0).float()
    kf = _factors(spacing_from_affine(a_f), target_spacing)
    km = _factors(spacing_from_affine(a_m), target_spacing)
    fc = downsample(f, kf)
    mc = downsample(m, km)
    cf, cm = tuple(fc.shape[2:]), tuple(mc.shape[2:])
    a_fc = _coarse_affine(a_f, kf, f.shape[2:], cf)
    a_mc = _coarse_affine(a_m, km, m.shape[2:], cm)
    ratio = torch.tensor([n / c for n, c in zip(f.shape[2:], cf)]).view(1, 3, 1, 1, 1)
    uc = downsample(u, kf) / ratio  # coarse voxels of the coarse fixed grid
    zero = torch.zeros_like(uc)
    # region: the fixed mask, else the body
    body_np = (fc[0, 0].numpy() > _otsu(fc[0, 0].numpy()))
    body = torch.as_tensor(body_np)
    if "fixed_mask" in masks:
        region = downsample(masks["fixed_mask"], kf)[0, 0] > 0.5
    else:
        region = body.clone()
    if int(region.sum()) < 27:
        raise UserInputError(f"{where}: the region (fixed mask or body) has fewer than 27 voxels on the {target_spacing:g} mm grid.")
    mscale = _robust_scale(mc)
    fscale = _robust_scale(fc)
    one_grid = cf == cm and np.allclose(a_fc, a_mc, atol=1e-3)
    warped = warp_between_grids(mscale, a_mc, uc, a_fc)
    before = mscale if one_grid else warp_between_grids(mscale, a_mc, zero, a_fc)
    if one_grid:  # x + u(x) inside the moving grid's extent [-0.5, n - 0.5] on every axis
        pos = uc[0] + torch.stack(torch.meshgrid(*[torch.arange(k, dtype=uc.dtype) for k in cf], indexing="ij"))
        lim = torch.tensor(cm, dtype=uc.dtype).view(3, 1, 1, 1)
        inside = ((pos >= -0.5) & (pos <= lim - 0.5)).all(0).float()
    else:
        inside = warp_between_grids(torch.ones_like(mc), a_mc, uc, a_fc, padding_mode="zeros")[0, 0]
    mf, mw, mb = (mind_ssc(x) for x in (fscale, warped, before))
    after_map = (mf - mw).abs().mean(1)[0]
    before_map = (mf - mb).abs().mean(1)[0]

    def ratio_in(sel: torch.Tensor) -> float:
        b = float(before_map[sel].mean())
        return float(after_map[sel].mean()) / max(b, 1e-6)

    octs = _octants(region)
    # the search runs over the bounding box of the region, 2 voxels of margin, its origin even so that the
    # stride-2 grid stays that of the whole image
    idx = torch.nonzero(region)
    lo = [max(0, (int(v) - 2) // 2 * 2) for v in idx.min(0).values]
    hi = [min(n, int(v) + 3) for v, n in zip(idx.max(0).values, cf)]
    box = (slice(None), slice(None), *[slice(a, b) for a, b in zip(lo, hi)])
    disp, _ = _residual_shift(mf[box], mw[box], SEARCH_RADIUS)
    sp_c = torch.as_tensor(spacing_from_affine(a_fc), dtype=torch.float32).view(3, 1, 1, 1)
    res_len = (disp * sp_c).norm(dim=0)  # mm, on the stride-2 grid of the box
    up = res_len.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
    res_full = torch.zeros(cf)
    res_full[box[2:]] = up[: hi[0] - lo[0], : hi[1] - lo[1], : hi[2] - lo[2]]

    def residual_in(sel: torch.Tensor) -> float:
        return float(res_full[sel].mean())

    det = jacobian_determinant(uc)[0, 0]
    interior = torch.zeros_like(region)
    interior[1:-1, 1:-1, 1:-1] = True
    jsel = region & interior if bool((region & interior).any()) else region
    logj = torch.log(det[jsel].clamp(1e-9, 1e9))
    out: dict[str, Any] = {
        "mind_before": float(before_map[region].mean()),
        "mind_after": float(after_map[region].mean()),
        "mind_ratio": ratio_in(region),
        "mind_ratio_worst": max([ratio_in(o) for o in octs] or [ratio_in(region)]),
        "residual_mm": residual_in(region),
        "residual_worst_mm": max([residual_in(o) for o in octs] or [residual_in(region)]),
        "dice": float("nan"),
        "dice_before": float("nan"),
        "sdlogj": float(logj.std(unbiased=False)),
        "folding_percent": float((det[jsel] <= 0).float().mean() * 100),
        "out_of_image": float((inside[region] < 0.5).float().mean()),
        "outside_mind_ratio": float("nan"),
        "region_voxels": int(region.sum()),
    }
    out.update(linear_part(uc, region, spacing_from_affine(a_fc)))
    if "fixed_mask" in masks and "moving_mask" in masks:
        mmask = downsample(masks["moving_mask"], km)
        wm = warp_between_grids(mmask, a_mc, uc, a_fc, padding_mode="zeros")[0, 0] > 0.5
        bm = (mmask[0, 0] if one_grid else warp_between_grids(mmask, a_mc, zero, a_fc, padding_mode="zeros")[0, 0]) > 0.5

        def _dice(a, b):
            return float(2 * (a & b).sum() / max(1, int(a.sum() + b.sum())))

        out["dice"] = _dice(region, wm)
        out["dice_before"] = _dice(region, bm)
    rest = body & ~torch.as_tensor(
        F.max_pool3d(region[None, None].float(), 3, stride=1, padding=1)[0, 0].numpy() > 0
    )
    voxel_ml = float(np.prod(spacing_from_affine(a_fc))) / 1000.0
    out["region_ml"] = float(region.sum()) * voxel_ml
    out["mask_like_outside_ml"] = _mask_like_outside(fc[0, 0], region) * voxel_ml if "fixed_mask" in masks else float("nan")
    if int(rest.sum()) >= max(27, int(0.05 * region.sum())):
        out["outside_mind_ratio"] = ratio_in(rest)
    out["seconds"] = time.perf_counter() - t0
    if keep_maps:
        out["maps"] = {
            "fixed": fscale[0, 0].numpy(), "warped": warped[0, 0].numpy(), "before": before[0, 0].numpy(),
            "jacobian": det.numpy(), "residual_mm": res_full.numpy(), "region": region.numpy(),
        }
        out["coarse_spacing"] = tuple(float(s) for s in spacing_from_affine(a_fc))
    return out


def linear_part(ddf: torch.Tensor, region: torch.Tensor, spacing) -> dict[str, float]:
    """How much of a field is one global linear map: least-squares affine fit ``u(x) ~ M x + t`` (mm) over the
    region; ``linear_mm``: mean length of its non-translational part ``M (x - centroid)``; ``nonlinear_mm``: mean
    length of the residual ``u - (M x + t)``. A gantry tilt read as straight (or a wrong voxel size) shows as a
    field that is almost exactly such a map (a shear or a scaling), which breathing is not.

    Args:
        ddf: ``(1, 3, h, w, d)`` field in voxels of a grid with voxel size ``spacing`` (mm); region: ``(h, w, d)`` bool.
    """
    idx = torch.nonzero(region).double()
    if idx.shape[0] < 12:
        return {"linear_mm": float("nan"), "nonlinear_mm": float("nan")}
    if idx.shape[0] > 50_000:
        idx = idx[:: idx.shape[0] // 50_000 + 1]
    sp = torch.as_tensor(np.asarray(spacing, dtype=np.float64))
    ii = idx.long()
    u = ddf[0].double()[:, ii[:, 0], ii[:, 1], ii[:, 2]].T * sp  # (n, 3) mm
    x = (idx - idx.mean(0)) * sp
    A = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    coef = torch.linalg.lstsq(A, u).solution  # (4, 3)
    return {"linear_mm": float((x @ coef[:3]).norm(dim=1).mean()), "nonlinear_mm": float((u - A @ coef).norm(dim=1).mean())}


def model_features(signals: Mapping[str, float]) -> dict[str, float]:
    """The model's inputs (:data:`MODEL_FEATURES`) from :func:`quality_signals`' output.

    ``log_residual = log(0.1 + residual_mm)``, ``log_residual_worst = log(0.1 + residual_worst_mm)`` (mm); the
    MIND ratios as they are.
    """
    return {
        "log_residual": math.log(0.1 + float(signals["residual_mm"])),
        "log_residual_worst": math.log(0.1 + float(signals["residual_worst_mm"])),
        "mind_ratio": float(signals["mind_ratio"]),
        "mind_ratio_worst": float(signals["mind_ratio_worst"]),
    }


@lru_cache(maxsize=4)
def _load_model_file(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_model(path: str | Path | None = None) -> dict[str, Any]:
    """The calibrated model: ``{"features", "coef", "intercept", "mean", "scale", "conformal_q", "alpha", ...}``.

    Raises:
        UserInputError: the file is missing or lacks a key.
    """
    p = Path(path) if path is not None else MODEL_PATH
    if not p.is_file():
        raise UserInputError(f"load_model: quality model {str(p)!r} not found (benchmarks/quality_calibration.py --write-model writes it).")
    model = _load_model_file(str(p))
    for key in ("features", "coef", "intercept", "mean", "scale", "conformal_q"):
        if key not in model:
            raise UserInputError(f"load_model: quality model {str(p)!r} lacks {key!r}.")
    return model


def estimate_from_signals(signals: Mapping[str, float], model: Mapping[str, Any] | None = None) -> tuple[float, float, float]:
    """``(estimate, low, high)`` mean error in mm: ``exp(b0 + sum b_i (f_i - mean_i) / scale_i)``, interval
    ``exp(log estimate -+ q)`` with ``q`` the conformal quantile of the calibration pairs' leave-one-pair-out
    absolute log residuals, of the estimate's class (:func:`estimate_class`; the model's
    ``conformal_q_by_class``, else its pooled ``conformal_q``): coverage ``1 - alpha`` on pairs exchangeable
    with the calibration pairs (Vovk et al. 2005, Mondrian conformal prediction)."""
    mdl = load_model() if model is None else model
    feats = model_features(signals)
    z = float(mdl["intercept"])
    for name, b, mu, sd in zip(mdl["features"], mdl["coef"], mdl["mean"], mdl["scale"]):
        z += float(b) * (feats[name] - float(mu)) / float(sd)
    q = float(mdl["conformal_q"])
    by_class = mdl.get("conformal_q_by_class")
    if by_class:  # Mondrian: the quantile of the estimate's own class
        q = float(by_class.get(estimate_class(math.exp(z)), q))
    return math.exp(z), math.exp(z - q), math.exp(z + q)


def estimate_class(estimate_mm: float) -> str:
    """The class of an estimate alone: ``"ok"`` below :data:`CHECK_MM`, ``"check"`` below :data:`FAILED_MM`,
    else ``"failed"`` (the interval's Mondrian classes; :func:`verdict` adds the signals' checks)."""
    return "ok" if estimate_mm < CHECK_MM else ("check" if estimate_mm < FAILED_MM else "failed")


def verdict(estimate_mm: float, signals: Mapping[str, float], region: str = "fixed mask") -> tuple[str, list[str]]:
    """``("ok" | "check" | "failed", reasons)`` from the estimate and the signals (thresholds: module constants).

    ``region``: what the signals' region was (``"fixed mask"``, ``"automatic lung mask"``, ``"body"``)."""
    reasons = []
    level = 0
    if estimate_mm >= FAILED_MM:
        level, _ = 2, reasons.append(f"estimated error {estimate_mm:.2f} mm >= {FAILED_MM:g} mm")
    elif estimate_mm >= CHECK_MM:
        level, _ = 1, reasons.append(f"estimated error {estimate_mm:.2f} mm >= {CHECK_MM:g} mm")
    if signals.get("folding_percent", 0.0) > CHECK_FOLDING_PERCENT:
        level = max(level, 1)
        reasons.append(f"the field folds {signals['folding_percent']:.2f} % of the region")
    if signals.get("out_of_image", 0.0) > CHECK_OUT_OF_IMAGE:
        level = max(level, 1)
        reasons.append(f"{100 * signals['out_of_image']:.1f} % of the region is mapped out of the moving image")
    like = signals.get("mask_like_outside_ml", float("nan"))
    if math.isfinite(like) and like > CHECK_MASK_LIKE_OUTSIDE * signals.get("region_ml", float("inf")):
        level = max(level, 1)
        reasons.append(f"{like:.0f} mL that look like the masked tissue lie outside the mask "
                       f"({signals['region_ml']:.0f} mL): is the mask complete?")
    if region == "automatic lung mask" and signals.get("region_ml", float("inf")) < CHECK_AUTO_MASK_ML:
        level = max(level, 1)
        reasons.append(f"the automatic lung mask holds only {signals['region_ml']:.0f} mL "
                       f"(< {CHECK_AUTO_MASK_ML:g} mL): is this a chest CT?")
    return ("ok", "check", "failed")[level], reasons


@dataclass
class QualityReport:
    """The outcome of :func:`estimate_quality`.

    Attributes:
        estimated_error_mm: the model's estimate of the mean error (mm) inside the region.
        interval_mm: ``(low, high)``: the split-conformal interval (mm), nominal coverage ``coverage``.
        verdict: ``"ok"``, ``"check"`` or ``"failed"``; ``reasons``: why not ``ok``.
        signals: the raw :func:`quality_signals` (floats).
        region: what the region was: ``"fixed mask"``, ``"automatic lung mask"`` or ``"body"``.
        seconds: time of the whole estimate.
        maps: coarse-grid arrays for the HTML report (only with ``keep_maps``).
    """

    estimated_error_mm: float
    interval_mm: tuple[float, float]
    verdict: str
    reasons: list[str]
    signals: dict[str, float]
    region: str
    coverage: float
    seconds: float
    maps: dict[str, np.ndarray] | None = field(default=None, repr=False)
    coarse_spacing: tuple[float, float, float] | None = None

    def line(self) -> str:
        """The one line the CLI prints."""
        s = self.signals
        lo, hi = self.interval_mm
        extra = f"  Dice {s['dice']:.3f}" if math.isfinite(s.get("dice", float("nan"))) else ""
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return (
            f"estimated error {self.estimated_error_mm:.2f} mm ({lo:.2f}-{hi:.2f})  MIND ratio {s['mind_ratio']:.3f}  "
            f"residual {s['residual_mm']:.2f} mm{extra}  in the {self.region}  verdict {self.verdict}{why}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``estimated_error_mm``, ``interval_mm``, ``coverage``, ``verdict``, ``reasons``, ``region``,
        ``signals``, ``seconds``, ``model`` (a reminder that this is a model's estimate)."""
        return {
            "estimated_error_mm": self.estimated_error_mm,
            "interval_mm": list(self.interval_mm),
            "coverage": self.coverage,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "region": self.region,
            "signals": {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.signals.items()},
            "seconds": self.seconds,
            "model": "estimate of a model calibrated on synthetic pairs with known answers (docs/guides/quality.md), not a measurement",
        }


def _load(where: str, name: str, value, reader: str = "auto", series=None):
    from monai.data import MetaTensor

    from ..io.images import load_image

    if isinstance(value, (str, Path)):
        p = Path(value)
        if not p.exists():
            from ..errors import MissingFileError

            raise MissingFileError(f"{where}: {name} file {str(p)!r} does not exist.")
        img = load_image(p, reader=reader, series=series, strict_series=False) if p.is_dir() else load_image(p, reader=reader)
        return img.as_tensor()[0], np.asarray(img.affine, dtype=np.float64)
    if isinstance(value, MetaTensor):
        return value.as_tensor().reshape(value.shape[-3:]), np.asarray(value.affine, dtype=np.float64).reshape(4, 4)
    return value, None


def automatic_lung_masks(fixed, fixed_affine: np.ndarray, moving, moving_affine: np.ndarray,
                         moving_mask=None) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """The registration's automatic-mask decision (:func:`~monai_contreg.data.lung_mask.auto_lung_masks`), taken
    the same way for an estimate without a fixed mask: :func:`~monai_contreg.data.lung_mask.segment_lungs` with
    all its plausibility checks on each image's full-resolution grid (the moving one only when no moving mask is
    given); when either image has no plausible lung, neither mask is used and the region is the body, as the
    registration then runs unmasked.

    Args:
        fixed, moving: ``(H, W, D)`` images in HU (arrays or tensors), with their 4x4 RAS affines (mm).
        moving_mask: the given moving mask, if any (kept as it is).

    Returns:
        ``(fixed_mask, moving_mask, region)``: boolean arrays on the images' grids (or ``None``) and
        ``"automatic lung mask"`` or ``"body"``.
    """
    from ..data.lung_mask import LungMaskError, segment_lungs

    try:
        fm = segment_lungs(fixed, fixed_affine).mask
        mm = moving_mask if moving_mask is not None else segment_lungs(moving, moving_affine).mask
    except LungMaskError:
        return None, None, "body"
    return fm, mm, "automatic lung mask"


def estimate_quality(
    fixed,
    moving,
    ddf=None,
    *,
    field_path: str | Path | None = None,
    transform: str | Path | None = None,
    fixed_mask=None,
    moving_mask=None,
    fixed_affine=None,
    moving_affine=None,
    auto_mask: bool = True,
    model: Mapping[str, Any] | None = None,
    keep_maps: bool = False,
    series=None,
    fixed_mask_source: str = "given",
) -> QualityReport:
    """Estimate a field's registration error without landmarks.

    Args:
        fixed, moving: image files (NIfTI, NRRD, ..., DICOM folders), MetaTensors or arrays ``(H, W, D)`` (then
            ``fixed_affine``/``moving_affine``, 4x4 RAS mm, are needed).
        ddf: MONAI DDF ``(1, 3, H, W, D)`` on the fixed grid (voxels, fixed -> moving); or give ``field_path`` (a
            Learn2Reg field file, voxels of the fixed grid) or ``transform`` (an ITK displacement field transform
            ``.h5`` or displacement image, LPS mm), exactly one of the three.
        fixed_mask, moving_mask: optional masks on their image's grid. Without a fixed mask and with
            ``auto_mask``, the masks are those the registration would segment (:func:`automatic_lung_masks`: the
            full-resolution :func:`~monai_contreg.data.lung_mask.segment_lungs` of both images, with its
            plausibility checks); when either image has no plausible lung (no chest CT, bowel gas), the region is
            the body. No moving mask: no Dice signal.
        model: a loaded model (default: :data:`MODEL_PATH`).
        keep_maps: keep coarse-grid maps for :mod:`monai_contreg.evaluation.html_report`.
        series: Series Instance UID(s) of DICOM-folder inputs (as :func:`~monai_contreg.api.register`).
        fixed_mask_source: ``"given"`` or ``"automatic"`` (a ``fixed_mask`` that a registration segmented: the
            region is then named ``"automatic lung mask"`` and the automatic mask's volume check applies).

    Returns:
        A :class:`QualityReport`.

    Raises:
        UserInputError: no or several fields given, shapes that do not match, missing geometry; MissingFileError.
    """
    where = "estimate_quality"
    t0 = time.perf_counter()
    if sum(v is not None for v in (ddf, field_path, transform)) != 1:
        raise UserInputError(f"{where}: give exactly one of ddf, field_path (Learn2Reg field) or transform (ITK file).")
    f, fa = _load(where, "fixed", fixed, series=series)
    m, ma = _load(where, "moving", moving, series=series)
    fa = fa if fa is not None else (None if fixed_affine is None else np.asarray(fixed_affine, dtype=np.float64))
    ma = ma if ma is not None else (fa if moving_affine is None else np.asarray(moving_affine, dtype=np.float64))
    if ddf is None:
        from ..apply import load_displacement

        ddf, field_affine = load_displacement(field=field_path, transform=transform, reference=fixed if isinstance(fixed, (str, Path)) else None)
        if fa is None:
            fa = field_affine
    if fa is None:
        raise UserInputError(f"{where}: fixed is a plain array: pass fixed_affine (4x4 RAS voxel-to-world, mm).")
    fm = _load(where, "fixed_mask", fixed_mask)[0] if fixed_mask is not None else None
    mm = _load(where, "moving_mask", moving_mask)[0] if moving_mask is not None else None
    region = "automatic lung mask" if fixed_mask_source == "automatic" else "fixed mask"
    if fm is None and auto_mask:  # the registration's own decision (full-resolution lung checks)
        fm, mm, region = automatic_lung_masks(f, fa, m, ma, mm)
    elif fm is None:
        region = "body"
    sig = quality_signals(f, m, ddf, fa, ma, fm, mm, keep_maps=keep_maps)
    maps = sig.pop("maps", None)
    coarse = sig.pop("coarse_spacing", None)
    mdl = load_model() if model is None else model
    est, lo, hi = estimate_from_signals(sig, mdl)
    v, reasons = verdict(est, sig, region)
    return QualityReport(
        estimated_error_mm=est, interval_mm=(lo, hi), verdict=v, reasons=reasons, signals=sig, region=region,
        coverage=1.0 - float(mdl.get("alpha", 0.1)), seconds=time.perf_counter() - t0, maps=maps, coarse_spacing=coarse,
    )
