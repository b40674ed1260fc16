"""A small synthetic breathing pair built by code (no download): the data of ``contreg demo`` and the tests.

The anatomy is a chest phantom (body, two lungs with a vessel-like texture, spine and ribs-like bright
structures); the moving ("exhale") image is the fixed ("inhale") image resampled through a known smooth,
invertible map ``y -> y + v(y)`` (moving voxel ``y`` shows fixed position ``y + v(y)``): cranio-caudal lift of
the lung bases, lateral and anterior contraction and a random smooth component. Keypoints are vessel voxels
``y_k`` of the moving lungs and their exact fixed positions ``x_k = y_k + v(y_k)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserInputError
from ..spatial.conventions import check_shape3
from ..spatial.filters import gaussian_filter
from ..spatial.warp import warp_image, warp_labels

__all__ = ["DemoPair", "make_demo_pair"]


@dataclass
class DemoPair:
    """A synthetic pair with exact keypoint correspondences (all arrays ``(H, W, D)``, HU for images)."""

    fixed: np.ndarray
    moving: np.ndarray
    fixed_mask: np.ndarray
    moving_mask: np.ndarray
    fixed_keypoints: np.ndarray
    moving_keypoints: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world matrix (diagonal spacing, origin 0)."""
        return np.diag([*self.spacing, 1.0])

    def image(self, key: str):
        """``fixed``, ``moving``, ``fixed_mask`` or ``moving_mask`` as a ``(H, W, D)`` MetaTensor carrying :attr:`affine`."""
        from monai.data import MetaTensor

        if key not in ("fixed", "moving", "fixed_mask", "moving_mask"):
            raise UserInputError(f"DemoPair.image: unknown key {key!r}; expected fixed, moving, fixed_mask or moving_mask.")
        return MetaTensor(torch.as_tensor(getattr(self, key)), affine=torch.as_tensor(self.affine))


def make_demo_pair(
    shape: Sequence[int] = (96, 80, 96),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    max_motion: float = 6.0,
    n_keypoints: int = 300,
    noise: float = 15.0,
    seed: int = 0,
) -> DemoPair:
    """Build the demo pair deterministically from ``seed``.

    Args:
        shape: grid ``(H, W, D)``; axis 0 left-right, 1 anterior-posterior, 2 cranio-caudal (apex at high index).
        spacing: voxel size in mm.
        max_motion: largest cranio-caudal displacement in voxels (at the lung bases).
        n_keypoints: number of correspondences (fewer if the lungs hold fewer vessel voxels).
        noise: standard deviation (HU) of the independent noise added to each image.
        seed: random seed.
    """
    h, w, d = check_shape3("make_demo_pair", "shape", shape)
    if min(h, w, d) < 24:
        raise UserInputError(f"make_demo_pair: every size of shape must be >= 24, got {(h, w, d)}.")
    gen = torch.Generator().manual_seed(int(seed))
    g = [torch.linspace(-1, 1, n, dtype=torch.float64) for n in (h, w, d)]
    x, y, z = torch.meshgrid(*g, indexing="ij")

    body = (x / 0.92) ** 2 + (y / 0.8) ** 2 < 1.0
    lung_r = ((x - 0.42) / 0.33) ** 2 + ((y + 0.05) / 0.55) ** 2 + ((z - 0.1) / 0.8) ** 2 < 1.0
    lung_l = ((x + 0.42) / 0.31) ** 2 + ((y + 0.05) / 0.53) ** 2 + ((z - 0.12) / 0.78) ** 2 < 1.0
    lungs = lung_r | lung_l
    spine = ((x / 0.12) ** 2 + ((y - 0.62) / 0.12) ** 2) < 1.0
    ribs = body & ~(((x / 0.84) ** 2 + (y / 0.72) ** 2) < 1.0) & (torch.cos(z * 18.0) > 0.55)

    tex = torch.randn((1, 1, h, w, d), generator=gen, dtype=torch.float64)
    tex = gaussian_filter(tex, 1.2)[0, 0]
    tex = (tex - tex.mean()) / tex.std()
    vessels = torch.sigmoid((tex - 1.2) * 6.0)

    img = torch.full((h, w, d), -1000.0, dtype=torch.float64)
    img[body] = 40.0
    img[lungs] = -860.0 + 760.0 * vessels[lungs]
    img[spine | ribs] = 500.0
    fixed = img

    # moving voxel y shows fixed position y + v(y): exhale = lungs shorter and narrower than inhale
    base = torch.clamp((0.9 - z) / 1.8, 0.0, 1.0)  # 1 at the base (low z), 0 at the apex
    inside = torch.exp(-((x / 0.95) ** 2 + (y / 0.85) ** 2) ** 3)
    v_cc = -max_motion * base**1.5 * inside
    v_lr = 0.25 * max_motion * x * base * inside
    v_ap = -0.15 * max_motion * (y + 1.0) * base * inside
    rnd = torch.randn((1, 3, max(2, h // 12), max(2, w // 12), max(2, d // 12)), generator=gen, dtype=torch.float64)
    rnd = torch.nn.functional.interpolate(rnd, size=(h, w, d), mode="trilinear", align_corners=False)
    v = torch.stack([v_lr, v_ap, v_cc]).unsqueeze(0) + 0.12 * max_motion * rnd * inside

    moving = warp_image(fixed[None, None], v)[0, 0]
    fixed_mask = lungs.to(torch.uint8)
    moving_mask = warp_labels(fixed_mask[None, None], v)[0, 0]

    fixed = fixed + noise * torch.randn(fixed.shape, generator=gen, dtype=torch.float64)
    moving = moving + noise * torch.randn(moving.shape, generator=gen, dtype=torch.float64)

    # keypoints: vessel voxels well inside the moving lungs
    inner = gaussian_filter(moving_mask[None, None].double(), 1.5)[0, 0] > 0.99
    cand = torch.nonzero(inner & (warp_image(vessels[None, None], v)[0, 0] > 0.5))
    if len(cand) == 0:
        raise RuntimeError("make_demo_pair: no keypoint candidates; use a larger shape.")
    pick = torch.randperm(len(cand), generator=gen)[: int(n_keypoints)]
    mk = cand[pick].to(torch.float64)
    fk = mk + v[0, :, mk[:, 0].long(), mk[:, 1].long(), mk[:, 2].long()].T

    return DemoPair(
        fixed=fixed.to(torch.float32).numpy(),
        moving=moving.to(torch.float32).numpy(),
        fixed_mask=fixed_mask.numpy(),
        moving_mask=moving_mask.numpy(),
        fixed_keypoints=fk.numpy(),
        moving_keypoints=mk.numpy(),
        spacing=tuple(float(s) for s in spacing),
    )
