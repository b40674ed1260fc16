"""Typed configuration of a registration: every constant of the method is a named, documented field.

A :class:`RegistrationConfig` nests one dataclass per concern. It round-trips through plain dicts (YAML/JSON,
MONAI bundles) with :meth:`RegistrationConfig.from_dict` / :meth:`RegistrationConfig.to_dict`, and accepts
dotted overrides (``"optim.steps=100"``) with :meth:`RegistrationConfig.with_overrides`. Unknown keys are
errors that name the key and suggest the nearest valid one.
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
from ..optim.schedule import PiecewiseSchedule

__all__ = [
    "INIT_NAMES",
    "METHOD_NAMES",
    "ConvexConfig",
    "EngineConfig",
    "FeatureConfig",
    "FieldConfig",
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
    """

    intensity: str = "window"
    window: tuple[float, float] = (-1000.0, 1000.0)
    use_masks: bool = True
    mask_fill: float = 0.0


@dataclass
class FeatureConfig:
    """MIND-SSC descriptor settings.

    Attributes:
        mind_radius: half-width of the box filter over patch distances.
        mind_dilation: spacing (voxels) of the 6-neighbourhood.
        storage: precision the optimisation keeps the working-grid features in: ``"float32"`` or ``"bfloat16"``
            (rounded once; arithmetic stays float32; halves the sampled memory on the compiled CPU path).
    """

    mind_radius: int = 1
    mind_dilation: int = 2
    storage: str = "float32"


