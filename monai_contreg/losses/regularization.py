"""Regularisers of displacement fields, in MONAI ``_Loss`` style."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .._validation import check_ddf
from ..kernels.ops import compiled_diffusion, uses_compiled

__all__ = ["DiffusionLoss", "diffusion"]


def diffusion(ddf: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Diffusion regulariser: squared forward differences of every channel along every axis.

    ``mean`` gives ``sum_axis mean((u[x + e_axis] - u[x])^2)`` (each axis averaged over its own differences,
    over channels and batch), as in ConvexAdam. Units: the DDF's voxels. On CPU it runs the compiled kernel of
    :mod:`monai_contreg.kernels` when available (value and gradient in one pass, same result).

    Args:
        ddf: ``(B, 3, H, W, D)``.
        reduction: ``"mean"`` or ``"sum"`` (sum of all squared differences).
    """
    check_ddf("diffusion", "ddf", ddf)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"diffusion: unknown reduction {reduction!r}; expected one of ['mean', 'sum'].")
    if uses_compiled(ddf):
        return compiled_diffusion(ddf, reduction == "mean")
    total = ddf.new_zeros(())
    for dim in (2, 3, 4):
        n = ddf.shape[dim]
        if n < 2:
            continue
        diff = ddf.narrow(dim, 1, n - 1) - ddf.narrow(dim, 0, n - 1)
        total = total + (diff.square().mean() if reduction == "mean" else diff.square().sum())
    return total


class DiffusionLoss(_Loss):
    """Module form of :func:`diffusion` (``reduction`` ``"mean"`` or ``"sum"``)."""

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        red = LossReduction(reduction).value
        if red == "none":
            raise ValueError("DiffusionLoss: reduction 'none' is not supported; expected 'mean' or 'sum'.")
        super().__init__(reduction=red)

    def forward(self, ddf: torch.Tensor) -> torch.Tensor:
        return diffusion(ddf, self.reduction)
