"""Jacobian determinant of the transform ``x -> x + u(x)`` of a MONAI DDF, and the statistics built on it."""

from __future__ import annotations

import torch

from .._validation import check_ddf

__all__ = ["jacobian_determinant"]


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
        raise ValueError(f"jacobian_determinant: every spatial size must be >= 2, got {tuple(ddf.shape[2:])}.")
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
