"""MONAI transforms that load and prepare registration inputs (images, masks).

The preprocessing of a pair is a :class:`monai.transforms.Compose` built by :func:`preprocessing_transforms`
from a :class:`~monai_contreg.methods.config.PreprocessConfig`: load (files) or wrap (arrays) into channel-first
MetaTensors, cast to float32, normalise intensities, and mask.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    ScaleIntensityd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    ThresholdIntensityd,
    Transform,
)

from ..errors import UserInputError
from ..methods.config import PreprocessConfig

__all__ = [
    "ApplyMask",
    "ApplyMaskD",
    "ApplyMaskDict",
    "ApplyMaskd",
    "IMAGE_KEYS",
    "apply_intensity_floor",
    "MASK_KEYS",
    "loading_transforms",
    "normalisation_transforms",
    "preprocessing_transforms",
]

IMAGE_KEYS = ("fixed", "moving")
MASK_KEYS = ("fixed_mask", "moving_mask")


class ApplyMask(Transform):
    """Set image voxels outside a mask to ``fill`` (``mask > 0`` is inside); keeps MetaTensor metadata.

    Args:
        fill: value given to voxels outside the mask.
    """

    def __init__(self, fill: float = 0.0) -> None:
        self.fill = float(fill)

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if tuple(img.shape[-3:]) != tuple(mask.shape[-3:]):
            raise UserInputError(
                f"ApplyMask: mask spatial shape {tuple(mask.shape[-3:])} must equal image spatial shape {tuple(img.shape[-3:])}."
            )
        m = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
        inside = m.to(img.device) > 0
        # a method of img: the result keeps img's metadata (affine), not the mask's
        return img.masked_fill(~inside, self.fill)


class ApplyMaskd(MapTransform):
    """Dictionary form of :class:`ApplyMask`: ``data[key]`` masked by ``data[mask_key]`` for each pair of keys.

    Args:
        keys: image keys.
        mask_keys: mask key for each image key (same length).
        fill: value outside the mask.
        allow_missing_keys: skip a key (or a missing mask) instead of raising.
    """

    def __init__(
        self, keys: KeysCollection, mask_keys: Sequence[Hashable], fill: float = 0.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = list(mask_keys) if not isinstance(mask_keys, str) else [mask_keys]
        if len(self.mask_keys) == 1 and len(self.keys) > 1:
            self.mask_keys = self.mask_keys * len(self.keys)
        if len(self.mask_keys) != len(self.keys):
            raise UserInputError(f"ApplyMaskd: got {len(self.keys)} keys but {len(self.mask_keys)} mask_keys.")
        self.masker = ApplyMask(fill)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mkey in zip(self.keys, self.mask_keys):
            if key not in d or mkey not in d or d[mkey] is None:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"ApplyMaskd: key {key!r} or mask key {mkey!r} missing from the data dict.")
            d[key] = self.masker(d[key], d[mkey])
        return d


ApplyMaskD = ApplyMaskDict = ApplyMaskd


def _mr_intensity(config: PreprocessConfig, keys: list[str]) -> list[Transform]:
    """MR images: no HU floor; ``"window"`` (HU) becomes the percentile normalisation (``mr_percentiles``)."""
    if not keys:
        return []
    if config.intensity == "window":
        lo, hi = config.mr_percentiles
        return [ScaleIntensityRangePercentilesd(keys, lower=float(lo), upper=float(hi), b_min=0.0, b_max=1.0, clip=True,
                                                allow_missing_keys=True)]
    if config.intensity == "minmax":
        return [ScaleIntensityd(keys, minv=0.0, maxv=1.0, allow_missing_keys=True)]
    return []


def _intensity(config: PreprocessConfig, keys: list[str]) -> list[Transform]:
    if not keys:
        return []
    floor: list[Transform] = []
    if config.intensity_floor is not None:  # CT padding (-2000, -3024, -32768) -> air
        f = float(config.intensity_floor)
        floor = [ThresholdIntensityd(keys, threshold=f, above=True, cval=f, allow_missing_keys=True)]
    if config.intensity == "window":
        lo, hi = config.window
        return [*floor, ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True, allow_missing_keys=True)]
    if config.intensity == "minmax":
        return [*floor, ScaleIntensityd(keys, minv=0.0, maxv=1.0, allow_missing_keys=True)]
    return floor


def apply_intensity_floor(image: torch.Tensor, config: PreprocessConfig, modality: str = "ct") -> torch.Tensor:
    """``image`` with values below ``config.intensity_floor`` raised to it (unchanged when the floor is None, or
    for an MR image: the floor is in HU).

    A MetaTensor stays one (same affine and metadata).
    """
    if config.intensity_floor is None or modality == "mr":
        return image
    return image.clamp(min=float(config.intensity_floor))


def loading_transforms(file_keys: Sequence[str] = (), array_keys: Sequence[str] = ()) -> Compose:
    """Load files (``LoadImaged``, channel first) and give 3-D arrays a channel: ``(1, H, W, D)`` float32 MetaTensors."""
    chain: list[Transform] = []
    if file_keys:
        chain.append(LoadImaged(list(file_keys), image_only=True, ensure_channel_first=True))
    if array_keys:
        chain.append(EnsureChannelFirstd(list(array_keys), channel_dim="no_channel"))
    chain.append(EnsureTyped([*file_keys, *array_keys], data_type="tensor", dtype=torch.float32, track_meta=True))
    return Compose(chain)


def normalisation_transforms(
    config: PreprocessConfig, image_keys: Sequence[str] = IMAGE_KEYS, mask_keys: Sequence[str] = MASK_KEYS,
    modalities: Mapping[str, str] | None = None,
) -> Compose:
    """Intensity normalisation of ``image_keys`` then (``config.use_masks``) masking by ``mask_keys``.

    Normalisation of a CT image: values below ``config.intensity_floor`` (CT padding) raised to it, then
    ``config.intensity``. Of an MR image (``modalities[key] == "mr"``, :mod:`monai_contreg.data.modality`): no floor;
    ``"window"`` clips to ``config.mr_percentiles`` (percentiles of the image) and scales to [0, 1]; ``"minmax"``
    and ``"none"`` as for CT.

    Args:
        modalities: ``key -> "ct" | "mr"``; ``None`` or a missing key: CT.

    Missing keys are skipped, so the same pipeline serves pairs with or without masks.
    """
    mods = dict(modalities or {})
    ct = [k for k in image_keys if mods.get(k, "ct") != "mr"]
    mr = [k for k in image_keys if mods.get(k, "ct") == "mr"]
    chain: list[Transform] = [*_intensity(config, ct), *_mr_intensity(config, mr)]
    if config.use_masks:
        chain.append(ApplyMaskd(list(image_keys), list(mask_keys), fill=config.mask_fill, allow_missing_keys=True))
    return Compose(chain)


def preprocessing_transforms(
    config: PreprocessConfig, *, file_keys: Sequence[str] = (), array_keys: Sequence[str] = ()
) -> Compose:
    """Loading followed by normalisation and masking: the whole preprocessing of a registration pair.

    Keys are ``fixed``, ``moving``, ``fixed_mask``, ``moving_mask``; list each present key in ``file_keys``
    (file paths) or ``array_keys`` (3-D arrays/tensors).
    """
    return Compose([loading_transforms(file_keys, array_keys), normalisation_transforms(config)])


def as_metatensor(x: np.ndarray | torch.Tensor) -> MetaTensor:
    """Wrap an array/tensor as a MetaTensor (identity affine unless it already carries one)."""
    if isinstance(x, MetaTensor):
        return x
    return MetaTensor(torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x))
