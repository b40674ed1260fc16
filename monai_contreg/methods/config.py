"""Typed configuration of a registration: every constant of the method is a named, documented field.

A :class:`RegistrationConfig` nests one dataclass per concern. It round-trips through plain dicts (YAML/JSON,
MONAI bundles) with :meth:`RegistrationConfig.from_dict` / :meth:`RegistrationConfig.to_dict`, and accepts
dotted overrides (``"optim.steps=100"``) with :meth:`RegistrationConfig.with_overrides`; a part that is an
integer picks one level of ``multilevel.levels`` (``"multilevel.levels.1.reg_weight=2"``, counted from 0, coarse to
fine). Unknown keys are errors that name the key and suggest the nearest valid one; a level index that is not an
integer or is out of range is an error naming the key and the valid indices.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Any, get_type_hints

from .._validation import suggest
from ..modes import FeatureStorage, PaddingMode
from ..errors import MissingFileError, UserInputError, describe_parse_error
from ..optim.schedule import PiecewiseSchedule

__all__ = [
    "INIT_NAMES",
    "METHOD_NAMES",
    "ConvexConfig",
    "EngineConfig",
    "FeatureConfig",
    "FieldConfig",
    "LevelConfig",
    "MultilevelConfig",
    "OptimConfig",
    "PreprocessConfig",
    "RegistrationConfig",
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


@dataclass
class FeatureConfig:
    """MIND-SSC descriptor settings.

    Both sizes are in voxels of the image the features are computed on (full resolution, before pooling); at the
    preset's :attr:`FieldConfig.design_spacing` (1.5 mm) the defaults span 3 mm (dilation) and a 3-voxel box.

    Attributes:
        mind_radius: half-width (image voxels) of the box filter over patch distances.
        mind_dilation: spacing (image voxels) of the 6-neighbourhood.
        storage: precision the optimisation keeps the working-grid features in: ``"float32"`` or ``"bfloat16"``
            (rounded once; arithmetic stays float32; halves the sampled memory on the compiled CPU path).
    """

    mind_radius: int = 1
    mind_dilation: int = 2
    storage: str = "float32"


@dataclass
class FieldConfig:
    """The optimised field.

    Units: ``design_spacing`` is in mm; every other constant of the method is in voxels: ``grid_factor`` in image
    voxels, ``smoothing_kernel`` in working-grid voxels, MIND's radius and dilation (:class:`FeatureConfig`) in
    image voxels, the learning rates (:class:`~monai_contreg.optim.schedule.PiecewiseSchedule`) and the
    regulariser (:attr:`OptimConfig.reg_weight`) act on a field in working-grid voxels. They were set on images at
    ``design_spacing``: :func:`monai_contreg.native.register_native` resamples to that spacing by default, so they
    keep their physical size (at 1.5 mm: a 3 mm working grid, peak step 15 working voxels = 45 mm).

    Attributes:
        grid_factor: working-grid coarsening factor (2 = half resolution); features are average-pooled by it.
        smoothing_passes: box-filter passes applied to the parameter on read.
        smoothing_kernel: box-filter width (working-grid voxels).
        design_spacing: isotropic image spacing (mm) the preset's voxel constants were set at (NLST: 1.5 mm);
            the default working spacing of :func:`~monai_contreg.native.register_native`.
    """

    grid_factor: int = 2
    smoothing_passes: int = 3
    smoothing_kernel: int = 3
    design_spacing: float = 1.5


@dataclass
class OptimConfig:
    """Adam instance optimisation.

    Attributes:
        schedule: the piecewise learning-rate schedule; ``schedule.total_steps`` is the number of Adam steps.
        reg_weight: weight ``lambda`` of the diffusion regulariser (field in working-grid voxels). Default 1.75,
            tuned on nlst_synth so that SDlogJ (true std of log det J) stays <= 0.1 on the large-motion pair;
            the authors' value 1.25 is kept in the ``io-authors`` and ``convexadam`` presets (README, "Defaults").
        betas: Adam's ``(beta1, beta2)``.
        padding_mode: ``grid_sample`` padding of the warped moving features (``"border"`` or ``"zeros"``).
        keep_in_image: after every Adam step, clamp the field's parameter so that each working-grid voxel ``x``
            corresponds to a point ``x + u(x)`` inside the image (``0 <= x_i + u_i <= n_i - 1`` on each axis): a
            displacement bound given by the image extent. A sample pushed outside the image gets no similarity
            gradient (border padding) and Adam's momentum (an early step of about the learning rate, 15 working
            voxels at peak) carries it further away; on small or unmasked images the whole field ran off that way.
            On lung-masked NLST-size pairs the bound is inactive, or touches only a few border voxels.
    """

    schedule: PiecewiseSchedule = _field(default_factory=PiecewiseSchedule)
    reg_weight: float = 1.75
    betas: tuple[float, float] = (0.9, 0.999)
    padding_mode: str = "border"
    keep_in_image: bool = True


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
            field an uninterrupted run ends with; a missing checkpoint is a ``MissingFileError``.
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


#: Valid values of :attr:`RegistrationConfig.method` (``"convex"`` = the discrete stage alone, no Adam).
METHOD_NAMES = ("io", "convex")
#: Valid values of :attr:`RegistrationConfig.init` (``"convex"`` = start Adam from the discrete stage's field).
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
class LevelConfig:
    """One level of the multi-resolution instance optimisation (:mod:`monai_contreg.methods.multilevel`).

    Attributes:
        grid_factor: this level's working-grid coarsening factor (1 = full resolution, 2 = half, ...).
        schedule: its piecewise learning-rate schedule (``schedule.total_steps`` Adam steps; rates in voxels of
            this level's grid).
        reg_weight: weight of its diffusion (or mask-aware) regulariser, field in this level's voxels.
        mind_radius, mind_dilation: MIND-SSC settings of its features (computed at full resolution, then
            average-pooled by ``grid_factor``).
        second_dilation: a second feature scale: MIND-SSC with this dilation (same radius) concatenated to the
            first, 24 channels instead of 12 (0 = off).
        smoothing_passes: box-filter passes applied to its parameter on read.
        smoothing_kernel: width of those box filters (odd; a finer grid needs a wider one for the same
            smoothing in mm).
    """

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
        """Raise ``UserInputError`` naming the field (``multilevel.levels[i].<name>``) and what it expects."""
        from ..errors import UserInputError

        for name, low in (("grid_factor", 1), ("mind_radius", 0), ("mind_dilation", 1), ("second_dilation", 0),
                          ("smoothing_passes", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserInputError(f"LevelConfig: {name} must be an integer >= {low}, got {v!r}.")
        k = self.smoothing_kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise UserInputError(f"LevelConfig: smoothing_kernel must be a positive odd integer, got {k!r}.")
        if isinstance(self.reg_weight, bool) or not isinstance(self.reg_weight, (int, float)) or not 0 <= self.reg_weight < float("inf"):
            raise UserInputError(f"LevelConfig: reg_weight must be a finite number >= 0, got {self.reg_weight!r}.")
        self.reg_weight = float(self.reg_weight)
        self.schedule.validate()


@dataclass
class MultilevelConfig:
    """Multi-resolution instance optimisation (``levels`` empty = off: the single-level paper method).

    When ``levels`` is non-empty, method ``"io"`` runs one Adam optimisation per level, coarse to fine, each
    on its own grid and features, the field of one level carried exactly (trilinear, linear extrapolation at
    the border) onto the next level's grid as its initial field. The ``field.grid_factor``, ``optim.schedule``,
    ``optim.reg_weight`` and ``features.mind_*`` settings are then replaced by the levels' own.

    Attributes:
        levels: the levels, coarse to fine (:class:`LevelConfig`; dicts in YAML/JSON).
        mask_aware: sliding-motion-aware regulariser: differences of the field across the fixed image's mask
            boundary are weighted by ``cross_weight`` instead of 1 (needs a fixed mask). Off by default.
        cross_weight: weight of the across-boundary differences when ``mask_aware`` (0 = free sliding).
    """

    levels: tuple[LevelConfig, ...] = ()
    mask_aware: bool = False
    cross_weight: float = 0.0

    def validate(self) -> None:
        """Raise ``UserInputError`` naming the offending field."""
        from ..errors import UserInputError

        self.levels = _levels("multilevel.levels", self.levels)
        factors = [lv.grid_factor for lv in self.levels]
        if any(b > a for a, b in zip(factors, factors[1:])):
            raise UserInputError(
                f"MultilevelConfig: multilevel.levels must run coarse to fine (grid_factor not increasing), got grid "
                f"factors {factors}: a coarser level after a finer one undoes its detail."
            )
        for i, lv in enumerate(self.levels):
            if lv.second_dilation and lv.second_dilation == lv.mind_dilation:
                raise UserInputError(
                    f"MultilevelConfig: multilevel.levels.{i}.second_dilation ({lv.second_dilation}) equals its "
                    "mind_dilation: the second feature scale would duplicate the first; give another dilation or 0 (off)."
                )
        if not isinstance(self.mask_aware, bool):
            raise UserInputError(f"MultilevelConfig: multilevel.mask_aware must be true or false, got {self.mask_aware!r}.")
        w = self.cross_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise UserInputError(f"MultilevelConfig: multilevel.cross_weight must be a finite number >= 0, got {w!r}.")
        self.cross_weight = float(w)


def _levels(name: str, value: Any) -> tuple[LevelConfig, ...]:
    """A tuple of validated :class:`LevelConfig` from a list of LevelConfig or (partial) dicts."""
    from ..errors import UserInputError

    if not isinstance(value, (list, tuple)):
        raise UserInputError(f"RegistrationConfig: {name} must be a list of levels (mappings), got {value!r}.")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, LevelConfig):
            item.validate()
            out.append(item)
            continue
        if not isinstance(item, dict):
            raise UserInputError(f"RegistrationConfig: {name}[{i}] must be a mapping of LevelConfig fields, got {item!r}.")
        level = LevelConfig()
        try:
            _merge(level, item, f"{name}[{i}]")
            level.validate()
        except UserInputError:
            raise
        except ValueError as exc:
            raise UserInputError(f"{exc} (in {name}[{i}])") from None
        out.append(level)
    return tuple(out)


def _level_index(name: str, key: Any, count: int) -> int:
    """The level index ``key`` (an int, or a string of digits as dotted keys give) checked against ``count`` levels.

    Raises:
        UserInputError: naming ``name.key``: not an integer, or outside ``0 .. count - 1``, with the valid indices.
    """
    valid = (f"valid indices of {name}: {list(range(count))} (its levels, coarse to fine)" if count else
             f"{name} is empty (a single-level config): there is no level to set; give the levels first "
             "(e.g. preset 'accurate', or a list of level mappings)")
    if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.strip().lstrip("-").isdigit())):
        raise UserInputError(f"RegistrationConfig: {name}.{key}: level index {key!r} is not an integer; {valid}.")
    index = int(key)
    if not 0 <= index < count:
        raise UserInputError(f"RegistrationConfig: {name}.{key}: level index {index} is out of range; {valid}.")
    return index


def _patch_levels(name: str, current: Any, patch: dict[Any, Any]) -> tuple[LevelConfig, ...]:
    """Levels ``current`` with some of them changed: ``patch`` maps a level index to a (partial) level mapping.

    This is what dotted keys with an index give (``multilevel.levels.1.reg_weight=2`` becomes
    ``{"1": {"reg_weight": 2.0}}``); levels not named are kept as they are, the count of levels does not change.

    Raises:
        UserInputError: an index that is not an integer or is out of range (naming the key and the valid indices),
        an unknown level field (with the nearest valid one), a value the level rejects.
    """
    levels = list(current) if isinstance(current, (list, tuple)) else []
    for key, value in patch.items():
        i = _level_index(name, key, len(levels))
        where = f"{name}.{key}"
        if not isinstance(value, dict):
            raise UserInputError(
                f"RegistrationConfig: {where} must be a mapping of LevelConfig fields "
                f"({[f.name for f in dataclasses.fields(LevelConfig)]}), got {value!r}."
            )
        level = copy.deepcopy(levels[i]) if isinstance(levels[i], LevelConfig) else _levels(name, [levels[i]])[0]
        _merge(level, value, where)
        try:
            level.validate()
        except ValueError as exc:
            raise UserInputError(f"{exc} (in {where})") from None
        levels[i] = level
    return _levels(name, levels)


@dataclass
class RegistrationConfig:
    """Everything that defines a registration run.

    Attributes:
        method: the method this config runs (``"io"``: instance optimisation, the paper's method;
            ``"convex"``: ConvexAdam's coupled convex discrete stage alone, configured by ``convex``).
        init: initial field of ``"io"``: ``"zero"`` (the paper) or ``"convex"`` (the discrete stage's field,
            i.e. ConvexAdam when combined with its Adam settings).
        preprocess, features, field, optim, engine, convex, multilevel: see the nested dataclasses
            (``multilevel.levels`` empty, the default, keeps the single-level method).
    """

    method: str = "io"
    init: str = "zero"
    preprocess: PreprocessConfig = _field(default_factory=PreprocessConfig)
    features: FeatureConfig = _field(default_factory=FeatureConfig)
    field: FieldConfig = _field(default_factory=FieldConfig)
    optim: OptimConfig = _field(default_factory=OptimConfig)
    engine: EngineConfig = _field(default_factory=EngineConfig)
    convex: ConvexConfig = _field(default_factory=ConvexConfig)
    multilevel: MultilevelConfig = _field(default_factory=MultilevelConfig)

    # ----------------------------------------------------------------- dict round trip
    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (tuples as lists), suitable for YAML/JSON."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: RegistrationConfig | None = None) -> RegistrationConfig:
        """Build a config from a (possibly partial) nested dict, on top of ``base`` (default: defaults)."""
        out = copy.deepcopy(base) if base is not None else cls()
        _merge(out, data, "config")
        out.validate()
        return out

    @classmethod
    def from_file(cls, path: str | Path, base: RegistrationConfig | None = None) -> RegistrationConfig:
        """Load a YAML or JSON file holding a (partial) config dict."""
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
        """Apply dotted overrides (``"section.option=value"`` strings, or a dict of them) to a copy.

        Values are parsed as YAML scalars/lists (``1.5``, ``true``, ``[-1000, 1000]``, ``null``) and checked
        against the option's type (a bool option takes only ``true``/``false``). An integer part indexes
        ``multilevel.levels`` (``"multilevel.levels.1.reg_weight=2"`` changes level 1 only; the other levels and
        the number of levels are kept).

        Raises:
            UserInputError: a malformed override, an unknown key (with the nearest valid one), a level index that
            is not an integer or out of range (with the valid indices), a value of the wrong type or range.

        Example:
            >>> cfg = RegistrationConfig().with_overrides(["optim.schedule.total_steps=100", "preprocess.use_masks=false"])
            >>> cfg.optim.schedule.total_steps, cfg.preprocess.use_masks
            (100, False)
            >>> RegistrationConfig().with_overrides(["engine.fused=maybe"])
            Traceback (most recent call last):
            ...
            monai_contreg.errors.UserInputError: RegistrationConfig: config.engine.fused expects bool | None, got 'maybe'.
        """
        import yaml

        items = overrides.items() if isinstance(overrides, dict) else []
        if not isinstance(overrides, dict):
            parsed = []
            for item in overrides:
                if "=" not in item:
                    raise UserInputError(f"RegistrationConfig.with_overrides: override {item!r} must look like 'key.sub=value'.")
                k, v = item.split("=", 1)
                parsed.append((k.strip(), yaml.safe_load(v)))
            items = parsed
        nested: dict[str, Any] = {}
        keys = []
        for key, value in items:
            node = nested
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
            keys.append(key)
        out = RegistrationConfig.from_dict(nested, self)
        _check_effective(keys, out)
        return out

    def validate(self) -> None:
        """Check values (names of options, ranges); raise ``ValueError`` naming the field."""
        from .._validation import choose

        choose("RegistrationConfig", "method", self.method, METHOD_NAMES)
        choose("RegistrationConfig", "init", self.init, INIT_NAMES)
        choose("RegistrationConfig", "preprocess.intensity", self.preprocess.intensity, ("window", "minmax", "none"))
        choose("RegistrationConfig", "optim.padding_mode", self.optim.padding_mode, PaddingMode)
        lo, hi = self.preprocess.window
        if not lo < hi:
            raise UserInputError(f"RegistrationConfig: preprocess.window must be (low, high) with low < high, got {self.preprocess.window}.")
        if self.field.grid_factor < 1:
            raise UserInputError(f"RegistrationConfig: field.grid_factor must be >= 1, got {self.field.grid_factor}.")
        if self.field.smoothing_passes < 0:
            raise UserInputError(f"RegistrationConfig: field.smoothing_passes must be >= 0, got {self.field.smoothing_passes}.")
        if self.field.smoothing_kernel < 1 or self.field.smoothing_kernel % 2 == 0:
            raise UserInputError(f"RegistrationConfig: field.smoothing_kernel must be a positive odd integer, got {self.field.smoothing_kernel}.")
        choose("RegistrationConfig", "features.storage", self.features.storage, FeatureStorage)
        if self.features.mind_radius < 0 or self.features.mind_dilation < 1:
            raise UserInputError("RegistrationConfig: features.mind_radius must be >= 0 and features.mind_dilation >= 1.")
        if self.optim.reg_weight < 0:
            raise UserInputError(f"RegistrationConfig: optim.reg_weight must be >= 0, got {self.optim.reg_weight}.")
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
        self.optim.schedule.validate()
        self.convex.validate()
        self.multilevel.validate()


#: Single-level settings that every level of ``multilevel.levels`` replaces by its own (dotted key -> level field).
LEVEL_REPLACED_KEYS: dict[str, str] = {
    "optim.schedule": "schedule",
    "optim.reg_weight": "reg_weight",
    "field.grid_factor": "grid_factor",
    "field.smoothing_passes": "smoothing_passes",
    "field.smoothing_kernel": "smoothing_kernel",
    "features.mind_radius": "mind_radius",
    "features.mind_dilation": "mind_dilation",
}


def _check_effective(keys: list[str], cfg: RegistrationConfig) -> None:
    """Refuse dotted overrides that cannot change what ``cfg`` runs (a silently ignored setting).

    On a multi-level config (``multilevel.levels`` non-empty) the single-level keys of :data:`LEVEL_REPLACED_KEYS`
    are replaced by each level's own; without levels, ``multilevel.mask_aware``/``cross_weight`` do nothing.

    Raises:
        UserInputError: naming the key and the key to set instead.
    """
    n = len(cfg.multilevel.levels)
    for key in keys:
        if n:
            for prefix, name in LEVEL_REPLACED_KEYS.items():
                if key == prefix or key.startswith(prefix + "."):
                    rest = key[len(prefix):]
                    raise UserInputError(
                        f"RegistrationConfig: {key} has no effect on a multi-level config (multilevel.levels, "
                        f"{n} levels, e.g. preset 'accurate'): each level uses its own {name}; set "
                        f"multilevel.levels.I.{name}{rest} instead (I = 0..{n - 1}, coarse to fine)."
                    )
        elif key.startswith("multilevel.") and key.split(".")[1] in ("mask_aware", "cross_weight"):
            raise UserInputError(
                f"RegistrationConfig: {key} has no effect on a single-level config (multilevel.levels is empty); "
                "it applies to the multi-level method (preset 'accurate', or give multilevel.levels)."
            )


def _merge(obj: Any, data: dict[str, Any], where: str) -> None:
    """Merge a nested dict into a dataclass instance, checking key names and coercing simple types."""
    if not isinstance(data, dict):
        raise UserInputError(f"RegistrationConfig: {where} must be a mapping, got {type(data).__name__} ({data!r}).")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = get_type_hints(type(obj))
    for key, value in data.items():
        if key not in fields:
            raise UserInputError(
                f"RegistrationConfig: unknown option {where}.{key}; valid options of {where}: "
                f"{sorted(fields)}.{suggest(key, fields)}"
            )
        current = getattr(obj, key)
        name = f"{where}.{key}"
        if dataclasses.is_dataclass(current):
            _merge(current, value, name)
            if hasattr(current, "validate"):
                current.validate()
            continue
        setattr(obj, key, _coerce(name, value, hints[key], current))


def _coerce(name: str, value: Any, hint: Any, current: Any) -> Any:
    text = getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint)
    if "LevelConfig" in text:  # multilevel.levels: a list of (partial) level mappings, or {index: patch}
        if isinstance(value, dict):
            return _patch_levels(name, current, value)
        return _levels(name, value)
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
