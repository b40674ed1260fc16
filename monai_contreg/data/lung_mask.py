"""Built-in lung segmentation of chest CT that checks its own plausibility: classical image processing
(scipy.ndimage), no learned weights.

:func:`segment_lungs` segments the lungs of a CT volume in Hounsfield units and says why it believes each region
is a lung; :func:`lung_mask` returns its mask only. Every size is physical (mm, mm², mL, from the image's affine),
and every direction (superior, left, right) comes from the affine's RAS frame, so the result is the same on a
0.65 x 0.65 x 2.5 mm scan and a 1.5 mm grid, in any array axis order.

1. air: voxels below ``threshold`` HU (default -400; padding values outside the scanned circle, -1024 ...
   -32768, are air too);
2. body: the largest connected non-air component (6-neighbourhood), its holes filled in every axial slice (the
   axial axis is the array axis most aligned with the world's superior axis). Where the body touches an edge
   of a slice twice (a tight reconstruction field of view: chest wall, lung, chest wall along the edge), the
   stretch of that edge between the two contacts counts as body for this filling, so that a lung cut by the
   border is still *inside* the body;
3. air inside the body: the candidate lungs, airways, bowel gas, pneumothorax;
4. trachea and main bronchi removed: in each axial slice, air regions of at most ``airway_max_area_mm2`` are
   airway candidates, linked into 3-D sets (26-neighbourhood, bridging axial gaps up to ``airway_gap_mm``); the
   airway is the set reaching furthest in the superior-inferior direction (at least ``trachea_min_length_mm``)
   whose top lies within ``trachea_max_offset_mm`` of the body's left-right midline;
5. free gas removed: air whose HU, smoothed by a Gaussian of ``free_gas_sigma_mm``, is below ``free_gas_hu``
   (-950) in pockets at least ``2 * free_gas_open_mm`` thick (a morphological opening) and of at least
   ``free_gas_min_ml``, grown by up to ``2 * free_gas_open_mm`` through voxels below ``free_gas_hu`` (the
   pocket's thin parts), unless lung encloses the pocket (at least ``free_gas_enclosed_fraction`` of the shell
   ``free_gas_open_mm`` ... ``2 * free_gas_open_mm`` outside it is other air: emphysema, a bulla): bowel and
   stomach gas, a pneumothorax, outside air; lung parenchyma (air mixed with tissue, about -900 ... -700 HU) is
   not free gas;
6. each remaining connected region (largest first) is checked; a region that fails any check is not a lung:

   * ``volume_ml``: between ``min_lung_ml`` and ``max_lung_ml`` (twice that for one region holding both lungs);
   * ``parenchyma_fraction``: at least ``min_parenchyma_fraction`` of the region's interior (voxels more than
     ``interior_mm`` inside it, away from partial-volume edges) lies in ``parenchyma_hu`` (-950 ... -500 HU):
     lung, not homogeneous gas;
   * ``interior_fraction``: at least ``min_interior_fraction`` of the region is interior: a thick organ, not
     the partial-volume shell around a gas pocket;
   * ``side`` / ``midline_fraction``: a lung lies right or left of the mediastinum (at least ``lateral_fraction``
     of it on one side of the midline: the trachea's left-right position, else the body's centre). A region
     spread over both sides is accepted as two touching lungs only when at most ``max_midline_fraction`` of it
     lies within ``midline_mm`` of the midline (lungs meet at thin junction lines; gas lying across the
     midline does not);
   * the second lung (the largest further region that passes): on the other side of the midline than the first
     (``opposite_side``), level with it (``level_with_first``: at least ``min_level_overlap`` of its
     superior-inferior extent within the first lung's, i.e. above the diaphragm, not the colon below it), and
     at least ``second_lung_fraction`` of its volume (``size_vs_first``).

   Recorded without deciding: ``airway_contact`` (the region touches the airway tree found in step 4; ``None``
   where no airway is visible), ``median_hu``, ``touches_border`` and the faces it touches;
7. the accepted regions (one or two) closed by a ball of ``closing_mm`` and their holes filled (vessels,
   airways inside the lungs).

Regions cut by the field of view are kept when they pass the checks; the report says that the lungs touch the
image border (and which faces). When no region passes, :class:`LungMaskError` (a
:class:`~monai_contreg.errors.UserInputError`, CLI exit 2) is raised, carrying the report;
:func:`auto_lung_masks` (used by :func:`monai_contreg.api.register` when a preset masks its inputs and no masks
are given) then logs a warning and registers unmasked, or raises with ``preprocess.require_mask``
(``--require-mask``).

The thresholds and their reasons are described in ``docs/guides/lung-mask.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from ..errors import UserInputError
from ..spatial.conventions import spacing_from_affine

__all__ = ["LungMaskError", "LungMaskResult", "auto_lung_masks", "describe_lungs", "lung_mask", "segment_lungs"]

logger = logging.getLogger(__name__)

#: world axis (RAS) -> (name of the negative direction, name of the positive direction)
_DIRECTIONS = {0: ("left", "right"), 1: ("posterior", "anterior"), 2: ("inferior", "superior")}


class LungMaskError(UserInputError):
    """No plausible lung in the image (not a chest CT in HU, or its air regions fail the lung checks).

    Attributes:
        report: the checks of :func:`segment_lungs` (``found`` false, ``regions`` with each check), or ``None``.
    """

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LungMaskResult:
    """The outcome of :func:`segment_lungs`.

    Attributes:
        mask: boolean ``(H, W, D)`` array on the image's grid, True inside the lungs.
        report: JSON-friendly dict: ``found``, ``lungs`` (number of accepted regions), ``volume_ml``,
            ``right_ml``, ``left_ml`` (the mask split at the midline, world RAS sides), ``touches_border`` and
            ``border_faces`` (anatomical names of the image faces the mask touches), ``airway_found``,
            ``midline_from`` (``"trachea"`` or ``"body"``), ``free_gas_ml`` (all free gas inside the body, step 5),
            ``free_gas_next_to_lungs_ml`` (free gas touching the lungs: a pneumothorax, the main bronchi at the
            hilum), ``fov_bridged_slices`` (axial slices where a stretch of image border was counted as body),
            ``regions`` (each checked region, largest first: ``volume_ml``, ``side``, ``right_fraction``,
            ``superior_mm`` (its extent along the superior axis, mm above the image's most inferior slice),
            ``median_hu`` of its interior, ``airway_contact``, ``touches_border``, ``border_faces``, ``checks``
            (each with ``value``, its limit and ``passed``) and ``accepted``).
    """

    mask: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def _fill_slices_fov(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill holes in every slice ``mask[:, :, k]``, border stretches between two body contacts counted as body.

    Along each of the slice's four edges, a run of non-body pixels with body pixels on both sides *on that same
    edge* is set to body before :func:`scipy.ndimage.binary_fill_holes`: a lung cut by the field of view (chest
    wall, lung, chest wall along the edge) becomes a hole of the body. Runs that turn a corner (outside air) are
    not bridged. Returns the filled mask and the number of slices where a run was bridged.
    """
    out = np.empty_like(mask)
    bridged = 0
    for k in range(mask.shape[2]):
        sl = mask[:, :, k]
        edit = None
        for edge in ((0, slice(None)), (-1, slice(None)), (slice(None), 0), (slice(None), -1)):
            line = sl[edge]
            hits = np.flatnonzero(line)
            if hits.size >= 2 and hits[-1] - hits[0] + 1 > hits.size:  # a gap between two body pixels
                if edit is None:
                    edit = sl.copy()
                edit[edge][hits[0]:hits[-1] + 1] = True
        if edit is not None:
            bridged += 1
            sl = edit
        out[:, :, k] = ndi.binary_fill_holes(sl)
    return out, bridged


def _opening_mm(mask: np.ndarray, radius: float, spacing) -> np.ndarray:
    """Morphological opening by a ball of ``radius`` mm (Euclidean distance transforms in mm), on the mask's box."""
    if radius <= 0 or not mask.any():
        return mask
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    m = np.pad(mask[box], 1)
    core = ndi.distance_transform_edt(m, sampling=spacing) > radius
    if not core.any():
        return np.zeros_like(mask)
    opened = (ndi.distance_transform_edt(~core, sampling=spacing) <= radius) & m
    out = np.zeros_like(mask)
    out[box] = opened[1:-1, 1:-1, 1:-1]
    return out


def _free_gas(hu: np.ndarray, inside: np.ndarray, spacing, level: float, sigma_mm: float, open_mm: float,
              min_ml: float, voxel_ml: float, enclosed_fraction: float) -> np.ndarray:
    """Thick pockets of homogeneous gas inside the body (step 5 of the module docstring)."""
    if not inside.any():
        return np.zeros_like(inside)
    pad = [int(np.ceil(3 * sigma_mm / s)) + 1 for s in spacing]
    box = tuple(slice(max(sl.start - p, 0), min(sl.stop + p, n))
                for sl, p, n in zip(ndi.find_objects(inside.astype(np.uint8))[0], pad, inside.shape))
    h = np.clip(np.nan_to_num(hu[box], nan=-1024.0), -1024.0, 100.0)
    smooth = ndi.gaussian_filter(h, [sigma_mm / s for s in spacing]) if sigma_mm > 0 else h
    low = _opening_mm(inside[box] & (smooth < level), open_mm, spacing)
    lab, n = ndi.label(low)
    out = np.zeros_like(inside)
    if n:
        sizes = np.bincount(lab.ravel())[1:] * voxel_ml
        gas = np.isin(lab, np.flatnonzero(sizes >= min_ml) + 1)
        if gas.any():
            # the pockets' thin parts (a pneumothorax between lung and chest wall, thinner than the opening keeps):
            # grown by up to 2 * open_mm through voxels that are themselves below the level
            allowed = inside[box] & (h < level)
            steps = int(np.ceil(2 * open_mm / min(spacing)))
            gas = ndi.binary_dilation(gas, iterations=steps, mask=allowed) | gas
            gas = _not_enclosed(gas, inside[box], spacing, open_mm, enclosed_fraction)
        out[box] = gas
    return out


def _not_enclosed(gas: np.ndarray, inside: np.ndarray, spacing, ring_mm: float, enclosed_fraction: float) -> np.ndarray:
    """The pockets of ``gas`` that lung does not enclose.

    For each pocket, the ring of voxels ``ring_mm ... 2 * ring_mm`` outside it (beyond the partial-volume edge) is
    looked at: a pocket whose ring is at least ``enclosed_fraction`` other air inside the body (lung around a bulla,
    emphysematous lung) is not free gas; a pneumothorax (chest wall on one side) and bowel gas (bowel wall) are.
    """
    lab, n = ndi.label(gas)
    keep = np.zeros_like(gas)
    pad = [int(np.ceil(2 * ring_mm / s)) + 1 for s in spacing]
    for idx, sl in enumerate(ndi.find_objects(lab), start=1):
        box = tuple(slice(max(a.start - p, 0), min(a.stop + p, m)) for a, p, m in zip(sl, pad, gas.shape))
        pocket = lab[box] == idx
        dist = ndi.distance_transform_edt(~pocket, sampling=spacing)
        ring = (dist > ring_mm) & (dist <= 2 * ring_mm)
        other_air = inside[box] & ~gas[box]
        frac = float(other_air[ring].mean()) if ring.any() else 0.0
        logger.debug("free gas pocket %d: %d voxels, surroundings %.2f other air", idx, int(pocket.sum()), frac)
        if frac < enclosed_fraction:
            keep[box] |= pocket
    return keep


def _closing_mm(mask: np.ndarray, radius: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """Morphological closing by a ball of ``radius`` mm (Euclidean distance transforms in mm), on the mask's box."""
    if radius <= 0 or not mask.any():
        return mask
    pad = [int(np.ceil(radius / s)) + 1 for s in spacing]
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    m = np.pad(mask[box], [(p, p) for p in pad])
    dilated = ndi.distance_transform_edt(~m, sampling=spacing) <= radius
    closed = ndi.distance_transform_edt(dilated, sampling=spacing) > radius
    out = mask.copy()
    out[box] |= closed[tuple(slice(p, -p) for p in pad)]
    return out


def _airway(
    inside: np.ndarray, body: np.ndarray, spacing, lr_axis: int, max_area_mm2: float, max_offset_mm: float,
    gap_mm: float, min_length_mm: float,
) -> np.ndarray:
    """Trachea and main bronchi of ``inside`` (axial axis last, superior = high index); empty if none found.

    Small air regions (``<= max_area_mm2`` in their slice) are linked across gaps of up to ``gap_mm`` along the
    axial axis (slices where the trachea touches a lung); the trachea is the linked set reaching furthest down
    (at least ``min_length_mm``) whose topmost region lies within ``max_offset_mm`` of the body's midline.
    """
    px_mm2 = spacing[0] * spacing[1]
    small = np.zeros_like(inside)
    for k in range(inside.shape[2]):
        lab, n = ndi.label(inside[:, :, k])
        if n:
            areas = np.bincount(lab.ravel())[1:] * px_mm2
            small[:, :, k] = np.isin(lab, np.flatnonzero(areas <= max_area_mm2) + 1)
    if not small.any():
        return small
    reach = int(np.ceil(gap_mm / 2 / spacing[2]))
    linked = ndi.binary_dilation(small, structure=np.ones((1, 1, 2 * reach + 1), bool)) if reach else small
    lab3, n3 = ndi.label(linked, structure=np.ones((3, 3, 3), bool))
    lab3 = np.where(small, lab3, 0)
    best, best_len = 0, min_length_mm
    for idx, sl in enumerate(ndi.find_objects(lab3), start=1):
        if sl is None:
            continue
        length = (sl[2].stop - sl[2].start) * spacing[2]
        if length < best_len:
            continue
        top = sl[2].stop - 1
        region = lab3[:, :, top] == idx
        mid = ndi.center_of_mass(body[:, :, top])[lr_axis]
        centre = ndi.center_of_mass(region)[lr_axis]
        if abs(centre - mid) * spacing[lr_axis] <= max_offset_mm:
            best, best_len = idx, length
    return lab3 == best if best else np.zeros_like(inside)


def _check(value, passed: bool, **limits) -> dict[str, Any]:
    """One check of the report: ``{"value", <limits>..., "passed"}``, numbers rounded to 4 decimals (JSON)."""

    def num(x):
        return round(float(x), 4) if isinstance(x, (float, int, np.floating)) and not isinstance(x, bool) else x

    return {"value": num(value), **{k: num(x) for k, x in limits.items()}, "passed": bool(passed)}


def _face_names(aff: np.ndarray, order: list[int], flip: bool) -> list[tuple[str, str]]:
    """Anatomical names (low-index face, high-index face) of each axis of the canonical frame."""
    names = []
    for i, j in enumerate(order):
        w = int(np.argmax(np.abs(aff[:3, j])))
        neg, pos = _DIRECTIONS[w]
        low, high = (neg, pos) if aff[w, j] > 0 else (pos, neg)
        if i == 2 and flip:
            low, high = high, low
        names.append((low, high))
    return names


def _touching(box: tuple[slice, ...], shape, names) -> list[str]:
    faces = []
    for sl, n, (low, high) in zip(box, shape, names):
        if sl.start == 0:
            faces.append(low)
        if sl.stop == n:
            faces.append(high)
    return faces


_REASONS = {
    "volume_ml": "holds {value:.0f} mL (< {min:g} mL)",
    "parenchyma_fraction": "has {pct:.1f} % of its interior in the lung-parenchyma range (< {minpct:.0f} %; "
                           "homogeneous gas, not lung)",
    "interior_fraction": "is a thin shell ({pct:.1f} % interior < {minpct:.0f} %; the edge of a gas pocket)",
    "midline_fraction": "lies across the midline ({pct:.0f} % within the mediastinum > {maxpct:.0f} %)",
}


def _reason(name: str, chk: dict[str, Any]) -> str:
    if name == "volume_ml" and chk["value"] > chk.get("max", np.inf):
        return f"holds {chk['value']:.0f} mL (> {chk['max']:g} mL)"
    fmt = _REASONS.get(name, name + " failed")
    v = chk["value"]
    return fmt.format(value=v, min=chk.get("min", 0), pct=100 * float(v), minpct=100 * float(chk.get("min", 0)),
                      maxpct=100 * float(chk.get("max", 0)))


def segment_lungs(
    image: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor | None = None,
    *,
    threshold: float = -400.0,
    min_lung_ml: float = 250.0,
    max_lung_ml: float = 6000.0,
    second_lung_fraction: float = 0.2,
    parenchyma_hu: tuple[float, float] = (-950.0, -500.0),
    min_parenchyma_fraction: float = 0.4,
    interior_mm: float = 3.0,
    min_interior_fraction: float = 0.5,
    free_gas_hu: float = -950.0,
    free_gas_sigma_mm: float = 2.0,
    free_gas_open_mm: float = 3.0,
    free_gas_min_ml: float = 20.0,
    free_gas_enclosed_fraction: float = 0.6,
    lateral_fraction: float = 0.8,
    midline_mm: float = 10.0,
    max_midline_fraction: float = 0.15,
    min_level_overlap: float = 0.5,
    airway_max_area_mm2: float = 1000.0,
    trachea_max_offset_mm: float = 30.0,
    airway_gap_mm: float = 8.0,
    trachea_min_length_mm: float = 30.0,
    closing_mm: float = 2.0,
    max_regions: int = 8,
) -> LungMaskResult:
    """Segment the lungs of a chest CT and check that each region is a plausible lung (module docstring, steps 1-7).

    Args:
        image: CT volume in Hounsfield units, ``(H, W, D)`` or ``(1, H, W, D)`` (a MetaTensor's affine is used
            when ``affine`` is None).
        affine: 4x4 voxel-to-world matrix (RAS mm): gives the voxel size and which array axis points superior
            and right; ``None``: the MetaTensor's, else 1 mm voxels with array axes along R, A, S.
        threshold: air/tissue threshold (HU).
        min_lung_ml, max_lung_ml: plausible volume (mL) of one lung (a region holding both: up to twice the max).
        second_lung_fraction: the second lung holds at least this fraction of the first's volume.
        parenchyma_hu: ``(low, high)`` HU range of lung parenchyma.
        min_parenchyma_fraction: smallest fraction of a region's interior within ``parenchyma_hu``.
        interior_mm: a voxel is interior when it lies more than this (mm) inside its region.
        min_interior_fraction: smallest interior fraction of a region's voxels.
        free_gas_hu: smoothed HU below which air is free gas (step 5).
        free_gas_sigma_mm: Gaussian sigma (mm) of that smoothing.
        free_gas_open_mm: radius (mm) of the opening: free gas pockets are at least twice as thick.
        free_gas_min_ml: smallest free gas pocket (mL) removed.
        free_gas_enclosed_fraction: a pocket whose surroundings (``free_gas_open_mm`` ... twice that outside it)
            are at least this fraction other air inside the body is enclosed by lung (emphysema, a bulla) and
            is not free gas.
        lateral_fraction: a one-sided lung has at least this fraction of its voxels on one side of the midline.
        midline_mm: half-width (mm) of the band around the midline counted by ``max_midline_fraction``.
        max_midline_fraction: a two-sided region holds at most this fraction within the band.
        min_level_overlap: the second lung's superior-inferior extent overlaps the first's by at least this
            fraction (of its own extent).
        airway_max_area_mm2: largest cross-section (mm², one axial slice) counted as airway.
        trachea_max_offset_mm: the trachea's top lies within this left-right distance (mm) of the body's midline.
        airway_gap_mm: airway regions are linked across axial gaps up to this length (mm).
        trachea_min_length_mm: shortest superior-inferior extent (mm) of a linked set taken as the trachea.
        closing_mm: radius (mm) of the final closing (0 = none).
        max_regions: how many of the largest air regions are checked.

    Returns:
        A :class:`LungMaskResult` (the mask and the report of the checks).

    Raises:
        LungMaskError: no body, or no air region inside it that passes the checks (the message names the largest
            region's failed checks; ``report`` holds them all).
        UserInputError: ``image`` is not 3-D.
    """
    if affine is None and hasattr(image, "affine"):
        affine = image.affine
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise UserInputError(f"lung_mask: image must be a 3-D volume (H, W, D) or (1, H, W, D), got shape {a.shape}.")
    aff = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).detach().cpu().double().reshape(4, 4))
    spacing = spacing_from_affine(aff)
    # canonical frame: axial axis last, superior at high index; lr: the array axis most along world x
    si_axis = int(np.argmax(np.abs(aff[2, :3])))
    lr_axis = int(np.argmax(np.abs(aff[0, :3]) * (np.arange(3) != si_axis)))
    order = [i for i in range(3) if i != si_axis] + [si_axis]
    flip = bool(aff[2, si_axis] < 0)
    hu = np.transpose(a, order)
    if flip:
        hu = hu[:, :, ::-1]
    hu = np.asarray(hu, dtype=np.float32)
    air = ~(hu >= threshold)  # NaN counts as air
    sp = tuple(spacing[i] for i in order)
    lr = order.index(lr_axis)
    right_sign = 1.0 if aff[0, lr_axis] > 0 else -1.0  # +1: a higher index along lr is further right (RAS)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    names = _face_names(aff, order, flip)

    body = _largest(~air)
    if not body.any():
        raise LungMaskError("lung_mask: no tissue above the air threshold; not a CT in HU?")
    body, bridged = _fill_slices_fov(body)
    inside = air & body
    airway = _airway(inside, body, sp, lr, airway_max_area_mm2, trachea_max_offset_mm, airway_gap_mm,
                     trachea_min_length_mm)
    inside &= ~airway
    free = _free_gas(hu, inside, sp, free_gas_hu, free_gas_sigma_mm, free_gas_open_mm, free_gas_min_ml, voxel_ml,
                     free_gas_enclosed_fraction)
    cand = inside & ~free

    # midline: the trachea's left-right position (its upper half), else the body's centre
    if airway.any():
        zs = np.flatnonzero(airway.any(axis=(0, 1)))
        upper = airway[:, :, (zs[0] + zs[-1] + 1) // 2:]
        mid = float(ndi.center_of_mass(upper)[lr])
        midline_from = "trachea"
    else:
        mid = float(ndi.center_of_mass(body)[lr])
        midline_from = "body"
    airway_near = ndi.binary_dilation(airway, structure=np.ones((3, 3, 3), bool)) if airway.any() else None

    lab, n = ndi.label(cand)
    sizes = np.bincount(lab.ravel())[1:] if n else np.zeros(0, int)
    objs = ndi.find_objects(lab) if n else []
    lo, hi = parenchyma_hu
    regions: list[dict[str, Any]] = []
    for idx in np.argsort(sizes)[::-1][:max_regions]:
        label = int(idx) + 1
        box = objs[idx]
        reg = lab[box] == label
        vol = float(sizes[idx]) * voxel_ml
        if vol < 0.1 * min_lung_ml and regions:
            break  # the rest are smaller still: not worth checking
        dist = ndi.distance_transform_edt(np.pad(reg, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
        interior = dist > interior_mm
        vals = hu[box][interior]
        par = float(((vals >= lo) & (vals <= hi)).mean()) if vals.size else 0.0
        int_frac = float(interior.sum()) / float(sizes[idx])
        hist = reg.sum(axis=tuple(ax for ax in range(3) if ax != lr)).astype(np.float64)
        pos = np.arange(box[lr].start, box[lr].stop, dtype=np.float64)
        right = float(hist[right_sign * (pos - mid) > 0].sum() / hist.sum())
        band = float(hist[np.abs(pos - mid) * sp[lr] <= midline_mm].sum() / hist.sum())
        side = "right" if right >= lateral_fraction else "left" if right <= 1 - lateral_fraction else "both"
        vmax = max_lung_ml * (2 if side == "both" else 1)
        checks = {
            "volume_ml": _check(vol, min_lung_ml <= vol <= vmax, min=min_lung_ml, max=vmax),
            "parenchyma_fraction": _check(par, par >= min_parenchyma_fraction, min=min_parenchyma_fraction,
                                          range_hu=[lo, hi]),
            "interior_fraction": _check(int_frac, int_frac >= min_interior_fraction, min=min_interior_fraction),
        }
        faces_r = _touching(box, cand.shape, names)
        if side == "both":
            checks["midline_fraction"] = _check(band, band <= max_midline_fraction, max=max_midline_fraction)
        regions.append({
            "volume_ml": round(vol, 1), "side": side, "right_fraction": round(right, 4),
            "superior_mm": [round(box[2].start * sp[2], 1), round(box[2].stop * sp[2], 1)],
            "median_hu": float(np.median(vals)) if vals.size else None,
            "airway_contact": None if airway_near is None else bool((airway_near[box] & reg).any()),
            "touches_border": bool(faces_r), "border_faces": faces_r,
            "checks": checks, "accepted": False, "_label": label,
        })

    passing = [r for r in regions if all(c["passed"] for c in r["checks"].values())]
    report: dict[str, Any] = {"found": bool(passing), "airway_found": bool(airway.any()), "midline_from": midline_from,
                              "fov_bridged_slices": bridged, "free_gas_ml": round(float(free.sum()) * voxel_ml, 1)}
    if not passing:
        report["regions"] = [{k: v for k, v in r.items() if k != "_label"} for r in regions]
        if not regions:
            why = "no air region inside the body"
        else:
            r0 = regions[0]
            failed = [_reason(k, c) for k, c in r0["checks"].items() if not c["passed"]]
            why = f"the largest air region inside the body ({r0['side']}) " + " and ".join(failed)
        if report["free_gas_ml"] >= min_lung_ml / 10:
            why += f"; {report['free_gas_ml']:.0f} mL of homogeneous gas inside the body (bowel gas?) is not lung"
        raise LungMaskError(f"lung_mask: no plausible lung: {why}; the image does not look like a chest CT in HU.",
                            report)
    first = passing[0]
    accepted = [first]
    if first["side"] != "both":
        other = "left" if first["side"] == "right" else "right"
        f0, f1 = first["superior_mm"]
        for r in passing[1:]:
            z0, z1 = r["superior_mm"]
            overlap = max(0.0, min(f1, z1) - max(f0, z0)) / max(z1 - z0, 1e-9)
            ratio = r["volume_ml"] / first["volume_ml"]
            r["checks"]["opposite_side"] = _check(r["side"], r["side"] == other, expected=other)
            r["checks"]["level_with_first"] = _check(overlap, overlap >= min_level_overlap, min=min_level_overlap)
            r["checks"]["size_vs_first"] = _check(ratio, ratio >= second_lung_fraction, min=second_lung_fraction)
            if all(c["passed"] for c in r["checks"].values()):
                accepted.append(r)
                break
    for r in accepted:
        r["accepted"] = True
    lungs = np.isin(lab, [r["_label"] for r in accepted])
    lungs = ndi.binary_fill_holes(_closing_mm(lungs, closing_mm, sp))

    # the report: volumes per side (split at the midline), border contact, free gas next to the lungs
    hist = lungs.sum(axis=tuple(ax for ax in range(3) if ax != lr)).astype(np.float64)
    pos = np.arange(lungs.shape[lr], dtype=np.float64)
    right_ml = float(hist[right_sign * (pos - mid) > 0].sum()) * voxel_ml
    total_ml = float(hist.sum()) * voxel_ml
    faces = _touching(ndi.find_objects(lungs.astype(np.uint8))[0], lungs.shape, names)
    near = ndi.binary_dilation(lungs, structure=np.ones((3, 3, 3), bool)) & ~lungs
    gas_lab, n_gas = ndi.label(free)
    touching = np.unique(gas_lab[near & free])
    free_ml = float(np.isin(gas_lab, touching[touching > 0]).sum()) * voxel_ml if n_gas else 0.0
    report.update({
        "lungs": len(accepted), "volume_ml": round(total_ml, 1), "right_ml": round(right_ml, 1),
        "left_ml": round(total_ml - right_ml, 1), "touches_border": bool(faces), "border_faces": faces,
        "free_gas_next_to_lungs_ml": round(free_ml, 1),
        "regions": [{k: v for k, v in r.items() if k != "_label"} for r in regions],
    })
    if flip:
        lungs = lungs[:, :, ::-1]
    return LungMaskResult(np.ascontiguousarray(np.transpose(lungs, np.argsort(order))), report)


def lung_mask(
    image: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor | None = None, **options: Any,
) -> np.ndarray:
    """The lung mask of :func:`segment_lungs` (same arguments, keyword options included), without its report.

    Returns:
        A boolean ``(H, W, D)`` numpy array, True inside the lungs.

    Raises:
        LungMaskError: no plausible lung (see :func:`segment_lungs`); UserInputError: ``image`` is not 3-D.
    """
    return segment_lungs(image, affine, **options).mask


def describe_lungs(report: dict[str, Any]) -> str:
    """One line for a found mask's report (:attr:`LungMaskResult.report`), e.g. ``"5024 mL (right 2611, left 2413;
    2 regions), touches the image border (right, inferior): the field of view cuts the lungs"``."""
    text = f"{report['volume_ml']:.0f} mL (right {report['right_ml']:.0f}, left {report['left_ml']:.0f}"
    text += f"; {report['lungs']} region{'s' if report['lungs'] > 1 else ''})"
    if report.get("touches_border"):
        text += f", touches the image border ({', '.join(report['border_faces'])}): the field of view cuts the lungs"
    return text


def auto_lung_masks(
    data: MutableMapping[str, Any], config: Any, where: str = "register", report: dict[str, Any] | None = None,
    modalities: Mapping[str, str] | None = None,
) -> MutableMapping[str, Any]:
    """Add ``fixed_mask``/``moving_mask`` computed by :func:`segment_lungs` where a preset masks but none was given.

    Args:
        data: ``{"fixed", "moving"[, "fixed_mask", "moving_mask"]}``, images ``(1, H, W, D)`` MetaTensors in HU
            (before normalisation), with affines.
        config: a :class:`~monai_contreg.methods.config.RegistrationConfig`; nothing is segmented unless
            ``preprocess.use_masks`` and ``preprocess.auto_mask`` are both true.
        where: caller's name for log lines and errors.
        report: a dict filled with what was done (``masked``; per image ``fixed``/``moving``: ``source`` =
            ``"given"``, ``"automatic"``, ``"not found"`` or ``"none"``, and for a segmented image the report of
            :func:`segment_lungs`: volumes per side, border contact, each check). It becomes
            :attr:`monai_contreg.api.RegistrationResult.mask_report` and a pair's ``mask`` in ``runtimes.json``.
        modalities: ``{"fixed", "moving"} -> "ct" | "mr"`` (:func:`~monai_contreg.data.modality.decide_modalities`;
            ``None``: both CT). The lungs are segmented in CT pairs only: with an MR image nothing is segmented
            (logged; each image's ``source`` ``"none"`` with a ``reason``).

    Returns:
        ``data`` with the missing masks added (``(1, H, W, D)`` float32 MetaTensors, 1 inside the lungs). When an
        image has no plausible lung, a warning is logged and no mask is added for either image (the pair is
        registered unmasked).

    Raises:
        LungMaskError: no plausible lung in an image and ``preprocess.require_mask`` is true (CLI
            ``--require-mask``; exit 2).
    """
    report = {} if report is None else report
    pre = config.preprocess
    report["masked"] = False
    for k in ("fixed", "moving"):
        report[k] = {"source": "given" if data.get(f"{k}_mask") is not None else "none"}
    if not pre.use_masks:
        return data
    missing = [k for k in ("fixed", "moving") if data.get(f"{k}_mask") is None]
    if not missing:
        report["masked"] = True
        return data
    if not getattr(pre, "auto_mask", False):
        return data
    mr = [k for k in ("fixed", "moving") if (modalities or {}).get(k, "ct") == "mr"]
    if mr:  # the lung segmentation reads HU: not for MR
        for k in missing:
            report[k] = {"source": "none", "reason": f"the {' and '.join(mr)} image{'s are' if len(mr) > 1 else ' is'} "
                                                      "MR: the automatic lung mask is for CT"}
        logger.info("%s: no automatic lung mask: the %s image%s MR (preprocess.modality); registering without masks "
                    "unless given", where, " and ".join(mr), "s are" if len(mr) > 1 else " is")
        return data
    from monai.data import MetaTensor

    masks = {}
    for key in missing:
        img = data[key]
        aff = img.affine if isinstance(img, MetaTensor) else None
        try:
            seg = segment_lungs(img, aff)
        except LungMaskError as exc:
            report[key] = {"source": "not found", **(exc.report or {}), "message": str(exc)}
            if getattr(pre, "require_mask", False):
                raise LungMaskError(
                    f"{where}: --require-mask (preprocess.require_mask): no automatic lung mask for the {key} image: "
                    f"{str(exc).removeprefix('lung_mask: ')} Pass a mask (--{key}-mask) or leave --require-mask out "
                    "to register unmasked.", exc.report,
                ) from exc
            logger.warning(
                "%s: no automatic lung mask for the %s image (%s); registering WITHOUT masks. Pass masks "
                "(fixed_mask/moving_mask, --fixed-mask/--moving-mask) or a preset that does not mask "
                "(--preset convexadam), turn this off with --no-auto-mask / preprocess.auto_mask=false, or stop "
                "instead with --require-mask.",
                where, key, exc,
            )
            for k in missing:  # neither image is masked: the other's mask (if any) is not used
                if k != key and report[k].get("source") == "automatic":
                    report[k]["source"] = "automatic, unused"
            return data
        t = MetaTensor(torch.as_tensor(seg.mask[None], dtype=torch.float32))
        if isinstance(img, MetaTensor):
            t.affine = img.affine.clone()
        masks[f"{key}_mask"] = t
        report[key] = {"source": "automatic", **seg.report}
        line = describe_lungs(seg.report)
        if seg.report.get("touches_border"):
            logger.warning("%s: automatic lung mask of the %s image: %s", where, key, line)
        else:
            logger.info("%s: automatic lung mask of the %s image: %s", where, key, line)
    data.update(masks)
    report["masked"] = True
    return data
