"""The geometry value type: a sampling grid, ``Grid(shape, affine)``.

A grid is a spatial shape ``(H, W, D)`` (voxels) and a 4x4 voxel-to-world matrix ``A`` (RAS millimetres, as
nibabel and MONAI's ``MetaTensor`` store it): voxel ``v`` (array indices, float) sits at world point
``A @ (v, 1)``. Every layer that handles geometry (loading, preflight, resampling, the registration pipeline and
its result) passes grids as this one value instead of loose ``(affine, shape)`` pairs, so that the conventions
(voxel <-> world, spacing, "same grid") live in one place:

* :attr:`Grid.spacing`: voxel size (mm) along the three array axes (norms of ``A``'s first three columns);
* :meth:`Grid.voxel_to_world` / :meth:`Grid.world_to_voxel`: points ``(N, 3)``;
* :meth:`Grid.same_as` and ``==``: equal shapes and affines equal within :data:`GRID_ATOL_MM` (every entry, mm);
* :meth:`Grid.working`: the working grid of a registration: this grid's field of view at another spacing
  (same orientation, same centre).

The type is modelled on the ``Grid`` of deepali (``deepali.core.grid``: a frozen shape/spacing/direction/origin
value with world <-> cube conversions and ``same_domain_as``); this one keeps nibabel's single 4x4 affine and
numpy arrays, which is what the rest of this package reads and writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
from .conventions import check_shape3, points_voxel_to_world, points_world_to_voxel, spacing_from_affine

__all__ = ["GRID_ATOL_MM", "Grid"]

#: Two affines closer than this (every entry, mm) describe one grid (the one same-grid tolerance of the package).
GRID_ATOL_MM = 1e-3


def _as_affine(where: str, affine: Any) -> np.ndarray:
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().double().numpy()
    a = np.asarray(affine, dtype=np.float64)
    if a.shape == (1, 4, 4):
        a = a.reshape(4, 4)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise UserInputError(
            f"{where}: affine must be a finite, invertible 4x4 voxel-to-world matrix (RAS mm), got "
            f"{a.tolist() if a.size <= 16 else f'shape {a.shape}'}."
        )
    return a


@dataclass(frozen=True, eq=False)
class Grid:
    """A 3-D sampling grid: ``shape`` ``(H, W, D)`` voxels and ``affine``, the 4x4 voxel-to-world matrix (RAS mm).

    Frozen: ``shape`` is a tuple of three ints and ``affine`` a read-only float64 ``(4, 4)`` numpy array (a copy
    of what was given; a torch tensor, a ``(1, 4, 4)`` batch of one or a nested list are accepted).

    Equality (``==``) is :meth:`same_as` with the default tolerance :data:`GRID_ATOL_MM`; the hash is the shape's,
    so equal grids hash equally.

    Raises:
        UserInputError: a shape that is not three positive integers, an affine that is not a finite invertible 4x4.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", check_shape3("Grid", "shape", self.shape))
        a = _as_affine("Grid", self.affine).copy()
        a.setflags(write=False)
        object.__setattr__(self, "affine", a)

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def of(cls, image: Any) -> Grid:
        """The grid of a ``MetaTensor`` ``(C, H, W, D)`` or ``(B, C, H, W, D)`` (its last three dims, its affine)."""
        aff = getattr(image, "affine", None)
        if aff is None:
            raise UserInputError(f"Grid.of: expected a MetaTensor (an image with an affine), got {type(image).__name__}.")
        return cls(tuple(int(s) for s in image.shape[-3:]), aff)

    @classmethod
    def for_array(cls, where: str, shape: Sequence[int], affine: Any = None) -> Grid:
        """The grid of an array of spatial ``shape`` whose geometry is given as ``affine``: a :class:`Grid` (which
        must have this shape), a 4x4 voxel-to-world matrix (RAS mm; numpy, torch or nested lists) or ``None``
        (the identity). The one conversion at a function's boundary, so that a matrix or a grid mean the same.

        Raises:
            UserInputError: naming ``where``: a grid of another shape, an affine that is not a finite invertible 4x4.
        """
        shape = check_shape3(where, "shape", tuple(int(s) for s in shape))
        if isinstance(affine, Grid):
            if affine.shape != shape:
                raise UserInputError(f"{where}: the grid ({affine.describe()}) is for another shape than the array's, "
                                     f"{shape}.")
            return affine
        return cls(shape, np.eye(4) if affine is None else _as_affine(where, affine))

    @classmethod
    def from_spacing(cls, shape: Sequence[int], spacing: float | Sequence[float] = 1.0,
                     origin: Sequence[float] = (0.0, 0.0, 0.0)) -> Grid:
        """An axis-aligned grid: ``affine = diag(spacing, 1)`` with translation ``origin`` (mm)."""
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
        if sp.size == 1:
            sp = np.repeat(sp, 3)
        if sp.size != 3 or not np.all(np.isfinite(sp)) or not np.all(sp > 0):
            raise UserInputError(f"Grid.from_spacing: spacing must be one or three positive numbers (mm), got {spacing!r}.")
        a = np.diag([*sp, 1.0])
        a[:3, 3] = np.asarray(origin, dtype=np.float64).reshape(3)
        return cls(tuple(shape), a)

    def working(self, spacing: float | Sequence[float] | None = None) -> Grid:
        """This grid's field of view re-gridded at ``spacing`` (mm; one number or three; ``None``: the smallest).

        Same orientation and centre: along axis ``i``, ``n'_i = max(1, round(n_i s_i / s'_i))`` voxels of size
        ``s'_i``, and voxel ``(n' - 1) / 2`` of the new grid sits at the world position of voxel ``(n - 1) / 2``
        of this one. At this grid's own spacing the result equals this grid.

        Raises:
            UserInputError: a spacing that is not one or three positive finite numbers.
        """
        where = "working_grid"
        sp = np.asarray(self.spacing, dtype=np.float64)
        if spacing is None:
            new = np.full(3, sp.min())
        else:
            vals = np.asarray(spacing, dtype=np.float64).reshape(-1)
            if vals.size == 1:
                vals = np.repeat(vals, 3)
            if vals.size != 3 or not np.all(np.isfinite(vals)) or not np.all(vals > 0):
                raise UserInputError(f"{where}: spacing must be a positive number or three, got {spacing!r}.")
            new = vals
        n_old = np.asarray(self.shape, dtype=np.float64)
        # torch.round's half-to-even, as numpy's
        n_new = np.maximum(np.round(n_old * sp / new), 1.0)
        out = np.eye(4)
        out[:3, :3] = self.direction * new
        centre = self.affine[:3, :3] @ ((n_old - 1) / 2) + self.affine[:3, 3]
        out[:3, 3] = centre - out[:3, :3] @ ((n_new - 1) / 2)
        return Grid(tuple(int(v) for v in n_new), out)

    # ---- geometry -----------------------------------------------------------------------------------------
    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the three array axes: the norms of the affine's first three columns."""
        return spacing_from_affine(np.array(self.affine))

    @property
    def direction(self) -> np.ndarray:
        """The unit axis directions ``(3, 3)`` in world (RAS) coordinates, one per column."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def origin(self) -> np.ndarray:
        """World position (RAS mm) of voxel ``(0, 0, 0)``'s centre."""
        return self.affine[:3, 3].copy()

    @property
    def numel(self) -> int:
        """Number of voxels."""
        return int(np.prod(self.shape))

    def affine_tensor(self) -> torch.Tensor:
        """The affine as a float64 ``(4, 4)`` torch tensor (a copy), as ``MetaTensor(..., affine=)`` takes it."""
        return torch.as_tensor(np.array(self.affine))

    def voxel_to_world(self, points) -> torch.Tensor:
        """Voxel coordinates ``(N, 3)`` of this grid -> world points ``(N, 3)`` (RAS mm), float64."""
        return points_voxel_to_world(torch.as_tensor(np.asarray(points, dtype=np.float64)), np.array(self.affine))

    def world_to_voxel(self, points) -> torch.Tensor:
        """World points ``(N, 3)`` (RAS mm) -> voxel coordinates ``(N, 3)`` of this grid, float64."""
        return points_world_to_voxel(torch.as_tensor(np.asarray(points, dtype=np.float64)), np.array(self.affine))

    # ---- comparison ---------------------------------------------------------------------------------------
    def same_as(self, other: Grid, atol: float = GRID_ATOL_MM) -> bool:
        """Equal shapes and affines equal within ``atol`` (every entry, mm)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, rtol=0.0, atol=atol))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grid):
            return NotImplemented
        return self.same_as(other)

    def __hash__(self) -> int:
        return hash(self.shape)

    def __reduce__(self):
        # through the constructor, so that an unpickled grid (another process: a distributed run's outcomes) is
        # checked and frozen as any other (pickle's default would restore a writeable affine)
        return (Grid, (self.shape, np.array(self.affine)))

    def describe(self) -> str:
        """``"shape (H, W, D), affine [[...]]"`` (rounded to 4 decimals), for messages."""
        return f"shape {self.shape}, affine {np.round(self.affine, 4).tolist()}"

    def __repr__(self) -> str:
        return f"Grid(shape={self.shape}, spacing={tuple(round(s, 4) for s in self.spacing)}, origin={np.round(self.origin, 4).tolist()})"
