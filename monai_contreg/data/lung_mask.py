"""Built-in lung segmentation of chest CT: classical image processing (scipy.ndimage), no learned weights.

:func:`lung_mask` segments both lungs of a CT volume in Hounsfield units. Every size is physical (mm, mm², mL,
from the image's affine), so the result is the same on a 0.65 x 0.65 x 2.5 mm scan and a 1.5 mm grid:

1. air: voxels below ``threshold`` HU (default -400; padding values outside the scanned circle, -1024 ...
   -32768, are air too);
2. body: the largest connected non-air component (6-neighbourhood), its holes filled in every axial slice
   (the axial axis is the array axis most aligned with the world's superior axis);
3. air inside the body: the candidate lungs and airways;
4. trachea and main bronchi removed: in each axial slice, air regions of at most ``airway_max_area_mm2``
   are airway candidates, linked into 3-D sets (26-neighbourhood, bridging axial gaps up to
   ``airway_gap_mm`` where the trachea touches a lung in a few slices); the airway is the set reaching
   furthest in the superior-inferior direction (at least ``trachea_min_length_mm``) whose top lies within
   ``trachea_max_offset_mm`` of the body's left-right midline. Where a bronchus enters a lung its slice
   region merges with the lung's and stops being small, which ends the airway there;
5. the lungs: the largest remaining air component, and the second largest when it holds at least
   ``second_lung_fraction`` of the largest (two lungs; one component when they touch);
6. a closing of radius ``closing_mm`` (vessels at the lung boundary, the hilum) and 3-D hole filling (vessels
   and airways inside the lungs).

If the largest component holds less than ``min_lung_ml`` the image does not look like a chest CT and
:class:`LungMaskError` is raised; :func:`auto_lung_masks` (used by :func:`monai_contreg.api.register` when a
preset masks its inputs and no masks are given) then logs a warning and registers unmasked.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from ..errors import ContregError
from ..spatial.conventions import spacing_from_affine

__all__ = ["LungMaskError", "auto_lung_masks", "lung_mask"]

logger = logging.getLogger(__name__)


class LungMaskError(ContregError):
    """The image does not look like a chest CT in HU (no air inside the body of a plausible lung volume)."""


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every 2-D slice ``mask[:, :, k]``."""
    out = np.empty_like(mask)
    for k in range(mask.shape[2]):
        out[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    return out


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


def lung_mask(
    image: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor | None = None,
    *,
    threshold: float = -400.0,
    min_lung_ml: float = 250.0,
    second_lung_fraction: float = 0.2,
    airway_max_area_mm2: float = 1000.0,
    trachea_max_offset_mm: float = 30.0,
    airway_gap_mm: float = 8.0,
    trachea_min_length_mm: float = 30.0,
    closing_mm: float = 2.0,
) -> np.ndarray:
    """Segment both lungs of a chest CT (see the module docstring for the steps).

    Args:
        image: CT volume in Hounsfield units, ``(H, W, D)`` or ``(1, H, W, D)`` (a MetaTensor's affine is used
            when ``affine`` is None).
        affine: 4x4 voxel-to-world matrix (RAS mm); ``None``: the MetaTensor's, else 1 mm voxels, array axis 2
            pointing superior.
        threshold: air/tissue threshold (HU).
        min_lung_ml: smallest plausible volume (mL) of the largest air component inside the body.
        second_lung_fraction: keep the second largest air component when its volume is at least this fraction
            of the largest's.
        airway_max_area_mm2: largest cross-section (mm², one axial slice) counted as airway.
        trachea_max_offset_mm: the trachea's top lies within this left-right distance (mm) of the body's midline.
        airway_gap_mm: airway regions are linked across axial gaps up to this length (mm; where the trachea
            touches a lung in a few slices).
        trachea_min_length_mm: shortest superior-inferior extent (mm) of a linked set taken as the trachea.
        closing_mm: radius (mm) of the final closing (0 = none).

    Returns:
        A boolean ``(H, W, D)`` numpy array, True inside the lungs.

    Raises:
        LungMaskError: no body, or no air inside it of at least ``min_lung_ml``.
        UserInputError: ``image`` is not 3-D.
    """
    from ..errors import UserInputError

    if affine is None and hasattr(image, "affine"):
        affine = image.affine
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise UserInputError(f"lung_mask: image must be a 3-D volume (H, W, D) or (1, H, W, D), got shape {a.shape}.")
    aff = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).detach().cpu().double().reshape(4, 4))
    spacing = spacing_from_affine(aff)
    # axial axis last, superior at high index; left-right axis
    si_axis = int(np.argmax(np.abs(aff[2, :3])))
    lr_axis = int(np.argmax(np.abs(aff[0, :3]) * (np.arange(3) != si_axis)))
    order = [i for i in range(3) if i != si_axis] + [si_axis]
    flip = aff[2, si_axis] < 0
    air = np.transpose(~(a >= threshold), order)  # NaN counts as air
    if flip:
        air = air[:, :, ::-1]
    sp = tuple(spacing[i] for i in order)
    lr = order.index(lr_axis)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0

    body = _largest(~air)
    if not body.any():
        raise LungMaskError("lung_mask: no tissue above the air threshold; not a CT in HU?")
    body = _fill_slices(body)
    inside = air & body
    inside &= ~_airway(inside, body, sp, lr, airway_max_area_mm2, trachea_max_offset_mm, airway_gap_mm,
                       trachea_min_length_mm)
    lab, n = ndi.label(inside)
    sizes = np.bincount(lab.ravel())[1:] * voxel_ml if n else np.zeros(0)
    if n == 0 or sizes.max() < min_lung_ml:
        biggest = 0.0 if n == 0 else float(sizes.max())
        raise LungMaskError(
            f"lung_mask: the largest air region inside the body holds {biggest:.0f} mL (< {min_lung_ml:g} mL); "
            "the image does not look like a chest CT in HU."
        )
    rank = np.argsort(sizes)[::-1]
    keep = [rank[0] + 1]
    if n > 1 and sizes[rank[1]] >= second_lung_fraction * sizes[rank[0]]:
        keep.append(rank[1] + 1)
    lungs = np.isin(lab, keep)
    lungs = ndi.binary_fill_holes(_closing_mm(lungs, closing_mm, sp))
    if flip:
        lungs = lungs[:, :, ::-1]
    return np.ascontiguousarray(np.transpose(lungs, np.argsort(order)))


