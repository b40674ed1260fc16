"""Typed configuration of a registration: a list of stages plus the settings they share.

A :class:`RegistrationConfig` is one structure: ``stages``, the registration's stages in the order they run
(``kind`` ``"dense"``: an Adam instance optimisation of a dense field, :class:`DenseStage`; ``"convex"``:
ConvexAdam's coupled convex discrete stage, :class:`ConvexStage`), and sections of settings every stage shares
(``preprocess``, ``features.storage``, ``field.design_spacing``, ``optim.betas``/``padding_mode``/``keep_in_image``,
``engine``, ``multilevel.mask_aware``/``cross_weight``). The presets: ``io`` is one dense stage, ``accurate`` two
(half, then full resolution), ``convexadam`` a convex stage then one dense stage.

Each setting lives in one place, and every way of giving settings reaches it through one function,
:meth:`RegistrationConfig.set` (``--set``, ``--config`` files, :meth:`~RegistrationConfig.from_dict` and so the
bundle's ``--method_overrides``, :meth:`~RegistrationConfig.with_overrides` and so ``tune`` search spaces, and
the Python attributes below): the same key gives the same result or the same :class:`~monai_contreg.errors.UserInputError`
from every source. A key is dotted (``stages.1.reg_weight``; a part that is an integer indexes a list, from 0); a
nested mapping is the same as its dotted keys (``{"optim": {"reg_weight": 2}}`` is ``optim.reg_weight``).

The keys of earlier versions keep working as aliases of the stage field they name
(:data:`STAGE_ALIASES`): ``optim.schedule``, ``optim.reg_weight``, ``field.grid_factor``,
``field.smoothing_passes``/``smoothing_kernel`` reach the config's one dense stage, ``features.mind_radius``/
``mind_dilation`` every stage when there is at most one dense stage, ``convex.*`` the convex stage,
``multilevel.levels.I`` the I-th dense stage, and ``method``/``init`` add or remove stages. Where an alias has no
single target (``optim.reg_weight`` on ``accurate``, two dense stages; ``convex.ic`` on ``io``, no convex stage) it
is an error naming the key to use instead, never a setting silently ignored. Unknown keys are errors naming the key
and the nearest valid one; an index out of range names the valid indices.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

from .._validation import suggest
from ..modes import FeatureStorage, PaddingMode
from ..errors import MissingFileError, UserInputError, describe_parse_error
from ..optim.schedule import PiecewiseSchedule

__all__ = [
    "INIT_NAMES",
    "METHOD_NAMES",
    "STAGE_ALIASES",
    "STAGE_KINDS",
    "ConvexConfig",
    "ConvexStage",
    "DenseStage",
    "EngineConfig",
    "FeatureConfig",
    "FieldConfig",
    "LevelConfig",
    "MultilevelConfig",
    "OptimConfig",
    "PreprocessConfig",
    "RegistrationConfig",
    "scale_schedules",
    "schedule_steps",
]


@dataclass
class PreprocessConfig:
    """Intensity preprocessing before feature extraction (MONAI transforms, see :mod:`monai_contreg.data`).

    Attributes:
        intensity: ``"window"`` (clip to ``window`` then scale to [0, 1]), ``"minmax"`` (scale each image's
            range to [0, 1]) or ``"none"``.
        window: ``(low, high)`` intensity window for ``"window"`` (HU for CT).
        use_masks: multiply each image by its mask when masks are given (outside -> ``mask_fill``).
        mask_fill: intensity given to voxels outside the mask (after normalisation).
        intensity_floor: intensities below this are raised to it before normalisation (HU; default -1024):
            the padding values scanners write outside the reconstructed circle (-1024, -2000, -3024, -32768)
            all read as air, so that they change neither ``"minmax"`` scaling nor raw (``"none"``) MIND
            features. ``None``: no floor (data whose values below -1024 mean something).
        auto_mask: with ``use_masks``, segment the lungs of an image given without a mask
            (:func:`monai_contreg.data.lung_mask.lung_mask`, CT in HU); an image that does not look like a
            chest CT is registered unmasked, with a logged warning. CLI: ``--no-auto-mask`` turns it off.
    """

    intensity: str = "window"
    window: tuple[float, float] = (-1000.0, 1000.0)
    use_masks: bool = True
    mask_fill: float = 0.0
    intensity_floor: float | None = -1024.0
    auto_mask: bool = True


class _Section:
    """A section of shared settings that also answers the earlier per-stage keys of its name (aliases).

    The alias attributes (e.g. ``OptimConfig.reg_weight``) hold nothing: reading or writing one goes through the
    owning config's :meth:`RegistrationConfig.get` / :meth:`RegistrationConfig.set` with the dotted key
    (``"optim.reg_weight"``), so the Python attribute behaves exactly as ``--set optim.reg_weight=...``.
    """

    def _owner_for(self, key: str) -> RegistrationConfig:
        owner = self.__dict__.get("_owner")
        if owner is None:
            raise UserInputError(
                f"{type(self).__name__}: {key} is a stage setting and this section belongs to no RegistrationConfig; "
                "per-stage settings live in RegistrationConfig.stages (set them there, or on the config)."
            )
        return owner


def _alias(key: str) -> property:
    """A property that reads and writes the dotted ``key`` on the section's owning config."""

    def fget(self: _Section) -> Any:
        return self._owner_for(key).get(key)

    def fset(self: _Section, value: Any) -> None:
        self._owner_for(key).set(key, value)

    return property(fget, fset, doc=f"Alias of the stage setting ``{key}`` (see :data:`STAGE_ALIASES`).")


