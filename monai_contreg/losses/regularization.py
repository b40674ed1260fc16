"""Regularisers of displacement fields, in MONAI ``_Loss`` style."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .._validation import check_ddf
from ..errors import UserInputError
from ..kernels.ops import compiled_diffusion, uses_compiled

__all__ = ["DiffusionLoss", "diffusion", "mask_edge_weights", "masked_diffusion"]


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
        raise UserInputError(f"diffusion: unknown reduction {reduction!r}; expected one of ['mean', 'sum'].")
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


def mask_edge_weights(mask: torch.Tensor, cross_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-axis weights of the forward differences for :func:`masked_diffusion`.

    A difference between voxels ``x`` and ``x + e_axis`` gets weight 1 when both lie on the same side of the mask
    (both ``> 0.5`` or both ``<= 0.5``) and ``cross_weight`` when it crosses the mask boundary.

    Args:
        mask: ``(1, 1, H, W, D)`` (or ``(H, W, D)``) mask on the field's grid; values ``> 0.5`` are inside.
        cross_weight: weight of the across-boundary differences (0 = the two sides slide freely), ``>= 0``.

    Returns:
        Three tensors of shapes ``(1, 1, H-1, W, D)``, ``(1, 1, H, W-1, D)``, ``(1, 1, H, W, D-1)``.

    Raises:
        UserInputError: for a mask that is not 3-D/5-D with one channel, or a negative ``cross_weight``.
    """
    from ..errors import UserInputError

    if not isinstance(mask, torch.Tensor) or mask.ndim not in (3, 5) or (mask.ndim == 5 and mask.shape[:2] != (1, 1)):
        raise UserInputError(f"mask_edge_weights: mask must be an (H, W, D) or (1, 1, H, W, D) tensor, got {getattr(mask, 'shape', type(mask))}.")
    if not cross_weight >= 0:
        raise UserInputError(f"mask_edge_weights: cross_weight must be >= 0, got {cross_weight!r}.")
    inside = (mask.reshape(1, 1, *mask.shape[-3:]) > 0.5)
    out = []
    for dim in (2, 3, 4):
        n = inside.shape[dim]
        same = inside.narrow(dim, 1, n - 1) == inside.narrow(dim, 0, n - 1)
        w = torch.where(same, 1.0, float(cross_weight))
        out.append(w.to(torch.float32))
    return tuple(out)  # type: ignore[return-value]


def masked_diffusion(ddf: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mask-aware (sliding) diffusion regulariser: :func:`diffusion` with per-difference weights.

    ``sum_axis mean_x (w_axis(x) * |u(x + e_axis) - u(x)|^2)`` averaged over channels, the same normalisation as
    ``diffusion(ddf, "mean")`` (all weights 1 give exactly that value). With the weights of
    :func:`mask_edge_weights` and ``cross_weight = 0``, a field that is constant on each side of the mask costs
    0: the lung may slide along the chest wall. Units: the DDF's voxels.

    Args:
        ddf: ``(1, 3, H, W, D)`` field.
        weights: the three per-axis weight tensors of :func:`mask_edge_weights` for the field's grid.
    """
    check_ddf("masked_diffusion", "ddf", ddf)
    total = ddf.new_zeros(())
    for k, dim in enumerate((2, 3, 4)):
        n = ddf.shape[dim]
        if n < 2:
            continue
        w = weights[k]
        if tuple(w.shape[2:]) != tuple(ddf.narrow(dim, 0, n - 1).shape[2:]):
            from ..errors import UserInputError

            raise UserInputError(f"masked_diffusion: weights[{k}] has grid {tuple(w.shape[2:])}, expected the field's differences along axis {k}.")
        diff = ddf.narrow(dim, 1, n - 1) - ddf.narrow(dim, 0, n - 1)
        total = total + (diff.square() * w.to(ddf.dtype)).mean()
    return total


class DiffusionLoss(_Loss):
    """Module form of :func:`diffusion` (``reduction`` ``"mean"`` or ``"sum"``)."""

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        red = LossReduction(reduction).value
        if red == "none":
            raise UserInputError("DiffusionLoss: reduction 'none' is not supported; expected 'mean' or 'sum'.")
        super().__init__(reduction=red)

    def forward(self, ddf: torch.Tensor) -> torch.Tensor:
        return diffusion(ddf, self.reduction)
