"""Similarity terms on feature maps, in MONAI ``_Loss`` style."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from ..errors import UserInputError
from .._validation import check_same_spatial, check_tensor, choose
from ..modes import FeatureStorage, PaddingMode
from ..kernels import extension_status
from ..kernels.ops import channels_last, compiled_warp_ssd, uses_compiled
from ..spatial.conventions import ddf_to_sampling_grid
from ..spatial.warp import grid_sample_3d

__all__ = ["FEATURE_STORAGE", "SSDLoss", "WarpedSSD", "ssd"]

#: Storage precisions of the features sampled by :class:`WarpedSSD`.
FEATURE_STORAGE = tuple(m.value for m in FeatureStorage)


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
        raise UserInputError(f"ssd: pred and target must have equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}.")
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

    Examples:
        >>> loss = SSDLoss()
        >>> loss(torch.zeros(1, 12, 4, 4, 4), torch.ones(1, 12, 4, 4, 4))
        tensor(12.)
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_same_spatial("SSDLoss", ("pred", "target"), pred, target)
        return ssd(pred, target, self.reduction)


class WarpedSSD:
    """SSD of fixed features and moving features warped by a DDF: the similarity of the optimisation step.

    ``loss(u) = mean_x sum_c (moving_c(x + u(x)) - fixed_c(x))^2``, trilinear sampling in voxels of the features'
    grid (:func:`monai_contreg.spatial.warp.grid_sample_3d`), i.e. ``ssd(warp(moving, u), fixed)``. The features
    are prepared once (per pair, not per step). On CPU (float32/float64) with the compiled kernels of
    :mod:`monai_contreg.kernels` it runs warp, loss and gradient in one pass (same values and gradient to float
    rounding; ``warped`` is then returned without a gradient); otherwise ``grid_sample`` and autograd.

    Args:
        moving, fixed: ``(1, C, h, w, d)`` features on one grid (constants: no gradient flows to them).
        padding_mode: ``"border"`` (positions clipped to the grid) or ``"zeros"``; ``"reflection"`` uses the
            ``grid_sample`` path.
        fused: ``None`` (default) = the compiled path where available, ``False`` = always ``grid_sample``
            (e.g. to back-propagate a loss on ``warped``), ``True`` = require the compiled path.
        storage: ``"float32"`` (default: the features as given) or ``"bfloat16"``: the features are rounded to
            bfloat16 and kept so (half the memory traffic of the sampling on the compiled path); arithmetic stays in
            the DDF's float dtype.

    Examples:
        >>> f = torch.rand(1, 12, 8, 8, 8)
        >>> loss, warped = WarpedSSD(f, f)(torch.zeros(1, 3, 8, 8, 8))
        >>> float(loss)
        0.0
    """

    def __init__(
        self, moving: torch.Tensor, fixed: torch.Tensor, padding_mode: str = "border", fused: bool | None = None,
        storage: str = "float32",
    ) -> None:
        check_tensor("WarpedSSD", "moving", moving, 5)
        check_tensor("WarpedSSD", "fixed", fixed, 5)
        if moving.shape != fixed.shape or moving.shape[0] != 1:
            raise UserInputError(
                f"WarpedSSD: moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must be equal (1, C, h, w, d) shapes."
            )
        self.padding_mode = choose("WarpedSSD", "padding_mode", padding_mode, PaddingMode).value
        self.storage = choose("WarpedSSD", "storage", storage, FEATURE_STORAGE)
        self.moving, self.fixed = moving.detach(), fixed.detach()
        if self.storage == "bfloat16":  # the same rounded values on both paths
            self.moving = self.moving.to(torch.bfloat16).to(moving.dtype)
            self.fixed = self.fixed.to(torch.bfloat16).to(fixed.dtype)
        can = padding_mode != "reflection" and uses_compiled(self.moving, self.fixed)
        if self.storage == "bfloat16" and self.moving.dtype != torch.float32:
            can = False  # the compiled bfloat16 path computes in float32
        if fused and not can:
            raise RuntimeError(
                f"WarpedSSD: fused=True needs CPU float32/float64 features, padding 'border' or 'zeros' and the compiled "
                f"kernels (status: {extension_status()}); got {self.moving.device} {self.moving.dtype}, padding {padding_mode!r}."
            )
        self.fused = bool(can if fused is None else fused)
        low = torch.bfloat16 if self.storage == "bfloat16" else self.moving.dtype
        self._mcl = channels_last(self.moving).to(low) if self.fused else None
        self._fcl = channels_last(self.fixed).to(low) if self.fused else None

    def path(self, ddf: torch.Tensor, autograd: bool = False) -> str:
        """Which implementation :meth:`__call__` runs for ``ddf``: ``"compiled"`` or ``"pytorch"``."""
        use = self.fused and not autograd and ddf.dtype == self.moving.dtype and ddf.device.type == "cpu"
        return "compiled" if use else "pytorch"

    def __call__(
        self, ddf: torch.Tensor, return_warped: bool = True, autograd: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(loss, warped)`` for a ``(1, 3, h, w, d)`` DDF on the features' grid (``warped`` ``None`` if not asked).

        ``autograd=True`` takes the ``grid_sample`` path even where the compiled one is available, so that a loss
        on ``warped`` back-propagates to the DDF (the compiled path returns ``warped`` without a gradient).
        """
        if tuple(ddf.shape) != (1, 3, *self.moving.shape[2:]):
            raise UserInputError(f"WarpedSSD: ddf must be (1, 3, {', '.join(map(str, self.moving.shape[2:]))}), got {tuple(ddf.shape)}.")
        if self.path(ddf, autograd) == "compiled":
            return compiled_warp_ssd(ddf, self._mcl, self._fcl, self.padding_mode == "zeros", return_warped)
        warped = grid_sample_3d(self.moving, ddf_to_sampling_grid(ddf), "bilinear", self.padding_mode)
        return ssd(warped, self.fixed), warped if return_warped else None
