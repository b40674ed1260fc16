"""One registration, as one linear path: load and validate -> plan -> resample -> solve -> map back.

Every entry point (:func:`monai_contreg.api.register`, :func:`monai_contreg.native.register_native`, the CLI
commands, ``contreg run`` single and distributed, the bundle, ``contreg tune`` and the MONAI transforms) reaches
this module through :func:`monai_contreg.api.register` (or its alias), and each step runs once per pair:

1. :func:`load_inputs`: read (files) or wrap (arrays, MetaTensors) the inputs with their geometry, validate them
   (finite, 3-D, >= ``MIN_SIZE`` voxels per axis, masks on their image's grid and not empty, keypoints inside
   their grid) -> :class:`LoadedPair`.
2. :func:`plan`: resolve the configuration, choose the working grid (the fixed grid when both images lie on it,
   else the fixed field of view at ``field.design_spacing``), the device (the inputs' own when none is asked for)
   and dtype, and check the estimated peak memory on the working grid against ``max_memory``
   -> :class:`RegistrationPlan`. Nothing heavy has run yet when a refusal comes.
3. :func:`to_working_grid`: on two grids, the CT padding floor, then images (trilinear) and masks (nearest
   neighbour) resampled onto the working grid through the world frame; on one grid nothing is done. Then the
   automatic lung masks and the intensity normalisation of ``config.preprocess`` on the working grid.
4. :func:`solve`: the method of ``config.method`` (:func:`monai_contreg.methods.run.run_method`) on the
   working grid -> a :class:`~monai_contreg.result.RegistrationResult` there.
5. :func:`map_back`: the field from the working grid onto the fixed image's grid (nothing to do on one grid).

Writing the field is the result's (:meth:`~monai_contreg.result.RegistrationResult.save`,
:meth:`~monai_contreg.result.RegistrationResult.save_itk`); the CLI checks its output paths before step 1.
:func:`run` chains the five steps. The geometry travels as :class:`~monai_contreg.spatial.grid.Grid` values.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from monai.data import MetaTensor

from ._validation import check_finite, choose
from .data.lung_mask import auto_lung_masks
from .data.modality import decide_modalities
from .data.transforms import apply_intensity_floor, normalisation_transforms
from .errors import InputTypeError, MissingFileError, UserInputError, describe_read_error
from .io.geometry_checks import GeometryWarning, ItkReading, affine_shear, itk_reading, nifti_geometry_disagreement
from .io.images import check_series_used, load_image
from .kernels import load_extension
from .methods.affine import alignment_check, compose_affine_ddf, voxel_affine
from .methods.config import RegistrationConfig
from .methods.stages import AffineStage
from .methods.memory import MemoryEstimate, check_memory
from .methods.presets import resolve_config
from .methods.run import run_method
from .modes import LABEL_PADDING, InterpolationMode, PaddingMode
from .preflight import ImageHeader, check_geometry, check_informative
from .result import RegistrationResult
from .spatial.grid import Grid
from .spatial.resample import resample_ddf, resample_image

__all__ = [
    "ImageLike",
    "auto_affine",
    "LoadedPair",
    "check_one_grid",
    "RegistrationPlan",
    "load_inputs",
    "load_pair",
    "map_back",
    "plan",
    "preprocess",
    "resolve_device",
    "run",
    "solve",
    "to_working_grid",
]

logger = logging.getLogger(__name__)

ImageLike = Union[str, Path, np.ndarray, torch.Tensor, MetaTensor]


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


#: MetaTensor meta key of an input file's :class:`~monai_contreg.io.geometry_checks.ItkReading`.
ITK_READING = "contreg_itk_reading"


def itk_readings(data: dict) -> dict[str, ItkReading | None]:
    """``{"fixed_itk", "moving_itk"}`` of loaded inputs (``None`` for arrays)."""
    return {f"{k}_itk": getattr(data[k], "meta", {}).get(ITK_READING) for k in ("fixed", "moving")}


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
        raise InputTypeError(
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
    return Grid.of(t).describe()


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
            :data:`~monai_contreg.spatial.grid.GRID_ATOL_MM`; masks are never resampled silently), an empty mask, non-finite values, an
            unreadable file. MissingFileError (a FileNotFoundError): a missing file. TypeError: an input of another type.
    """
    arr_aff = _array_affine(where, spacing, affine, assume_unit_spacing)
    out: dict[str, MetaTensor] = {}
    for key, value in (("fixed", fixed), ("moving", moving)):
        out[key] = _as_image(where, key, value, arr_aff, reader, series)
        check_finite(where, key, out[key].as_tensor())
        aff = _affine_of(out[key])
        header = ImageHeader(Path(value) if isinstance(value, (str, Path)) else None, tuple(out[key].shape[1:]),
                             aff[:3, :3], affine=aff)
        check_geometry(where, key, header)  # non-singular geometry, >= MIN_SIZE voxels per axis
    check_series_used(where, series, (out["fixed"], out["moving"]))
    for key, value in (("fixed_mask", fixed_mask), ("moving_mask", moving_mask)):
        if value is None:
            continue
        image = out[key.replace("_mask", "")]
        mask = _as_image(where, key, value, arr_aff if arr_aff is not None else _affine_of(image), reader)
        if tuple(mask.shape) != tuple(image.shape) or not Grid.of(mask).same_as(Grid.of(image)):
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


