"""Registration of images on their own grids: resample to a working grid, register, return on the fixed grid.

:func:`register_native` takes a fixed and a moving image with any geometry (different shapes, spacings,
orientations and fields of view; files in any format ITK or nibabel reads, or MetaTensors with affines):

1. a working grid is chosen from the fixed image (:func:`~monai_contreg.spatial.resample.working_grid`):
   its field of view and orientation at isotropic ``working_spacing`` (default: the preset's design spacing,
   :attr:`~monai_contreg.methods.config.FieldConfig.design_spacing`, 1.5 mm for every preset: the spacing its
   voxel constants were set at; a finer grid only when asked);
2. both images (and masks, nearest neighbour) are resampled onto it through the world frame
   (:func:`~monai_contreg.spatial.resample.resample_image`);
3. :func:`monai_contreg.api.register` registers them there (it calls this path itself when its two inputs lie on
   different grids);
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
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from monai.data import MetaTensor

from ._validation import choose
from .api import RegistrationResult, _device, itk_readings, register
from .methods.config import RegistrationConfig
from .data.transforms import apply_intensity_floor
from .methods.memory import check_memory
from .methods.presets import resolve_config
from .modes import LABEL_PADDING, InterpolationMode, PaddingMode
from .spatial.conventions import points_world_to_voxel, spacing_from_affine
from .spatial.resample import resample_ddf, resample_image, working_grid

__all__ = ["NativeImage", "NativeRegistrationResult", "OutputUnits", "as_native_image", "register_native"]

logger = logging.getLogger(__name__)

NativeImage = Union[str, Path, MetaTensor, torch.Tensor, np.ndarray]

#: One result class: :func:`register_native` returns a :class:`~monai_contreg.api.RegistrationResult`.
NativeRegistrationResult = RegistrationResult


class OutputUnits(str, enum.Enum):
    """Units of :attr:`RegistrationResult.displacement`."""

    VOXEL = "voxel"
    MM = "mm"


def as_native_image(where: str, name: str, value: NativeImage, reader: str = "auto", *, spacing=None, affine=None,
                    assume_unit_spacing: bool = False, series: str | list[str] | None = None) -> MetaTensor:
    """A file path, MetaTensor or array -> ``(1, H, W, D)`` MetaTensor with a float64 RAS affine.

    Files are read by :func:`monai_contreg.io.images.load_image`; a MetaTensor keeps its affine; a plain
    array or tensor (``(H, W, D)`` or ``(1, H, W, D)``) needs ``spacing``/``affine`` (or ``assume_unit_spacing``).

    Raises:
        UserInputError: a plain array without geometry, not 3-D.
    """
    from .api import _array_affine, _as_image

    return _as_image(where, name, value, _array_affine(where, spacing, affine, assume_unit_spacing), reader, series)


def _affine_np(t: MetaTensor) -> np.ndarray:
    return np.asarray(t.affine.detach().cpu().double().reshape(4, 4))


def register_native(
    fixed: NativeImage,
    moving: NativeImage,
    *,
    fixed_mask: NativeImage | None = None,
    moving_mask: NativeImage | None = None,
    spacing: float | tuple[float, float, float] | None = None,
    affine=None,
    assume_unit_spacing: bool = False,
    working_spacing: float | tuple[float, float, float] | None = None,
    output: str = "voxel",
    config: RegistrationConfig | str | None = None,
    device: str | torch.device | None = None,
    keypoints_mm: tuple[Any, Any] | None = None,
    padding_mode: str = "border",
    reader: str = "auto",
    series: str | list[str] | None = None,
    name: str = "",
    max_memory: str | float | int | None = None,
) -> RegistrationResult:
    """Register images on any grids through a working grid; the field comes back on the fixed grid.

    :func:`monai_contreg.api.register` does this by itself when the two grids differ; this function always
    resamples onto the working grid (also for two images on one anisotropic grid).

    Args:
        fixed, moving: file paths (NIfTI, NRRD, MetaImage, a DICOM series folder, anything ITK or nibabel
            reads), MetaTensors (their affines are used) or arrays ``(H, W, D)`` with ``spacing``/``affine``.
        fixed_mask, moving_mask: optional masks of the same kinds, each on its image's grid (checked; an array
            mask takes its image's grid); resampled with nearest neighbour, zeros outside. Missing ones are
            segmented on the working grid when the preset masks (``preprocess.auto_mask``, see
            :func:`~monai_contreg.api.register`).
        spacing, affine, assume_unit_spacing: the geometry of plain-array inputs (see :func:`~monai_contreg.api.register`).
        working_spacing: spacing (mm) of the working grid, one number (isotropic) or three; ``None``: the
            config's ``field.design_spacing`` (isotropic; 1.5 mm in every preset), whatever the images' spacing, so
            that the method's voxel constants keep their physical size (a 0.65 x 0.65 x 2.5 mm CT of 512 x 512 x
            120 voxels gets a 222 x 222 x 200 grid, not a 512 x 512 x 462 one). The working grid covers the fixed
            image's field of view with its orientation.
        output: units of :attr:`NativeRegistrationResult.displacement`: ``"voxel"`` or ``"mm"``.
        config: a :class:`RegistrationConfig`, preset name or ``None`` (see :func:`~monai_contreg.api.register`).
        device: torch device of the registration (resampling follows it).
        keypoints_mm: optional ``(fixed_points, moving_points)`` ``(N, 3)`` world coordinates (RAS mm), used to
            monitor the TRE during optimisation (``config.engine.tre_every``).
        padding_mode: values outside an image when resampling it: ``"border"`` (default) or ``"zeros"``
            (masks: always ``"zeros"``).
        reader: image reader for files: ``"auto"``, ``"nibabel"`` or ``"itk"``.
        series: Series Instance UID(s) to read from DICOM folders (each folder reads the one it holds, or by
            default its series with the most slices; see :func:`~monai_contreg.io.images.load_image`).
        name: label for log lines.
        max_memory: memory the registration may use, bytes or ``"8G"``; ``None``: 80 % of the available memory.
            The working grid's estimate (:func:`~monai_contreg.methods.memory.estimate_memory`) is checked before
            anything is resampled.

    Returns:
        A :class:`~monai_contreg.api.RegistrationResult` (the field on the fixed grid, the working-grid result
        under ``working``, the geometry).

    Raises:
        UserInputError: bad inputs, or the working grid's estimated peak memory exceeds ``max_memory`` (the
            message names ``--working-spacing``).
        RegistrationDivergedError: the optimisation went off.
    """
    from .api import load_inputs

    where = "register_native"
    t0 = time.perf_counter()
    output = choose(where, "output", output, OutputUnits).value
    padding_mode = choose(where, "padding_mode", padding_mode, PaddingMode)
    data = load_inputs(fixed, moving, fixed_mask, moving_mask, spacing=spacing, affine=affine,
                       assume_unit_spacing=assume_unit_spacing, reader=reader, series=series, where=where)
    return _register_two_grids(data, working_spacing=working_spacing, output=output, config=config, device=device,
                               keypoints_mm=keypoints_mm, padding_mode=padding_mode, name=name, t0=t0,
                               max_memory=max_memory)


def _register_two_grids(
    data: dict[str, MetaTensor],
    *,
    working_spacing=None,
    output: str = "voxel",
    config=None,
    device=None,
    dtype: torch.dtype | None = None,
    keypoints_mm=None,
    handlers=None,
    padding_mode: str = "border",
    name: str = "",
    t0: float | None = None,
    max_memory: str | float | int | None = None,
) -> RegistrationResult:
    """The working-grid path of :func:`register`/:func:`register_native` on inputs of :func:`~monai_contreg.api.load_inputs`."""
    where = "register_native"
    t0 = time.perf_counter() if t0 is None else t0
    cfg = resolve_config(where, config)
    # CT padding (-2000 ... -32768) -> air before resampling blends it into the field of view's edge
    f_img, m_img = (apply_intensity_floor(data[k], cfg.preprocess) for k in ("fixed", "moving"))
    t_load = time.perf_counter() - t0

    dev = _device(device)  # "cuda" without CUDA: a UserInputError, as on one grid
    f_aff, m_aff = _affine_np(f_img), _affine_np(m_img)
    f_shape = tuple(int(s) for s in f_img.shape[1:])
    w_aff_t, w_shape = working_grid(f_aff, f_shape, cfg.field.design_spacing if working_spacing is None else working_spacing)
    w_aff = w_aff_t.numpy()
    logger.info("%s working grid %s at spacing %s (fixed %s, moving %s)", name or where, w_shape,
                tuple(round(s, 4) for s in spacing_from_affine(w_aff)), f_shape, tuple(m_img.shape[1:]))

    est = check_memory(
        where, w_shape, cfg, max_memory=max_memory, masks=sum(k in data for k in ("fixed_mask", "moving_mask")), device=dev,
        hint=f"Use a coarser working grid (--working-spacing MM; working_spacing=; now "
        f"{tuple(round(v, 3) for v in spacing_from_affine(w_aff))} mm, the preset's design spacing is "
        f"{cfg.field.design_spacing:g} mm) or raise --max-memory.",
    )
    logger.info("%s estimated peak memory %s", name or where, est)

    def to_working(img: MetaTensor, labels: bool) -> MetaTensor:
        t = img.as_tensor()[None].to(dev)
        out = resample_image(t, _affine_np(img), w_aff, w_shape,
                             mode=InterpolationMode.NEAREST if labels else InterpolationMode.BILINEAR,
                             padding_mode=LABEL_PADDING if labels else padding_mode)
        return MetaTensor(out[0, 0], affine=torch.as_tensor(w_aff))

    t1 = time.perf_counter()
    f_w, m_w = to_working(f_img, False), to_working(m_img, False)
    masks_w = {k: to_working(data[k], True) for k in ("fixed_mask", "moving_mask") if k in data}
    t_resample = time.perf_counter() - t1
    logger.info("%s stage load: %.2fs, stage resample: %.2fs", name or where, t_load, t_resample)

    kp = None
    if keypoints_mm is not None:
        fk, mk = (torch.as_tensor(np.asarray(p, dtype=np.float64)) for p in keypoints_mm)
        kp = (points_world_to_voxel(fk, w_aff), points_world_to_voxel(mk, w_aff))

    t2 = time.perf_counter()
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if handlers:
        kwargs["handlers"] = handlers
    res = register(
        f_w, m_w, fixed_mask=masks_w.get("fixed_mask"), moving_mask=masks_w.get("moving_mask"), config=cfg,
        device=dev, keypoints=kp, name=name, max_memory=max_memory, **kwargs,
    )
    t_register = time.perf_counter() - t2

    t3 = time.perf_counter()
    with torch.no_grad():
        native = resample_ddf(res.ddf.as_tensor(), w_aff, f_aff, f_shape)
    t_native = time.perf_counter() - t3
    timings = {"load": t_load, "resample": t_resample, "register": t_register, "to_native": t_native,
               "total": time.perf_counter() - t0}
    return RegistrationResult(
        ddf=MetaTensor(native, affine=torch.as_tensor(f_aff)), working_ddf=getattr(res, "working_ddf", None),
        history=getattr(res, "history", {}), tre_history=getattr(res, "tre_history", []), timings=timings,
        config=getattr(res, "config", None), steps=getattr(res, "steps", 0), moving_affine=m_aff,
        moving_shape=tuple(int(s) for s in m_img.shape[1:]), working_affine=w_aff, working_shape=w_shape,
        working=res, output=output, kernels=getattr(res, "kernels", ""), mask_report=getattr(res, "mask_report", None),
        **itk_readings(data),
    )
