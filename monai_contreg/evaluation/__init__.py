"""Evaluation: keypoint TRE, Jacobian statistics, Dice, HD95."""

from .metrics import determinant_statistics, dice, hd95, jacobian_statistics, keypoint_tre

__all__ = ["determinant_statistics", "dice", "hd95", "jacobian_statistics", "keypoint_tre"]
