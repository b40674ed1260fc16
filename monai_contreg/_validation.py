"""Argument checks shared by every layer: one wording for every error a user can meet.

Every public function checks its inputs with these helpers so that a bad call fails early with a
message that names the function, the argument, what was expected and what arrived.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import TypeVar

import torch
from .errors import InputTypeError, UserInputError
from .options import suggest

__all__ = [
    "check_ddf",
    "check_finite",
    "check_points",
    "check_same_spatial",
    "check_tensor",
    "choose",
    "suggest",
]

E = TypeVar("E", bound=Enum)


def choose(where: str, name: str, value: str | E, choices: type[E] | Sequence[str]) -> E | str:
    """Look ``value`` up among ``choices`` (an Enum class or a list of names).

    Raises:
        ValueError: naming ``where`` and ``name``, listing the valid values and suggesting the nearest one.
    """
    if isinstance(choices, type) and issubclass(choices, Enum):
        if isinstance(value, choices):
            return value
        names = [str(m.value) for m in choices]
        for m in choices:
            if str(m.value) == str(value):
                return m
    else:
        names = list(choices)
        if value in names:
            return value
    raise UserInputError(
        f"{where}: unknown {name} {value!r}; expected one of {names}.{suggest(str(value), names)}"
    )


def check_tensor(where: str, name: str, x: object, ndim: int | Sequence[int] | None = None) -> torch.Tensor:
    """Check that ``x`` is a floating/integer tensor with the given number of dimensions."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}.")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in dims:
            raise UserInputError(
                f"{where}: {name} must have {' or '.join(map(str, dims))} dimensions, "
                f"got shape {tuple(x.shape)}."
            )
    return x


def check_ddf(where: str, name: str, ddf: object) -> torch.Tensor:
    """Check a MONAI dense displacement field: shape ``(B, 3, H, W, D)``."""
    ddf = check_tensor(where, name, ddf, 5)
    if ddf.shape[1] != 3:
        raise UserInputError(
            f"{where}: {name} must be a MONAI DDF of shape (B, 3, H, W, D) in voxel units, "
            f"got shape {tuple(ddf.shape)}."
        )
    if not ddf.is_floating_point():
        raise InputTypeError(f"{where}: {name} must be floating point, got {ddf.dtype}.")
    return ddf


def check_points(where: str, name: str, points: object) -> torch.Tensor:
    """Check a point set: shape ``(N, 3)`` or ``(B, N, 3)``."""
    points = check_tensor(where, name, points, (2, 3))
    if points.shape[-1] != 3:
        raise UserInputError(f"{where}: {name} must have shape (N, 3) or (B, N, 3), got {tuple(points.shape)}.")
    return points


def check_same_spatial(where: str, names: Sequence[str], *tensors: torch.Tensor, spatial_dims: int = 3) -> None:
    """Check that the last ``spatial_dims`` sizes agree across ``tensors``."""
    shapes = [tuple(t.shape[-spatial_dims:]) for t in tensors]
    if any(s != shapes[0] for s in shapes[1:]):
        desc = ", ".join(f"{n}={s}" for n, s in zip(names, shapes))
        raise UserInputError(f"{where}: spatial shapes must match, got {desc}.")


def check_finite(where: str, name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise if ``x`` holds NaN or infinite values (reporting how many).

    Large tensors are checked in slabs of about 2**22 elements along their longest axis: ``torch.isfinite``
    allocates temporaries the size of its input (a full-resolution feature volume: ~1 GiB at the peak).
    """
    if x.is_floating_point():
        chunk = 1 << 22
        if x.ndim and x.numel() > chunk:
            dim = max(range(x.ndim), key=lambda d: x.shape[d])
            step = max(1, chunk * x.shape[dim] // x.numel())
            bad = sum(int((~torch.isfinite(part)).sum()) for part in x.detach().split(step, dim))
        else:
            bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise UserInputError(f"{where}: {name} contains {bad} NaN or infinite value(s) out of {x.numel()}.")
    return x


def check_positive(where: str, name: str, value: float, *, allow_zero: bool = False) -> float:
    """Check a finite positive (or non-negative) number."""
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise UserInputError(f"{where}: {name} must be a finite number {bound}, got {value!r}.")
    return value


def check_suffix(where: str, name: str, path, formats) -> str:
    """The entry of ``formats`` (extensions such as ``".nii.gz"``) that ``path`` ends with (case-insensitive).

    Raises ``ValueError`` naming ``where``, the argument ``name`` and the accepted extensions otherwise.
    """
    low = str(path).lower()
    for ext in formats:
        if low.endswith(ext):
            return ext
    raise UserInputError(f"{where}: {name} {str(path)!r} must end with one of {list(formats)}.")
