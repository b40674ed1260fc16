"""Losses: feature similarity and field regularisation (MONAI ``_Loss`` style)."""

from .mind_loss import MINDSSCLoss
from .regularization import DiffusionLoss, diffusion
from .similarity import SSDLoss, WarpedSSD, ssd

__all__ = ["DiffusionLoss", "MINDSSCLoss", "SSDLoss", "WarpedSSD", "diffusion", "ssd"]