def preprocess(where: str, data: dict[str, MetaTensor], cfg: RegistrationConfig,
               mask_report: dict[str, Any] | None = None, modalities: dict[str, Any] | None = None) -> dict[str, MetaTensor]:
    """Inputs on one grid -> ready for the method: automatic lung masks where a masking preset has none (what was
    done goes into ``mask_report``), then ``config.preprocess`` (MONAI transforms), refusing images with no
    structure before and after it.

    ``modalities`` (:func:`~monai_contreg.data.modality.decide_modalities`; decided here from ``data`` when
    ``None``): the lung mask is for CT pairs only and MR images are normalised by percentiles
    (:func:`~monai_contreg.data.transforms.normalisation_transforms`); the decision goes into
    ``mask_report["modality"]``."""
    for k in ("fixed", "moving"):  # a constant image (or constant inside its mask) has nothing to register
        check_informative(where, k, data[k].as_tensor())
    if modalities is None:
        modalities = decide_modalities(data, cfg.preprocess, where)
    data = auto_lung_masks(data, cfg, where, mask_report, modalities)  # missing masks of a masking preset (preprocess.auto_mask)
    if mask_report is not None:
        mask_report["modality"] = {k: modalities[k] for k in ("fixed", "moving")}
    out = normalisation_transforms(cfg.preprocess, modalities=modalities)(data)
    for k in ("fixed", "moving"):
        mask = out.get(f"{k}_mask") if cfg.preprocess.use_masks else None
        check_informative(where, k, out[k].as_tensor(), None if mask is None else mask.as_tensor(),
                          after=" after preprocessing (intensity window, masking)")
    return out


def check_one_grid(where: str, data: dict[str, MetaTensor]) -> None:
    """Raise :class:`UserInputError` unless ``data["fixed"]`` and ``data["moving"]`` lie on one grid."""
    if not _on_one_grid(data["fixed"], data["moving"]):
        raise UserInputError(
            f"{where}: fixed ({_grid_text(data['fixed'])}) and moving ({_grid_text(data['moving'])}) are on "
            "different grids; register() resamples them onto a working grid."
        )


def _on_one_grid(a: MetaTensor, b: MetaTensor) -> bool:
    return Grid.of(a) == Grid.of(b)


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


def _dtype(where: str, dtype, fixed) -> torch.dtype:
    if dtype is None:
        src = getattr(fixed, "dtype", None)
        return torch.float64 if src in (torch.float64, np.float64) else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise UserInputError(f"{where}: dtype must be torch.float32 or torch.float64, got {dtype}.")
    return dtype


