"""Registration of images on their own grids: resample to a working grid, register, return on the fixed grid.

:func:`register_native` takes a fixed and a moving image with any geometry (different shapes, spacings,
orientations and fields of view; files in any format ITK or nibabel reads, or MetaTensors with affines):

1. a working grid is chosen from the fixed image (:func:`~monai_contreg.spatial.resample.working_grid`):
   its field of view and orientation at isotropic ``working_spacing`` (default: the preset's design spacing,
   :attr:`~monai_contreg.methods.config.FieldConfig.design_spacing`, 1.5 mm for every preset: the spacing its
   voxel constants were set at; a finer grid only when asked);
2. both images (and masks, nearest neighbour) are resampled onto it through the world frame
   (:func:`~monai_contreg.spatial.resample.resample_image`);
3. the method registers them there;
4. the field comes back to the fixed image's native grid
   (:func:`~monai_contreg.spatial.resample.resample_ddf`) in fixed-grid voxels (``output="voxel"``, the
   Learn2Reg convention: fixed voxel ``x`` <-> world point ``A_f (x + u(x))``) or world millimetres
   (``output="mm"``, RAS, channel = world axis).

When both images already lie on the working grid no resampling happens and the result equals
:func:`~monai_contreg.api.register`'s.

:func:`register_native` is a documented alias of :func:`monai_contreg.api.register`: both run the one path of
:mod:`monai_contreg.registration` (each step once), this one with ``through_working_grid=True`` (it resamples
also two images on one anisotropic grid) and world keypoints.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from monai.data import MetaTensor

from .methods.config import RegistrationConfig
from .registration import _array_affine, _as_image, run
from .result import RegistrationResult

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
    return _as_image(where, name, value, _array_affine(where, spacing, affine, assume_unit_spacing), reader, series)


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
        device: torch device of the registration (resampling follows it); default: a tensor input's, else CPU.
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
        UserInputError: bad inputs (an unknown device, ``"cuda"`` without CUDA), or the working grid's estimated
            peak memory exceeds ``max_memory`` (the message names ``--working-spacing``).
        RegistrationDivergedError: the optimisation went off.
    """
    return run(
        fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask, spacing=spacing, affine=affine,
        assume_unit_spacing=assume_unit_spacing, config=config, device=device, keypoints_mm=keypoints_mm,
        working_spacing=working_spacing, through_working_grid=True, padding_mode=padding_mode,
        output=output, reader=reader, series=series,
        name=name, max_memory=max_memory, where="register_native",
    )
