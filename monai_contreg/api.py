"""The Python entry point: :func:`register` a fixed/moving pair on any two grids, get a :class:`RegistrationResult`.

Every input carries its geometry (a 4x4 voxel-to-world affine, RAS mm): files bring theirs, MetaTensors keep
theirs, plain arrays get one from ``spacing=`` or ``affine=`` (or, explicitly, ``assume_unit_spacing=True``).
Masks must lie on their image's grid and keypoints inside it. Two images on one grid are registered voxel to
voxel; on different grids (shape, spacing, origin or orientation) through a working grid
(:func:`monai_contreg.native.register_native`), the field coming back on the fixed grid.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from monai.data import MetaTensor

from ._validation import check_finite, choose
from .data.lung_mask import auto_lung_masks
from .data.transforms import normalisation_transforms
from .errors import MissingFileError, UserInputError, describe_read_error
from .evaluation.metrics import jacobian_statistics, keypoint_tre
from .io.fields import save_field
from .io.geometry_checks import GeometryWarning, ItkReading, affine_shear, itk_reading, nifti_geometry_disagreement
from .io.images import check_series_used, load_image
from .kernels import load_extension
from .methods.config import RegistrationConfig
from .methods.memory import check_memory
from .methods.presets import get_preset, resolve_config
from .methods.run import run_method
from .modes import IMAGE_PADDING, LABEL_PADDING, InterpolationMode
from .preflight import ImageHeader, check_geometry, check_informative
from .spatial.conventions import (
    ddf_to_learn2reg,
    ddf_voxel_to_world,
    points_voxel_to_world,
    spacing_from_affine,
)
from .spatial.resample import map_points_world, same_grid, warp_between_grids
from .spatial.warp import warp_image, warp_labels

__all__ = ["GRID_ATOL_MM", "ImageLike", "RegistrationResult", "load_inputs", "prepare_pair", "register"]

logger = logging.getLogger(__name__)

ImageLike = Union[str, Path, np.ndarray, torch.Tensor, MetaTensor]

#: Two affines closer than this (every entry, mm) describe one grid.
GRID_ATOL_MM = 1e-3
#: MetaTensor meta key of an input file's :class:`~monai_contreg.io.geometry_checks.ItkReading`.
ITK_READING = "contreg_itk_reading"


def itk_readings(data: dict) -> dict[str, ItkReading | None]:
    """``{"fixed_itk", "moving_itk"}`` of inputs from :func:`load_inputs` (``None`` for arrays)."""
    return {f"{k}_itk": getattr(data[k], "meta", {}).get(ITK_READING) for k in ("fixed", "moving")}


@dataclass
class RegistrationResult:
    """The outcome of :func:`register` (and :func:`~monai_contreg.native.register_native`, its alias).

    Attributes:
        ddf: MONAI DDF ``(1, 3, H, W, D)`` on the fixed image's grid, in its voxels, fixed -> moving (fixed voxel
            ``x`` <-> world point ``A_f (x + u(x))``); a MetaTensor carrying the fixed image's affine.
        working_ddf: the field on the grid the optimiser ran on (its own voxels).
        history: per-step ``loss``, ``similarity``, ``regularization``, ``lr``.
        tre_history: ``(step, TRE mm)`` pairs if keypoints were monitored.
        timings: seconds: ``load``, ``features``, ``optimisation``, ``total`` (and ``resample``, ``register``,
            ``to_native`` for two grids).
        config: the configuration that ran.
        steps: Adam steps taken.
        moving_affine: the moving image's 4x4 RAS voxel-to-world matrix; ``moving_shape`` its spatial shape.
        working_affine, working_shape: the grid the optimiser ran on (the fixed grid for one grid).
        working: for two grids, the :class:`RegistrationResult` on the working grid; ``None`` otherwise.
        output: units of :attr:`displacement`: ``"voxel"`` or ``"mm"``.
        kernels: which implementation ran the warped-SSD loss: ``"compiled"`` (the CPU kernels) or ``"pytorch"``.
        fixed_itk, moving_itk: how ITK reads the fixed and moving input files
            (:class:`~monai_contreg.io.geometry_checks.ItkReading`), ``None`` for inputs given as arrays;
            :meth:`save_itk` composes any difference from the package's reading into the export.
        mask_report: what masked the registration (:func:`~monai_contreg.data.lung_mask.auto_lung_masks`):
            ``masked`` (bool) and per image (``fixed``, ``moving``) the mask's ``source`` (``"given"``,
            ``"automatic"``, ``"not found"``, ``"none"``) with, for an automatic mask, its volumes per side (mL),
            whether the lungs touch the image border, and each plausibility check; ``None`` when not recorded.
    """

    ddf: MetaTensor
    working_ddf: torch.Tensor | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    tre_history: list[tuple[int, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    config: RegistrationConfig | None = None
    steps: int = 0
    moving_affine: np.ndarray | None = None
    moving_shape: tuple[int, int, int] | None = None
    working_affine: np.ndarray | None = None
    working_shape: tuple[int, int, int] | None = None
    working: RegistrationResult | None = None
    output: str = "voxel"
    kernels: str = ""
    fixed_itk: ItkReading | None = None
    moving_itk: ItkReading | None = None
    mask_report: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.moving_affine is None:
            self.moving_affine = self.affine
        if self.moving_shape is None:
            self.moving_shape = tuple(int(s) for s in self.ddf.shape[2:])
        if self.working_affine is None:
            self.working_affine = self.affine
        if self.working_shape is None:
            self.working_shape = tuple(int(s) for s in (self.working_ddf if self.working_ddf is not None else self.ddf).shape[2:])

    @property
    def affine(self) -> np.ndarray:
        """The fixed image's 4x4 voxel-to-world matrix (RAS mm)."""
        return np.asarray(self.ddf.affine.detach().cpu().double().reshape(4, 4))

    fixed_affine = affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Fixed-image voxel spacing (mm)."""
        return spacing_from_affine(self.affine)

    @property
    def ddf_mm(self) -> torch.Tensor:
        """The displacement in world millimetres (RAS) ``(1, 3, H, W, D)``, channel = world axis."""
        return ddf_voxel_to_world(self.ddf.as_tensor(), self.affine)

    @property
    def displacement(self) -> torch.Tensor:
        """The field in the requested units: :attr:`ddf` (``"voxel"``) or :attr:`ddf_mm` (``"mm"``)."""
        return self.ddf_mm if self.output == "mm" else self.ddf.as_tensor()

    def to_learn2reg(self) -> np.ndarray:
        """The field as a Learn2Reg ``(H, W, D, 3)`` float32 array (fixed voxels)."""
        return ddf_to_learn2reg(self.ddf.as_tensor())

    def save(self, path: str | Path, dtype: str | None = None) -> Path:
        """Write the field (``.nii.gz``/``.nii``/``.npz``, Learn2Reg layout, fixed affine), atomically."""
        return save_field(path, self.ddf.as_tensor(), self.affine, dtype=dtype)

    def save_itk(self, path: str | Path) -> Path:
        """Write the field as an ITK displacement field transform (``.h5``) or image (LPS mm), atomically.

        ITK (and ANTs), reading the same fixed and moving files, then map every fixed voxel to the moving voxel
        ``contreg warp`` maps it to, also where ITK reads a header differently than this package (the difference
        is composed into the transform, :func:`~monai_contreg.io.itk_transforms.save_itk_transform`).

        Raises:
            UserInputError: no ITK file can mean the same (ITK cannot read an input's header; a sheared in-memory
                grid; a NIfTI path for a non-orthonormal fixed grid): one line saying why and how to fix it,
                nothing written. The Learn2Reg field (:meth:`save`, voxels) is unaffected.
        """
        from .io.itk_transforms import save_itk_transform

        return save_itk_transform(path, self.ddf.as_tensor(), self.affine, moving_affine=self.moving_affine,
                                  fixed_itk=self.fixed_itk, moving_itk=self.moving_itk)

    def map_points(self, points_mm) -> torch.Tensor:
        """Fixed world points ``(N, 3)`` (RAS mm) -> corresponding moving world points ``(N, 3)`` float64."""
        pts = torch.as_tensor(np.asarray(points_mm, dtype=np.float64))
        return map_points_world(pts, self.ddf.as_tensor(), self.affine)

    def warp(self, moving, labels: bool = False, *, moving_affine=None) -> torch.Tensor:
        """Resample a moving image into the fixed grid: ``(H, W, D)`` or ``(B, C, H, W, D)`` in, same rank out.

        The moving image's grid is ``moving_affine`` if given, else a MetaTensor's own affine, else the
        registered moving image's. Images: trilinear, ``"border"`` padding; label maps (``labels=True``):
        nearest neighbour, ``"zeros"`` padding (background outside the image, as ITK), dtype kept.
        """
        if not isinstance(labels, bool):
            raise UserInputError(f"RegistrationResult.warp: labels must be True or False, got {type(labels).__name__}.")
        aff = moving_affine if moving_affine is not None else (
            moving.affine if isinstance(moving, MetaTensor) else self.moving_affine
        )
        aff = np.asarray(torch.as_tensor(aff).detach().cpu().double().reshape(4, 4))
        t = moving.as_tensor() if isinstance(moving, MetaTensor) else (
            moving if isinstance(moving, torch.Tensor) else torch.as_tensor(np.asarray(moving))
        )
        squeeze = t.ndim == 3
        t = t[None, None] if squeeze else t
        ddf = self.ddf.as_tensor().to(t.device)
        if same_grid(aff, t.shape[2:], self.affine, ddf.shape[2:], atol=GRID_ATOL_MM):
            out = warp_labels(t, ddf) if labels else warp_image(t.float(), ddf, IMAGE_PADDING)
        else:
            out = warp_between_grids(
                t if labels else t.float(), aff, ddf, self.affine,
                mode=InterpolationMode.NEAREST if labels else InterpolationMode.BILINEAR,
                padding_mode=LABEL_PADDING if labels else IMAGE_PADDING,
            )
        return out[0, 0] if squeeze else out

    def tre(self, fixed_points, moving_points, spacing=None, *, space: str = "voxel") -> torch.Tensor:
        """Per-keypoint target registration error (mm) ``(N,)`` float64; row ``k`` of each set is one pair.

        Args:
            fixed_points: ``(N, 3)`` fixed points: voxel coordinates of the fixed grid (``space="voxel"``) or
                world millimetres (RAS, ``space="world"``).
            moving_points: ``(N, 3)`` the corresponding moving points: voxels of the moving image's grid, or RAS mm.
            spacing: voxel mode only: the Learn2Reg convention ``|(p_f + u(p_f) - p_m) * spacing|`` with this
                spacing (mm, three numbers; both points in one grid). ``None`` (default): the distance in
                world millimetres between ``A_m p_m`` and ``A_f (p_f + u(p_f))``, which equals the Learn2Reg
                figure with the fixed spacing when both images share one axis-aligned grid.
            space: ``"voxel"`` or ``"world"``.

        Raises:
            UserInputError: points not ``(N, 3)`` of equal shapes, a bad ``spacing`` or ``space``.
        """
        where = "RegistrationResult.tre"
        space = choose(where, "space", space, ("voxel", "world"))
        fp = torch.as_tensor(np.asarray(fixed_points, dtype=np.float64))
        mp = torch.as_tensor(np.asarray(moving_points, dtype=np.float64))
        if fp.ndim != 2 or fp.shape[-1] != 3 or fp.shape != mp.shape:
            raise UserInputError(
                f"{where}: fixed_points and moving_points must be (N, 3) arrays of equal shape, got "
                f"{tuple(fp.shape)} and {tuple(mp.shape)}."
            )
        if space == "world":
            if spacing is not None:
                raise UserInputError(f"{where}: spacing is for voxel points only (space='voxel').")
            return (self.map_points(fp) - mp).norm(dim=-1)
        if spacing is not None:
            sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
            if sp.size != 3 or not np.all(np.isfinite(sp)) or not np.all(sp > 0):
                raise UserInputError(f"{where}: spacing must be three positive numbers (mm), got {spacing!r}.")
            return keypoint_tre(self.ddf.as_tensor().cpu(), fp, mp, tuple(float(v) for v in sp))
        moved = map_points_world(points_voxel_to_world(fp, self.affine), self.ddf.as_tensor(), self.affine)
        return (moved - points_voxel_to_world(mp, self.moving_affine)).norm(dim=-1)

    def quality(self, fixed, moving, *, fixed_mask=None, moving_mask=None, auto_mask: bool = True, **kwargs):
        """The field's error estimated without landmarks: a
        :class:`~monai_contreg.evaluation.quality.QualityReport` (a calibrated model's estimate, not a measurement).

        ``fixed``/``moving``: the registered images (files, MetaTensors, or arrays on this result's grids); masks
        as for :func:`register`. Other keywords go to :func:`~monai_contreg.evaluation.quality.estimate_quality`.
        """
        from .evaluation.quality import estimate_quality

        return estimate_quality(
            fixed, moving, self.ddf.as_tensor(), fixed_mask=fixed_mask, moving_mask=moving_mask,
            fixed_affine=self.affine, moving_affine=self.moving_affine, auto_mask=auto_mask, **kwargs,
        )

    def jacobian_statistics(self, mask=None) -> dict[str, float]:
        """SDlogJ (true and Learn2Reg's), folding % and extremes of ``det J`` of the field on the fixed grid."""
        return jacobian_statistics(self.ddf.as_tensor().cpu(), mask)


def _affine_of(t: MetaTensor) -> np.ndarray:
    return np.asarray(torch.as_tensor(t.affine).detach().cpu().double().reshape(4, 4))


def _array_affine(where: str, spacing, affine, assume_unit_spacing: bool) -> np.ndarray | None:
    """The affine plain arrays get, or ``None`` when no geometry was given."""
    given = [n for n, v in (("spacing", spacing), ("affine", affine)) if v is not None]
    if len(given) == 2:
        raise UserInputError(f"{where}: give spacing or affine, not both.")
    if assume_unit_spacing and given:
        raise UserInputError(f"{where}: assume_unit_spacing=True contradicts {given[0]}=...; give one of them.")
    if affine is not None:
        a = np.asarray(torch.as_tensor(affine).detach().cpu().double() if isinstance(affine, torch.Tensor) else affine,
                       dtype=np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise UserInputError(f"{where}: affine must be a finite, invertible 4x4 voxel-to-world matrix (RAS mm), got {a.tolist()}.")
        return a
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
        if sp.size == 1:
            sp = np.repeat(sp, 3)
        if sp.size != 3 or not np.all(np.isfinite(sp)) or not np.all(sp > 0):
            raise UserInputError(f"{where}: spacing must be one or three positive numbers (mm), got {spacing!r}.")
        return np.diag([*sp, 1.0])
    return np.eye(4) if assume_unit_spacing else None


def _as_image(
    where: str, name: str, value: Any, array_affine: np.ndarray | None, reader: str = "auto",
    series: str | Sequence[str] | None = None,
) -> MetaTensor:
    """One input -> ``(1, H, W, D)`` float32 MetaTensor with a float64 RAS affine (``array_affine`` for arrays)."""
    if isinstance(value, (str, Path)):
        p = Path(value)
        if not p.exists():
            raise MissingFileError(f"{where}: {name} file {str(p)!r} does not exist.")
        try:
            img = load_image(p, reader=reader, series=series, strict_series=False)
        except Exception as exc:  # the reader's own exception, unwrapped to say what is wrong with the file
            raise UserInputError(f"{where}: cannot read {name} file {str(p)!r}: {describe_read_error(exc, p)}") from exc
        reading = itk_reading(p, ours=_affine_of(img))
        img.meta[ITK_READING] = reading
        if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")):
            _warn_geometry(where, name, nifti_geometry_disagreement(p, ours=_affine_of(img), reading=reading))
        return img
    if not isinstance(value, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"{where}: {name} must be a file path, numpy array, torch tensor or MetaTensor, got {type(value).__name__}."
        )
    shape = tuple(value.shape)
    nd = len(shape)
    if not (nd == 3 or (nd in (4, 5) and all(s == 1 for s in shape[: nd - 3]))):
        raise UserInputError(
            f"{where}: {name} must be a 3-D volume (H, W, D) (optionally with leading 1-sized dims), got shape {shape}."
        )
    if isinstance(value, MetaTensor):
        aff = _affine_of(value)
        t = value.as_tensor()
    else:
        if array_affine is None:
            raise UserInputError(
                f"{where}: {name} is a plain array without geometry; pass spacing=(sx, sy, sz) (mm) or affine= "
                "(4x4 RAS voxel-to-world), a MetaTensor with its affine, a file, or assume_unit_spacing=True to "
                "treat voxels as 1 mm."
            )
        aff = array_affine
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if affine_shear(aff) > 1e-3:
        _warn_geometry(where, name, f"its affine has non-orthogonal axes (largest |cos| {affine_shear(aff):.4f}); "
                                    "ITK/ANTs/Slicer cannot represent this grid and would apply an exported transform elsewhere")
    out = MetaTensor(t.detach().reshape(1, *shape[-3:]).to(torch.float64 if t.dtype == torch.float64 else torch.float32))
    out.affine = torch.as_tensor(aff, dtype=torch.float64)
    return out


def _warn_geometry(where: str, name: str, note: str | None) -> None:
    if note:
        msg = f"{where}: {name} {note}"
        logger.warning(msg)
        warnings.warn(msg, GeometryWarning, stacklevel=4)


def _grid_text(t: MetaTensor) -> str:
    return f"shape {tuple(int(s) for s in t.shape[1:])}, affine {np.round(_affine_of(t), 4).tolist()}"


def load_inputs(
    fixed: ImageLike,
    moving: ImageLike,
    fixed_mask: ImageLike | None = None,
    moving_mask: ImageLike | None = None,
    *,
    spacing: float | Sequence[float] | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
    assume_unit_spacing: bool = False,
    reader: str = "auto",
    series: str | Sequence[str] | None = None,
    where: str = "register",
) -> dict[str, MetaTensor]:
    """Read (files) or wrap (arrays) the inputs with their geometry and check each mask against its image.

    Args:
        fixed, moving: file paths (anything :func:`~monai_contreg.io.images.load_image` reads), MetaTensors (their
            affines are kept) or plain arrays/tensors ``(H, W, D)`` (their geometry from ``spacing``/``affine``).
        fixed_mask, moving_mask: optional masks of the same kinds; a plain-array mask without ``spacing``/``affine``
            lies on its image's grid.
        spacing: voxel size (mm, one number or three) of the plain-array inputs (origin 0, axes = RAS axes).
        affine: 4x4 RAS voxel-to-world matrix of the plain-array inputs (instead of ``spacing``).
        assume_unit_spacing: plain arrays are on a 1 mm grid at the origin (explicit opt-in).
        reader: file reader: ``"auto"``, ``"nibabel"`` or ``"itk"``.
        series: Series Instance UID(s) to read from DICOM-folder inputs (default: each folder's series with the
            most slices of one geometry, logged; see :func:`~monai_contreg.io.images.load_image`).

    Returns:
        ``{"fixed", "moving"[, "fixed_mask", "moving_mask"]}``: ``(1, H, W, D)`` float32 MetaTensors with
        float64 affines (RAS mm).

    Raises:
        UserInputError: a plain array without geometry, a mask not on its image's grid (shape and affine within
            :data:`GRID_ATOL_MM`; masks are never resampled silently), an empty mask, non-finite values, an
            unreadable file. MissingFileError (a FileNotFoundError): a missing file. TypeError: an input of another type.
    """
    arr_aff = _array_affine(where, spacing, affine, assume_unit_spacing)
    out: dict[str, MetaTensor] = {}
    for key, value in (("fixed", fixed), ("moving", moving)):
        out[key] = _as_image(where, key, value, arr_aff, reader, series)
        check_finite(where, key, out[key].as_tensor())
        header = ImageHeader(Path(value) if isinstance(value, (str, Path)) else None, tuple(out[key].shape[1:]),
                             _affine_of(out[key])[:3, :3])
        check_geometry(where, key, header)  # non-singular geometry, >= MIN_SIZE voxels per axis
    check_series_used(where, series, (out["fixed"], out["moving"]))
    for key, value in (("fixed_mask", fixed_mask), ("moving_mask", moving_mask)):
        if value is None:
            continue
        image = out[key.replace("_mask", "")]
        mask = _as_image(where, key, value, arr_aff if arr_aff is not None else _affine_of(image), reader)
        if tuple(mask.shape) != tuple(image.shape) or not np.allclose(
            _affine_of(mask), _affine_of(image), rtol=0.0, atol=GRID_ATOL_MM
        ):
            raise UserInputError(
                f"{where}: {key} is not on its image's grid ({key}: {_grid_text(mask)}; "
                f"{key.replace('_mask', '')}: {_grid_text(image)}); masks are not resampled: resample it onto the "
                "image's grid (nearest neighbour) first."
            )
        check_finite(where, key, mask.as_tensor())
        if not bool((mask > 0).any()):
            raise UserInputError(f"{where}: {key} is empty (no voxel > 0); pass a non-empty mask or none.")
        out[key] = mask
    return out


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
    _check_one_grid("prepare_pair", data)
    return _normalise("prepare_pair", data, cfg)


def _normalise(where: str, data: dict[str, MetaTensor], cfg: RegistrationConfig,
               mask_report: dict[str, Any] | None = None) -> dict[str, MetaTensor]:
    """Automatic lung masks where a masking preset has none (what was done goes into ``mask_report``), then
    ``config.preprocess`` (MONAI transforms), refusing images with no structure before and after it."""
    for k in ("fixed", "moving"):  # a constant image (or constant inside its mask) has nothing to register
        check_informative(where, k, data[k].as_tensor())
    data = auto_lung_masks(data, cfg, where, mask_report)  # missing masks of a masking preset (preprocess.auto_mask)
    out = normalisation_transforms(cfg.preprocess)(data)
    for k in ("fixed", "moving"):
        mask = out.get(f"{k}_mask") if cfg.preprocess.use_masks else None
        check_informative(where, k, out[k].as_tensor(), None if mask is None else mask.as_tensor(),
                          after=" after preprocessing (intensity window, masking)")
    return out


def _check_one_grid(where: str, data: dict[str, MetaTensor]) -> None:
    if not _on_one_grid(data["fixed"], data["moving"]):
        raise UserInputError(
            f"{where}: fixed ({_grid_text(data['fixed'])}) and moving ({_grid_text(data['moving'])}) are on "
            "different grids; register() resamples them onto a working grid."
        )


def _on_one_grid(a: MetaTensor, b: MetaTensor) -> bool:
    return same_grid(_affine_of(a), a.shape[1:], _affine_of(b), b.shape[1:], atol=GRID_ATOL_MM)


def _check_keypoints(where: str, keypoints, fixed: MetaTensor, moving: MetaTensor) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        fk, mk = (torch.as_tensor(np.asarray(p, dtype=np.float64)) for p in keypoints)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{where}: keypoints must be a pair (fixed_points, moving_points) of (N, 3) arrays: {exc}") from exc
    if fk.shape != mk.shape or fk.ndim != 2 or fk.shape[-1] != 3:
        raise UserInputError(
            f"{where}: keypoints must be two (N, 3) arrays of equal shape, got {tuple(fk.shape)} and {tuple(mk.shape)}."
        )
    for name, pts, img in (("fixed", fk, fixed), ("moving", mk, moving)):
        n = torch.as_tensor([float(s) for s in img.shape[1:]], dtype=torch.float64)
        bad = ~torch.isfinite(pts).all(-1) | (pts < -0.5).any(-1) | (pts > n - 0.5).any(-1)
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0, 0])
            raise UserInputError(
                f"{where}: {int(bad.sum())} {name} keypoints lie outside the {name} grid {tuple(int(s) for s in n)} "
                f"(voxel coordinates; first: row {k}, {pts[k].tolist()}); keypoints are voxel indices of their image."
            )
    return fk, mk


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
    there, and the field comes back on the fixed grid (:func:`~monai_contreg.native.register_native`).

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
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: the device of a tensor input, else CPU.
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
            bad options, or the estimated peak memory exceeds ``max_memory``; MissingFileError: missing files.
        RegistrationDivergedError: the optimisation went off (see ``config.engine.divergence_*``).
    """
    where = "register"
    output = choose(where, "output", output, ("voxel", "mm"))
    t0 = time.perf_counter()
    data = load_inputs(fixed, moving, fixed_mask, moving_mask, spacing=spacing, affine=affine,
                       assume_unit_spacing=assume_unit_spacing, reader=reader, series=series, where=where)
    kp = _check_keypoints(where, keypoints, data["fixed"], data["moving"]) if keypoints is not None else None
    if not _on_one_grid(data["fixed"], data["moving"]):
        if init_ddf is not None:
            raise UserInputError(f"{where}: init_ddf needs fixed and moving on one grid; they differ here.")
        from .native import _register_two_grids

        kp_mm = None
        if kp is not None:
            kp_mm = (points_voxel_to_world(kp[0], _affine_of(data["fixed"])),
                     points_voxel_to_world(kp[1], _affine_of(data["moving"])))
        logger.info("%s: fixed (%s) and moving (%s) on different grids: through a working grid", name or where,
                    _grid_text(data["fixed"]), _grid_text(data["moving"]))
        return _register_two_grids(
            data, working_spacing=working_spacing, output=output, config=config, device=device, dtype=dtype,
            keypoints_mm=kp_mm, handlers=handlers, name=name, t0=t0, max_memory=max_memory,
        )
    res = _register_one_grid(data, config=config, device=_device(device, fixed, moving), dtype=_dtype(dtype, fixed),
                             init_ddf=init_ddf, keypoints=kp, handlers=handlers, name=name, t0=t0,
                             max_memory=max_memory)
    res.output = output
    res.fixed_itk, res.moving_itk = itk_readings(data).values()
    return res


def _register_one_grid(
    data: dict[str, MetaTensor], *, config, device: torch.device, dtype: torch.dtype, init_ddf=None, keypoints=None,
    handlers=None, name: str = "", t0: float | None = None, max_memory: str | float | int | None = None,
) -> RegistrationResult:
    """Register inputs of :func:`load_inputs` that lie on one grid (voxel to voxel)."""
    t0 = time.perf_counter() if t0 is None else t0
    cfg = resolve_config("register", config)
    if device.type == "cpu" and cfg.engine.fused is not False:
        # build (first use on a machine, ~45 s) or load the compiled CPU kernels before the clock starts: a
        # one-off per process, not part of a registration's time
        t_ext = time.perf_counter()
        load_extension()
        t0 += time.perf_counter() - t_ext
    mask_report: dict[str, Any] = {}
    data = _normalise("register", data, cfg, mask_report)
    fixed_t = data["fixed"]
    affine = torch.as_tensor(_affine_of(fixed_t))
    est = check_memory(
        "register", fixed_t.shape[-3:], cfg, max_memory=max_memory,
        masks=sum(k in data for k in ("fixed_mask", "moving_mask")), dtype=dtype, device=device,
        hint="Resample the images to a coarser grid (contreg register-native --working-spacing MM, "
        f"default the preset's design spacing {cfg.field.design_spacing:g} mm) or raise --max-memory.",
    )
    logger.info("%s estimated peak memory %s", name or "register", est)
    f = fixed_t.as_tensor().unsqueeze(0).to(device, dtype)
    m = data["moving"].as_tensor().unsqueeze(0).to(device, dtype)
    t_load = time.perf_counter() - t0
    logger.info("%sstage load: %.2fs (grid %s)", f"{name} " if name else "", t_load, tuple(f.shape[2:]))
    fmask = data.get("fixed_mask")
    fmask = None if fmask is None else torch.as_tensor(fmask).unsqueeze(0).to(device, dtype)
    out = run_method(
        f, m, cfg, init_ddf=init_ddf, keypoints=keypoints, spacing=spacing_from_affine(affine), handlers=handlers,
        name=name, fixed_mask=fmask,
    )
    with torch.no_grad():
        working = out.field().detach()
        full = out.field.ddf(tuple(f.shape[2:])).detach()
    if full.is_cuda:
        torch.cuda.synchronize(full.device)
    ddf = MetaTensor(full, affine=affine)
    timings = {"load": t_load, **out.timings, "total": time.perf_counter() - t0}
    return RegistrationResult(
        ddf=ddf, working_ddf=working, history=out.history, tre_history=out.tre_history, timings=timings,
        config=cfg, steps=out.steps, kernels=getattr(out, "kernels", ""), mask_report=mask_report,
    )


def _dtype(dtype, fixed) -> torch.dtype:
    if dtype is None:
        src = getattr(fixed, "dtype", None)
        return torch.float64 if src in (torch.float64, np.float64) else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise UserInputError(f"register: dtype must be torch.float32 or torch.float64, got {dtype}.")
    return dtype


def _device(device, *inputs) -> torch.device:
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserInputError(f"register: device {str(device)!r} requested but CUDA is not available.")
        return dev
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")
