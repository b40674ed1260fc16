"""Registration of images on their own grids: resample to a working grid, register, return on the fixed grid.

:func:`register_native` takes a fixed and a moving image with any geometry (different shapes, spacings,
orientations and fields of view; files in any format ITK or nibabel reads, or MetaTensors with affines):

1. a working grid is chosen from the fixed image (:func:`~monai_contreg.spatial.resample.working_grid`):
   its field of view and orientation at isotropic ``working_spacing`` (default: the fixed image's smallest
   spacing);
2. both images (and masks, nearest neighbour) are resampled onto it through the world frame
   (:func:`~monai_contreg.spatial.resample.resample_image`);
3. :func:`monai_contreg.api.register` registers them there;
4. the field comes back to the fixed image's native grid
   (:func:`~monai_contreg.spatial.resample.resample_ddf`) in fixed-grid voxels (``output="voxel"``, the
   Learn2Reg convention: fixed voxel ``x`` <-> world point ``A_f (x + u(x))``) or world millimetres
   (``output="mm"``, RAS, channel = world axis).

When both images already lie on the working grid no resampling happens and the result equals
:func:`~monai_contreg.api.register`'s.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from monai.data import MetaTensor

from ._validation import choose
from .api import RegistrationResult, register
from .evaluation.metrics import jacobian_statistics
from .io.fields import save_field
from .io.images import check_series_used, load_image
from .io.itk_transforms import save_itk_transform
from .data.transforms import apply_intensity_floor
from .methods.config import RegistrationConfig
from .methods.presets import resolve_config
from .spatial.conventions import ddf_voxel_to_world, points_world_to_voxel, spacing_from_affine
from .spatial.resample import map_points_world, resample_ddf, resample_image, warp_between_grids, working_grid

__all__ = ["NativeImage", "NativeRegistrationResult", "OutputUnits", "as_native_image", "register_native"]

logger = logging.getLogger(__name__)

NativeImage = Union[str, Path, MetaTensor, torch.Tensor, np.ndarray]


class OutputUnits(str, enum.Enum):
    """Units of :attr:`NativeRegistrationResult.displacement`."""

    VOXEL = "voxel"
    MM = "mm"


def as_native_image(
    where: str, name: str, value: NativeImage, reader: str = "auto", series: str | list[str] | None = None
) -> MetaTensor:
    """A file path, MetaTensor or array -> ``(1, H, W, D)`` float32 MetaTensor with a float64 RAS affine.

    Files are read by :func:`monai_contreg.io.images.load_image` (a DICOM folder: the series ``series`` if it
    holds it, else the one with the most slices); a MetaTensor keeps its affine; a plain
    array or tensor (``(H, W, D)`` or ``(1, H, W, D)``) gets the identity affine (1 mm voxels at the origin).
    """
    if isinstance(value, (str, Path)):
        p = Path(value)
        if not p.exists():
            raise FileNotFoundError(f"{where}: {name} {str(p)!r} does not exist.")
        return load_image(p, reader=reader, series=series, strict_series=False)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        affine = value.affine if isinstance(value, MetaTensor) else torch.eye(4, dtype=torch.float64)
        t = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
        shape = tuple(t.shape)
        if not (t.ndim == 3 or (t.ndim in (4, 5) and all(s == 1 for s in shape[: t.ndim - 3]))):
            raise ValueError(f"{where}: {name} must be a 3-D volume (H, W, D) or (1, H, W, D), got shape {shape}.")
        out = MetaTensor(t.reshape(1, *shape[-3:]).to(torch.float32))
        out.affine = torch.as_tensor(affine).detach().cpu().to(torch.float64).reshape(4, 4)
        return out
    raise TypeError(f"{where}: {name} must be a file path, MetaTensor, torch tensor or numpy array, got {type(value).__name__}.")


def _affine_np(t: MetaTensor) -> np.ndarray:
    return np.asarray(t.affine.detach().cpu().double().reshape(4, 4))


@dataclass
class NativeRegistrationResult:
    """The outcome of :func:`register_native`.

    Attributes:
        ddf: MONAI DDF ``(1, 3, H, W, D)`` on the fixed image's native grid, in its voxels, fixed -> moving
            (fixed voxel ``x`` <-> world point ``A_f (x + u(x))``); a MetaTensor with the fixed affine.
        fixed_affine: the fixed image's 4x4 RAS voxel-to-world matrix.
        moving_affine: the moving image's.
        moving_shape: the moving image's spatial shape.
        working_affine: the working grid's matrix; ``working_shape`` its shape.
        working: the :class:`~monai_contreg.api.RegistrationResult` on the working grid.
        output: units of :attr:`displacement` (``"voxel"`` or ``"mm"``).
        timings: seconds: ``load``, ``resample``, ``register``, ``to_native``, ``total``.
    """

    ddf: MetaTensor
    fixed_affine: np.ndarray
    moving_affine: np.ndarray
    moving_shape: tuple[int, int, int]
    working_affine: np.ndarray
    working_shape: tuple[int, int, int]
    working: RegistrationResult
    output: str = "voxel"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ddf_mm(self) -> torch.Tensor:
        """The displacement in world millimetres (RAS) ``(1, 3, H, W, D)``, channel = world axis."""
        return ddf_voxel_to_world(self.ddf.as_tensor(), self.fixed_affine)

    @property
    def displacement(self) -> torch.Tensor:
        """The field in the requested units: :attr:`ddf` (``"voxel"``) or :attr:`ddf_mm` (``"mm"``)."""
        return self.ddf_mm if self.output == OutputUnits.MM.value else self.ddf.as_tensor()

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Fixed-image voxel spacing (mm)."""
        return spacing_from_affine(self.fixed_affine)

    def save(self, path: str | Path, dtype: str | None = None) -> Path:
        """Write the field in the Learn2Reg layout (fixed voxels, fixed affine), atomically."""
        return save_field(path, self.ddf.as_tensor(), self.fixed_affine, dtype=dtype)

    def save_itk(self, path: str | Path) -> Path:
        """Write the field as an ITK displacement field transform (``.h5``) or image (LPS mm), atomically."""
        return save_itk_transform(path, self.ddf.as_tensor(), self.fixed_affine)

    def map_points(self, points_mm) -> torch.Tensor:
        """Fixed world points ``(N, 3)`` (RAS mm) -> corresponding moving world points ``(N, 3)`` float64."""
        pts = torch.as_tensor(np.asarray(points_mm, dtype=np.float64))
        return map_points_world(pts, self.ddf.as_tensor(), self.fixed_affine)

    def tre(self, fixed_points_mm, moving_points_mm) -> torch.Tensor:
        """Per-point TRE (mm) ``(N,)`` of corresponding world points (RAS mm, row ``k`` one pair)."""
        mp = torch.as_tensor(np.asarray(moving_points_mm, dtype=np.float64))
        moved = self.map_points(fixed_points_mm)
        if moved.shape != mp.shape:
            raise ValueError(
                f"NativeRegistrationResult.tre: fixed and moving points must have equal shapes (N, 3), "
                f"got {tuple(moved.shape)} and {tuple(mp.shape)}."
            )
        return (moved - mp).norm(dim=-1)

    def warp(self, moving: torch.Tensor, moving_affine=None, labels: bool = False) -> torch.Tensor:
        """Resample a moving image (its own grid) into the fixed grid: ``(H, W, D)`` or ``(B, C, ...)``.

        ``moving_affine`` defaults to a MetaTensor's affine, else the registered moving image's.
        """
        t = torch.as_tensor(moving)
        aff = moving_affine if moving_affine is not None else (
            moving.affine if isinstance(moving, MetaTensor) else self.moving_affine
        )
        t = t.as_tensor() if isinstance(t, MetaTensor) else t
        squeeze = t.ndim == 3
        t = t[None, None] if squeeze else t
        out = warp_between_grids(
            t if labels else t.float(), aff, self.ddf.as_tensor().to(t.device), self.fixed_affine,
            mode="nearest" if labels else "bilinear",
        )
        return out[0, 0] if squeeze else out

    def jacobian_statistics(self, mask=None) -> dict[str, float]:
        """SDlogJ, folding % etc. of the field on the fixed native grid (see :func:`jacobian_statistics`)."""
        return jacobian_statistics(self.ddf.as_tensor().cpu(), mask)