def resolve_device(where: str, device, *inputs) -> torch.device:
    """The device a registration runs on: ``device`` if given (checked), else the first tensor input's, else CPU.

    Raises:
        UserInputError: an unknown device string, ``"cuda"`` on a machine without CUDA, a CUDA index beyond the
            devices present.
    """
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise UserInputError(f"{where}: device {str(device)!r} is not a torch device ('cpu', 'cuda', 'cuda:1', ...).") from exc
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise UserInputError(f"{where}: device {str(device)!r} requested but CUDA is not available.")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise UserInputError(
                    f"{where}: device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist."
                )
        return dev
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


# ---- 1. load and validate -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedPair:
    """Step 1's output: the validated inputs on their own grids.

    Attributes:
        data: ``{"fixed", "moving"[, "fixed_mask", "moving_mask"]}``, ``(1, H, W, D)`` MetaTensors (float32, or
            float64 for float64 arrays) with float64 RAS affines, as read.
        fixed_grid, moving_grid: their grids.
        keypoints_mm: ``(fixed_points, moving_points)`` ``(N, 3)`` world points (RAS mm, float64) to monitor the TRE
            with, or ``None``.
        keypoints: the same as voxel coordinates of the fixed and the moving grid when they were given so (the one
            grid path uses them as given), else ``None``.
    """

    data: dict[str, MetaTensor]
    fixed_grid: Grid
    moving_grid: Grid
    keypoints_mm: tuple[torch.Tensor, torch.Tensor] | None = None
    keypoints: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def one_grid(self) -> bool:
        """Whether fixed and moving lie on one grid (:data:`~monai_contreg.spatial.grid.GRID_ATOL_MM`)."""
        return self.fixed_grid == self.moving_grid


def load_pair(
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
    keypoints: tuple[Any, Any] | None = None,
    keypoints_mm: tuple[Any, Any] | None = None,
    where: str = "register",
) -> LoadedPair:
    """Step 1: :func:`load_inputs`, then the keypoints (voxel ``keypoints`` checked inside their grids, or world
    ``keypoints_mm``) -> :class:`LoadedPair`.

    Raises:
        UserInputError: as :func:`load_inputs`; keypoints that are not two ``(N, 3)`` arrays of equal shape, voxel
            keypoints outside their grid, both kinds given.
    """
    data = load_inputs(fixed, moving, fixed_mask, moving_mask, spacing=spacing, affine=affine,
                       assume_unit_spacing=assume_unit_spacing, reader=reader, series=series, where=where)
    fg, mg = Grid.of(data["fixed"]), Grid.of(data["moving"])
    if keypoints is not None and keypoints_mm is not None:
        raise UserInputError(f"{where}: give keypoints (voxels) or keypoints_mm (world), not both.")
    kp = kp_mm = None
    if keypoints is not None:
        kp = _check_keypoints(where, keypoints, data["fixed"], data["moving"])
        kp_mm = (fg.voxel_to_world(kp[0]), mg.voxel_to_world(kp[1]))
    elif keypoints_mm is not None:
        try:
            kp_mm = tuple(torch.as_tensor(np.asarray(p, dtype=np.float64)) for p in keypoints_mm)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"{where}: keypoints_mm must be a pair of (N, 3) arrays (RAS mm): {exc}") from exc
        if len(kp_mm) != 2 or kp_mm[0].shape != kp_mm[1].shape or kp_mm[0].ndim != 2 or kp_mm[0].shape[-1] != 3:
            raise UserInputError(f"{where}: keypoints_mm must be two (N, 3) arrays of equal shape (RAS mm).")
    return LoadedPair(data, fg, mg, kp_mm, kp)


# ---- 2. plan --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistrationPlan:
    """Step 2's output: everything decided before any feature is computed.

    Attributes:
        config: the validated configuration that runs.
        fixed_grid, moving_grid: the inputs' grids.
        working_grid: the grid the method runs on (``fixed_grid`` when ``resample`` is false).
        resample: whether the images go through the working grid (two grids, or asked for).
        device, dtype: where and in what precision the method runs (resampling follows the device).
        memory: the peak-memory estimate on the working grid (:func:`~monai_contreg.methods.memory.estimate_memory`),
            checked against ``max_memory``.
        padding_mode: ``grid_sample`` padding of the images when resampled (masks: zeros).
    """

    config: RegistrationConfig
    fixed_grid: Grid
    moving_grid: Grid
    working_grid: Grid
    resample: bool
    device: torch.device
    dtype: torch.dtype
    memory: MemoryEstimate
    padding_mode: str = "border"


