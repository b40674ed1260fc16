"""An analytic phantom for the affine-stage tests: a smooth body with ten inner structures, evaluated at world points,
so that a moving image through a known world map has no resampling error (exact answers)."""

from __future__ import annotations

import numpy as np
import torch


def phantom_world(points: np.ndarray, seed: int = 0, edge_mm: float = 2.0, size: float = 0.75,
                  body=(28.0, 22.0, 25.0)) -> np.ndarray:
    """Intensities at world points ``(N, 3)`` (mm): an ellipsoid body (semi-axes 28/22/25 mm x ``size``) and ten
    ellipsoids of other intensities inside it, with logistic edges about ``edge_mm`` wide."""
    rng = np.random.default_rng(seed)

    def ellipsoid(c, r):
        d = np.sqrt((((points - c) / r) ** 2).sum(-1))
        return 1.0 / (1.0 + np.exp((d - 1.0) * r.min() / edge_mm))

    img = ellipsoid(np.zeros(3), size * np.asarray(body, dtype=np.float64))
    for _ in range(10):
        c, r, v = size * rng.uniform(-14, 14, 3), size * rng.uniform(3, 8, 3), rng.uniform(-0.8, 1.5)
        img = img + v * ellipsoid(c, r)
    return img


def on_grid(shape, vox2world: np.ndarray, world_map: np.ndarray | None = None, seed: int = 0, **kw) -> torch.Tensor:
    """``(1, 1, *shape)`` float32: the phantom at the world points ``world_map(V x)`` of the grid's voxels ``x``.

    A moving image whose fixed point ``p`` corresponds to moving point ``A p`` is ``on_grid(shape, V, inv(A))``.
    """
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    pts = idx @ vox2world[:3, :3].T + vox2world[:3, 3]
    if world_map is not None:
        pts = pts @ world_map[:3, :3].T + world_map[:3, 3]
    return torch.as_tensor(phantom_world(pts, seed, **kw).reshape(tuple(shape)), dtype=torch.float32)[None, None]


def oblique_grid(shape, spacing=(2.0, 2.5, 1.8), angles_deg=(10.0, 0.0, -15.0), offset=(3.0, -2.0, 1.0)) -> np.ndarray:
    """A 4x4 voxel-to-world matrix: anisotropic spacing, oblique directions, centred near the world origin."""
    from scipy.spatial.transform import Rotation

    v = np.eye(4)
    v[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() @ np.diag(spacing)
    v[:3, 3] = -(v[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)) + np.asarray(offset)
    return v


def similarity(angles_deg, scale=1.0, shift=(0.0, 0.0, 0.0), centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A 4x4 world map: rotation (xyz Euler angles) and isotropic scale about ``centre``, then ``shift`` (mm)."""
    from scipy.spatial.transform import Rotation

    a = np.eye(4)
    lin = scale * Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    c = np.asarray(centre, dtype=np.float64)
    a[:3, :3] = lin
    a[:3, 3] = c - lin @ c + np.asarray(shift, dtype=np.float64)
    return a


def corner_error_mm(found: np.ndarray, truth: np.ndarray, half: float = 20.0) -> float:
    """Largest distance (mm) between the two maps' images of the corners of a cube of half-width ``half`` mm."""
    c = np.array([[x, y, z, 1.0] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
    return float(np.linalg.norm(c @ found.T - c @ truth.T, axis=-1).max())
