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

__all__ = [
    "LoadKeypointsD", "LoadKeypointsDict", "LoadKeypointsd", "describe_outside", "keypoints_outside", "load_keypoints",
    "save_keypoints",
]


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


def keypoints_outside(points: torch.Tensor | np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Which keypoints lie outside an image of ``shape``: ``(N,)`` bool.

    A keypoint is a voxel coordinate (array-axis order); voxel ``j`` of an axis of ``n`` voxels covers
    ``[j - 0.5, j + 0.5]``, so the image covers ``[-0.5, n - 0.5]`` along each axis and a point beyond that on
    any axis lies outside it (a field there is extrapolated, not interpolated).

    Raises:
        UserInputError: ``points`` not ``(N, 3)`` or ``shape`` not three sizes.
    """
    arr = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3 or len(tuple(shape)) != 3:
        raise UserInputError(f"keypoints_outside: expected (N, 3) points and a 3-D shape, got {arr.shape} and {tuple(shape)}.")
    hi = np.asarray([int(n) for n in shape], dtype=np.float64) - 0.5
    return np.any((arr < -0.5) | (arr > hi), axis=1)


def describe_outside(points: torch.Tensor | np.ndarray, outside: np.ndarray, shape: Sequence[int], show: int = 3) -> str:
    """``"3 of 40 keypoints lie outside the image (shape (16, 16, 16): voxel coordinates -0.5 .. n - 0.5), e.g. row 2
    (20.0, 3.0, 4.0)"``: the count and the first ``show`` rows (1-based data rows, header not counted)."""
    arr = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    rows = np.flatnonzero(outside)
    eg = ", ".join(f"row {r + 1} {tuple(round(float(v), 3) for v in arr[r])}" for r in rows[:show])
    return (f"{len(rows)} of {len(arr)} keypoints lie outside the image (shape {tuple(int(n) for n in shape)}: voxel "
            f"coordinates -0.5 .. n - 0.5 per axis), e.g. {eg}{' ...' if len(rows) > show else ''}")


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
