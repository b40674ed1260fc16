"""Which modality an image is (CT in Hounsfield units, or MR), decided from its values or given.

The CT-only parts of the preprocessing depend on it (:class:`~monai_contreg.methods.config.PreprocessConfig`):
the HU floor (``intensity_floor``), the HU window (``intensity="window"``) and the automatic lung mask
(``auto_mask``) apply to CT images only; an MR image is normalised by its percentiles instead
(``preprocess.mr_percentiles``, default 0.5 and 99.5) and never segmented for lungs.

``preprocess.modality`` (CLI ``--modality``) is ``"ct"``, ``"mr"`` or ``"auto"`` (default). ``"auto"`` decides each
image on its own (:func:`detect_modality`): an image is CT when both

* air is present: at least :data:`AIR_MIN_FRACTION` (0.1 %) of its voxels lie at or below :data:`AIR_HU`
  (-900 HU: air reads about -1000 HU, scanner padding -1024 ... -32768), and
* its range is a HU range: its 99th percentile is at most :data:`HU_HIGH` (3100 HU: dense bone reads up to about
  2000 HU, metal saturates at 3071).

Anything else is MR (magnitude MR is never far below zero; a z-scored one lies within a few units of it). A CT
stored in raw scanner units without its rescale (0 ... 4095) reads as MR: give ``--modality ct`` then. The decision
and its reason are logged (INFO) and recorded in the registration's mask report (``mask_report["modality"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .._validation import choose
from ..modes import Modality

__all__ = ["AIR_HU", "AIR_MIN_FRACTION", "HU_HIGH", "decide_modalities", "detect_modality"]

logger = logging.getLogger(__name__)

#: Values at or below this (HU) count as air (or scanner padding).
AIR_HU = -900.0
#: Least fraction of voxels at or below :data:`AIR_HU` for an image to be CT.
AIR_MIN_FRACTION = 1e-3
#: Largest 99th percentile (HU) of a CT.
HU_HIGH = 3100.0
#: Voxels sampled (every k-th, evenly through the array) for the percentile: enough for a stable 99th percentile.
_SAMPLE = 2_000_000


def _values(image: Any) -> np.ndarray:
    t = image.as_tensor() if hasattr(image, "as_tensor") else image
    if isinstance(t, torch.Tensor):
        t = t.detach().to("cpu", torch.float32).numpy()
    return np.asarray(t, dtype=np.float32).reshape(-1)


def detect_modality(image: Any) -> tuple[str, str]:
    """``("ct" | "mr", reason)`` for an image from its values (see the module's rule).

    Args:
        image: an array, tensor or MetaTensor of any shape (intensities as stored: HU for CT).

    Returns:
        The modality and a sentence giving the figures it was decided on (air fraction, 99th percentile).

    Examples:
        >>> ct = np.full((20, 20, 20), 40.0); ct[:, :, :4] = -1000.0   # tissue and air (HU)
        >>> detect_modality(ct)[0]
        'ct'
        >>> detect_modality(np.random.default_rng(0).uniform(0, 255, (20, 20, 20)))[0]
        'mr'
    """
    v = _values(image)
    air = float(np.count_nonzero(v <= AIR_HU)) / max(1, v.size)
    step = max(1, v.size // _SAMPLE)
    p99 = float(np.percentile(v[::step], 99.0))
    figures = f"{100 * air:.2f} % of voxels <= {AIR_HU:g} (air), 99th percentile {p99:.5g}"
    if air >= AIR_MIN_FRACTION and p99 <= HU_HIGH:
        return Modality.CT.value, f"CT: {figures} (air present, a HU range)"
    why = (f"no air (< {100 * AIR_MIN_FRACTION:g} % at or below {AIR_HU:g})" if air < AIR_MIN_FRACTION
           else f"99th percentile above {HU_HIGH:g}, not a HU range")
    return Modality.MR.value, f"MR: {figures}: {why}"


def decide_modalities(data: Mapping[str, Any], preprocess: Any, where: str = "register") -> dict[str, str]:
    """The modality of ``data["fixed"]`` and ``data["moving"]`` under ``preprocess.modality``, logged.

    Args:
        data: ``{"fixed", "moving", ...}`` images in their stored intensities (before any floor or normalisation).
        preprocess: a :class:`~monai_contreg.methods.config.PreprocessConfig` (its ``modality``).
        where: the caller's name for the log line.

    Returns:
        ``{"fixed": "ct" | "mr", "moving": ..., "reason": {"fixed": ..., "moving": ...}}``.

    Raises:
        UserInputError: an unknown ``preprocess.modality``.
    """
    mode = str(choose("PreprocessConfig", "preprocess.modality", getattr(preprocess, "modality", "auto"), Modality).value)
    out: dict[str, Any] = {"reason": {}}
    for key in ("fixed", "moving"):
        if mode == Modality.AUTO.value:
            out[key], out["reason"][key] = detect_modality(data[key])
        else:
            out[key], out["reason"][key] = mode, f"{mode.upper()}: given (preprocess.modality / --modality)"
        logger.info("%s: %s image read as %s", where, key, out["reason"][key])
    return out
