"""Similarity terms on feature maps, in MONAI ``_Loss`` style."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .._validation import check_same_spatial, check_tensor, choose

__all__ = ["SSDLoss", "ssd"]


def ssd(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Sum over channels of squared differences, reduced over batch and voxels.

    ``mean`` gives ``mean_x sum_c (pred_c(x) - target_c(x))^2`` (ConvexAdam's ``12 * mean`` over 12 MIND channels).

    Args:
        pred, target: ``(B, C, *spatial)`` of equal shape.
        reduction: ``"mean"`` (over batch and voxels), ``"sum"``, or ``"none"`` (``(B, 1, *spatial)``).
    """
    check_tensor("ssd", "pred", pred)
    check_tensor("ssd", "target", target)
    if pred.shape != target.shape:
        raise ValueError(f"ssd: pred and target must have equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}.")
    reduction = LossReduction(choose("ssd", "reduction", reduction, [r.value for r in LossReduction]))
    if reduction == LossReduction.MEAN:
        # one fused kernel; equal to (pred - target)^2 summed over C, averaged over the rest
        return torch.nn.functional.mse_loss(pred, target, reduction="mean") * pred.shape[1]
    per_voxel = (pred - target).square().sum(dim=1, keepdim=True)
    if reduction == LossReduction.SUM:
        return per_voxel.sum()
    return per_voxel


class SSDLoss(_Loss):
    """Feature SSD similarity (lower is better): see :func:`ssd`.

    Example:
        >>> loss = SSDLoss()
        >>> loss(torch.zeros(1, 12, 4, 4, 4), torch.ones(1, 12, 4, 4, 4))
        tensor(12.)
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_same_spatial("SSDLoss", ("pred", "target"), pred, target)
        return ssd(pred, target, self.reduction)
