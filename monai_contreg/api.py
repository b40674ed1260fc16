"""The Python entry point: :func:`register` a fixed/moving pair, get a :class:`RegistrationResult`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from monai.data import MetaTensor

from ._validation import check_finite
from .data.transforms import MASK_KEYS, loading_transforms, normalisation_transforms
from .errors import MissingFileError, UserInputError, describe_read_error
from .evaluation.metrics import jacobian_statistics, keypoint_tre
from .io.fields import save_field
from .kernels import load_extension
from .methods.config import RegistrationConfig
from .methods.presets import get_preset, resolve_config
from .methods.run import run_method
from .preflight import ImageHeader, check_geometry, check_informative
from .spatial.conventions import ddf_to_learn2reg, spacing_from_affine
from .spatial.warp import warp_image, warp_labels

__all__ = ["ImageLike", "RegistrationResult", "prepare_pair", "register"]

logger = logging.getLogger(__name__)

ImageLike = Union[str, Path, np.ndarray, torch.Tensor, MetaTensor]


@dataclass
class RegistrationResult:
    """The outcome of :func:`register`.

    Attributes:
        ddf: MONAI DDF ``(1, 3, H, W, D)`` on the fixed image's grid, voxels, fixed -> moving; a MetaTensor
            carrying the fixed image's affine.
        working_ddf: the field on the working grid (its own voxels).
        history: per-step ``loss``, ``similarity``, ``regularization``, ``lr``.
        tre_history: ``(step, TRE mm)`` pairs if keypoints were monitored.
        timings: seconds: ``load``, ``features``, ``optimisation``, ``total``.
        config: the configuration that ran.
        steps: Adam steps taken.
    """

    ddf: MetaTensor
    working_ddf: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)
    tre_history: list[tuple[int, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    config: RegistrationConfig | None = None
    steps: int = 0

    @property
    def affine(self) -> np.ndarray:
        """The fixed image's 4x4 voxel-to-world matrix."""
        return np.asarray(self.ddf.affine.detach().cpu().double().reshape(4, 4))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Fixed-image voxel spacing (mm)."""
        return spacing_from_affine(self.affine)

    def to_learn2reg(self) -> np.ndarray:
        """The field as a Learn2Reg ``(H, W, D, 3)`` float32 array."""
        return ddf_to_learn2reg(self.ddf.as_tensor())

    def save(self, path: str | Path, dtype: str | None = None) -> Path:
        """Write the field (``.nii.gz``/``.nii``/``.npz``, Learn2Reg layout, fixed affine), atomically."""
        return save_field(path, self.ddf.as_tensor(), self.affine, dtype=dtype)

    def warp(self, moving: torch.Tensor | np.ndarray, labels: bool = False) -> torch.Tensor:
        """Resample a moving image ``(H, W, D)`` or ``(B, C, H, W, D)`` into the fixed frame."""
        t = torch.as_tensor(np.asarray(moving) if not isinstance(moving, torch.Tensor) else moving)
        squeeze = t.ndim == 3
        t = t[None, None] if squeeze else t
        ddf = self.ddf.as_tensor().to(t.device)
        out = warp_labels(t, ddf) if labels else warp_image(t.float(), ddf)
        return out[0, 0] if squeeze else out

    def tre(self, fixed_points, moving_points, spacing=None) -> torch.Tensor:
        """Per-keypoint TRE (mm) of this field; spacing defaults to the fixed image's."""
        fp = torch.as_tensor(np.asarray(fixed_points, dtype=np.float64))
        mp = torch.as_tensor(np.asarray(moving_points, dtype=np.float64))
        return keypoint_tre(self.ddf.as_tensor().cpu(), fp, mp, spacing or self.spacing)

    def jacobian_statistics(self, mask=None) -> dict[str, float]:
        """SDlogJ (true and Learn2Reg's), folding % and extremes of ``det J``."""
        return jacobian_statistics(self.ddf.as_tensor().cpu(), mask)


def _kind(where: str, name: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (str, Path)):
        p = Path(value)
        if not p.exists():
            raise MissingFileError(f"{where}: {name} file {str(p)!r} does not exist.")
        return "file"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        arr_shape = tuple(value.shape)
        nd = len(arr_shape)
        if nd == 3:
            return "array"
        if nd in (4, 5) and all(s == 1 for s in arr_shape[: nd - 3]):
            return "array_squeeze"
        raise UserInputError(f"{where}: {name} must be a 3-D volume (H, W, D) (optionally with leading 1-sized dims), got shape {arr_shape}.")
    raise TypeError(f"{where}: {name} must be a file path, numpy array, torch tensor or MetaTensor, got {type(value).__name__}.")


