"""MONAI dictionary transforms that register pairs and apply fields inside a ``Compose``.

Data dicts hold channel-first tensors as MONAI pipelines do: images ``(C, H, W, D)``, DDFs ``(3, H, W, D)``
(MetaTensors with the fixed image's affine), keypoints ``(N, 3)`` voxel coordinates.

The geometry of a MetaTensor is read once, as a :class:`~monai_contreg.spatial.grid.Grid` (:func:`_grid_of`): the
DDF's grid is the fixed grid, a moving MetaTensor's own grid says where its voxels are (a moving image on another
grid than the DDF's is warped between the two grids, as :meth:`~monai_contreg.api.RegistrationResult.warp` does).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from .._validation import choose
from ..api import register
from ..errors import UserInputError
from ..methods.config import RegistrationConfig
from ..methods.presets import resolve_config
from ..modes import IMAGE_PADDING, LABEL_PADDING, InterpolationMode
from ..spatial.grid import Grid
from ..spatial.resample import warp_between_grids
from ..spatial.warp import warp_image, warp_labels, warp_points

__all__ = [
    "ApplyDDFd",
    "ApplyDDFD",
    "ApplyDDFDict",
    "RegisterPaird",
    "RegisterPairD",
    "RegisterPairDict",
]


def _grid_of(x: Any) -> Grid | None:
    """The :class:`Grid` of a MetaTensor ``(..., H, W, D)`` (its last three sizes and affine); ``None`` for a plain
    tensor (no geometry)."""
    return Grid.of(x) if isinstance(x, MetaTensor) else None


class RegisterPaird(MapTransform):
    """Register ``data[fixed_key]`` and ``data[moving_key]``; store the DDF under ``ddf_key``.

    The DDF is a MetaTensor ``(3, H, W, D)`` (voxels, fixed -> moving) with the fixed image's affine; the
    loss/lr history is stored under ``f"{ddf_key}_history"``. With ``init_key`` the run starts from that DDF
    (refinement of a network's prediction, see :mod:`monai_contreg.pipeline.refine`).

    Args:
        fixed_key, moving_key: image keys (``(1, H, W, D)`` tensors or file paths).
        fixed_mask_key, moving_mask_key: optional mask keys.
        ddf_key: output key.
        config: :class:`RegistrationConfig`, preset name or a config mapping (:meth:`RegistrationConfig.from_dict`;
            default ``"io"``).
        device: computation device (default: the inputs').
        init_key: optional key of an initial DDF ``(3, ...)`` or ``(1, 3, ...)``.
        stages: optional list of stages (stage dataclasses or mappings with a ``kind``) replacing the config's,
            e.g. ``[{"kind": "affine"}]`` for an affine pre-registration alone. With an affine stage its world
            map (4x4 float64 tensor, fixed world -> moving world, RAS mm) is stored under ``f"{ddf_key}_affine"``
            (``None`` without one) and the DDF is the total displacement.

    Raises:
        UserInputError: an invalid config or stage list (at construction).
    """

    def __init__(
        self,
        fixed_key: str = "fixed",
        moving_key: str = "moving",
        fixed_mask_key: str | None = None,
        moving_mask_key: str | None = None,
        ddf_key: str = "ddf",
        config: RegistrationConfig | str | None = None,
        device: str | torch.device | None = None,
        init_key: str | None = None,
        stages: Sequence[Any] | None = None,
    ) -> None:
        super().__init__([fixed_key, moving_key])
        if isinstance(config, Mapping):
            config = RegistrationConfig.from_dict(dict(config))
        if stages is not None:
            config = copy.deepcopy(resolve_config("RegisterPaird", config))
            config.stages = tuple(stages)
            config.validate()
        self.fixed_key, self.moving_key = fixed_key, moving_key
        self.fixed_mask_key, self.moving_mask_key = fixed_mask_key, moving_mask_key
        self.ddf_key, self.config, self.device, self.init_key = ddf_key, config, device, init_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for k in (self.fixed_key, self.moving_key, self.fixed_mask_key, self.moving_mask_key, self.init_key):
            if k is not None and k not in d:
                raise KeyError(f"RegisterPaird: key {k!r} is missing from the data dict (keys: {sorted(map(str, d))}).")
        init = None
        if self.init_key is not None:
            init = torch.as_tensor(d[self.init_key])
            init = init.unsqueeze(0) if init.ndim == 4 else init
        res = register(
            d[self.fixed_key], d[self.moving_key],
            fixed_mask=d[self.fixed_mask_key] if self.fixed_mask_key else None,
            moving_mask=d[self.moving_mask_key] if self.moving_mask_key else None,
            config=self.config, device=self.device, init_ddf=init,
        )
        d[self.ddf_key] = MetaTensor(res.ddf.as_tensor()[0], affine=res.fixed_grid.affine_tensor())
        d[f"{self.ddf_key}_history"] = res.history
        d[f"{self.ddf_key}_affine"] = None if res.linear is None else torch.as_tensor(res.linear)
        return d


class ApplyDDFd(MapTransform):
    """Apply a DDF from the data dict to moving images, label maps and fixed keypoints.

    * images (``mode="bilinear"``) and labels (``mode="nearest"``) ``(C, H, W, D)`` of the moving image are
      resampled into the fixed frame: ``out(x) = img(x + u(x))`` on the DDF's grid; a moving MetaTensor on
      another grid (its own affine and shape) is sampled where the field maps: ``img(A_m^-1 A_f (x + u(x)))``;
      the output lies on the DDF's grid (its affine);
    * keypoint keys ``(N, 3)`` hold fixed-image voxel coordinates and are mapped to the moving image:
      ``p + u(p)`` (the direction a Learn2Reg field maps).

    Args:
        keys: image/label keys to warp.
        ddf_key: key of the DDF ``(3, H, W, D)`` (or ``(1, 3, H, W, D)``).
        mode: ``"bilinear"`` (images, border padding) or ``"nearest"`` (label maps, zeros outside the moving
            image), one for all keys or one per key.
        keypoint_keys: keys of fixed keypoints to map.
        allow_missing_keys: skip absent keys.

    Raises:
        UserInputError: a plain tensor (no affine) whose spatial shape is not the DDF's (it cannot be placed).
    """

    def __init__(
        self,
        keys: KeysCollection,
        ddf_key: str = "ddf",
        mode: Sequence[str] | str = "bilinear",
        keypoint_keys: KeysCollection = (),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ddf_key = ddf_key
        self.mode = [choose("ApplyDDFd", "mode", m, ("bilinear", "nearest")) for m in ensure_tuple_rep(mode, len(self.keys))]
        self.keypoint_keys = [keypoint_keys] if isinstance(keypoint_keys, str) else list(keypoint_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.ddf_key not in d:
            raise KeyError(f"ApplyDDFd: ddf key {self.ddf_key!r} is missing from the data dict.")
        ddf = _plain(d[self.ddf_key])
        ddf = ddf.unsqueeze(0) if ddf.ndim == 4 else ddf
        ddf_grid = _grid_of(d[self.ddf_key])
        for key, mode in self.key_iterator(d, self.mode):
            img_grid = _grid_of(d[key])
            # plain tensors: a MetaTensor input would carry its own affine into the output's constructor
            img = _plain(d[key]).unsqueeze(0)
            labels = mode == "nearest"
            if ddf_grid is not None and img_grid is not None and not img_grid.same_as(ddf_grid):
                out = warp_between_grids(
                    img if labels else img.to(ddf.dtype), img_grid.affine, ddf.to(img.device), ddf_grid.affine,
                    mode=InterpolationMode.NEAREST if labels else InterpolationMode.BILINEAR,
                    padding_mode=LABEL_PADDING if labels else IMAGE_PADDING,
                )
            else:
                if img_grid is None and tuple(img.shape[2:]) != tuple(ddf.shape[2:]):
                    raise UserInputError(
                        f"ApplyDDFd: {key!r} is a plain tensor of spatial shape {tuple(img.shape[2:])}, the DDF's grid "
                        f"is {tuple(ddf.shape[2:])}; give it as a MetaTensor with its affine (another grid is then "
                        "resampled) or on the DDF's grid."
                    )
                out = warp_labels(img, ddf.to(img.device)) if labels else warp_image(img.to(ddf.dtype), ddf)
            d[key] = MetaTensor(out[0], affine=ddf_grid.affine_tensor()) if ddf_grid is not None else out[0]
        for key in self.keypoint_keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"ApplyDDFd: keypoint key {key!r} is missing from the data dict.")
            pts = _plain(d[key])
            moved = warp_points(pts.to(ddf.dtype), ddf).to(pts.dtype)
            d[key] = MetaTensor(moved, affine=d[key].affine) if isinstance(d[key], MetaTensor) else moved
        return d


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (a MetaTensor's data without its metadata)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


RegisterPairD = RegisterPairDict = RegisterPaird
ApplyDDFD = ApplyDDFDict = ApplyDDFd