def auto_lung_masks(data: MutableMapping[str, Any], config: Any, where: str = "register") -> MutableMapping[str, Any]:
    """Add ``fixed_mask``/``moving_mask`` computed by :func:`lung_mask` where a preset masks but none was given.

    Args:
        data: ``{"fixed", "moving"[, "fixed_mask", "moving_mask"]}``, images ``(1, H, W, D)`` MetaTensors in HU
            (before normalisation), with affines.
        config: a :class:`~monai_contreg.methods.config.RegistrationConfig`; nothing happens unless
            ``preprocess.use_masks`` and ``preprocess.auto_mask`` are both true.
        where: caller's name for log lines.

    Returns:
        ``data`` with the missing masks added (``(1, H, W, D)`` float32 MetaTensors, 1 inside the lungs). When an
        image does not look like a chest CT, a warning is logged and no mask is added for either image (the
        pair is registered unmasked).
    """
    pre = config.preprocess
    if not (pre.use_masks and getattr(pre, "auto_mask", False)):
        return data
    missing = [k for k in ("fixed", "moving") if data.get(f"{k}_mask") is None]
    if not missing:
        return data
    from monai.data import MetaTensor

    masks = {}
    for key in missing:
        img = data[key]
        aff = img.affine if isinstance(img, MetaTensor) else None
        try:
            m = lung_mask(img, aff)
        except LungMaskError as exc:
            logger.warning(
                "%s: no automatic lung mask for the %s image (%s); registering WITHOUT masks. Pass masks "
                "(fixed_mask/moving_mask, --fixed-mask/--moving-mask) or a preset that does not mask "
                "(--preset convexadam), or turn this off with --no-auto-mask / preprocess.auto_mask=false.",
                where, key, exc,
            )
            return data
        t = MetaTensor(torch.as_tensor(m[None], dtype=torch.float32))
        if isinstance(img, MetaTensor):
            t.affine = img.affine.clone()
        masks[f"{key}_mask"] = t
        logger.info("%s: automatic lung mask of the %s image: %.0f mL", where, key,
                    float(m.sum()) * float(np.prod(spacing_from_affine(aff if aff is not None else np.eye(4)))) / 1000.0)
    data.update(masks)
    return data