def plan(
    pair: LoadedPair,
    config: RegistrationConfig | str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    working_spacing: float | Sequence[float] | None = None,
    through_working_grid: bool = False,
    max_memory: str | float | int | None = None,
    padding_mode: str = "border",
    inputs: Sequence[Any] = (),
    where: str = "register",
) -> RegistrationPlan:
    """Step 2: configuration, working grid, device, dtype and the memory check, once per registration.

    Args:
        pair: step 1's output.
        config: a :class:`RegistrationConfig`, a preset name or ``None`` (``io``).
        device: ``"cpu"``, ``"cuda"``, ...; ``None``: the device of the first tensor among ``inputs`` (the caller's
            original fixed and moving), else CPU. The same on one grid and on two.
        dtype: ``torch.float32``/``torch.float64``; ``None``: float64 when the fixed input (``inputs[0]``) is a
            float64 array or tensor, else float32.
        working_spacing: the working grid's spacing (mm, one number or three); ``None``: ``field.design_spacing``.
        through_working_grid: resample even when both images lie on one grid (:func:`~monai_contreg.native.register_native`).
        max_memory: bytes or ``"8G"``; ``None``: 80 % of the available memory of ``device``.
        padding_mode: ``"border"`` or ``"zeros"``, for the images when resampled.

    Raises:
        UserInputError: an unknown device, CUDA asked for without CUDA, a bad dtype/spacing, a working grid too
            thin, or the estimated peak memory beyond ``max_memory`` (the message says what to change).
    """
    cfg = resolve_config(where, config)
    dev = resolve_device(where, device, *inputs)
    dt = _dtype(where, dtype, inputs[0] if inputs else None)
    padding_mode = choose(where, "padding_mode", padding_mode, PaddingMode).value
    resample = through_working_grid or not pair.one_grid
    if resample:
        working = pair.fixed_grid.working(cfg.field.design_spacing if working_spacing is None else working_spacing)
        check_geometry(where, "working grid", ImageHeader(None, working.shape, working.affine[:3, :3], affine=working.affine))
        hint = (f"Use a coarser working grid (--working-spacing MM; working_spacing=; now "
                f"{tuple(round(v, 3) for v in working.spacing)} mm, the preset's design spacing is "
                f"{cfg.field.design_spacing:g} mm) or raise --max-memory.")
    else:
        working = pair.fixed_grid
        hint = ("Resample the images to a coarser grid (contreg register-native --working-spacing MM, "
                f"default the preset's design spacing {cfg.field.design_spacing:g} mm) or raise --max-memory.")
    masks = sum(k in pair.data for k in ("fixed_mask", "moving_mask"))
    est = check_memory(where, working.shape, cfg, max_memory=max_memory, masks=masks, dtype=dt, device=dev, hint=hint)
    return RegistrationPlan(cfg, pair.fixed_grid, pair.moving_grid, working, resample, dev, dt, est, padding_mode)


def auto_affine(pair: LoadedPair, p: RegistrationPlan, label: str = "register", given_field: bool = False) -> RegistrationPlan:
    """The plan with an affine stage first when the pair looks unaligned (``config.auto_affine``), else ``p``.

    The check (:func:`~monai_contreg.methods.affine.alignment_check`) runs on the images as loaded, each on its own
    grid, after the CT padding floor; a config that has an affine stage, ``auto_affine.enabled: false`` or an
    initial field (``given_field``) is left as it is. The decision is logged either way (INFO when a stage is added).
    """
    cfg = p.config
    if not cfg.auto_affine.enabled or cfg.affine_stage is not None:
        return p
    f, m = (apply_intensity_floor(pair.data[k], cfg.preprocess) for k in ("fixed", "moving"))
    check = alignment_check(f.as_tensor(), pair.fixed_grid.affine, m.as_tensor(), pair.moving_grid.affine, cfg.auto_affine)
    if not check.needed:
        logger.debug("%s: pair looks aligned (%s): no affine stage", label, check.describe())
        return p
    if given_field:
        logger.info("%s: pair looks unaligned (%s) but an initial field was given: no affine stage added", label,
                    check.describe())
        return p
    new = copy.deepcopy(cfg)
    new.stages = (AffineStage(), *new.stages)
    logger.info("%s: pair looks unaligned (%s): an affine stage runs first (auto_affine; set auto_affine.enabled=false "
                "to skip it)", label, check.describe())
    return dataclasses.replace(p, config=new)


