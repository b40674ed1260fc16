"""Jacobian determinant of the transform ``x -> x + u(x)`` of a MONAI DDF, and the statistics built on it."""

from __future__ import annotations

import torch

from ..errors import UserInputError
from .._validation import check_ddf

__all__ = ["folding_percent", "jacobian_determinant"]


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of ``I + grad u`` by central differences (voxel units).

    Central differences ``(u[i + 1] - u[i - 1]) / 2`` are used inside; the outermost voxel layer has no
    central difference and gets one-sided differences (``torch.gradient``). Evaluation crops a 2-voxel border
    (see :mod:`monai_contreg.evaluation`), so only central differences enter the reported statistics.

    Args:
        ddf: ``(B, 3, H, W, D)`` with every spatial size >= 2.

    Returns:
        ``(B, 1, H, W, D)``. Example: ``u(x) = A x`` gives ``det(I + A)`` everywhere.
    """
    check_ddf("jacobian_determinant", "ddf", ddf)
    if min(ddf.shape[2:]) < 2:
        raise UserInputError(f"jacobian_determinant: every spatial size must be >= 2, got {tuple(ddf.shape[2:])}.")
    # J[b, i, j] = d u_i / d x_j + delta_ij
    grads = torch.gradient(ddf, dim=(2, 3, 4))  # tuple over j of (B, 3, H, W, D)
    j = torch.stack(grads, dim=2)  # (B, 3(i), 3(j), H, W, D)
    eye = torch.eye(3, device=ddf.device, dtype=ddf.dtype).view(1, 3, 3, 1, 1, 1)
    j = j + eye
    det = (
        j[:, 0, 0] * (j[:, 1, 1] * j[:, 2, 2] - j[:, 1, 2] * j[:, 2, 1])
        - j[:, 0, 1] * (j[:, 1, 0] * j[:, 2, 2] - j[:, 1, 2] * j[:, 2, 0])
        + j[:, 0, 2] * (j[:, 1, 0] * j[:, 2, 1] - j[:, 1, 1] * j[:, 2, 0])
    )
    return det.unsqueeze(1)


def folding_percent(ddf: torch.Tensor, slab: int = 16) -> float:
    """Percentage of voxels with ``det J <= 0`` (:func:`jacobian_determinant`), computed in slabs along ``H``.

    Equal to ``100 * mean(jacobian_determinant(ddf) <= 0)`` exactly: each slab of ``slab`` rows is differentiated
    with a one-row halo on each side (central differences inside, the image's own one-sided ones at its border),
    so the temporaries are those of ``slab + 2`` rows instead of ~30 field-sized buffers (about 1 GiB for a
    224 x 192 x 224 float32 field).

    Args:
        ddf: ``(B, 3, H, W, D)`` DDF in voxels, every spatial size >= 2.
        slab: rows of ``H`` per slab (>= 1).

    Returns:
        The percentage over all ``B * H * W * D`` voxels (0-100).

    Raises:
        ValueError: a DDF that is not ``(B, 3, H, W, D)``, a spatial size below 2, or ``slab < 1``.
    """
    check_ddf("folding_percent", "ddf", ddf)
    if min(ddf.shape[2:]) < 2:
        raise UserInputError(f"folding_percent: every spatial size must be >= 2, got {tuple(ddf.shape[2:])}.")
    if int(slab) < 1:
        raise UserInputError(f"folding_percent: slab must be >= 1, got {slab}.")
    h = ddf.shape[2]
    folded = 0
    with torch.no_grad():
        for start in range(0, h, int(slab)):
            stop = min(h, start + int(slab))
            lo, hi = max(0, start - 1), min(h, stop + 1)
            det = jacobian_determinant(ddf[:, :, lo:hi])[:, :, start - lo : stop - lo]
            folded += int((det <= 0).sum())
    return 100.0 * folded / (ddf.shape[0] * ddf.shape[2] * ddf.shape[3] * ddf.shape[4])