@dataclass
class FieldConfig:
    """The optimised field.

    Attributes:
        grid_factor: working-grid coarsening factor (2 = half resolution); features are average-pooled by it.
        smoothing_passes: box-filter passes applied to the parameter on read.
        smoothing_kernel: box-filter width.
    """

    grid_factor: int = 2
    smoothing_passes: int = 3
    smoothing_kernel: int = 3


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
    """

    schedule: PiecewiseSchedule = _field(default_factory=PiecewiseSchedule)
    reg_weight: float = 1.75
    betas: tuple[float, float] = (0.9, 0.999)
    padding_mode: str = "border"


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
                raise ValueError(f"ConvexConfig: convex.{name} must be an integer >= {low}, got {v!r}.")
        for name in ("cost_smoothing_kernel", "field_smoothing_kernel"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % 2 == 0:
                raise ValueError(f"ConvexConfig: convex.{name} must be a positive odd integer, got {v!r}.")
        if not isinstance(self.ic, bool):
            raise ValueError(f"ConvexConfig: convex.ic must be true or false, got {self.ic!r}.")
        weights = tuple(self.coupling_weights)
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not (w >= 0 and w < float("inf")) for w in weights):
            raise ValueError(f"ConvexConfig: convex.coupling_weights must be finite numbers >= 0, got {self.coupling_weights!r}.")
        self.coupling_weights = tuple(float(w) for w in weights)
        choose("ConvexConfig", "convex.padding_mode", self.padding_mode, (PaddingMode.BORDER.value, PaddingMode.ZEROS.value))


@dataclass
class RegistrationConfig:
    """Everything that defines a registration run.

    Attributes:
        method: the method this config runs (``"io"``: instance optimisation, the paper's method;
            ``"convex"``: ConvexAdam's coupled convex discrete stage alone, configured by ``convex``).
        init: initial field of ``"io"``: ``"zero"`` (the paper) or ``"convex"`` (the discrete stage's field,
            i.e. ConvexAdam when combined with its Adam settings).
        preprocess, features, field, optim, engine, convex: see the nested dataclasses.
    """

    method: str = "io"
    init: str = "zero"
    preprocess: PreprocessConfig = _field(default_factory=PreprocessConfig)
    features: FeatureConfig = _field(default_factory=FeatureConfig)
    field: FieldConfig = _field(default_factory=FieldConfig)
    optim: OptimConfig = _field(default_factory=OptimConfig)
    engine: EngineConfig = _field(default_factory=EngineConfig)
    convex: ConvexConfig = _field(default_factory=ConvexConfig)

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
            raise FileNotFoundError(f"RegistrationConfig.from_file: config file {str(p)!r} does not exist.")
        text = p.read_text()
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise ValueError(f"RegistrationConfig.from_file: cannot parse {str(p)!r}: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"RegistrationConfig.from_file: {str(p)!r} must hold a mapping, got {type(data).__name__}.")
        return cls.from_dict(data, base)

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> RegistrationConfig:
        """Apply dotted overrides (``"section.option=value"`` strings, or a dict of them) to a copy.

        Values are parsed as YAML scalars/lists (``1.5``, ``true``, ``[-1000, 1000]``, ``null``) and checked
        against the option's type (a bool option takes only ``true``/``false``).

        Example:
            >>> cfg = RegistrationConfig().with_overrides(["optim.schedule.total_steps=100", "preprocess.use_masks=false"])
            >>> cfg.optim.schedule.total_steps, cfg.preprocess.use_masks
            (100, False)
            >>> RegistrationConfig().with_overrides(["engine.fused=maybe"])
            Traceback (most recent call last):
            ...
            ValueError: RegistrationConfig: config.engine.fused expects bool | None, got 'maybe'.
        """
        import yaml

        items = overrides.items() if isinstance(overrides, dict) else []
        if not isinstance(overrides, dict):
            parsed = []
            for item in overrides:
                if "=" not in item:
                    raise ValueError(f"RegistrationConfig.with_overrides: override {item!r} must look like 'key.sub=value'.")
                k, v = item.split("=", 1)
                parsed.append((k.strip(), yaml.safe_load(v)))
            items = parsed
        nested: dict[str, Any] = {}
        for key, value in items:
            node = nested
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        return RegistrationConfig.from_dict(nested, self)

    def validate(self) -> None:
        """Check values (names of options, ranges); raise ``ValueError`` naming the field."""
        from .._validation import choose

        choose("RegistrationConfig", "method", self.method, METHOD_NAMES)
        choose("RegistrationConfig", "init", self.init, INIT_NAMES)
        choose("RegistrationConfig", "preprocess.intensity", self.preprocess.intensity, ("window", "minmax", "none"))
        choose("RegistrationConfig", "optim.padding_mode", self.optim.padding_mode, PaddingMode)
        lo, hi = self.preprocess.window
        if not lo < hi:
            raise ValueError(f"RegistrationConfig: preprocess.window must be (low, high) with low < high, got {self.preprocess.window}.")
        if self.field.grid_factor < 1:
            raise ValueError(f"RegistrationConfig: field.grid_factor must be >= 1, got {self.field.grid_factor}.")
        if self.field.smoothing_passes < 0:
            raise ValueError(f"RegistrationConfig: field.smoothing_passes must be >= 0, got {self.field.smoothing_passes}.")
        if self.field.smoothing_kernel < 1 or self.field.smoothing_kernel % 2 == 0:
            raise ValueError(f"RegistrationConfig: field.smoothing_kernel must be a positive odd integer, got {self.field.smoothing_kernel}.")
        choose("RegistrationConfig", "features.storage", self.features.storage, FeatureStorage)
        if self.features.mind_radius < 0 or self.features.mind_dilation < 1:
            raise ValueError("RegistrationConfig: features.mind_radius must be >= 0 and features.mind_dilation >= 1.")
        if self.optim.reg_weight < 0:
            raise ValueError(f"RegistrationConfig: optim.reg_weight must be >= 0, got {self.optim.reg_weight}.")
        b1, b2 = self.optim.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"RegistrationConfig: optim.betas must lie in [0, 1), got {self.optim.betas}.")
        for name in ("log_every", "early_stop_patience", "tre_every", "num_threads"):
            if getattr(self.engine, name) < 0:
                raise ValueError(f"RegistrationConfig: engine.{name} must be >= 0, got {getattr(self.engine, name)}.")
        if self.engine.checkpoint_every < 1:
            raise ValueError(f"RegistrationConfig: engine.checkpoint_every must be >= 1, got {self.engine.checkpoint_every}.")
        self.optim.schedule.validate()
        self.convex.validate()


def _merge(obj: Any, data: dict[str, Any], where: str) -> None:
    """Merge a nested dict into a dataclass instance, checking key names and coercing simple types."""
    if not isinstance(data, dict):
        raise ValueError(f"RegistrationConfig: {where} must be a mapping, got {type(data).__name__} ({data!r}).")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = get_type_hints(type(obj))
    for key, value in data.items():
        if key not in fields:
            raise ValueError(
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
    if value is None:
        if "None" in text:
            return None
        raise ValueError(f"RegistrationConfig: {name} must not be null.")
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
        raise ValueError(
            f"RegistrationConfig: {name} expects {text.replace('typing.', '')}, got {value!r}."
        ) from None
    return value
