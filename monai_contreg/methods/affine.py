"""The affine stage (:class:`~monai_contreg.methods.stages.AffineStage`): a global rigid-then-affine map in world mm.

Frames. Both images lie on voxel grids with 4x4 voxel-to-world matrices ``V_f``, ``V_m`` (RAS mm; anisotropic
spacing and oblique directions are in them). The stage finds the world map ``A`` (4x4, RAS mm) with moving world
point ``A p`` for fixed world point ``p``; on the voxels that is ``V_m^-1 A V_f``. It is parametrised around the
fixed content's centre of mass ``c`` (intensity-weighted, world mm):

    A(p) = exp(G) (p - c) + c + t0 + s t,

``G`` in so(3) (skew-symmetric: ``G = [w]_x``, ``w`` the rotation vector in radians) for the rigid phase and in
gl(3) (``[w]_x + H``, ``H`` any 3x3) for the affine phase; ``exp`` is the matrix exponential
(``torch.linalg.matrix_exp``, so ``det exp(G) = e^{tr G} > 0``: no reflection can be reached), ``t0`` the
initial translation (the contents' centres of mass, or zero) and ``s = translation_scale`` mm per unit of ``t``.

Similarity: the MIND-SSC features of the dense stages (:func:`~monai_contreg.methods.convex.pooled_mind`, computed
once at full resolution, average-pooled by each factor of ``levels``), fixed against moving sampled at
``V_m^-1 A V_f x`` (trilinear), summed over the 12 channels and averaged over the fixed voxels whose image lies
inside the moving grid. Each level runs a rigid phase then (``model: affine``) an affine phase of ``steps`` Adam
steps, the rate falling from ``lr`` to ``lr * final_lr_fraction`` by a half cosine.

Composition (:data:`METHOD.md` section 8): the stages after this one register the fixed image against the moving
image resampled through ``A``, so a fixed point ``p`` corresponds to the moving point ``A(p + u(p))``, and the total
Learn2Reg field is ``phi(x) = V_m^-1 A V_f (x + u(x)) - x`` (:func:`compose_affine_ddf`).

The automatic rule (:func:`alignment_check`) compares the grids' centres and the contents' first and second
moments; :class:`~monai_contreg.methods.stages.AutoAffineConfig` holds its bounds.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import check_tensor
from ..errors import UserInputError
from ..spatial.conventions import ALIGN_CORNERS, points_world_to_voxel, voxel_to_normalized
from ..spatial.resample import mapped_coordinates, resample_image
from .stages import AffineStage, AutoAffineConfig

__all__ = [
    "AffineOutput",
    "AlignmentCheck",
    "alignment_check",
    "compose_affine_ddf",
    "content_moments",
    "register_affine",
    "resample_through",
    "voxel_affine",
]

logger = logging.getLogger(__name__)


def _as4(where: str, name: str, a: Any) -> np.ndarray:
    m = np.asarray(torch.as_tensor(a).detach().cpu().double() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise UserInputError(f"{where}: {name} must be a finite, invertible 4x4 matrix (RAS mm), got {m.tolist()}.")
    return m


def voxel_affine(world: Any, fixed_affine: Any, moving_affine: Any | None = None) -> np.ndarray:
    """The voxel map ``V_m^-1 A V_f`` (4x4 float64) of the world map ``A`` (fixed world -> moving world, RAS mm).

    Args:
        world: ``A``, 4x4.
        fixed_affine: ``V_f``, the fixed grid's 4x4 voxel-to-world matrix.
        moving_affine: ``V_m`` (default ``V_f``: one grid).

    Raises:
        UserInputError: a matrix that is not a finite invertible 4x4.
    """
    vf = _as4("voxel_affine", "fixed_affine", fixed_affine)
    vm = vf if moving_affine is None else _as4("voxel_affine", "moving_affine", moving_affine)
    return np.linalg.inv(vm) @ _as4("voxel_affine", "world", world) @ vf


def compose_affine_ddf(ddf: torch.Tensor, matrix: Any) -> torch.Tensor:
    """The total field ``phi(x) = M (x + u(x)) - x`` of a voxel map ``M`` after a DDF ``u``.

    Args:
        ddf: MONAI DDF ``(B, 3, H, W, D)`` in voxels (``u``; fixed voxel ``x`` -> position ``x + u(x)``).
        matrix: 4x4 voxel map ``M`` (:func:`voxel_affine`), from that position to the moving voxel.

    Returns:
        ``(B, 3, H, W, D)`` in the same voxels, dtype of ``ddf``: fixed voxel ``x`` -> moving voxel ``x + phi(x)``.
    """
    check_tensor("compose_affine_ddf", "ddf", ddf, 5)
    m = torch.as_tensor(_as4("compose_affine_ddf", "matrix", matrix), dtype=torch.float64)
    shape = tuple(int(s) for s in ddf.shape[2:])
    x = mapped_coordinates(torch.eye(4, dtype=torch.float64), shape, device=ddf.device, dtype=torch.float64)
    x = x.permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, H, W, D) voxel coordinates
    pos = x + ddf.to(torch.float64)
    lin, off = m[:3, :3].to(ddf.device), m[:3, 3].to(ddf.device).view(1, 3, 1, 1, 1)
    out = torch.einsum("ij,bj...->bi...", lin, pos) + off - x
    return out.to(ddf.dtype)


def resample_through(image: torch.Tensor, world: Any, affine: Any, mode: str = "bilinear",
                     padding_mode: str = "border") -> torch.Tensor:
    """An image on grid ``affine`` resampled through the world map ``A``: ``out(x) = image(V^-1 A V x)``.

    Args:
        image: ``(B, C, H, W, D)`` on the grid ``V`` = ``affine`` (4x4 voxel-to-world, RAS mm).
        world: ``A`` (fixed world -> moving world, 4x4 RAS mm).
        mode, padding_mode: ``grid_sample``'s (trilinear with border values by default).

    Returns:
        ``(B, C, H, W, D)`` on the same grid: the moving image as the fixed image sees it through ``A``.
    """
    v = _as4("resample_through", "affine", affine)
    a = _as4("resample_through", "world", world)
    return resample_image(image, np.linalg.inv(a) @ v, v, image.shape[2:], mode=mode, padding_mode=padding_mode)


# ---------------------------------------------------------------------------------------------- moments
def content_moments(image: torch.Tensor | np.ndarray, affine: Any, weighted: bool = False,
                    stride: int = 1, within: tuple[Any, tuple[int, ...]] | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """The content's mass, centre of mass (world mm) and second central moments (3x3, mm^2).

    Args:
        image: ``(H, W, D)`` (or with leading 1-sized dims) intensities.
        affine: the grid's 4x4 voxel-to-world matrix (RAS mm).
        weighted: ``True``: weights ``image - min`` (an image whose background is its minimum); ``False``: the
            content is the voxels above the mean of the 2nd and 98th percentiles, each of weight 1.
        stride: use every ``stride``-th voxel per axis (a coarser, faster estimate).
        within: ``(affine, shape)`` of another grid: only the voxels whose centres lie in that grid's field of view
            (its voxel box, half a voxel beyond the outer centres) count, percentiles included; the whole image
            when fewer than 1 % of its voxels lie there.

    Returns:
        ``(mass, centre (3,), covariance (3, 3))``, float64; mass in voxels (weighted: intensity x voxels).

    Raises:
        UserInputError: an image with no content (constant).
    """
    t = torch.as_tensor(image).detach().to("cpu", torch.float64)
    t = t.reshape(t.shape[-3:])
    v = _as4("content_moments", "affine", affine)
    s = max(1, int(stride))
    t = t[::s, ::s, ::s]
    step = np.diag([s, s, s, 1.0])
    pts = mapped_coordinates(torch.as_tensor(v @ step), t.shape, dtype=torch.float64).reshape(-1, 3)
    inside = None
    if within is not None:
        inside = _in_field_of_view(pts, _as4("content_moments", "within", within[0]), within[1]).reshape(t.shape)
        if int(inside.sum()) < 0.01 * inside.numel():
            inside = None
    if weighted:
        w = t - (t.min() if inside is None else t[inside].min())
    else:
        flat = t.reshape(-1) if inside is None else t[inside]
        k = flat.numel()
        q = torch.kthvalue(flat, max(1, int(0.02 * k))).values, torch.kthvalue(flat, max(1, int(0.98 * k))).values
        w = (t > 0.5 * (q[0] + q[1])).to(torch.float64)
    if inside is not None:
        w = w * inside
    mass = float(w.sum())
    if not mass > 0:
        raise UserInputError("content_moments: the image has no content (it is constant); nothing to align.")
    wf = w.reshape(-1, 1)
    centre = (pts * wf).sum(0) / mass
    d = pts - centre
    cov = (d * wf).T @ d / mass
    return mass, centre.numpy(), cov.numpy()


@dataclass
class AlignmentCheck:
    """What :func:`alignment_check` measured (world mm, degrees) and whether an affine stage is needed.

    Attributes:
        grid_shift_mm: distance of the fixed and moving grids' centres.
        content_shift_mm: distance of the contents' centres of mass.
        rotation_deg: the largest angle between corresponding defined principal axes (0 when none is defined).
        scale: the isotropic scale ``(det C_m / det C_f)^(1/6)`` of the contents' second moments ``C``.
        reasons: the bounds passed, one sentence each; empty when the pair looks aligned.
    """

    grid_shift_mm: float
    content_shift_mm: float
    rotation_deg: float
    scale: float
    reasons: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        """Whether a bound was passed."""
        return bool(self.reasons)

    def describe(self) -> str:
        """One line: the four measures (and the bounds passed)."""
        text = (f"grid centres {self.grid_shift_mm:.1f} mm apart, contents' centres of mass {self.content_shift_mm:.1f} mm, "
                f"principal axes {self.rotation_deg:.1f} deg, scale {self.scale:.3f}")
        return text + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def _in_field_of_view(points: torch.Tensor, affine: np.ndarray, shape) -> torch.Tensor:
    """``(N,)`` bool: which world points ``(N, 3)`` (mm) lie in the field of view of the grid ``(affine, shape)``
    (its voxel box, half a voxel beyond the outer centres)."""
    q = points_world_to_voxel(points, np.array(affine, dtype=np.float64))  # a copy: a Grid's affine is read-only
    n = torch.as_tensor([float(k) for k in tuple(shape)[-3:]], dtype=q.dtype)
    return ((q >= -0.5) & (q <= n - 0.5)).all(1)


def _fov_fraction(va: np.ndarray, sa, vb: np.ndarray, sb) -> float:
    """Fraction of grid A's voxel centres (every 4th per axis) inside grid B's field of view."""
    coarse = tuple(len(range(0, n, 4)) for n in tuple(sa)[-3:])
    pts = mapped_coordinates(torch.as_tensor(va @ np.diag([4.0, 4.0, 4.0, 1.0])), coarse, dtype=torch.float64)
    return float(_in_field_of_view(pts.reshape(-1, 3), vb, sb).double().mean())


def _grid_centre(affine: np.ndarray, shape) -> np.ndarray:
    c = np.array([(n - 1) / 2.0 for n in shape] + [1.0])
    return (affine @ c)[:3]


def _axes_angle(cf: np.ndarray, cm: np.ndarray, separation: float) -> float:
    """Largest angle (degrees) between corresponding principal axes that are defined in both (eigenvalues apart)."""
    ef, vf = np.linalg.eigh(cf)
    em, vm = np.linalg.eigh(cm)
    worst = 0.0
    for k in range(3):
        others = [j for j in range(3) if j != k]
        if all(max(ev[k], ev[j]) > separation * min(ev[k], ev[j]) for ev in (ef, em) for j in others):
            cos = abs(float(vf[:, k] @ vm[:, k]))
            worst = max(worst, math.degrees(math.acos(min(1.0, cos))))
    return worst


def alignment_check(fixed: torch.Tensor | np.ndarray, fixed_affine: Any, moving: torch.Tensor | np.ndarray,
                    moving_affine: Any, bounds: AutoAffineConfig | None = None) -> AlignmentCheck:
    """Whether a pair looks unaligned: its grids' centres, its contents' centres of mass, principal axes or scale
    disagree beyond ``bounds`` (:class:`~monai_contreg.methods.stages.AutoAffineConfig`, default its defaults).

    Args:
        fixed, moving: ``(H, W, D)`` images (as loaded, after the CT padding floor), each on its own grid.
        fixed_affine, moving_affine: their 4x4 voxel-to-world matrices (RAS mm).

    Returns:
        :class:`AlignmentCheck`; the contents are each image's voxels above the mean of its 2nd and 98th
        percentiles, within the other image's field of view (:func:`content_moments`, every second voxel per
        axis): a scan that covers part of the other (a shorter series, a cropped volume) is compared on the part
        both cover, not read as a shift, rotation or scale of the whole. The grid centres count only when neither
        field of view lies (90 % of its voxels) inside the other.
    """
    b = bounds or AutoAffineConfig()
    vf = _as4("alignment_check", "fixed_affine", fixed_affine)
    vm = _as4("alignment_check", "moving_affine", moving_affine)
    fs, ms = tuple(np.shape(fixed)[-3:]), tuple(np.shape(moving)[-3:])
    grid = float(np.linalg.norm(_grid_centre(vf, fs) - _grid_centre(vm, ms)))
    nested = max(_fov_fraction(vf, fs, vm, ms), _fov_fraction(vm, ms, vf, fs)) >= 0.9
    _, cf, covf = content_moments(fixed, vf, stride=2, within=(vm, ms))
    _, cm, covm = content_moments(moving, vm, stride=2, within=(vf, fs))
    shift = float(np.linalg.norm(cf - cm))
    angle = _axes_angle(covf, covm, b.axis_separation)
    scale = float((np.linalg.det(covm) / np.linalg.det(covf)) ** (1.0 / 6.0))
    reasons = []
    if grid > b.max_shift_mm and not nested:  # one field of view inside the other: a partial scan, not a shift
        reasons.append(f"grid centres {grid:.1f} mm apart > auto_affine.max_shift_mm {b.max_shift_mm:g}")
    if shift > b.max_shift_mm:
        reasons.append(f"contents' centres of mass {shift:.1f} mm apart > auto_affine.max_shift_mm {b.max_shift_mm:g}")
    if angle > b.max_rotation_deg:
        reasons.append(f"principal axes {angle:.1f} deg apart > auto_affine.max_rotation_deg {b.max_rotation_deg:g}")
    if abs(scale - 1.0) > b.max_scale:
        reasons.append(f"scale {scale:.3f} beyond 1 +- auto_affine.max_scale {b.max_scale:g}")
    return AlignmentCheck(grid, shift, angle, scale, reasons)


# ---------------------------------------------------------------------------------------------- the solver
@dataclass
class AffineOutput:
    """What :func:`register_affine` returns.

    Attributes:
        world: ``A``, 4x4 float64 (fixed world -> moving world, RAS mm); identity when not accepted.
        accepted: whether the optimised map was kept (its similarity below ``accept_ratio`` x the identity's,
            and its determinant within [1/2, 2]).
        similarity: ``{"identity", "initial", "final"}`` MIND-SSC SSD at the finest level.
        history: per-step ``similarity`` and ``lr``.
        steps: Adam steps taken.
        seconds: wall time (features included).
    """

    world: np.ndarray
    accepted: bool
    similarity: dict[str, float]
    history: dict[str, list[float]]
    steps: int
    seconds: float


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = w.new_zeros(())
    return torch.stack([torch.stack([z, -w[2], w[1]]), torch.stack([w[2], z, -w[0]]), torch.stack([-w[1], w[0], z])])


def _level_grid(affine: np.ndarray, fine: tuple[int, ...], coarse: tuple[int, ...]) -> np.ndarray:
    """Voxel-to-world of a pooled grid: coarse voxel ``j`` is centred at fine ``(j + 1/2) N / n - 1/2``."""
    r = [n / c for n, c in zip(fine, coarse)]
    p = np.diag([*r, 1.0])
    p[:3, 3] = [0.5 * k - 0.5 for k in r]
    return affine @ p


class _Level:
    """One pooled level: fixed/moving features, their grids, the fixed voxel coordinates (homogeneous)."""

    def __init__(self, ff: torch.Tensor, mf: torch.Tensor, vf: np.ndarray, vm: np.ndarray, max_points: int) -> None:
        self.mf = mf
        dt, dev = ff.dtype, ff.device
        self.vf = torch.as_tensor(vf, dtype=torch.float64, device=dev)
        self.vm_inv = torch.as_tensor(np.linalg.inv(vm), dtype=torch.float64, device=dev)
        self.fshape, self.mshape = tuple(ff.shape[2:]), tuple(mf.shape[2:])
        x = mapped_coordinates(torch.eye(4, dtype=torch.float64), self.fshape, device=dev, dtype=dt)
        x = torch.cat([x, torch.ones_like(x[..., :1])], -1).reshape(-1, 4)  # (N, 4) homogeneous fixed voxels
        feats = ff.reshape(ff.shape[1], -1)
        if max_points and x.shape[0] > max_points:  # a fixed subset (seeded): the same objective every step
            idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:max_points].to(dev)
            x, feats = x[idx], feats[:, idx]
        self.x, self.ff = x, feats

    def loss(self, world: torch.Tensor) -> torch.Tensor:
        """Mean over the (sampled) fixed voxels of the 12-channel SSD, moving features sampled trilinearly with
        border values (as the dense stages sample)."""
        m = (self.vm_inv @ world.to(self.vf.device) @ self.vf).to(self.x.dtype)
        y = self.x @ m[:3].T  # (N, 3) moving voxels
        grid = voxel_to_normalized(y, self.mshape).view(1, 1, 1, -1, 3)
        warped = F.grid_sample(self.mf, grid, mode="bilinear", padding_mode="border", align_corners=ALIGN_CORNERS)
        return (warped.reshape(self.mf.shape[1], -1) - self.ff).pow(2).sum(0).mean()


def _weighted_centre(image: torch.Tensor, affine: np.ndarray) -> np.ndarray:
    return content_moments(image, affine, weighted=True, stride=2)[1]


def _moments_rotation(fixed: torch.Tensor, vf: np.ndarray, moving: torch.Tensor, vm: np.ndarray) -> np.ndarray:
    """The proper rotation taking the fixed content's principal axes onto the moving one's, closest to identity."""
    _, _, cf = content_moments(fixed, vf, weighted=True, stride=2)
    _, _, cm = content_moments(moving, vm, weighted=True, stride=2)
    ef = np.linalg.eigh(cf)[1]
    em = np.linalg.eigh(cm)[1]
    best, best_tr = np.eye(3), -np.inf
    for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1), (-1, -1, -1), (-1, 1, 1), (1, -1, 1), (1, 1, -1)):
        r = em @ np.diag(signs) @ ef.T
        if np.linalg.det(r) > 0 and np.trace(r) > best_tr:
            best, best_tr = r, float(np.trace(r))
    return best


def _rotvec(r: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(r).as_rotvec()


def register_affine(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    stage: AffineStage,
    fixed_affine: Any,
    moving_affine: Any | None = None,
    name: str = "",
) -> AffineOutput:
    """Optimise the world map ``A`` of an :class:`~monai_contreg.methods.stages.AffineStage` (module docstring).

    MIND-SSC is not invariant to rotation and scale (its neighbourhood follows the voxel axes), so the moving
    features are computed on the moving image resampled onto the fixed grid through the current estimate ``A_k``
    (every ``rewarp_every`` steps, as the dense stages see it), and each such chunk of steps optimises a correction
    ``C`` (started at the identity) with ``A = A_k C``.

    Args:
        fixed, moving: ``(1, 1, H, W, D)`` preprocessed images (each on its own grid; float32 or float64).
        stage: the stage's settings.
        fixed_affine, moving_affine: the grids' 4x4 voxel-to-world matrices (RAS mm; ``moving_affine`` default
            ``fixed_affine``: one grid).
        name: a label for the log.

    Returns:
        :class:`AffineOutput` (``world``: fixed world -> moving world, 4x4 float64 RAS mm).

    Raises:
        UserInputError: a bad image or matrix; an image smaller than a level's pooling.
    """
    t0 = time.perf_counter()
    check_tensor("register_affine", "fixed", fixed, 5)
    check_tensor("register_affine", "moving", moving, 5)
    vf = _as4("register_affine", "fixed_affine", fixed_affine)
    vm = vf if moving_affine is None else _as4("register_affine", "moving_affine", moving_affine)
    for key, img in (("fixed", fixed), ("moving", moving)):
        if min(img.shape[2:]) < 2 * max(stage.levels):
            raise UserInputError(
                f"register_affine: {key} {tuple(img.shape[2:])} is too small for the affine stage's levels "
                f"{list(stage.levels)} (each axis needs >= 2 x the coarsest pooling factor); give smaller levels."
            )
    from .convex import pooled_mind

    fshape = tuple(int(v) for v in fixed.shape[2:])
    fpool = pooled_mind(fixed, stage.levels, stage.mind_radius, stage.mind_dilation)
    grids = [_level_grid(vf, fshape, tuple(ff.shape[2:])) for ff in fpool]

    def moving_features(a: np.ndarray, factor: int) -> torch.Tensor:
        """The moving image resampled onto the fixed grid through ``a``, its MIND-SSC pooled by ``factor``."""
        with torch.no_grad():
            warped = resample_image(moving, np.linalg.inv(a) @ vm, vf, fshape)
            return pooled_mind(warped.to(fixed.dtype), (factor,), stage.mind_radius, stage.mind_dilation)[0]

    def level(k: int, a: np.ndarray) -> _Level:
        return _Level(fpool[k], moving_features(a, stage.levels[k]), grids[k], grids[k], stage.max_points)

    c = torch.as_tensor(_weighted_centre(fixed, vf), dtype=torch.float64)
    scale = stage.translation_scale

    def world(w_: torch.Tensor, h_: torch.Tensor, t_: torch.Tensor, t_init: torch.Tensor | None = None) -> torch.Tensor:
        lin = torch.linalg.matrix_exp(_skew(w_) + h_)
        off = c + scale * t_ - lin @ c + (0.0 if t_init is None else t_init)
        top = torch.cat([lin, off.view(3, 1)], 1)
        return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)], 0)

    zero3, zero33 = torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    current = np.eye(4)
    if stage.init in ("com", "moments"):
        current = world(zero3, zero33, zero3, torch.as_tensor(_weighted_centre(moving, vm), dtype=torch.float64) - c).numpy()
    finest = len(stage.levels) - 1
    with torch.no_grad():
        identity_loss = float(level(finest, np.eye(4)).loss(torch.eye(4, dtype=torch.float64)))
        if stage.init == "moments":
            r = torch.as_tensor(_rotvec(_moments_rotation(fixed, vf, moving, vm)), dtype=torch.float64)
            rotated = current @ world(r, zero33, zero3).numpy()
            eye = torch.eye(4, dtype=torch.float64)
            if float(level(0, rotated).loss(eye)) < float(level(0, current).loss(eye)):
                current = rotated
        initial_loss = float(level(finest, current).loss(torch.eye(4, dtype=torch.float64)))
    history: dict[str, list[float]] = {"similarity": [], "lr": []}
    phases = [("rigid", False)] + ([("affine", True)] if stage.model == "affine" else [])
    steps = 0
    for li in range(len(stage.levels)):
        for phase, general in phases:
            n = stage.steps
            chunk = stage.rewarp_every or max(1, n)
            lev = None
            for start in range(0, n, chunk):
                lev = level(li, current)  # moving features through the current estimate
                w, t, h = zero3.clone().requires_grad_(True), zero3.clone().requires_grad_(True), zero33.clone()
                params = [w, t] + ([h.requires_grad_(True)] if general else [])
                opt = torch.optim.Adam(params, lr=stage.lr)
                for k in range(start, min(n, start + chunk)):
                    frac = 0.5 * (1.0 + math.cos(math.pi * k / max(1, n - 1)))
                    lr = stage.lr * (stage.final_lr_fraction + (1.0 - stage.final_lr_fraction) * frac)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    opt.zero_grad(set_to_none=True)
                    loss = lev.loss(world(w, h, t))
                    loss.backward()
                    opt.step()
                    history["similarity"].append(float(loss.detach()))
                    history["lr"].append(lr)
                    steps += 1
                with torch.no_grad():
                    current = current @ world(w, h, t).numpy()
            if lev is not None:
                logger.debug("%saffine level %d (grid %s) %s: similarity %.5f", f"{name} " if name else "", li,
                             "x".join(map(str, lev.fshape)), phase, history["similarity"][-1])
    with torch.no_grad():
        final_loss = float(level(finest, current).loss(torch.eye(4, dtype=torch.float64)))
    a_np = current
    det = float(np.linalg.det(a_np[:3, :3]))
    accepted = final_loss < stage.accept_ratio * identity_loss and 0.5 <= det <= 2.0
    sims = {"identity": identity_loss, "initial": initial_loss, "final": final_loss}
    if not accepted:
        logger.warning(
            "%saffine stage: result not kept (similarity %.5f vs identity %.5f, accept_ratio %g; det %.3f): the "
            "identity is used", f"{name} " if name else "", final_loss, identity_loss, stage.accept_ratio, det)
        a_np = np.eye(4)
    seconds = time.perf_counter() - t0
    logger.info("%saffine stage: %d steps, %.2fs; similarity %.5f -> %.5f (identity %.5f); %s",
                f"{name} " if name else "", steps, seconds, initial_loss, final_loss, identity_loss, describe_affine(a_np))
    return AffineOutput(world=a_np, accepted=accepted, similarity=sims, history=history, steps=steps, seconds=seconds)


def describe_affine(world: np.ndarray) -> str:
    """One line: rotation angle (degrees), scales (singular values) and translation of the centre (mm) of ``A``."""
    a = np.asarray(world, dtype=np.float64)
    u, s, vt = np.linalg.svd(a[:3, :3])
    r = u @ vt
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0))))
    return (f"rotation {angle:.2f} deg, scales {np.round(s, 4).tolist()}, translation "
            f"{np.round(a[:3, 3], 2).tolist()} mm")