# ---- 3. resample ----------------------------------------------------------------------------------------------
def to_working_grid(pair: LoadedPair, p: RegistrationPlan, where: str = "register",
                    mask_report: dict[str, Any] | None = None) -> dict[str, MetaTensor]:
    """Step 3: the inputs on the working grid, masked and normalised as ``config.preprocess`` says.

    On two grids, the CT padding floor (``preprocess.intensity_floor``: padding would otherwise blend into the
    field of view's edge) is applied, then images are resampled trilinearly (``p.padding_mode``) and masks by
    nearest neighbour (zeros outside) onto ``p.working_grid``; on one grid nothing is resampled. Then automatic
    lung masks (a masking preset without masks) and the intensity normalisation run on the working grid.

    Returns:
        ``{"fixed", "moving"[, "fixed_mask", "moving_mask"]}``: ``(1, h, w, d)`` MetaTensors on the working grid.

    Raises:
        UserInputError: a constant image (before or after preprocessing), a mask that is empty on the working grid.
    """
    data = pair.data
    modalities = decide_modalities(data, p.config.preprocess, where)  # on the stored values, before any floor
    if p.resample:
        w = p.working_grid
        w_aff = w.affine_tensor()

        def resampled(img: MetaTensor, labels: bool) -> MetaTensor:
            t = img.as_tensor()[None].to(p.device)
            out = resample_image(t, Grid.of(img).affine, w.affine, w.shape,
                                 mode=InterpolationMode.NEAREST if labels else InterpolationMode.BILINEAR,
                                 padding_mode=LABEL_PADDING if labels else p.padding_mode)
            return MetaTensor(out[0, 0][None], affine=w_aff)

        floored = {k: apply_intensity_floor(data[k], p.config.preprocess, modalities[k]) for k in ("fixed", "moving")}
        data = {k: resampled(floored[k], False) for k in ("fixed", "moving")}
        for k in ("fixed_mask", "moving_mask"):
            if k in pair.data:
                data[k] = resampled(pair.data[k], True)
                if not bool((data[k] > 0).any()):
                    raise UserInputError(
                        f"{where}: {k} is empty on the working grid {w!r} (no voxel > 0 after nearest-neighbour "
                        "resampling); pass a larger mask or a finer --working-spacing."
                    )
    return preprocess(where, data, p.config, mask_report, modalities)