@dataclass
class FeatureConfig(_Section):
    """MIND-SSC settings shared by every stage (each stage has its own ``mind_radius``/``mind_dilation``).

    Attributes:
        storage: precision the optimisation keeps the working-grid features in: ``"float32"`` or ``"bfloat16"``
            (rounded once; arithmetic stays float32; halves the sampled memory on the compiled CPU path).
        mind_radius, mind_dilation: aliases (not stored here) of every stage's ``mind_radius``/``mind_dilation``
            when the config has at most one dense stage (see :data:`STAGE_ALIASES`).
    """

    storage: str = "float32"

    mind_radius = _alias("features.mind_radius")
    mind_dilation = _alias("features.mind_dilation")


@dataclass
class FieldConfig(_Section):
    """The working grid every stage's field is defined relative to.

    Units: ``design_spacing`` is in mm; every other constant of the method is in voxels: a dense stage's
    ``grid_factor`` in image voxels, its ``smoothing_kernel`` in working-grid voxels, MIND's radius and dilation in
    image voxels, the learning rates (:class:`~monai_contreg.optim.schedule.PiecewiseSchedule`) and the regulariser
    (:attr:`DenseStage.reg_weight`) act on a field in working-grid voxels. They were set on images at
    ``design_spacing``: :func:`monai_contreg.native.register_native` resamples to that spacing by default, so they
    keep their physical size (at 1.5 mm: a 3 mm working grid, peak step 15 working voxels = 45 mm).

    Attributes:
        design_spacing: isotropic image spacing (mm) the preset's voxel constants were set at (NLST: 1.5 mm);
            the default working spacing of :func:`~monai_contreg.native.register_native`.
        grid_factor, smoothing_passes, smoothing_kernel: aliases (not stored here) of the one dense stage's
            fields (see :data:`STAGE_ALIASES`).
    """

    design_spacing: float = 1.5

    grid_factor = _alias("field.grid_factor")
    smoothing_passes = _alias("field.smoothing_passes")
    smoothing_kernel = _alias("field.smoothing_kernel")


@dataclass
class OptimConfig(_Section):
    """Adam settings shared by every dense stage (each has its own schedule and regulariser weight).

    Attributes:
        betas: Adam's ``(beta1, beta2)``.
        padding_mode: ``grid_sample`` padding of the warped moving features (``"border"`` or ``"zeros"``).
        keep_in_image: after every Adam step, clamp the field's parameter so that each working-grid voxel ``x``
            corresponds to a point ``x + u(x)`` inside the image (``0 <= x_i + u_i <= n_i - 1`` on each axis): a
            displacement bound given by the image extent. A sample pushed outside the image gets no similarity
            gradient (border padding) and Adam's momentum (an early step of about the learning rate, 15 working
            voxels at peak) carries it further away; on small or unmasked images the whole field ran off that way.
            On lung-masked NLST-size pairs the bound is inactive, or touches only a few border voxels.
        schedule, reg_weight: aliases (not stored here) of the one dense stage's fields (see :data:`STAGE_ALIASES`).
    """

    betas: tuple[float, float] = (0.9, 0.999)
    padding_mode: str = "border"
    keep_in_image: bool = True

    schedule = _alias("optim.schedule")
    reg_weight = _alias("optim.reg_weight")


