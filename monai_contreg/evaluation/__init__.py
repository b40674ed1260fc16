"""Evaluation: keypoint TRE, Jacobian statistics, Dice."""

from .metrics import dice, jacobian_statistics, keypoint_tre

__all__ = ["dice", "jacobian_statistics", "keypoint_tre"]
