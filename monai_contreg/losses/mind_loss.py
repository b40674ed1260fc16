"""MIND-SSC similarity as a MONAI-style loss, for training registration networks."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from ..errors import UserInputError
from .._validation import check_same_spatial, check_tensor
from ..features.mind import mind_ssc
from .similarity import ssd

__all__ = ["MINDSSCLoss"]


class MINDSSCLoss(_Loss):
    """SSD of MIND-SSC descriptors of a warped image and a fixed image (lower is better).

    Use it like MONAI's image losses: ``loss(pred=warped_moving, target=fixed)``; it is differentiable with
    respect to ``pred`` (and so to a network's predicted DDF through a warp).

    Args:
        radius: MIND box-filter half-width.
        dilation: MIND neighbourhood spacing.
        reduction: ``"mean"`` (over batch and voxels), ``"sum"`` or ``"none"`` (``(B, 1, H, W, D)``).

    Examples:
        >>> loss = MINDSSCLoss()
        >>> img = torch.rand(1, 1, 16, 16, 16)
        >>> float(loss(img, img))
        0.0
    """

    def __init__(self, radius: int = 1, dilation: int = 2, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.radius = int(radius)
        self.dilation = int(dilation)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_tensor("MINDSSCLoss", "pred", pred, 5)
        check_tensor("MINDSSCLoss", "target", target, 5)
        check_same_spatial("MINDSSCLoss", ("pred", "target"), pred, target)
        if pred.shape[1] != 1 or target.shape[1] != 1:
            raise UserInputError(
                f"MINDSSCLoss: pred and target must be single-channel (B, 1, H, W, D), got {tuple(pred.shape)} and {tuple(target.shape)}."
            )
        return ssd(mind_ssc(pred, self.radius, self.dilation), mind_ssc(target, self.radius, self.dilation), self.reduction)
