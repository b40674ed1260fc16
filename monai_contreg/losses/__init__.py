"""Losses: feature similarity and field regularisation."""

from .regularization import DiffusionLoss, diffusion
from .similarity import SSDLoss, ssd

__all__ = ["DiffusionLoss", "SSDLoss", "diffusion", "ssd"]