@dataclass
class EngineConfig:
    """Run-time behaviour of the ignite engine (no effect on the result unless early stopping is on).

    Attributes:
        progress: show a tqdm progress bar over steps.
        log_every: log the loss every this many steps (0 = never).
        early_stop_patience: stop when the loss has not improved for this many steps (0 = off).
        early_stop_min_delta: relative improvement that resets the patience counter.
        early_stop_warmup: no early stop before this step.
        tre_every: with keypoints given, measure the TRE every this many steps (0 = off); analysis only.
        checkpoint_dir: if set, save the field and optimiser state there every ``checkpoint_every`` steps.
        checkpoint_every: checkpoint period in steps.
        num_threads: torch CPU threads for the run (0 = leave torch's setting).
        fused: the similarity's compiled CPU path (one-pass warp + SSD + gradient, :mod:`monai_contreg.kernels`):
            ``None`` = use it where available, ``False`` = never (``grid_sample`` + autograd), ``True`` = require it.
            One step agrees to float rounding; over a whole default run (270 steps from a zero field) the
            rounding differences grow at a few voxels: measured (``benchmarks/kernel_parity.py``, nlst_synth
            0101, ``io``) max 1.09 voxel, 99.9th percentile 0.167, mean 0.0087 voxel, TRE 0.5143 vs 0.5139 mm.
            The path that ran is recorded (``RegistrationResult.kernels``, ``runtimes.json``); a ``LOSS_COMPUTED``
            handler switches the step to the autograd path.
        divergence_check: stop a run that goes off with
            :class:`~monai_contreg.errors.RegistrationDivergedError` (:class:`~monai_contreg.optim.DivergenceGuard`;
            for ``method="convex"`` the end-of-run displacement and folding tests on its result). The guard tests
            loosely during the run (the paper's high early learning rate makes big transient excursions that the
            decay phase may still repair) and strictly at the end.
        divergence_every: check every this many steps during the run.
        divergence_min_steps: the loss tests apply from this step on, and at the end only to runs at least this
            long: Adam's first steps move every parameter by about the learning rate, so the loss of a run of a few
            steps says little (the displacement and folding tests always apply).
        divergence_loss_ratio: during the run, a loss above this multiple of the first step's loss (the loss of
            the initial field) means the run is lost.
        divergence_max_displacement: during the run, a displacement along an axis beyond this fraction of the image
            extent along that axis means the run is lost (1.0: the field left the image; with ``keep_in_image`` it
            cannot: on small images the high early rate makes excursions of most of the extent that the decay phase
            repairs).
        divergence_final_loss_ratio: at the end, a loss above this multiple of the first step's loss means the
            optimisation made the alignment much worse (a short run may end slightly above its start: Adam's first
            steps move every parameter by about the learning rate, and the regulariser starts at zero).
        divergence_final_max_displacement: at the end, the largest plausible displacement along an axis as a
            fraction of the image extent (0.25: 84 mm across an NLST scan, whose largest breathing motion is about
            25 mm).
        divergence_max_folding: at the end, the largest plausible share (percent) of working-grid voxels with
            ``det J <= 0``.
    """

    progress: bool = False
    log_every: int = 0
    early_stop_patience: int = 0
    early_stop_min_delta: float = 1e-4
    early_stop_warmup: int = 180
    tre_every: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    num_threads: int = 0
    fused: bool | None = None
    divergence_check: bool = True
    divergence_every: int = 10
    divergence_min_steps: int = 20
    divergence_loss_ratio: float = 100.0
    divergence_max_displacement: float = 1.0
    divergence_final_loss_ratio: float = 2.0
    divergence_final_max_displacement: float = 0.25
    divergence_max_folding: float = 10.0


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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``UserInputError`` naming the field and what it expects."""
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


#: Stage kinds: the ``kind`` of a stage mapping -> its dataclass. A new kind (an affine stage) adds an entry here
#: and a runner in :mod:`monai_contreg.methods.run`; any other ``kind`` is an error naming these.
STAGE_KINDS: dict[str, type] = {"dense": DenseStage, "convex": ConvexStage}


@dataclass
class MultilevelConfig(_Section):
    """Regulariser options shared by every dense stage.

    Attributes:
        mask_aware: sliding-motion-aware regulariser: differences of the field across the fixed image's mask
            boundary are weighted by ``cross_weight`` instead of 1 (needs a fixed mask). Off by default.
        cross_weight: weight of the across-boundary differences when ``mask_aware`` (0 = free sliding).
        levels: alias (not stored here) of the config's dense stages, coarse to fine: ``multilevel.levels.I`` is
            the I-th dense stage (see :data:`STAGE_ALIASES`); giving a list replaces the dense stages.
    """

    mask_aware: bool = False
    cross_weight: float = 0.0

    levels = _alias("multilevel.levels")

    def validate(self) -> None:
        """Raise ``UserInputError`` naming the offending field."""
        if not isinstance(self.mask_aware, bool):
            raise UserInputError(f"MultilevelConfig: multilevel.mask_aware must be true or false, got {self.mask_aware!r}.")
        w = self.cross_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise UserInputError(f"MultilevelConfig: multilevel.cross_weight must be a finite number >= 0, got {w!r}.")
        self.cross_weight = float(w)


#: Keys of earlier versions that name a stage field: key -> (stage kinds it reaches, field name).
#: ``"dense"``: the config's one dense stage (an error naming ``stages.I.<field>`` with several, or none);
#: ``"mind"``: every stage, where the config has at most one dense stage (its stages share one MIND, as before);
#: ``"convex"``: the convex stage. ``multilevel.levels.I`` (the I-th dense stage), ``method`` and ``init`` are
#: aliases too (:meth:`RegistrationConfig.set`).
STAGE_ALIASES: dict[str, tuple[str, str]] = {
    "optim.schedule": ("dense", "schedule"),
    "optim.reg_weight": ("dense", "reg_weight"),
    "field.grid_factor": ("dense", "grid_factor"),
    "field.smoothing_passes": ("dense", "smoothing_passes"),
    "field.smoothing_kernel": ("dense", "smoothing_kernel"),
    "features.mind_radius": ("mind", "mind_radius"),
    "features.mind_dilation": ("mind", "mind_dilation"),
}

#: Sections of shared settings (the dataclass fields of :class:`RegistrationConfig` besides ``stages``).
_SECTIONS = ("preprocess", "features", "field", "optim", "engine", "multilevel")


class _NoConvexStage:
    """``RegistrationConfig.convex`` of a config without a convex stage: reading or writing ``X`` raises the
    config's error for the key ``convex.X``."""

    def __init__(self, owner: RegistrationConfig) -> None:
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._owner.get(f"convex.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        self._owner.set(f"convex.{name}", value)

    def __repr__(self) -> str:
        return "<no convex stage>"


def _default_stages() -> tuple[Any, ...]:
    return (DenseStage(),)


@dataclass
class RegistrationConfig:
    """Everything that defines a registration run: its stages, and the settings they share.

    Attributes:
        stages: the stages in the order they run (:data:`STAGE_KINDS`: :class:`DenseStage`, :class:`ConvexStage`;
            mappings with a ``kind`` in YAML/JSON). Each stage starts from the field the previous one ended with; a
            convex stage can only come first, dense stages run coarse to fine. Default: one dense stage (``io``).
        preprocess, features, field, optim, engine, multilevel: settings every stage shares (the nested
            dataclasses). Their alias attributes (``optim.reg_weight``, ``field.grid_factor``, ...) read and
            write the stage fields they name (:data:`STAGE_ALIASES`).

    ``method`` (``"convex"``: the convex stage alone, else ``"io"``), ``init`` (``"convex"`` when a convex stage
    comes first, else ``"zero"``) and ``convex`` (the convex stage) are read from the stages; setting them is
    :meth:`set` with that key.
    """

    stages: tuple[Any, ...] = _field(default_factory=_default_stages)
    preprocess: PreprocessConfig = _field(default_factory=PreprocessConfig)
    features: FeatureConfig = _field(default_factory=FeatureConfig)
    field: FieldConfig = _field(default_factory=FieldConfig)
    optim: OptimConfig = _field(default_factory=OptimConfig)
    engine: EngineConfig = _field(default_factory=EngineConfig)
    multilevel: MultilevelConfig = _field(default_factory=MultilevelConfig)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "stages":
            value = _make_stages("stages", value)
        if name in _SECTIONS and isinstance(value, _Section):
            owner = value.__dict__.get("_owner")
            if owner is not None and owner is not self:
                value = copy.copy(value)  # a section of another config (dataclasses.replace): this config's own copy
            value.__dict__["_owner"] = self  # the section's alias attributes act on this config
        object.__setattr__(self, name, value)

    # ----------------------------------------------------------------- read from the stages
    @property
    def dense_stages(self) -> tuple[DenseStage, ...]:
        """The dense stages, coarse to fine (the levels of a multi-level config)."""
        return tuple(s for s in self.stages if s.kind == "dense")

    @property
    def method(self) -> str:
        """``"convex"`` when the stages are the convex stage alone, else ``"io"`` (set: :meth:`set` ``"method"``)."""
        return "io" if self.dense_stages else "convex"

    @method.setter
    def method(self, value: str) -> None:
        self.set("method", value)

    @property
    def init(self) -> str:
        """``"convex"`` when a convex stage comes first, else ``"zero"`` (set: :meth:`set` ``"init"``)."""
        return "convex" if self.stages and self.stages[0].kind == "convex" else "zero"

    @init.setter
    def init(self, value: str) -> None:
        self.set("init", value)

    @property
    def convex(self) -> ConvexStage:
        """The convex stage (``convex.*`` keys). Without one, a stand-in whose every attribute raises the error of
        :meth:`set`/:meth:`get` for that key (``cfg.convex.ic`` is refused exactly as ``--set convex.ic=...``)."""
        if not any(s.kind == "convex" for s in self.stages):
            return _NoConvexStage(self)
        return self.get("convex")

    @convex.setter
    def convex(self, value: ConvexConfig) -> None:
        self.set("convex", value)

    # ----------------------------------------------------------------- the one way in
    def get(self, key: str) -> Any:
        """The value of a dotted key (any key :meth:`set` takes; the same errors for keys it refuses).

        Raises:
            UserInputError: an unknown key (with the nearest valid one), an index out of range (with the valid
            indices), an alias with no single target (naming the key to read instead).
        """
        return _get(self, _check_key(key))

    def set(self, key: str, value: Any) -> None:
        """Set one dotted key in place and validate the config; every source of settings ends here.

        ``key`` is canonical (``stages.1.reg_weight``, ``optim.betas``) or an alias of earlier versions
        (:data:`STAGE_ALIASES`, ``multilevel.levels.I...``, ``method``, ``init``); a mapping value is the same as
        its dotted keys. Values are checked against the field's type (a bool field takes only true/false).

        Raises:
            UserInputError: an unknown key (with the nearest valid one), an index that is not an integer or is out
            of range (with the valid indices), an alias with no single target on this config (naming the key to
            use instead), a value of the wrong type or range (naming the key).
        """
        _apply(self, [(key, value)])

    # ----------------------------------------------------------------- dict round trip
    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (tuples as lists, each stage with its ``kind``), suitable for YAML/JSON."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        d["stages"] = [{"kind": s.kind, **sd} for s, sd in zip(self.stages, d["stages"])]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: RegistrationConfig | None = None) -> RegistrationConfig:
        """Build a config from a (possibly partial) nested dict, on top of ``base`` (default: defaults).

        Each leaf of ``data`` is one dotted key given to :meth:`set` (``{"optim": {"reg_weight": 2}}`` is
        ``optim.reg_weight=2``); keys that change the stages (``stages``, ``multilevel.levels``, ``method``,
        ``init``) are applied first.

        Raises:
            UserInputError: as :meth:`set`, or ``data`` not a mapping.
        """
        if not isinstance(data, dict):
            raise UserInputError(f"RegistrationConfig: a config must be a mapping, got {type(data).__name__} ({data!r}).")
        out = copy.deepcopy(base) if base is not None else cls()
        _apply(out, _flatten("", data))
        return out

    @classmethod
    def from_file(cls, path: str | Path, base: RegistrationConfig | None = None) -> RegistrationConfig:
        """Load a YAML or JSON file holding a (partial) config dict (:meth:`from_dict`)."""
        p = Path(path)
        if not p.is_file():
            raise MissingFileError(f"RegistrationConfig.from_file: config file {str(p)!r} does not exist.")
        try:
            text = p.read_text()
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise UserInputError(f"RegistrationConfig.from_file: cannot parse {str(p)!r}: {describe_parse_error(exc)}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserInputError(f"RegistrationConfig.from_file: {str(p)!r} must hold a mapping, got {type(data).__name__}.")
        return cls.from_dict(data, base)

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> RegistrationConfig:
        """Apply dotted overrides (``"section.option=value"`` strings, or a dict of them) to a copy (:meth:`set`).

        Values of strings are parsed as YAML scalars/lists (``1.5``, ``true``, ``[-1000, 1000]``, ``null``).

        Raises:
            UserInputError: a malformed override, or as :meth:`set`.

        Example:
            >>> cfg = RegistrationConfig().with_overrides(["optim.schedule.total_steps=100", "preprocess.use_masks=false"])
            >>> cfg.stages[0].schedule.total_steps, cfg.preprocess.use_masks
            (100, False)
            >>> RegistrationConfig().with_overrides(["engine.fused=maybe"])
            Traceback (most recent call last):
            ...
            monai_contreg.errors.UserInputError: RegistrationConfig: engine.fused expects bool | None, got 'maybe'.
        """
        import yaml

        if isinstance(overrides, dict):
            items = list(overrides.items())
        else:
            items = []
            for item in overrides:
                if not isinstance(item, str) or "=" not in item:
                    raise UserInputError(f"RegistrationConfig.with_overrides: override {item!r} must look like 'key.sub=value'.")
                k, v = item.split("=", 1)
                try:
                    items.append((k.strip(), yaml.safe_load(v)))
                except yaml.YAMLError as exc:
                    raise UserInputError(f"RegistrationConfig.with_overrides: cannot parse the value of {item!r}: {describe_parse_error(exc)}") from None
        out = copy.deepcopy(self)
        _apply(out, items)
        return out

    def validate(self) -> None:
        """Check the stages (kinds, order, each stage's values) and the shared values; raise ``UserInputError``."""
        from .._validation import choose

        stages = self.stages
        if not stages:
            raise UserInputError(f"RegistrationConfig: stages is empty; give at least one stage (kinds: {sorted(STAGE_KINDS)}).")
        kinds = [s.kind for s in stages]
        for i, s in enumerate(stages):
            _check_stage(s, f"stages.{i}")
            if s.kind == "convex" and i:
                raise UserInputError(
                    f"RegistrationConfig: stages.{i} is a convex stage, but a convex stage starts from no field, so it "
                    f"can only be the first stage (stages: {kinds})."
                )
        dense = [(i, s) for i, s in enumerate(stages) if s.kind == "dense"]
        factors = [s.grid_factor for _, s in dense]
        if any(b > a for a, b in zip(factors, factors[1:])):
            raise UserInputError(
                f"RegistrationConfig: the dense stages must run coarse to fine (grid_factor not increasing), got grid "
                f"factors {factors} (stages {[i for i, _ in dense]}): a coarser stage after a finer one undoes its detail."
            )
        self.multilevel.validate()
        if self.multilevel.mask_aware and not dense:
            raise UserInputError(
                f"RegistrationConfig: multilevel.mask_aware has no effect on this config: it has no dense stage (stages: "
                f"{kinds}); the mask-aware regulariser belongs to the dense stages."
            )
        choose("RegistrationConfig", "preprocess.intensity", self.preprocess.intensity, ("window", "minmax", "none"))
        choose("RegistrationConfig", "optim.padding_mode", self.optim.padding_mode, PaddingMode)
        lo, hi = self.preprocess.window
        if not lo < hi:
            raise UserInputError(f"RegistrationConfig: preprocess.window must be (low, high) with low < high, got {self.preprocess.window}.")
        choose("RegistrationConfig", "features.storage", self.features.storage, FeatureStorage)
        b1, b2 = self.optim.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise UserInputError(f"RegistrationConfig: optim.betas must lie in [0, 1), got {self.optim.betas}.")
        for name in ("log_every", "early_stop_patience", "tre_every", "num_threads"):
            if getattr(self.engine, name) < 0:
                raise UserInputError(f"RegistrationConfig: engine.{name} must be >= 0, got {getattr(self.engine, name)}.")
        if not (self.field.design_spacing > 0 and self.field.design_spacing < float("inf")):
            raise UserInputError(f"RegistrationConfig: field.design_spacing must be a positive number (mm), got {self.field.design_spacing}.")
        if self.engine.divergence_min_steps < 0:
            raise UserInputError(f"RegistrationConfig: engine.divergence_min_steps must be >= 0, got {self.engine.divergence_min_steps}.")
        if self.engine.divergence_every < 1:
            raise UserInputError(f"RegistrationConfig: engine.divergence_every must be >= 1, got {self.engine.divergence_every}.")
        for name in ("divergence_loss_ratio", "divergence_max_displacement", "divergence_final_loss_ratio",
                     "divergence_final_max_displacement", "divergence_max_folding"):
            v = getattr(self.engine, name)
            if not v > 0:
                raise UserInputError(f"RegistrationConfig: engine.{name} must be > 0, got {v}.")
        if self.engine.checkpoint_every < 1:
            raise UserInputError(f"RegistrationConfig: engine.checkpoint_every must be >= 1, got {self.engine.checkpoint_every}.")


def schedule_steps(config: RegistrationConfig) -> list[int]:
    """The Adam steps a config runs: one entry per dense stage, in order (``[]`` for the convex stage alone)."""
    return [s.schedule.total_steps for s in config.dense_stages]


def scale_schedules(config: RegistrationConfig, steps: int) -> RegistrationConfig:
    """A copy of ``config`` whose dense stages' schedules are shortened (or lengthened) in proportion.

    The longest dense stage gets ``steps`` steps and every dense stage's schedule is scaled by the same factor
    ``steps / max(total_steps)`` (each rounded, at least 1 step), so the stages keep their proportions
    (``accurate``'s 100 + 40 steps become 50 + 20 at ``steps=50``); within a schedule ``constant_steps`` and
    ``cosine_end`` are scaled and rounded (a constant schedule, ``constant_steps >= total_steps``, stays constant),
    ``cosine_period`` is scaled; learning rates are unchanged.

    Raises:
        UserInputError: ``steps`` < 1, or a config without a dense stage (no schedule).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserInputError(f"scale_schedule: steps must be an integer >= 1, got {steps!r}.")
    dense = [i for i, s in enumerate(config.stages) if s.kind == "dense"]
    if not dense:
        raise UserInputError(f"scale_schedule: the config has no dense stage (stages: {_kinds(config)}), so no schedule to scale.")
    out = copy.deepcopy(config)
    stages = list(out.stages)
    f = steps / max(stages[i].schedule.total_steps for i in dense)
    for i in dense:
        sched = stages[i].schedule
        n = max(1, int(round(sched.total_steps * f)))
        g = n / sched.total_steps
        constant = sched.constant_steps >= sched.total_steps
        cs = n if constant else min(n, int(round(sched.constant_steps * g)))
        ce = max(cs, min(n, int(round(sched.cosine_end * g))))
        stages[i] = dataclasses.replace(stages[i], schedule=dataclasses.replace(
            sched, constant_steps=cs, cosine_end=ce, cosine_period=sched.cosine_period * g, total_steps=n))
    out.stages = tuple(stages)
    out.validate()
    return out


# --------------------------------------------------------------------------------------------- key resolution
_STAGE_TYPES = (DenseStage, ConvexStage)
#: Top-level names a key may start with.
_HEADS = ("stages", "method", "init", "convex", *_SECTIONS)
#: Keys that change the list of stages: applied before the others of one call.
_STRUCTURAL = ("stages", "method", "init", "multilevel.levels")


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or any(not p.strip() or p != p.strip() for p in key.split(".")):
        raise UserInputError(f"RegistrationConfig: {key!r} is not a dotted key such as 'optim.reg_weight' or 'stages.0.reg_weight'.")
    return key


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """``(dotted key, leaf value)`` pairs of a nested mapping (a non-mapping value is one leaf)."""
    if not isinstance(value, dict):
        return [(prefix, value)]
    out: list[tuple[str, Any]] = []
    for k, v in value.items():
        if isinstance(k, bool) or not isinstance(k, (str, int)):
            raise UserInputError(f"RegistrationConfig: {prefix or 'config'} has a key {k!r} that is not a name or an index.")
        out.extend(_flatten(f"{prefix}.{k}" if prefix else str(k), v))
    return out


def _apply(cfg: RegistrationConfig, items: list[tuple[str, Any]]) -> None:
    """Set ``items`` (dotted key, value) on ``cfg`` in place, stage-changing keys first, then validate.

    This is the one path of every source of settings (:meth:`RegistrationConfig.set`).
    """
    flat: list[tuple[str, Any]] = []
    for key, value in items:
        flat.extend(_flatten(_check_key(key), value))
    first = [kv for kv in flat if kv[0] in _STRUCTURAL]
    for key, value in first + [kv for kv in flat if kv[0] not in _STRUCTURAL]:
        _set(cfg, key, value)
    cfg.validate()


def _index(key: str, name: str, part: str, count: int, what: str = "stage") -> int:
    """The index ``part`` of the list ``name`` of ``count`` items. Raises UserInputError naming the valid indices."""
    valid = (f"valid indices of {name}: {list(range(count))}" if count else
             f"{name} is empty on this config (it has no {'dense stage' if what == 'level' else 'stage'})")
    if not part.lstrip("-").isdigit():
        raise UserInputError(f"RegistrationConfig: {key}: {what} index {part!r} is not an integer; {valid}.")
    i = int(part)
    if not 0 <= i < count:
        raise UserInputError(f"RegistrationConfig: {key}: {what} index {i} is out of range; {valid}.")
    return i


def _names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _walk(obj: Any, path: list[str], key: str, prefix: str, extra: tuple[str, ...] = ()) -> tuple[Any, str]:
    """The dataclass holding the last part of ``path`` under ``obj``, checking every part's name."""
    for j, part in enumerate(path):
        names = _names(obj)
        if part not in names:
            valid = sorted(names + list(extra) if j == 0 else names)
            where = ".".join([prefix, *path[:j]])
            raise UserInputError(
                f"RegistrationConfig: unknown option {key}; valid options of {where}: {valid}.{suggest(part, valid)}"
            )
        if j == len(path) - 1:
            return obj, part
        nxt = getattr(obj, part)
        if not dataclasses.is_dataclass(nxt):
            raise UserInputError(f"RegistrationConfig: {key}: {'.'.join([prefix, *path[: j + 1]])} is a value ({nxt!r}), not a section.")
        obj = nxt
    raise UserInputError(f"RegistrationConfig: {key} names a section; give one of its options: {sorted(_names(obj))}.")


def _set_path(obj: Any, path: list[str], value: Any, key: str, prefix: str, extra: tuple[str, ...] = ()) -> None:
    holder, name = _walk(obj, path, key, prefix, extra)
    current = getattr(holder, name)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, type(current)):
            raise UserInputError(
                f"RegistrationConfig: {key} must be a mapping of {type(current).__name__} fields ({_names(current)}), got {value!r}."
            )
        value = copy.deepcopy(value)
    else:
        value = _coerce(key, value, get_type_hints(type(holder))[name], current)
    setattr(holder, name, value)


def _get_path(obj: Any, path: list[str], key: str, prefix: str, extra: tuple[str, ...] = ()) -> Any:
    if not path:
        return obj
    holder, name = _walk(obj, path, key, prefix, extra)
    return getattr(holder, name)


def _check_stage(stage: Any, key: str, canonical: str | None = None) -> None:
    """Validate one stage; its error names ``key`` (and the canonical key where ``key`` is an alias)."""
    try:
        stage.validate()
    except ValueError as exc:
        at = key if canonical is None or canonical == key else f"{key}, that is {canonical}"
        raise UserInputError(f"{exc} (in {at})") from None


def _kinds(cfg: RegistrationConfig) -> list[str]:
    return [s.kind for s in cfg.stages]


def _alias_targets(cfg: RegistrationConfig, key: str, alias: str) -> list[int]:
    """Indices of the stages the alias ``alias`` (a key of :data:`STAGE_ALIASES`) reaches on ``cfg``."""
    mode, name = STAGE_ALIASES[alias]
    dense = [i for i, s in enumerate(cfg.stages) if s.kind == "dense"]
    rest = key[len(alias):]
    if mode == "mind" and len(dense) <= 1:
        every = [i for i, s in enumerate(cfg.stages) if name in _names(s)]
        if every:
            return every
    if len(dense) == 1:
        return dense
    if not dense:
        raise UserInputError(
            f"RegistrationConfig: {key} has no effect on this config: it has no dense stage (stages: {_kinds(cfg)}); "
            f"{name} belongs to a dense stage (add one: method=io, or a stages list with kind: dense)."
        )
    raise UserInputError(
        f"RegistrationConfig: {key} is ambiguous on this config: it has {len(dense)} dense stages (stages "
        f"{dense}, coarse to fine, e.g. preset 'accurate'), each with its own {name}; set stages.I.{name}{rest} "
        f"instead (I = {', '.join(map(str, dense))})."
    )


def _convex_index(cfg: RegistrationConfig, key: str) -> int:
    found = [i for i, s in enumerate(cfg.stages) if s.kind == "convex"]
    if not found:
        raise UserInputError(
            f"RegistrationConfig: {key} has no effect on this config: it has no convex stage (stages: {_kinds(cfg)}); "
            "add one with init=convex (a convex stage first, e.g. preset 'convexadam'), or give stages with kind: convex."
        )
    return found[0]


def _new_convex(cfg: RegistrationConfig) -> ConvexStage:
    """A default convex stage computing the MIND features of the first dense stage (as they were shared)."""
    dense = cfg.dense_stages
    return ConvexStage(mind_radius=dense[0].mind_radius, mind_dilation=dense[0].mind_dilation) if dense else ConvexStage()


def _make_stages(where: str, value: Any, only: str | None = None) -> tuple[Any, ...]:
    """A tuple of validated stages from stage dataclasses or mappings (``kind`` required unless ``only``)."""
    if not isinstance(value, (list, tuple)):
        raise UserInputError(
            f"RegistrationConfig: {where} must be a list of stages (mappings with a kind: {sorted(STAGE_KINDS)}), got {value!r}."
        )
    out = []
    for i, item in enumerate(value):
        w = f"{where}.{i}"
        if isinstance(item, _STAGE_TYPES):
            stage = item
        elif isinstance(item, dict):
            kind = item.get("kind", only)
            if kind is None:
                raise UserInputError(f"RegistrationConfig: {w} needs a kind, one of {sorted(STAGE_KINDS)}; got {item!r}.")
            if kind not in STAGE_KINDS:
                raise UserInputError(
                    f"RegistrationConfig: {w}.kind: unknown stage kind {kind!r}; expected one of {sorted(STAGE_KINDS)}."
                    f"{suggest(str(kind), STAGE_KINDS)}"
                )
            stage = STAGE_KINDS[kind]()
            for k, v in _flatten("", {k: v for k, v in item.items() if k != "kind"}):
                _set_path(stage, k.split("."), v, f"{w}.{k}", w)
        else:
            raise UserInputError(
                f"RegistrationConfig: {w} must be a mapping of stage fields with a kind ({sorted(STAGE_KINDS)}), got {item!r}."
            )
        if only is not None and stage.kind != only:
            raise UserInputError(
                f"RegistrationConfig: {w} must be a {only} stage ({where} holds the {only} stages), got kind "
                f"{stage.kind!r}; give the other kinds in stages."
            )
        _check_stage(stage, w)
        out.append(stage)
    return tuple(out)


def _set(cfg: RegistrationConfig, key: str, value: Any) -> None:
    """Set one leaf key (a mapping was flattened before) on ``cfg``."""
    from .._validation import choose

    parts = key.split(".")
    head = parts[0]
    stages = list(cfg.stages)
    if head == "stages":
        if len(parts) == 1:
            cfg.stages = _make_stages("stages", value)
            return
        i = _index(key, "stages", parts[1], len(stages))
        where = f"stages.{i}"
        if len(parts) == 2:
            if not isinstance(value, _STAGE_TYPES):
                raise UserInputError(f"RegistrationConfig: {key} must be a mapping of stage fields ({_names(stages[i])}), got {value!r}.")
            stages[i] = copy.deepcopy(value)
        elif parts[2:] == ["kind"]:
            if value != stages[i].kind:
                raise UserInputError(
                    f"RegistrationConfig: {key}: stage {i} is a {stages[i].kind!r} stage and a kind does not change in "
                    f"place; give the whole list (stages: [{{kind: {value}, ...}}, ...])."
                )
            return
        else:
            _set_path(stages[i], parts[2:], value, key, where)
            _check_stage(stages[i], key, where)
        cfg.stages = tuple(stages)
        return
    if head == "method" and len(parts) == 1:
        method = choose("RegistrationConfig", "method", value, METHOD_NAMES)
        convex = [s for s in stages if s.kind == "convex"]
        if method == "convex":
            cfg.stages = (convex[0] if convex else _new_convex(cfg),)
        elif not cfg.dense_stages:
            c = convex[0] if convex else ConvexStage()
            cfg.stages = (*stages, DenseStage(mind_radius=c.mind_radius, mind_dilation=c.mind_dilation))
        return
    if head == "init" and len(parts) == 1:
        init = choose("RegistrationConfig", "init", value, INIT_NAMES)
        if init == "convex" and cfg.init != "convex":
            cfg.stages = (_new_convex(cfg), *stages)
        elif init == "zero" and cfg.init == "convex":
            if not cfg.dense_stages:
                raise UserInputError(
                    f"RegistrationConfig: init=zero: this config is the convex stage alone (stages: {_kinds(cfg)}), which "
                    "starts from no field anyway; to run Adam from zero set method=io as well (or give stages)."
                )
            cfg.stages = tuple(stages[1:])
        return
    if head == "convex":
        i = _convex_index(cfg, key)
        if len(parts) == 1:
            if not isinstance(value, ConvexConfig):
                raise UserInputError(f"RegistrationConfig: {key} must be a mapping of ConvexConfig fields, got {value!r}.")
            for f in dataclasses.fields(ConvexConfig):
                setattr(stages[i], f.name, copy.deepcopy(getattr(value, f.name)))
        else:
            _set_path(stages[i], parts[1:], value, key, f"stages.{i}")
        _check_stage(stages[i], key, f"stages.{i}{key[len('convex'):]}")
        return
    if head not in _SECTIONS:
        raise UserInputError(
            f"RegistrationConfig: unknown option {key}; valid top-level options: {sorted(_HEADS)}.{suggest(head, _HEADS)}"
        )
    section = getattr(cfg, head)
    aliases = tuple(k.split(".")[1] for k in STAGE_ALIASES if k.startswith(head + ".")) + (("levels",) if head == "multilevel" else ())
    if len(parts) == 1:
        if not isinstance(value, type(section)):
            raise UserInputError(f"RegistrationConfig: {key} must be a mapping, got {type(value).__name__} ({value!r}).")
        for f in dataclasses.fields(section):
            setattr(section, f.name, copy.deepcopy(getattr(value, f.name)))
        return
    alias = f"{head}.{parts[1]}"
    if alias in STAGE_ALIASES:
        name = STAGE_ALIASES[alias][1]
        for i in _alias_targets(cfg, key, alias):
            _set_path(stages[i], [name, *parts[2:]], value, key, f"stages.{i}")
            _check_stage(stages[i], key, f"stages.{i}.{name}{key[len(alias):]}")
        return
    if alias == "multilevel.levels":
        _set_levels(cfg, key, parts[2:], value)
        return
    _set_path(section, parts[1:], value, key, head, aliases)


def _set_levels(cfg: RegistrationConfig, key: str, rest: list[str], value: Any) -> None:
    """``multilevel.levels[.I[...]]``: the dense stages (a list replaces them; the convex stage is kept)."""
    stages = list(cfg.stages)
    dense = [i for i, s in enumerate(stages) if s.kind == "dense"]
    if not rest:
        levels = _make_stages("multilevel.levels", value, only="dense")
        if not levels:
            raise UserInputError(
                "RegistrationConfig: multilevel.levels: an empty list would remove every dense stage; a single-level "
                "config is one dense stage (stages: [{kind: dense, ...}])."
            )
        cfg.stages = (*[s for s in stages if s.kind == "convex"], *levels)
        return
    j = _index(key, "multilevel.levels", rest[0], len(dense), "level")
    i = dense[j]
    if len(rest) == 1:
        if not isinstance(value, DenseStage):
            raise UserInputError(f"RegistrationConfig: {key} must be a mapping of DenseStage fields ({_names(stages[i])}), got {value!r}.")
        stages[i] = copy.deepcopy(value)
        cfg.stages = tuple(stages)
        return
    _set_path(stages[i], rest[1:], value, key, f"stages.{i}")
    _check_stage(stages[i], key, f"stages.{i}.{'.'.join(rest[1:])}")


def _get(cfg: RegistrationConfig, key: str) -> Any:
    parts = key.split(".")
    head = parts[0]
    if head == "stages":
        if len(parts) == 1:
            return cfg.stages
        i = _index(key, "stages", parts[1], len(cfg.stages))
        if parts[2:] == ["kind"]:
            return cfg.stages[i].kind
        return _get_path(cfg.stages[i], parts[2:], key, f"stages.{i}")
    if head in ("method", "init") and len(parts) == 1:
        return getattr(cfg, head)
    if head == "convex":
        i = _convex_index(cfg, key)
        return _get_path(cfg.stages[i], parts[1:], key, f"stages.{i}")
    if head not in _SECTIONS:
        raise UserInputError(
            f"RegistrationConfig: unknown option {key}; valid top-level options: {sorted(_HEADS)}.{suggest(head, _HEADS)}"
        )
    section = getattr(cfg, head)
    if len(parts) == 1:
        return section
    alias = f"{head}.{parts[1]}"
    if alias in STAGE_ALIASES:
        name = STAGE_ALIASES[alias][1]
        targets = _alias_targets(cfg, key, alias)
        values = [_get_path(cfg.stages[i], [name, *parts[2:]], key, f"stages.{i}") for i in targets]
        if any(v != values[0] for v in values[1:]):
            raise UserInputError(
                f"RegistrationConfig: {key}: the stages {targets} hold different values ({values}); read "
                f"stages.I.{name}{key[len(alias):]} instead."
            )
        return values[0]
    if alias == "multilevel.levels":
        dense = [i for i, s in enumerate(cfg.stages) if s.kind == "dense"]
        if len(parts) == 2:
            return tuple(cfg.stages[i] for i in dense)
        j = _index(key, "multilevel.levels", parts[2], len(dense), "level")
        return _get_path(cfg.stages[dense[j]], parts[3:], key, f"stages.{dense[j]}")
    aliases = tuple(k.split(".")[1] for k in STAGE_ALIASES if k.startswith(head + "."))
    return _get_path(section, parts[1:], key, head, aliases)


def _coerce(name: str, value: Any, hint: Any, current: Any) -> Any:
    text = getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint)
    if value is None:
        if "None" in text:
            return None
        raise UserInputError(f"RegistrationConfig: {name} must not be null.")
    base = text[: -len(" | None")] if text.endswith(" | None") else text  # Optional[X]: X once null is handled
    if base != text:
        hint = {"bool": bool, "int": int, "float": float, "str": str}.get(base, hint)
    try:
        if text.startswith("tuple") or isinstance(current, tuple):
            variable = "..." in text  # tuple[float, ...]: any length
            if not isinstance(value, (list, tuple)) or (not variable and len(value) != len(current)):
                raise ValueError
            return tuple(float(v) for v in value)
        if hint is bool or text == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if hint is int or text == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(value)
        if hint is float or text.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str or text.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise UserInputError(
            f"RegistrationConfig: {name} expects {text.replace('typing.', '')}, got {value!r}."
        ) from None
    return value
