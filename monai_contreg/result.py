"""The outcome of a registration: :class:`RegistrationResult` (the field, its grids, the run's record).

Built by the registration pipeline (:mod:`monai_contreg.registration`) and returned by
:func:`monai_contreg.api.register` (and :func:`~monai_contreg.native.register_native`, its alias). The geometry is
carried as :class:`~monai_contreg.spatial.grid.Grid` values: :attr:`RegistrationResult.fixed_grid`,
:attr:`~RegistrationResult.moving_grid`, :attr:`~RegistrationResult.working_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from ._validation import choose
from .errors import UserInputError
from .evaluation.metrics import jacobian_statistics, keypoint_tre
from .io.fields import save_field
from .io.geometry_checks import ItkReading
from .methods.config import RegistrationConfig
from .modes import IMAGE_PADDING, InterpolationMode, LABEL_PADDING
from .spatial.conventions import ddf_to_learn2reg, ddf_voxel_to_world, points_voxel_to_world, spacing_from_affine
from .spatial.grid import Grid
from .spatial.resample import map_points_world, warp_between_grids
from .spatial.warp import warp_image, warp_labels

__all__ = ["RegistrationResult"]


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
        moving_affine: the moving image's 4x4 RAS voxel-to-world matrix; ``moving_shape`` its spatial shape
            (the two of :attr:`moving_grid`).
        working_affine, working_shape: the grid the optimiser ran on (the fixed grid for one grid; the two of
            :attr:`working_grid`).
        working: for two grids, the :class:`RegistrationResult` on the working grid; ``None`` otherwise.
        output: units of :attr:`displacement`: ``"voxel"`` or ``"mm"``.
        kernels: which implementation ran the warped-SSD loss: ``"compiled"`` (the CPU kernels) or ``"pytorch"``
            (``"compiled+pytorch"`` when both ran, e.g. on different levels).
        moving_grid, working_grid: the moving image's grid and the working grid as
            :class:`~monai_contreg.spatial.grid.Grid` values (given, or built from the affine/shape fields;
            either way both views agree). :attr:`fixed_grid` is the field's own grid.
        stopped_early: whether the run ended before its schedule's last step (plateau early stopping, a
            handler that terminated the engine); a multi-level run: whether any level did.
        levels_stopped_early: a multi-level run: every level's early-stop flag, in order; ``()`` otherwise.
        fixed_itk, moving_itk: how ITK reads the fixed and moving input files
            (:class:`~monai_contreg.io.geometry_checks.ItkReading`), ``None`` for inputs given as arrays;
            :meth:`save_itk` composes any difference from the package's reading into the export.
        inputs: the images the registration loaded (``fixed``, ``moving`` and the masks it used on their grids:
            given, or automatic on one grid), ``(1, H, W, D)`` MetaTensors, for :meth:`quality`; ``None`` for a
            result read from a file.
        mask_report: what masked the registration (:func:`~monai_contreg.data.lung_mask.auto_lung_masks`):
            ``masked`` (bool) and per image (``fixed``, ``moving``) the mask's ``source`` (``"given"``,
            ``"automatic"``, ``"not found"``, ``"none"``) with, for an automatic mask, its volumes per side (mL),
            whether the lungs touch the image border, and each plausibility check; ``None`` when not recorded.
        linear: with an affine stage, its world map ``A`` (4x4 float64, fixed world RAS mm -> moving world RAS
            mm); ``None`` without one. :attr:`ddf` is then the total ``x -> A_f^-1 A A_f (x + u(x))`` (fixed world
            point ``p`` <-> moving world point ``A(p + U(p))``, ``U`` the dense part in mm).
        dense_ddf: with an affine stage, the dense part ``u`` (DDF on the fixed grid, its voxels; before ``A``);
            ``None`` without one.
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
    moving_grid: Grid | None = None
    working_grid: Grid | None = None
    stopped_early: bool = False
    levels_stopped_early: tuple[bool, ...] = ()
    fixed_itk: ItkReading | None = None
    moving_itk: ItkReading | None = None
    mask_report: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    linear: np.ndarray | None = None
    dense_ddf: MetaTensor | None = None

    def __post_init__(self) -> None:
        if self.moving_grid is not None:
            self.moving_affine, self.moving_shape = np.array(self.moving_grid.affine), self.moving_grid.shape
        if self.moving_affine is None:
            self.moving_affine = self.affine
        if self.moving_shape is None:
            self.moving_shape = tuple(int(s) for s in self.ddf.shape[2:])
        if self.working_grid is not None:
            self.working_affine, self.working_shape = np.array(self.working_grid.affine), self.working_grid.shape
        if self.working_affine is None:
            self.working_affine = self.affine
        if self.working_shape is None:
            self.working_shape = tuple(int(s) for s in (self.working_ddf if self.working_ddf is not None else self.ddf).shape[2:])
        if self.moving_grid is None:
            self.moving_grid = Grid(self.moving_shape, self.moving_affine)
        if self.working_grid is None:
            self.working_grid = Grid(self.working_shape, self.working_affine)

    @property
    def fixed_grid(self) -> Grid:
        """The fixed image's grid, on which :attr:`ddf` lives."""
        return Grid(tuple(int(s) for s in self.ddf.shape[2:]), self.affine)

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

        With an affine stage, ``.h5`` holds a ``CompositeTransform`` (the affine and the dense displacement field,
        the field applied first); an image format holds the total. ITK (and ANTs), reading the same fixed and
        moving files, then map every fixed voxel to the moving voxel ``contreg warp`` maps it to, also where ITK reads a header differently than this package (the difference
        is composed into the transform, :func:`~monai_contreg.io.itk_transforms.save_itk_transform`).

        Raises:
            UserInputError: no ITK file can mean the same (ITK cannot read an input's header; a sheared in-memory
                grid; a NIfTI path for a non-orthonormal fixed grid): one line saying why and how to fix it,
                nothing written. The Learn2Reg field (:meth:`save`, voxels) is unaffected.
        """
        from .io.itk_transforms import save_itk_transform

        if self.linear is not None and self.dense_ddf is not None:  # an affine stage: affine + field (.h5 composite)
            return save_itk_transform(path, self.dense_ddf.as_tensor(), self.affine, moving_affine=self.moving_affine,
                                      fixed_itk=self.fixed_itk, moving_itk=self.moving_itk, linear=self.linear)
        return save_itk_transform(path, self.ddf.as_tensor(), self.affine, moving_affine=self.moving_affine,
                                  fixed_itk=self.fixed_itk, moving_itk=self.moving_itk)

    def save_itk_affine(self, path: str | Path) -> Path:
        """Write the affine stage's map alone as an ITK affine transform (``.txt``, ``.tfm``, ``.mat``, ``.h5``).

        ITK and ANTs apply it as fixed LPS point -> moving LPS point
        (:func:`~monai_contreg.io.itk_transforms.save_itk_affine`); the dense part is not in it.

        Raises:
            UserInputError: the registration had no affine stage (:attr:`linear` is ``None``), or a bad path.
        """
        from .io.itk_transforms import save_itk_affine

        if self.linear is None:
            raise UserInputError("RegistrationResult.save_itk_affine: this registration ran no affine stage (linear is "
                                 "None); add one (preset 'unaligned', or stages: [{kind: affine}, ...]).")
        return save_itk_affine(path, self.linear, self.affine, moving_affine=self.moving_affine,
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
        if Grid(tuple(t.shape[2:]), aff).same_as(self.fixed_grid):
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

    def quality(self, fixed=None, moving=None, *, fixed_mask=None, moving_mask=None, auto_mask: bool = True, **kwargs):
        """The field's error estimated without landmarks: a
        :class:`~monai_contreg.evaluation.quality.QualityReport` (a calibrated model's estimate, not a measurement).

        ``fixed``/``moving``: the registered images (files, MetaTensors, or arrays on this result's grids); left
        out (both), the images the registration loaded (:attr:`inputs`, nothing read again) with its masks, the
        given ones and, on one grid, the automatic ones it segmented. Masks as for
        :func:`~monai_contreg.api.register`. Other keywords go to
        :func:`~monai_contreg.evaluation.quality.estimate_quality`. Where the registration itself found no plausible
        lung (:attr:`mask_report`: ``"not found"``) or ran unmasked, the estimate does not segment one either: it is
        taken in the body, as the registration was.

        Raises:
            UserInputError: only one of ``fixed``/``moving`` given, or neither and no :attr:`inputs` kept (a
                result loaded from a file); the errors of
                :func:`~monai_contreg.evaluation.quality.estimate_quality`.
        """
        from .evaluation.quality import estimate_quality

        if fixed is None or moving is None:
            if fixed is not None or moving is not None or not self.inputs:
                raise UserInputError("RegistrationResult.quality: give both fixed and moving, or neither on a result "
                                     "of register() (it keeps the images it loaded).")
            fixed, moving = self.inputs["fixed"], self.inputs["moving"]
            if fixed_mask is None and moving_mask is None:
                fixed_mask, moving_mask = self.inputs.get("fixed_mask"), self.inputs.get("moving_mask")
                if fixed_mask is not None and ((self.mask_report or {}).get("fixed") or {}).get("source") == "automatic":
                    kwargs.setdefault("fixed_mask_source", "automatic")
        fixed_source = ((self.mask_report or {}).get("fixed") or {}).get("source")
        if fixed_mask is None and fixed_source in ("not found", "none", "automatic, unused"):
            auto_mask = False  # one decision about the mask: the registration's

        return estimate_quality(
            fixed, moving, self.ddf.as_tensor(), fixed_mask=fixed_mask, moving_mask=moving_mask,
            fixed_affine=self.affine, moving_affine=self.moving_affine, auto_mask=auto_mask, **kwargs,
        )

    def jacobian_statistics(self, mask=None) -> dict[str, float]:
        """SDlogJ (true and Learn2Reg's), folding % and extremes of ``det J`` of the field on the fixed grid."""
        return jacobian_statistics(self.ddf.as_tensor().cpu(), mask)
