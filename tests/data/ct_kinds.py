"""Small synthetic CT volumes (HU) of the kinds the automatic lung mask must tell apart, with their true lungs.

Every volume is built in world millimetres (RAS: +x right, +y anterior, +z superior) on a 3 mm grid whose
array axes run along x, y, z (affine ``diag(3, 3, 3)``, centred); :func:`reorient` turns one into another array
axis order and direction with the matching affine. Lungs: parenchyma about -860 HU with noise and vessels
(+40 HU tubes from a thresholded smooth noise field), trachea and main bronchi (air), mediastinum and heart
(tissue), a flat-based diaphragm at z = 10 mm with the liver and bowel below it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

SPACING = 3.0


@dataclass
class Kind:
    image: np.ndarray  # (H, W, D) float32 HU
    affine: np.ndarray  # 4x4 RAS
    lungs: np.ndarray  # bool, the true lungs (vessels and intrapulmonary airways included)
    extra: dict  # other true regions: "gas" (bowel gas), "pneumothorax"


def _texture(shape, sigma, seed):
    t = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), sigma)
    return (t - t.mean()) / (t.std() + 1e-8)


def _grid(z_range, x_half=165.0, y_half=126.0):
    xs = np.arange(-x_half, x_half + 1e-6, SPACING)
    ys = np.arange(-y_half, y_half + 1e-6, SPACING)
    zs = np.arange(z_range[0], z_range[1] + 1e-6, SPACING)
    x, y, z = np.meshgrid(xs, ys, zs, indexing="ij")
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = [xs[0], ys[0], zs[0]]
    return x, y, z, affine


def _ellipsoid(x, y, z, c, r):
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1


def _tube(x, y, z, p0, p1, radius):
    """Points within ``radius`` of the segment p0-p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / (d @ d), 0, 1)
    return (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2 <= radius ** 2


def _gas(img, region, tex, level=-985.0, content=-150.0, content_above=1.3, noise=8.0):
    """Bowel gas: homogeneous air with blobs of content (faeces) where ``tex`` is high."""
    img[region] = (level + noise * tex)[region]
    img[region & (tex > content_above)] = content


def chest(z_range=(-60.0, 250.0), *, left_lung=True, pneumothorax=False, colon=False, emphysema=False,
          seed=0) -> Kind:
    """A chest CT (optionally down into the abdomen with a gas-filled colon), true lungs and other regions.

    Args:
        z_range: superior-inferior extent of the scan (mm); the diaphragm is at z = 10, lung apices near 220.
        left_lung: False: a pneumonectomy (the left hemithorax filled with fluid, 15 HU).
        pneumothorax: the right lung collapsed to 70 % of its size (towards the hilum) inside free air.
        colon: a colon full of gas (about 1.2 L, with faeces) below the diaphragm.
        emphysema: severe emphysema: parenchyma -940 +- 50 HU (42 % of the lung below -950 HU) and ten
            12 mm bullae (-995 HU).
    """
    x, y, z, affine = _grid(z_range)
    shape = x.shape
    rng_tex = _texture(shape, 1.0, seed + 1)
    img = (-1000 + 15 * _texture(shape, 0.7, seed + 2)).astype(np.float32)
    body = (x / 150) ** 2 + (y / 110) ** 2 <= 1
    img[body] = (40 + 15 * _texture(shape, 1.5, seed + 3))[body]
    img[body & ((x / 150) ** 2 + (y / 110) ** 2 > 0.85)] = -90.0  # subcutaneous fat
    spine = (x ** 2 + (y + 70) ** 2 <= 15 ** 2)
    img[spine] = 400.0
    right_c, right_r = np.array([70.0, -5.0, 115.0]), np.array([55.0, 75.0, 105.0])
    left_c, left_r = np.array([-72.0, -5.0, 112.0]), np.array([50.0, 72.0, 100.0])
    above = z > 10.0  # the diaphragm (flat base: enough for the checks)
    right_cavity = _ellipsoid(x, y, z, right_c, right_r) & above
    left_cavity = _ellipsoid(x, y, z, left_c, left_r) & above
    heart = _ellipsoid(x, y, z, (-20.0, 35.0, 60.0), (55.0, 45.0, 50.0))
    left_cavity &= ~heart
    right = right_cavity
    extra: dict = {}
    if pneumothorax:
        hilum = np.array([35.0, -5.0, 100.0])
        right = _ellipsoid(x, y, z, hilum + 0.7 * (right_c - hilum), 0.7 * right_r) & above & right_cavity
        extra["pneumothorax"] = right_cavity & ~right
        img[extra["pneumothorax"]] = (-1000 + 10 * rng_tex)[extra["pneumothorax"]]
    lungs = right | (left_cavity if left_lung else np.zeros_like(right))
    if emphysema:
        par = (-940 + 50 * _texture(shape, 0.7, seed + 4)).astype(np.float32)
    else:
        par = (-860 + 35 * _texture(shape, 0.8, seed + 4)).astype(np.float32)
    vessels = _texture(shape, 1.2, seed + 5) > 2.0
    par[vessels] = 40.0
    if emphysema:
        deep = np.argwhere(ndi.binary_erosion(right_cavity | left_cavity, iterations=6))
        for c in deep[np.random.default_rng(seed + 6).choice(len(deep), 10, replace=False)]:
            cx, cy, cz = (x[tuple(c)], y[tuple(c)], z[tuple(c)])
            par[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 12.0 ** 2] = -995.0
    img[lungs] = par[lungs]
    if not left_lung:
        img[left_cavity] = 15.0
    # trachea and main bronchi (air), the bronchi ending inside the lungs
    carina = (0.0, 5.0, 150.0)
    airway = _tube(x, y, z, (0.0, 5.0, z_range[1] + 10), carina, 9.0) & body
    airway |= _tube(x, y, z, carina, (45.0, 0.0, 120.0), 6.0)
    if left_lung:
        airway |= _tube(x, y, z, carina, (-47.0, 0.0, 118.0), 6.0)
    img[airway] = (-1000 + 10 * rng_tex)[airway]
    # abdomen: liver below the right dome
    liver = _ellipsoid(x, y, z, (55.0, 0.0, -40.0), (80.0, 80.0, 50.0)) & ~above
    img[liver] = 60.0
    if colon:
        gas = _tube(x, y, z, (-100.0, 40.0, -55.0), (100.0, 40.0, -55.0), 30.0)
        gas |= _tube(x, y, z, (100.0, 40.0, -55.0), (100.0, 10.0, -190.0), 28.0)
        gas |= _tube(x, y, z, (-100.0, 40.0, -55.0), (-100.0, 10.0, -190.0), 28.0)
        gas &= body & ~above & (z < -15)
        _gas(img, gas, rng_tex)
        extra["gas"] = gas
    return Kind(img, affine, lungs & ~airway, extra)


def abdomen(seed=0, content_above=1.5, noise=8.0) -> Kind:
    """An abdomen CT without lungs: liver, spine and about 400 mL of stomach and colon gas (with content)."""
    x, y, z, affine = _grid((-150.0, 60.0))
    shape = x.shape
    tex = _texture(shape, 1.0, seed + 1)
    img = (-1000 + 15 * _texture(shape, 0.7, seed + 2)).astype(np.float32)
    body = (x / 150) ** 2 + (y / 110) ** 2 <= 1
    img[body] = (40 + 15 * _texture(shape, 1.5, seed + 3))[body]
    img[x ** 2 + (y + 70) ** 2 <= 15 ** 2] = 400.0
    img[_ellipsoid(x, y, z, (55.0, 0.0, 0.0), (80.0, 80.0, 60.0))] = 60.0
    gas = _ellipsoid(x, y, z, (-60.0, 20.0, 0.0), (45.0, 35.0, 50.0))  # distended stomach (330 mL)
    gas |= _tube(x, y, z, (-100.0, 45.0, -70.0), (100.0, 45.0, -70.0), 14.0)  # transverse colon (120 mL)
    _gas(img, gas, tex, content_above=content_above, noise=noise)
    return Kind(img, affine, np.zeros(shape, bool), {"gas": gas})


def crop(kind: Kind, axis: int, start: int, stop: int | None = None) -> Kind:
    """The field of view cut along one array axis (the affine's origin follows)."""
    sl = [slice(None)] * 3
    sl[axis] = slice(start, stop)
    sl = tuple(sl)
    aff = kind.affine.copy()
    aff[:3, 3] += aff[:3, axis] * start
    return Kind(kind.image[sl].copy(), aff, kind.lungs[sl], {k: v[sl] for k, v in kind.extra.items()})


def reorient(a: np.ndarray, affine: np.ndarray, perm=(2, 0, 1), flip0=True):
    """``a`` with its axes permuted (new axis k = old axis ``perm[k]``) and new axis 0 reversed; the matching affine.

    Returns ``(b, affine_b, back)`` where ``back(mask_b)`` brings a mask of ``b`` back to ``a``'s layout.
    """
    b = np.transpose(a, perm)
    if flip0:
        b = b[::-1]
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for k, j in enumerate(perm):
        m[j, k] = 1.0
    if flip0:
        m[perm[0], 0] = -1.0
        m[perm[0], 3] = a.shape[perm[0]] - 1
    inv = np.argsort(perm)

    def back(mb):
        mb = mb[::-1] if flip0 else mb
        return np.transpose(mb, inv)

    return np.ascontiguousarray(b), affine @ m, back
