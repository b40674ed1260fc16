"""The Python entry point: :func:`register` a fixed/moving pair on any two grids, get a :class:`RegistrationResult`.

Every input carries its geometry (a 4x4 voxel-to-world affine, RAS mm): files bring theirs, MetaTensors keep
theirs, plain arrays get one from ``spacing=`` or ``affine=`` (or, explicitly, ``assume_unit_spacing=True``).
Masks must lie on their image's grid and keypoints inside it. Two images on one grid are registered voxel to
voxel; on different grids (shape, spacing, origin or orientation) through a working grid, the field coming back
on the fixed grid. :func:`register` is a thin door onto the one registration path of
:mod:`monai_contreg.registration` (load and validate -> plan -> resample -> solve -> map back, each step once);
:func:`monai_contreg.native.register_native` is its documented alias that always goes through the working grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from .methods.config import RegistrationConfig
from .methods.presets import get_preset
from .registration import ImageLike, check_one_grid, itk_readings, load_inputs, preprocess, run
from .result import RegistrationResult
from .spatial.grid import GRID_ATOL_MM, Grid

__all__ = ["GRID_ATOL_MM", "Grid", "ImageLike", "RegistrationResult", "itk_readings", "load_inputs", "prepare_pair", "register"]

logger = logging.getLogger(__name__)


def prepare_pair(
    fixed: ImageLike,
    moving: ImageLike,
    fixed_mask: ImageLike | None = None,
    moving_mask: ImageLike | None = None,
    config: RegistrationConfig | None = None,
    *,
    spacing: float | Sequence[float] | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
    assume_unit_spacing: bool = False,
    series: str | list[str] | None = None,
) -> dict[str, MetaTensor]:
    """:func:`load_inputs` on one grid, then the intensity normalisation and masking of ``config.preprocess``.

    A DICOM folder is read by :func:`monai_contreg.io.images.load_image`: the series ``series`` when the folder
    holds it, else its series with the most slices of one geometry (logged).

    With ``config.preprocess.use_masks`` and ``auto_mask`` (the default of the masking presets), a missing mask
    is computed by :func:`monai_contreg.data.lung_mask.lung_mask` from the image in HU (an image that does not
    look like a chest CT: a logged warning, no masks).

    Returns:
        ``{"fixed", "moving"[, "fixed_mask", "moving_mask"]}``, each a ``(1, H, W, D)`` float32 MetaTensor.

    Raises:
        UserInputError: as :func:`load_inputs`, and when fixed and moving are not on one grid (use
        :func:`register`, which resamples onto a working grid).
    """
    cfg = config or get_preset("io")
    data = load_inputs(fixed, moving, fixed_mask, moving_mask, spacing=spacing, affine=affine,
                       assume_unit_spacing=assume_unit_spacing, series=series, where="prepare_pair")
    check_one_grid("prepare_pair", data)
    return preprocess("prepare_pair", data, cfg)


def register(
    fixed: ImageLike,
    moving: ImageLike,
    *,
    fixed_mask: ImageLike | None = None,
    moving_mask: ImageLike | None = None,
    spacing: float | Sequence[float] | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
    assume_unit_spacing: bool = False,
    config: RegistrationConfig | str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    init_ddf: torch.Tensor | None = None,
    keypoints: tuple[Any, Any] | None = None,
    handlers: list[Any] | None = None,
    working_spacing: float | tuple[float, float, float] | None = None,
    output: str = "voxel",
    reader: str = "auto",
    series: str | list[str] | None = None,
    name: str = "",
    max_memory: str | float | int | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: the field ``u`` with fixed voxel ``x`` <-> moving world point ``A_f (x + u(x))``.

    On one grid (equal shapes and affines within :data:`GRID_ATOL_MM`) the images are registered voxel to voxel
    and fixed voxel ``x`` corresponds to moving voxel ``x + u(x)``. On two grids (any difference in shape,
    spacing, origin or orientation) both are resampled onto a working grid over the fixed field of view, registered
    there, and the field comes back on the fixed grid. Both run the steps of :mod:`monai_contreg.registration`
    once each (:func:`~monai_contreg.registration.run`).

    Args:
        fixed, moving: file paths (NIfTI read by nibabel; NRRD, MetaImage, DICOM folders... by ITK),
            MetaTensors (their affines are used) or plain arrays/tensors ``(H, W, D)`` with ``spacing``/``affine``.
        fixed_mask, moving_mask: optional masks (same kinds), each on its image's grid; with
            ``config.preprocess.use_masks`` images are masked before feature extraction; a missing one is segmented
            automatically (lungs of a CT in HU, :func:`~monai_contreg.data.lung_mask.lung_mask`) unless
            ``config.preprocess.auto_mask`` is false.
        spacing: voxel size (mm; one number or three) of plain-array inputs.
        affine: 4x4 RAS voxel-to-world matrix of plain-array inputs (instead of ``spacing``).
        assume_unit_spacing: explicitly treat plain arrays as 1 mm voxels at the origin.
        config: a :class:`RegistrationConfig`, a preset name (``"io"``, ``"io-authors"``, ...) or ``None`` (``io``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: the device of a tensor input, else CPU (on one grid
            and on two: the resampling runs there too).
        dtype: computation dtype (``torch.float32`` or ``torch.float64``); default: float64 if the fixed input is
            a float64 tensor/array, else float32. The returned field has this dtype (one grid).
        init_ddf: optional initial DDF ``(1, 3, ...)`` (e.g. a network's prediction), voxels of the grid (one grid only).
        keypoints: optional ``(fixed_points, moving_points)`` ``(N, 3)`` voxel coordinates of the fixed and the
            moving grid, used only to monitor the TRE during optimisation (``config.engine.tre_every``).
        handlers: extra ignite handlers (objects with ``attach(engine)``).
        working_spacing: two grids: spacing (mm) of the working grid (see
            :func:`~monai_contreg.native.register_native`).
        output: units of :attr:`RegistrationResult.displacement`: ``"voxel"`` or ``"mm"``.
        reader: file reader: ``"auto"``, ``"nibabel"`` or ``"itk"``.
        series: Series Instance UID(s) to read from DICOM-folder inputs (default: each folder's series with
            the most slices; see :func:`monai_contreg.io.images.load_image`).
        name: label for log lines.
        max_memory: memory the run may use, bytes or ``"8G"``; ``None``: 80 % of the available memory (RAM, or
            the CUDA device's free memory). Checked against :func:`~monai_contreg.methods.memory.estimate_memory`
            once the images are loaded, before any feature is computed.

    Returns:
        A :class:`RegistrationResult` (the field on the fixed grid).

    Raises:
        UserInputError: plain arrays without geometry, masks off their image's grid, keypoints outside their grid,
            bad options (an unknown device, ``"cuda"`` without CUDA), or the estimated peak memory exceeds
            ``max_memory``; MissingFileError: missing files.
        RegistrationDivergedError: the optimisation went off (see ``config.engine.divergence_*``).
    """
    return run(
        fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask, spacing=spacing, affine=affine,
        assume_unit_spacing=assume_unit_spacing, config=config, device=device, dtype=dtype, init_ddf=init_ddf,
        keypoints=keypoints, handlers=handlers, working_spacing=working_spacing, output=output, reader=reader,
        series=series, name=name, max_memory=max_memory, where="register",
    )