def register_native(
    fixed: NativeImage,
    moving: NativeImage,
    *,
    fixed_mask: NativeImage | None = None,
    moving_mask: NativeImage | None = None,
    working_spacing: float | tuple[float, float, float] | None = None,
    output: str = "voxel",
    config: RegistrationConfig | str | None = None,
    device: str | torch.device | None = None,
    keypoints_mm: tuple[Any, Any] | None = None,
    padding_mode: str = "border",
    reader: str = "auto",
    series: str | list[str] | None = None,
    name: str = "",
) -> NativeRegistrationResult:
    """Register images on different grids through a working grid; the field comes back on the fixed grid.

    Args:
        fixed, moving: file paths (NIfTI, NRRD, MetaImage, a DICOM series folder, anything ITK or nibabel
            reads), MetaTensors (their affines are used) or arrays ``(H, W, D)`` (identity affine).
        fixed_mask, moving_mask: optional masks of the same kinds, each on its own grid (an array mask takes
            its image's affine); resampled with nearest neighbour. Missing ones are segmented on the working
            grid when the preset masks (``preprocess.auto_mask``, see :func:`~monai_contreg.api.register`).
        working_spacing: spacing (mm) of the working grid, one number (isotropic) or three; ``None``: the
            fixed image's smallest spacing. The working grid covers the fixed image's field of view with its
            orientation.
        output: units of :attr:`NativeRegistrationResult.displacement`: ``"voxel"`` or ``"mm"``.
        config: a :class:`RegistrationConfig`, preset name or ``None`` (see :func:`~monai_contreg.api.register`).
        device: torch device of the registration (resampling follows it).
        keypoints_mm: optional ``(fixed_points, moving_points)`` ``(N, 3)`` world coordinates (RAS mm), used to
            monitor the TRE during optimisation (``config.engine.tre_every``).
        padding_mode: values outside an image when resampling it: ``"border"`` (default) or ``"zeros"``.
        reader: image reader for files: ``"auto"``, ``"nibabel"`` or ``"itk"``.
        series: Series Instance UID(s) to read from DICOM folders (each folder reads the one it holds, or by
            default its series with the most slices; see :func:`~monai_contreg.io.images.load_image`).
        name: label for log lines.

    Returns:
        A :class:`NativeRegistrationResult` (the field on the fixed grid, the working-grid result, geometry).
    """
    where = "register_native"
    t0 = time.perf_counter()
    output = choose(where, "output", output, OutputUnits).value
    f_img = as_native_image(where, "fixed", fixed, reader, series)
    m_img = as_native_image(where, "moving", moving, reader, series)
    check_series_used(where, series, (f_img, m_img))
    cfg = resolve_config(where, config)
    # CT padding (-2000 ... -32768) -> air before resampling blends it into the field of view's edge
    f_img, m_img = (apply_intensity_floor(img, cfg.preprocess) for img in (f_img, m_img))
    masks = {}
    for key, value, image in (("fixed_mask", fixed_mask, f_img), ("moving_mask", moving_mask, m_img)):
        if value is None:
            continue
        mask = as_native_image(where, key, value, reader)
        if not isinstance(value, (str, Path, MetaTensor)):
            mask.affine = image.affine.clone()
        masks[key] = mask
    t_load = time.perf_counter() - t0

    dev = torch.device(device) if device is not None else torch.device("cpu")
    f_aff, m_aff = _affine_np(f_img), _affine_np(m_img)
    f_shape = tuple(int(s) for s in f_img.shape[1:])
    w_aff_t, w_shape = working_grid(f_aff, f_shape, working_spacing)
    w_aff = w_aff_t.numpy()
    logger.info("%s working grid %s at spacing %s (fixed %s, moving %s)", name or where, w_shape,
                tuple(round(s, 4) for s in spacing_from_affine(w_aff)), f_shape, tuple(m_img.shape[1:]))

    def to_working(img: MetaTensor, labels: bool) -> MetaTensor:
        t = img.as_tensor()[None].to(dev)
        out = resample_image(t, _affine_np(img), w_aff, w_shape, mode="nearest" if labels else "bilinear",
                             padding_mode="zeros" if labels else padding_mode)
        return MetaTensor(out[0, 0], affine=torch.as_tensor(w_aff))

    t1 = time.perf_counter()
    f_w, m_w = to_working(f_img, False), to_working(m_img, False)
    masks_w = {k: to_working(v, True) for k, v in masks.items()}
    t_resample = time.perf_counter() - t1

    kp = None
    if keypoints_mm is not None:
        fk, mk = (torch.as_tensor(np.asarray(p, dtype=np.float64)) for p in keypoints_mm)
        kp = (points_world_to_voxel(fk, w_aff), points_world_to_voxel(mk, w_aff))

    t2 = time.perf_counter()
    res = register(
        f_w, m_w, fixed_mask=masks_w.get("fixed_mask"), moving_mask=masks_w.get("moving_mask"), config=cfg,
        device=dev, keypoints=kp, name=name,
    )
    t_register = time.perf_counter() - t2

    t3 = time.perf_counter()
    with torch.no_grad():
        native = resample_ddf(res.ddf.as_tensor(), w_aff, f_aff, f_shape)
    t_native = time.perf_counter() - t3
    timings = {"load": t_load, "resample": t_resample, "register": t_register, "to_native": t_native,
               "total": time.perf_counter() - t0}
    return NativeRegistrationResult(
        ddf=MetaTensor(native, affine=torch.as_tensor(f_aff)), fixed_affine=f_aff, moving_affine=m_aff,
        moving_shape=tuple(int(s) for s in m_img.shape[1:]), working_affine=w_aff, working_shape=w_shape,
        working=res, output=output, timings=timings,
    )
