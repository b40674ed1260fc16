"""Shared fixtures: small synthetic volumes, the nlst_synth location (tests needing it skip when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

NLST_SYNTH = Path(os.environ.get("CONTREG_NLST_SYNTH", Path(__file__).resolve().parents[2] / "shared" / "data" / "nlst_synth"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def nlst_synth() -> Path:
    if not (NLST_SYNTH / "NLSTB_dataset.json").is_file():
        pytest.skip(f"nlst_synth data not found at {NLST_SYNTH}")
    return NLST_SYNTH


def smooth_volume(shape=(24, 20, 22), seed=0, sigma=2.0) -> torch.Tensor:
    """A smooth random test image (1, 1, *shape) in [0, 1]."""
    from monai_contreg.spatial.filters import gaussian_filter

    g = torch.Generator().manual_seed(seed)
    x = gaussian_filter(torch.rand((1, 1, *shape), generator=g), sigma)
    return (x - x.min()) / (x.max() - x.min())