# ---- 4. solve -------------------------------------------------------------------------------------------------
def solve(
    data: dict[str, MetaTensor],
    p: RegistrationPlan,
    *,
    init_ddf: torch.Tensor | None = None,
    keypoints: tuple[torch.Tensor, torch.Tensor] | None = None,
    handlers: list[Any] | None = None,
    name: str = "",
) -> RegistrationResult:
    """Step 4: run ``config.method`` on the working grid; the result lives there (its ``ddf`` on ``p.working_grid``).

    Args:
        data: step 3's output.
        init_ddf: an initial DDF ``(1, 3, ...)`` in working-grid voxels (one grid only; see ``register``).
        keypoints: ``(fixed_points, moving_points)`` ``(N, 3)`` in working-grid voxels, to monitor the TRE.
        handlers: extra ignite handlers attached to the engine(s).

    Raises:
        RegistrationDivergedError: the optimisation went off.
    """
    t0 = time.perf_counter()
    w = p.working_grid
    f = data["fixed"].as_tensor().unsqueeze(0).to(p.device, p.dtype)
    m = data["moving"].as_tensor().unsqueeze(0).to(p.device, p.dtype)
    fmask = data.get("fixed_mask")
    fmask = None if fmask is None else torch.as_tensor(fmask).unsqueeze(0).to(p.device, p.dtype)
    t_load = time.perf_counter() - t0
    out = run_method(f, m, p.config, init_ddf=init_ddf, keypoints=keypoints, spacing=w.spacing, handlers=handlers,
                     name=name, fixed_mask=fmask, validated=True, grid_affine=w.affine)  # the plan validated the config
    linear = getattr(out, "affine", None)
    dense = None
    with torch.no_grad():
        working = out.field().detach()
        full = out.field.ddf(w.shape).detach()
        if linear is not None:  # the total field x -> V^-1 A V (x + u(x)) (methods.affine, METHOD.md section 8)
            dense = MetaTensor(full, affine=w.affine_tensor())
            full = compose_affine_ddf(full, voxel_affine(linear, w.affine))
    if full.is_cuda:
        torch.cuda.synchronize(full.device)
    timings = {"load": t_load, **out.timings, "total": time.perf_counter() - t0}
    return RegistrationResult(
        ddf=MetaTensor(full, affine=w.affine_tensor()), working_ddf=working, history=out.history,
        tre_history=out.tre_history, timings=timings, config=p.config, steps=out.steps,
        kernels=getattr(out, "kernels", ""), moving_grid=w, working_grid=w,
        stopped_early=bool(getattr(out, "stopped_early", False)),
        levels_stopped_early=tuple(getattr(out, "levels_stopped_early", ())),
        linear=None if linear is None else np.asarray(linear, dtype=np.float64), dense_ddf=dense,
    )


# ---- 5. map back ----------------------------------------------------------------------------------------------
def map_back(working: RegistrationResult, p: RegistrationPlan, output: str = "voxel") -> RegistrationResult:
    """Step 5: the field of :func:`solve` on the fixed image's grid.

    On one grid the working result is the result (``output`` set). On two grids the working-grid DDF is moved
    onto the fixed grid (:func:`~monai_contreg.spatial.resample.resample_ddf`: both ends in the one world frame,
    values in fixed-grid voxels); the working result stays under ``working``.
    """
    if not p.resample:
        working.output = output
        working.moving_grid = p.moving_grid
        working.moving_affine, working.moving_shape = np.array(p.moving_grid.affine), p.moving_grid.shape
        return working
    t0 = time.perf_counter()
    dense = None
    with torch.no_grad():
        if working.linear is None:
            native = resample_ddf(working.ddf.as_tensor(), p.working_grid.affine, p.fixed_grid.affine, p.fixed_grid.shape)
        else:  # the dense part moved, the affine composed exactly on the fixed grid
            u = resample_ddf(working.dense_ddf.as_tensor(), p.working_grid.affine, p.fixed_grid.affine, p.fixed_grid.shape)
            dense = MetaTensor(u, affine=p.fixed_grid.affine_tensor())
            native = compose_affine_ddf(u, voxel_affine(working.linear, p.fixed_grid.affine))
    return RegistrationResult(
        ddf=MetaTensor(native, affine=p.fixed_grid.affine_tensor()), working_ddf=working.working_ddf,
        history=working.history, tre_history=working.tre_history, timings={"to_native": time.perf_counter() - t0},
        config=working.config, steps=working.steps, moving_grid=p.moving_grid, working_grid=p.working_grid,
        working=working, output=output, kernels=working.kernels, stopped_early=working.stopped_early,
        levels_stopped_early=working.levels_stopped_early, linear=working.linear, dense_ddf=dense,
    )


