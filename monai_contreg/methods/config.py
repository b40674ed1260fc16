"""Typed configuration of a registration: a list of stages plus the settings they share.

A :class:`RegistrationConfig` is one structure: ``stages``, the registration's stages in the order they run
(``kind`` ``"dense"``: an Adam instance optimisation of a dense field, :class:`DenseStage`; ``"convex"``:
ConvexAdam's coupled convex discrete stage, :class:`ConvexStage`), and sections of settings every stage shares
(``preprocess``, ``features.storage``, ``field.design_spacing``, ``optim.betas``/``padding_mode``/``keep_in_image``,
``engine``, ``multilevel.mask_aware``/``cross_weight``). The presets: ``io`` is one dense stage, ``accurate`` two
(half, then full resolution), ``convexadam`` a convex stage then one dense stage.

Each setting lives in one place, and every way of giving settings reaches it through one function,
:meth:`RegistrationConfig.set` (:func:`monai_contreg.methods.keys.apply_items`) (``--set``, ``--config`` files, :meth:`~RegistrationConfig.from_dict` and so the
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
from typing import Any

from ..errors import MissingFileError, UserInputError, describe_parse_error
from ..modes import FeatureStorage, Modality, PaddingMode
from .keys import _SECTIONS, STAGE_ALIASES, apply_items, flatten, get_key, make_stages, scale_schedules, schedule_steps
from .keys import _check_stage as _check_stage
from .stages import INIT_NAMES, METHOD_NAMES, STAGE_KINDS, AffineStage, AutoAffineConfig, ConvexConfig, ConvexStage, DenseStage, LevelConfig

__all__ = [
    "INIT_NAMES",
    "METHOD_NAMES",
    "STAGE_ALIASES",
    "STAGE_KINDS",
    "AffineStage",
    "AutoAffineConfig",
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
        require_mask: with ``auto_mask``, an image without a plausible lung stops the run with
            :class:`~monai_contreg.data.lung_mask.LungMaskError` (a user error, exit 2) instead of registering
            unmasked. CLI: ``--require-mask``.
        modality: ``"auto"`` (default: each image decided from its values, :mod:`monai_contreg.data.modality`),
            ``"ct"`` or ``"mr"``. CLI: ``--modality``. ``intensity_floor``, the HU ``window`` and ``auto_mask``
            apply to CT images only; an MR image's ``"window"`` normalisation is by ``mr_percentiles`` instead
            (``"minmax"`` and ``"none"`` are the same for both).
        mr_percentiles: ``(low, high)`` percentiles (0-100, of all the image's voxels) an MR image is clipped to and
            scaled from onto [0, 1] (MONAI's ``ScaleIntensityRangePercentiles``) where a CT image is windowed.
    """

    intensity: str = "window"
    window: tuple[float, float] = (-1000.0, 1000.0)
    use_masks: bool = True
    mask_fill: float = 0.0
    intensity_floor: float | None = -1024.0
    auto_mask: bool = True
    require_mask: bool = False
    modality: str = "auto"
    mr_percentiles: tuple[float, float] = (0.5, 99.5)


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
        lncc_kernel_size: window of the ``"lncc"`` similarity (odd, working-grid voxels; MONAI's
            ``LocalNormalizedCrossCorrelationLoss(kernel_size=...)``, rectangular kernel).
        mi_bins: histogram bins of the ``"mi"`` similarity (MONAI's ``GlobalMutualInformationLoss(num_bins=...)``,
            Gaussian Parzen windows over intensities in [0, 1]).
        mi_sampling: fraction of the working-grid voxels the ``"mi"`` similarity is estimated on (a regular sample,
            every ``round(1 / mi_sampling)``-th voxel; 0.25 as ANTs' ``antsRegistrationSyN.sh``): the Parzen
            histogram costs voxels x bins per step.
        mind_radius, mind_dilation: aliases (not stored here) of every stage's ``mind_radius``/``mind_dilation``
            when the config has at most one dense stage (see :data:`STAGE_ALIASES`).
        similarity: alias (not stored here) of every dense stage's ``similarity`` (``"mind"``, ``"lncc"``,
            ``"mi"``; CLI ``--similarity``); reading it where the dense stages differ is an error naming
            ``stages.I.similarity``.
    """

    storage: str = "float32"
    lncc_kernel_size: int = 5
    mi_bins: int = 23
    mi_sampling: float = 0.25

    mind_radius = _alias("features.mind_radius")
    mind_dilation = _alias("features.mind_dilation")
    similarity = _alias("features.similarity")


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
        checkpoint_every: checkpoint period in steps. A checkpoint holds the field, the optimiser, the learning-rate
            scheduler, the engine's step and the handlers' state (history, divergence and early-stop state, TRE).
        resume: with ``checkpoint_dir``: continue from the latest checkpoint there (its step + 1), ending with the
            field an uninterrupted run ends with (CLI: ``--checkpoint-dir D --resume``). A multi-level run continues
            each level that left a checkpoint and runs the others from their start; a Learn2Reg run
            (:func:`~monai_contreg.workflow.run_split`) starts the pairs that left none from step 0. A registration
            none of whose stages left a checkpoint is a ``MissingFileError``.
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
        divergence_loss_ratio: during the run, a loss above this multiple of the larger of the first step's loss
            (the loss of the initial field) and the loss at step ``divergence_min_steps`` means the run is lost (a
            pair that starts aligned has a first loss near zero, which the high-rate phase's transient exceeds
            many times over in a run that still ends well).
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
    resume: bool = False
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
        auto_affine: when an affine stage is added to a pair that looks unaligned (:class:`AutoAffineConfig`).
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
    auto_affine: AutoAffineConfig = _field(default_factory=AutoAffineConfig)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "stages":
            value = make_stages("stages", value)
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
        """``"convex"`` when the stages are the convex stage alone (after any affine stage), ``"affine"`` for an
        affine stage alone, else ``"io"`` (set: :meth:`set` ``"method"``)."""
        if self.dense_stages:
            return "io"
        return "convex" if any(s.kind == "convex" for s in self.stages) else "affine"

    @property
    def affine_stage(self) -> AffineStage | None:
        """The affine stage (always first), or ``None``."""
        return self.stages[0] if self.stages and self.stages[0].kind == "affine" else None

    @method.setter
    def method(self, value: str) -> None:
        self.set("method", value)

    @property
    def init(self) -> str:
        """``"convex"`` when a convex stage comes first (after any affine stage), else ``"zero"`` (set: :meth:`set`
        ``"init"``)."""
        rest = [s for s in self.stages if s.kind != "affine"]
        return "convex" if rest and rest[0].kind == "convex" else "zero"

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
        return get_key(self, key)

    def set(self, key: str, value: Any) -> None:
        """Set one dotted key in place and validate the config; every source of settings ends here.

        ``key`` is canonical (``stages.1.reg_weight``, ``optim.betas``) or an alias of earlier versions
        (:data:`STAGE_ALIASES`, ``multilevel.levels.I...``, ``method``, ``init``); a mapping value is the same as
        its dotted keys. Values are checked against the field's type (a bool field takes only true/false).

        Raises:
            UserInputError: an unknown key (with the nearest valid one), an index that is not an integer or is out
                of range (with the valid indices), an alias with no single target on this config (naming the key
                to use instead), a value of the wrong type or range (naming the key).
        """
        apply_items(self, [(key, value)])

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
        apply_items(out, flatten("", data))
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

        Examples:
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
        apply_items(out, items)
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
            if s.kind == "affine" and i:
                raise UserInputError(
                    f"RegistrationConfig: stages.{i} is an affine stage, but the affine stage runs before every other "
                    f"stage, so it can only be the first (stages: {kinds})."
                )
            if s.kind == "convex" and i and not (i == 1 and kinds[0] == "affine"):
                raise UserInputError(
                    f"RegistrationConfig: stages.{i} is a convex stage, but a convex stage starts from no field, so it "
                    f"can only be the first stage, or the second after an affine stage (stages: {kinds})."
                )
        dense = [(i, s) for i, s in enumerate(stages) if s.kind == "dense"]
        factors = [s.grid_factor for _, s in dense]
        if any(b > a for a, b in zip(factors, factors[1:])):
            raise UserInputError(
                f"RegistrationConfig: the dense stages must run coarse to fine (grid_factor not increasing), got grid "
                f"factors {factors} (stages {[i for i, _ in dense]}): a coarser stage after a finer one undoes its detail."
            )
        self.multilevel.validate()
        self.auto_affine.validate()
        if self.multilevel.mask_aware and not dense:
            raise UserInputError(
                f"RegistrationConfig: multilevel.mask_aware has no effect on this config: it has no dense stage (stages: "
                f"{kinds}); the mask-aware regulariser belongs to the dense stages."
            )
        choose("RegistrationConfig", "preprocess.intensity", self.preprocess.intensity, ("window", "minmax", "none"))
        choose("RegistrationConfig", "optim.padding_mode", self.optim.padding_mode, PaddingMode)
        choose("RegistrationConfig", "preprocess.modality", self.preprocess.modality, Modality)
        plo, phi = self.preprocess.mr_percentiles
        if not 0 <= plo < phi <= 100:
            raise UserInputError(
                f"RegistrationConfig: preprocess.mr_percentiles must be (low, high) with 0 <= low < high <= 100, got "
                f"{self.preprocess.mr_percentiles}."
            )
        lo, hi = self.preprocess.window
        if not lo < hi:
            raise UserInputError(f"RegistrationConfig: preprocess.window must be (low, high) with low < high, got {self.preprocess.window}.")
        choose("RegistrationConfig", "features.storage", self.features.storage, FeatureStorage)
        k = self.features.lncc_kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise UserInputError(f"RegistrationConfig: features.lncc_kernel_size must be a positive odd integer (working-grid voxels), got {k!r}.")
        b = self.features.mi_bins
        if isinstance(b, bool) or not isinstance(b, int) or b < 2:
            raise UserInputError(f"RegistrationConfig: features.mi_bins must be an integer >= 2, got {b!r}.")
        r = self.features.mi_sampling
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise UserInputError(f"RegistrationConfig: features.mi_sampling must be a fraction in (0, 1], got {r!r}.")
        if self.engine.fused is True:
            other = [f"stages.{i}.similarity={s.similarity!r}" for i, s in enumerate(stages)
                     if s.kind == "dense" and s.similarity != "mind"]
            if other:
                raise UserInputError(
                    f"RegistrationConfig: engine.fused=true requires the compiled similarity kernels, which only the "
                    f"'mind' similarity has; got {', '.join(other)} (leave engine.fused unset or false)."
                )
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

