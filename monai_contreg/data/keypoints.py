"""Keypoint files (Learn2Reg CSV: one ``x,y,z`` voxel coordinate per row, array-axis order)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep
from ..errors import MissingFileError, UserInputError

__all__ = ["LoadKeypointsD", "LoadKeypointsDict", "LoadKeypointsd", "load_keypoints", "save_keypoints"]


def _header_rows(path: Path) -> int:
    """1 when the file's first line is a header (no field is a number, as in ``x,y,z``), else 0."""
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", "replace").strip()
    if not first:
        return 0
    for field in first.split(","):
        try:
            float(field)
            return 0
        except ValueError:
            pass
    return 1


def load_keypoints(path: str | Path, name: str = "keypoints") -> torch.Tensor:
    """Read a keypoint CSV into an ``(N, 3)`` float64 tensor of voxel coordinates.

    A first line that is not numbers (a header such as ``x,y,z``) is skipped.

    Raises:
        FileNotFoundError / ValueError: naming ``name`` and the path when the file is missing or malformed.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"load_keypoints: {name} file {str(p)!r} does not exist.")
    try:
        arr = np.loadtxt(p, delimiter=",", dtype=np.float64, ndmin=2, skiprows=_header_rows(p))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserInputError(f"load_keypoints: {name} file {str(p)!r} is not a CSV of numbers: {exc}") from exc
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise UserInputError(f"load_keypoints: {name} file {str(p)!r} must hold N >= 1 rows of 3 coordinates, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise UserInputError(f"load_keypoints: {name} file {str(p)!r} contains NaN or infinite coordinates.")
    return torch.from_numpy(arr)


def save_keypoints(path: str | Path, points: torch.Tensor | np.ndarray) -> None:
    """Write ``(N, 3)`` voxel coordinates as a Learn2Reg keypoint CSV (atomically)."""
    from ..io.atomic import atomic_path

    arr = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise UserInputError(f"save_keypoints: points must have shape (N, 3), got {arr.shape}.")
    with atomic_path(path) as tmp:
        np.savetxt(tmp, arr, delimiter=",", fmt="%.6f")


class LoadKeypointsd(MapTransform):
    """Load Learn2Reg keypoint CSVs (voxel coordinates) into ``(N, 3)`` float64 MetaTensors.

    Args:
        keys: keys whose values are CSV paths.
        ref_keys: for each key, the image key whose affine the keypoints inherit (``None``: identity).
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, ref_keys: Sequence[Hashable | None] | Hashable | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_keys = ensure_tuple_rep(ref_keys, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, ref in self.key_iterator(d, self.ref_keys):
            value = d[key]
            pts = value if isinstance(value, torch.Tensor) else load_keypoints(Path(value), name=str(key))
            affine = (d.get(ref).affine if isinstance(d.get(ref), MetaTensor) else None) if ref is not None else None
            d[key] = MetaTensor(pts.to(torch.float64), affine=affine if affine is not None else torch.eye(4, dtype=torch.float64))
        return d


LoadKeypointsD = LoadKeypointsDict = LoadKeypointsd
