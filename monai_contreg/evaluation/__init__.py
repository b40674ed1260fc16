"""Evaluation: keypoint TRE, Jacobian statistics, Dice, HD95; Learn2Reg split evaluation and QA reports."""

from .learn2reg import evaluate_learn2reg
from .metrics import determinant_statistics, dice, hd95, jacobian_statistics, keypoint_tre

__all__ = ["determinant_statistics", "dice", "evaluate_learn2reg", "hd95", "jacobian_statistics", "keypoint_tre"]