def prepare_pair(
    fixed: ImageLike,
    moving: ImageLike,
    fixed_mask: ImageLike | None = None,
    moving_mask: ImageLike | None = None,
    config: RegistrationConfig | None = None,
) -> dict[str, MetaTensor]:
    """Load (files) or wrap (arrays) the inputs and preprocess them with MONAI transforms.

    Returns:
        ``{"fixed", "moving"[, "fixed_mask", "moving_mask"]}``, each a ``(1, H, W, D)`` float32 MetaTensor;
        images normalised and masked as ``config.preprocess`` says.

    Raises:
        FileNotFoundError, ValueError, TypeError naming the argument: missing/corrupt files, non-3-D arrays,
        mismatched shapes, NaN/inf intensities, empty masks; UserInputError for an image with no structure
        (constant, or constant inside its mask when masks are used): it is refused, not registered to an
        arbitrary field.
    """
    where = "register"
    cfg = config or get_preset("io")
    raw = {"fixed": fixed, "moving": moving, "fixed_mask": fixed_mask, "moving_mask": moving_mask}
    kinds = {k: _kind(where, k, v) for k, v in raw.items()}
    data: dict[str, Any] = {}
    for k, v in raw.items():
        if kinds[k] == "array_squeeze":
            v = v.reshape(tuple(v.shape)[-3:])
            kinds[k] = "array"
        if kinds[k] == "file":
            v = str(v)
        if kinds[k] != "none":
            data[k] = v
    loaded: dict[str, Any] = {}
    for k, v in data.items():
        keys = {"file_keys": [k]} if kinds[k] == "file" else {"array_keys": [k]}
        try:
            loaded[k] = loading_transforms(**keys)({k: v})[k]
        except Exception as exc:
            what = f"file {v!r}" if kinds[k] == "file" else "array"
            reason = describe_read_error(exc, v if kinds[k] == "file" else None)
            raise UserInputError(f"{where}: cannot read {k} {what}: {reason}") from exc
        if loaded[k].ndim != 4 or loaded[k].shape[0] != 1:
            raise UserInputError(f"{where}: {k} must hold one 3-D volume, got shape {tuple(loaded[k].shape)}.")
        check_finite(where, k, loaded[k].as_tensor())
        affine = loaded[k].affine if isinstance(loaded[k], MetaTensor) else torch.eye(4)
        header = ImageHeader(Path(v) if kinds[k] == "file" else None, tuple(loaded[k].shape[1:]),
                             np.asarray(torch.as_tensor(affine).double().reshape(4, 4)[:3, :3]))
        check_geometry(where, k, header)  # non-singular geometry, >= MIN_SIZE voxels per axis
    shapes = {k: tuple(t.shape[-3:]) for k, t in loaded.items()}
    if len(set(shapes.values())) != 1:
        raise UserInputError(f"{where}: all inputs must share one grid; got shapes {shapes}.")
    for k in MASK_KEYS:
        if k in loaded and not bool((loaded[k] > 0).any()):
            raise UserInputError(f"{where}: {k} is empty (no voxel > 0); pass a non-empty mask or none.")
    for k in ("fixed", "moving"):  # a constant image (or constant inside its mask) has nothing to register
        check_informative(where, k, loaded[k].as_tensor())
    out = normalisation_transforms(cfg.preprocess)(loaded)
    for k in ("fixed", "moving"):
        mask = out.get(f"{k}_mask") if cfg.preprocess.use_masks else None
        check_informative(where, k, out[k].as_tensor(), None if mask is None else mask.as_tensor(),
                          after=" after preprocessing (intensity window, masking)")
    return out


def register(
    fixed: ImageLike,
    moving: ImageLike,
    *,
    fixed_mask: ImageLike | None = None,
    moving_mask: ImageLike | None = None,
    config: RegistrationConfig | str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    init_ddf: torch.Tensor | None = None,
    keypoints: tuple[Any, Any] | None = None,
    handlers: list[Any] | None = None,
    name: str = "",
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: the field ``u`` with fixed voxel ``x`` <-> moving voxel ``x + u(x)``.

    Args:
        fixed, moving: file paths (anything MONAI's ``LoadImage`` reads), numpy arrays, torch tensors or
            MetaTensors, 3-D ``(H, W, D)`` on one grid.
        fixed_mask, moving_mask: optional masks (same kinds); with ``config.preprocess.use_masks`` images are
            masked before feature extraction.
        config: a :class:`RegistrationConfig`, a preset name (``"io"``, ``"io-authors"``, ...) or ``None`` (``io``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: the device of a tensor input, else CPU.
        dtype: computation dtype (``torch.float32`` or ``torch.float64``); default: float64 if the fixed input is
            a float64 tensor/array, else float32. The returned field has this dtype.
        init_ddf: optional initial DDF ``(1, 3, ...)`` (e.g. a network's prediction), voxels of its own grid.
        keypoints: optional ``(fixed_points, moving_points)`` ``(N, 3)`` voxel arrays, used only to monitor the
            TRE during optimisation (``config.engine.tre_every``).
        handlers: extra ignite handlers (objects with ``attach(engine)``).
        name: label for log lines.

    Returns:
        A :class:`RegistrationResult`.
    """
    cfg = resolve_config("register", config)
    dev = _device(device, fixed, moving)
    if dev.type == "cpu" and cfg.engine.fused is not False:
        # build (first use on a machine, ~45 s) or load the compiled CPU kernels before the clock starts: a
        # one-off per process, not part of a registration's time
        load_extension()
    t0 = time.perf_counter()
    dt = _dtype(dtype, fixed)
    data = prepare_pair(fixed, moving, fixed_mask, moving_mask, cfg)
    fixed_t = data["fixed"]
    affine = fixed_t.affine.detach().cpu().double().reshape(4, 4) if isinstance(fixed_t, MetaTensor) else torch.eye(4, dtype=torch.float64)
    f = fixed_t.as_tensor().unsqueeze(0).to(dev, dt)
    m = torch.as_tensor(data["moving"]).unsqueeze(0).to(dev, dt)
    kp = None
    if keypoints is not None:
        fk, mk = (torch.as_tensor(np.asarray(p, dtype=np.float64)) for p in keypoints)
        if fk.shape != mk.shape or fk.ndim != 2 or fk.shape[-1] != 3:
            raise UserInputError(
                f"register: keypoints must be two (N, 3) arrays of equal shape, got {tuple(fk.shape)} and {tuple(mk.shape)}."
            )
        kp = (fk, mk)
    t_load = time.perf_counter() - t0
    out = run_method(
        f, m, cfg, init_ddf=init_ddf, keypoints=kp, spacing=spacing_from_affine(affine), handlers=handlers, name=name,
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
        config=cfg, steps=out.steps,
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