# ---- the path -------------------------------------------------------------------------------------------------
def run(
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
    keypoints_mm: tuple[Any, Any] | None = None,
    handlers: list[Any] | None = None,
    working_spacing: float | Sequence[float] | None = None,
    through_working_grid: bool = False,
    padding_mode: str = "border",
    output: str = "voxel",
    reader: str = "auto",
    series: str | Sequence[str] | None = None,
    name: str = "",
    max_memory: str | float | int | None = None,
    where: str = "register",
) -> RegistrationResult:
    """Load -> plan -> resample -> solve -> map back, each once; the arguments are :func:`monai_contreg.api.register`'s
    (plus ``keypoints_mm``, ``through_working_grid``, ``padding_mode`` of :func:`~monai_contreg.native.register_native`).

    ``timings`` (seconds): one grid: ``load``, ``features``, ``optimisation``[, ``discrete``], ``total``; two grids:
    ``load``, ``resample`` (with the preprocessing on the working grid), ``register``, ``to_native``, ``total``
    (the working result's own under ``working.timings``).

    Raises:
        UserInputError, MissingFileError, RegistrationDivergedError: see :func:`monai_contreg.api.register`.
    """
    output = choose(where, "output", output, ("voxel", "mm"))
    output = str(getattr(output, "value", output))
    padding_mode = choose(where, "padding_mode", padding_mode, PaddingMode).value
    t0 = time.perf_counter()
    pair = load_pair(fixed, moving, fixed_mask, moving_mask, spacing=spacing, affine=affine,
                     assume_unit_spacing=assume_unit_spacing, reader=reader, series=series, keypoints=keypoints,
                     keypoints_mm=keypoints_mm, where=where)
    p = plan(pair, config, device=device, dtype=dtype, working_spacing=working_spacing,
             through_working_grid=through_working_grid, max_memory=max_memory, padding_mode=padding_mode,
             inputs=(fixed, moving), where=where)
    if p.resample and init_ddf is not None:
        raise UserInputError(f"{where}: init_ddf needs fixed and moving on one grid; they differ here.")
    for k in ("fixed", "moving"):  # refused before the alignment check looks at the content
        check_informative(where, k, pair.data[k].as_tensor())
    p = auto_affine(pair, p, name or where, given_field=init_ddf is not None)
    logger.info("%s estimated peak memory %s", name or where, p.memory)
    if p.device.type == "cpu" and p.config.engine.fused is not False:
        # build (first use on a machine, ~45 s) or load the compiled CPU kernels before the clock starts: a
        # one-off per process, not part of a registration's time
        t_ext = time.perf_counter()
        load_extension()
        t0 += time.perf_counter() - t_ext
    t_load = time.perf_counter() - t0
    if p.resample:
        logger.info("%s: fixed (%s) and moving (%s) through the working grid %s", name or where,
                    pair.fixed_grid.describe(), pair.moving_grid.describe(), p.working_grid)
    t1 = time.perf_counter()
    mask_report: dict[str, Any] = {}
    data = to_working_grid(pair, p, where, mask_report)
    t_resample = time.perf_counter() - t1
    kp = pair.keypoints
    if p.resample and pair.keypoints_mm is not None:
        kp = tuple(p.working_grid.world_to_voxel(k) for k in pair.keypoints_mm)
    elif kp is None and pair.keypoints_mm is not None:
        kp = (pair.fixed_grid.world_to_voxel(pair.keypoints_mm[0]), pair.moving_grid.world_to_voxel(pair.keypoints_mm[1]))
    logger.info("%sstage load: %.2fs (grid %s)", f"{name} " if name else "", t_load + t_resample, p.working_grid.shape)
    t2 = time.perf_counter()
    working = solve(data, p, init_ddf=init_ddf, keypoints=kp, handlers=handlers, name=name)
    t_register = time.perf_counter() - t2
    working.mask_report = mask_report
    res = map_back(working, p, output)
    res.mask_report = mask_report
    # the images as read (and on one grid the automatic masks, added in place): the quality estimate reuses them
    res.inputs = {k: v for k, v in pair.data.items() if k in ("fixed", "moving", "fixed_mask", "moving_mask")}
    res.fixed_itk, res.moving_itk = itk_readings(pair.data).values()
    if p.resample:
        res.timings = {"load": t_load, "resample": t_resample, "register": t_register, **res.timings,
                       "total": time.perf_counter() - t0}
    else:
        res.timings = {"load": t_load + t_resample + res.timings.get("load", 0.0),
                       **{k: v for k, v in res.timings.items() if k not in ("load", "total")},
                       "total": time.perf_counter() - t0}
    return res
