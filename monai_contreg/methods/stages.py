"""The stage kinds of a registration (:attr:`~monai_contreg.methods.config.RegistrationConfig.stages`).

A stage has a ``kind`` (:data:`STAGE_KINDS`) and its own settings: ``"dense"`` (:class:`DenseStage`, an Adam
instance optimisation of a dense field) and ``"convex"`` (:class:`ConvexStage`, ConvexAdam's coupled convex
discrete stage, with :class:`ConvexConfig`'s solver settings). A new kind (an affine stage) adds a dataclass with a
``kind`` class attribute and a ``validate()`` method here, and a runner in :mod:`monai_contreg.methods.run`;
``"affine"`` (:class:`AffineStage`, a global rigid-then-affine stage in world millimetres,
:mod:`monai_contreg.methods.affine`) runs first, before the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _field
from typing import ClassVar

from ..errors import UserInputError
from ..modes import PaddingMode, Similarity
from ..optim.schedule import PiecewiseSchedule

__all__ = [
    "AFFINE_INITS", "AFFINE_MODELS", "INIT_NAMES", "METHOD_NAMES", "STAGE_KINDS", "AffineStage", "AutoAffineConfig", "ConvexConfig", "ConvexStage",
    "DenseStage", "LevelConfig",
]


#: Valid values of the ``method`` alias (``"convex"`` = the convex stage alone, no Adam).
METHOD_NAMES = ("io", "convex")
#: Valid values of the ``init`` alias (``"convex"`` = a convex stage first: Adam starts from its field).
INIT_NAMES = ("zero", "convex")


@dataclass
class ConvexConfig:
    """The coupled convex discrete stage of ConvexAdam (see :mod:`monai_contreg.methods.convex`).

    Attributes:
        grid_spacing: average-pooling factor of the full-resolution MIND features (NLST: 6 -> 37x32x37).
        disp_hw: search half-width in coarse voxels: integer shifts in ``[-disp_hw, disp_hw]^3``.
        cost_smoothing_kernel: box-filter width applied to each slice of the cost volume.
        cost_smoothing_passes: number of such box-filter passes (ConvexAdam: two 3^3 filters).
        field_smoothing_kernel: box-filter width applied to the shift field after each labelling.
        field_smoothing_passes: number of such passes (ConvexAdam: one).
        coupling_weights: the coupling weights of the successive coupled iterations
            (``label = argmin_d cost(d) + w |d - u|^2``); empty = the smoothed argmin only.
        ic: make the field inverse consistent with the moving->fixed field.
        ic_iters: iterations of ``u1 <- (u1 - u2 o (id + u1)) / 2`` (and symmetric).
        padding_mode: how moving features are extended beyond the image for large shifts:
            ``"border"`` (replicate the edge, as the Adam stage's sampling) or ``"zeros"``.
        chunk_size: number of shifts processed at once (bounds the memory beyond the cost volume).
    """

    grid_spacing: int = 6
    disp_hw: int = 4
    cost_smoothing_kernel: int = 3
    cost_smoothing_passes: int = 2
    field_smoothing_kernel: int = 3
    field_smoothing_passes: int = 1
    coupling_weights: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    ic: bool = True
    ic_iters: int = 15
    padding_mode: str = "border"
    chunk_size: int = 64

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field (``convex.<name>``), what it expects and what it got."""
        from .._validation import choose

        for name, low in (("grid_spacing", 1), ("disp_hw", 0), ("ic_iters", 0), ("chunk_size", 1),
                          ("cost_smoothing_passes", 0), ("field_smoothing_passes", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserInputError(f"ConvexConfig: convex.{name} must be an integer >= {low}, got {v!r}.")
        for name in ("cost_smoothing_kernel", "field_smoothing_kernel"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % 2 == 0:
                raise UserInputError(f"ConvexConfig: convex.{name} must be a positive odd integer, got {v!r}.")
        if not isinstance(self.ic, bool):
            raise UserInputError(f"ConvexConfig: convex.ic must be true or false, got {self.ic!r}.")
        weights = tuple(self.coupling_weights)
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not (w >= 0 and w < float("inf")) for w in weights):
            raise UserInputError(f"ConvexConfig: convex.coupling_weights must be finite numbers >= 0, got {self.coupling_weights!r}.")
        self.coupling_weights = tuple(float(w) for w in weights)
        choose("ConvexConfig", "convex.padding_mode", self.padding_mode, (PaddingMode.BORDER.value, PaddingMode.ZEROS.value))


@dataclass
class DenseStage:
    """A dense stage (``kind: dense``): one Adam instance optimisation of a dense field (the paper's method).

    It starts from the field the previous stage ended with (zero for the first stage, or a given initial field),
    carried onto its own working grid (:func:`~monai_contreg.methods.multilevel.carry_field`). Dense stages run
    coarse to fine (``grid_factor`` not increasing).

    Attributes:
        grid_factor: its working-grid coarsening factor in image voxels (1 = full resolution, 2 = half, ...);
            features are average-pooled by it.
        schedule: its piecewise learning-rate schedule (``schedule.total_steps`` Adam steps; rates in voxels of
            its grid).
        reg_weight: weight ``lambda`` of its diffusion (or mask-aware) regulariser, field in its grid's voxels.
            The ``io`` preset's 1.75 was tuned on nlst_synth so that SDlogJ stays <= 0.1 on the large-motion pair;
            the authors' value 1.25 is kept in the ``io-authors`` and ``convexadam`` presets.
        mind_radius, mind_dilation: MIND-SSC settings of its features (image voxels; computed at full resolution,
            then average-pooled by ``grid_factor``).
        second_dilation: a second feature scale: MIND-SSC with this dilation (same radius) concatenated to the
            first, 24 channels instead of 12 (0 = off).
        smoothing_passes: box-filter passes applied to its parameter on read.
        smoothing_kernel: width of those box filters (odd, working-grid voxels; a finer grid needs a wider one for
            the same smoothing in mm).
        similarity: what the stage optimises (:class:`~monai_contreg.modes.Similarity`): ``"mind"`` (default: SSD
            of MIND-SSC features, the paper's), ``"lncc"`` (MONAI's ``LocalNormalizedCrossCorrelationLoss``) or
            ``"mi"`` (MONAI's ``GlobalMutualInformationLoss``, for pairs of different contrasts), the last two on
            the warped intensities average-pooled onto its grid (:mod:`monai_contreg.losses.intensity`). The MIND
            settings apply to ``"mind"`` only.
    """

    kind: ClassVar[str] = "dense"

    grid_factor: int = 2
    schedule: PiecewiseSchedule = _field(default_factory=PiecewiseSchedule)
    reg_weight: float = 1.75
    mind_radius: int = 1
    mind_dilation: int = 2
    second_dilation: int = 0
    smoothing_passes: int = 3
    smoothing_kernel: int = 3
    similarity: str = "mind"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``UserInputError`` naming the field and what it expects."""
        from .._validation import choose

        self.similarity = str(choose("DenseStage", "similarity", self.similarity, Similarity).value)
        for name, low in (("grid_factor", 1), ("mind_radius", 0), ("mind_dilation", 1), ("second_dilation", 0),
                          ("smoothing_passes", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserInputError(f"DenseStage: {name} must be an integer >= {low}, got {v!r}.")
        k = self.smoothing_kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise UserInputError(f"DenseStage: smoothing_kernel must be a positive odd integer, got {k!r}.")
        if isinstance(self.reg_weight, bool) or not isinstance(self.reg_weight, (int, float)) or not 0 <= self.reg_weight < float("inf"):
            raise UserInputError(f"DenseStage: reg_weight must be a finite number >= 0, got {self.reg_weight!r}.")
        self.reg_weight = float(self.reg_weight)
        if self.second_dilation and self.second_dilation == self.mind_dilation:
            raise UserInputError(
                f"DenseStage: second_dilation ({self.second_dilation}) equals its mind_dilation: the second feature "
                "scale would duplicate the first; give another dilation or 0 (off)."
            )
        self.schedule.validate()


#: The name the multi-level method's levels had; a level is a dense stage.
LevelConfig = DenseStage


@dataclass
class ConvexStage(ConvexConfig):
    """A convex stage (``kind: convex``): ConvexAdam's coupled convex discrete stage (:mod:`~monai_contreg.methods.convex`).

    It starts from no field, so it can only be the first stage; alone it is the ``convex`` preset, followed by a
    dense stage it is ConvexAdam (``convexadam``). Its solver settings are :class:`ConvexConfig`'s.

    Attributes:
        mind_radius, mind_dilation: MIND-SSC settings of its features (image voxels; computed at full resolution,
            then average-pooled by ``grid_spacing``).
    """

    kind: ClassVar[str] = "convex"

    mind_radius: int = 1
    mind_dilation: int = 2

    def validate(self) -> None:
        """Raise ``UserInputError`` naming the field and what it expects."""
        super().validate()
        for name, low in (("mind_radius", 0), ("mind_dilation", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserInputError(f"ConvexStage: {name} must be an integer >= {low}, got {v!r}.")


#: Valid values of :attr:`AffineStage.model`.
AFFINE_MODELS = ("rigid", "affine")
#: Valid values of :attr:`AffineStage.init`.
AFFINE_INITS = ("moments", "com", "identity")


@dataclass
class AffineStage:
    """An affine stage (``kind: affine``): a global map optimised in world millimetres, before the other stages.

    It finds ``A`` with moving world point ``A(p)`` for fixed world point ``p`` (RAS mm, through the grids'
    voxel-to-world matrices, so anisotropic spacing and oblique headers count), parametrised around the fixed
    content's centre of mass ``c`` as ``A(p) = exp(G) (p - c) + c + s t``: first rigid (``G`` skew-symmetric, the
    Lie algebra so(3): 3 rotation parameters in radians), then, with ``model: affine``, general (``G`` any 3x3,
    gl(3): rotation, scale and shear), ``t`` in units of ``translation_scale`` mm. The similarity is the MIND-SSC
    SSD of the dense stages (the package's features, average-pooled by each of ``levels``, coarse to fine), and
    each phase of each level is ``steps`` Adam steps whose rate falls from ``lr`` to ``lr * final_lr_fraction``
    (cosine). The stages after it register the fixed image to the moving image resampled through ``A``; the whole
    registration maps fixed ``p`` to moving ``A(p + u(p))`` (:mod:`monai_contreg.methods.affine`).

    Attributes:
        model: ``"rigid"`` (rotation + translation) or ``"affine"`` (rigid, then the general 12 parameters).
        levels: feature pooling factors, coarse to fine (image voxels; e.g. ``(4, 2)``: 6 then 3 mm on 1.5 mm images).
        steps: Adam steps of each phase (rigid; affine) at each level.
        lr: Adam's initial rate (parameter units: radians, gl(3) units, ``translation_scale`` mm).
        final_lr_fraction: the rate at a phase's last step, as a fraction of ``lr`` (cosine decay).
        translation_scale: millimetres of one translation parameter unit (a step of ``lr`` moves
            ``lr * translation_scale`` mm).
        init: ``"moments"`` (centres of mass, and the principal axes' rotation where it lowers the similarity),
            ``"com"`` (centres of mass: the translation between the contents' centres) or ``"identity"``.
        mind_radius, mind_dilation: MIND-SSC settings of its features (image voxels, full resolution).
        rewarp_every: the moving features are recomputed on the moving image resampled through the current
            estimate every this many steps (MIND-SSC follows the voxel axes, so it is not rotation invariant;
            0 = once per level and phase).
        max_points: the similarity is averaged over at most this many fixed voxels of each level (a seeded random
            subset, the same at every step; 0 = all voxels): the cost of a step is bounded on large images.
        accept_ratio: the result is kept only when its similarity at the finest level is below ``accept_ratio``
            times the identity's (else identity, logged): a stage that finds nothing better changes nothing.
    """

    kind: ClassVar[str] = "affine"

    model: str = "affine"
    levels: tuple[int, ...] = (4, 2)
    steps: int = 60
    lr: float = 0.02
    final_lr_fraction: float = 0.1
    translation_scale: float = 20.0
    init: str = "moments"
    mind_radius: int = 1
    mind_dilation: int = 2
    accept_ratio: float = 0.98
    max_points: int = 32768
    rewarp_every: int = 20

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``UserInputError`` naming the field and what it expects."""
        from .._validation import choose

        choose("AffineStage", "model", self.model, AFFINE_MODELS)
        choose("AffineStage", "init", self.init, AFFINE_INITS)
        levels = tuple(self.levels) if isinstance(self.levels, (list, tuple)) else None
        if not levels or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or v < 1
                             for v in levels):
            raise UserInputError(f"AffineStage: levels must be a non-empty list of integers >= 1 (pooling factors), got {self.levels!r}.")
        levels = tuple(int(v) for v in levels)
        if any(b > a for a, b in zip(levels, levels[1:])):
            raise UserInputError(f"AffineStage: levels must run coarse to fine (not increasing), got {list(levels)}.")
        self.levels = levels
        for name, low in (("steps", 0), ("mind_radius", 0), ("mind_dilation", 1), ("max_points", 0),
                          ("rewarp_every", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserInputError(f"AffineStage: {name} must be an integer >= {low}, got {v!r}.")
        for name, lo, hi in (("lr", 0.0, float("inf")), ("translation_scale", 0.0, float("inf")),
                             ("final_lr_fraction", 0.0, 1.0), ("accept_ratio", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi or v == float("inf"):
                raise UserInputError(f"AffineStage: {name} must be a finite number in ({lo:g}, {hi:g}], got {v!r}.")
            setattr(self, name, float(v))


@dataclass
class AutoAffineConfig:
    """When a registration adds an :class:`AffineStage` on its own (section ``auto_affine``).

    A config without an affine stage gets the default one (first) when the pair looks unaligned: the fixed and
    moving grids' centres, or their contents' centres of mass, lie more than ``max_shift_mm`` apart; or a
    principal axis of the contents' second moments turns by more than ``max_rotation_deg``; or their volumes
    differ by more than the factor ``(1 + max_scale)^3`` (see :func:`monai_contreg.methods.affine.alignment_check`,
    which says which bound was passed; the registration logs it). The content of an image is its voxels above
    the mean of its 2nd and 98th intensity percentiles (after the CT padding floor), in world mm.

    Attributes:
        enabled: apply the rule (``false``: never add a stage; a config with an affine stage always runs it).
        max_shift_mm: bound on the distance of the grids' centres and of the contents' centres of mass (mm).
        max_rotation_deg: bound on the angle between corresponding principal axes (degrees); only axes whose
            second moment differs from the others' by the factor ``axis_separation`` count (a round shape has no
            defined axis).
        max_scale: bound on ``|s - 1|`` for the isotropic scale ``s`` = (ratio of the second moments'
            determinants)^(1/6).
        axis_separation: the ratio of second moments (>= 1) beyond which a principal axis is defined.
    """

    enabled: bool = True
    max_shift_mm: float = 15.0
    max_rotation_deg: float = 5.0
    max_scale: float = 0.08
    axis_separation: float = 1.5

    def validate(self) -> None:
        """Raise ``UserInputError`` naming the field (``auto_affine.<name>``) and what it expects."""
        if not isinstance(self.enabled, bool):
            raise UserInputError(f"RegistrationConfig: auto_affine.enabled must be true or false, got {self.enabled!r}.")
        for name, low in (("max_shift_mm", 0.0), ("max_rotation_deg", 0.0), ("max_scale", 0.0), ("axis_separation", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low < v < float("inf"):
                raise UserInputError(f"RegistrationConfig: auto_affine.{name} must be a finite number > {low:g}, got {v!r}.")
            setattr(self, name, float(v))


#: Stage kinds: the ``kind`` of a stage mapping -> its dataclass. A new kind adds an entry here and a runner in
#: :mod:`monai_contreg.methods.run`; any other ``kind`` is an error naming these.
STAGE_KINDS: dict[str, type] = {"dense": DenseStage, "convex": ConvexStage, "affine": AffineStage}
