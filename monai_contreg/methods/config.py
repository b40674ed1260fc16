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
from ..optim.schedule import PiecewiseSchedule

__all__ = [
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
    """

    mind_radius: int = 1
    mind_dilation: int = 2


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
        reg_weight: weight ``lambda`` of the diffusion regulariser (field in working-grid voxels).
        betas: Adam's ``(beta1, beta2)``.
        padding_mode: ``grid_sample`` padding of the warped moving features (``"border"`` or ``"zeros"``).
    """

    schedule: PiecewiseSchedule = _field(default_factory=PiecewiseSchedule)
    reg_weight: float = 1.25
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


@dataclass
class RegistrationConfig:
    """Everything that defines a registration run.

    Attributes:
        method: the method this config runs (``"io"``: instance optimisation, the paper's method).
        init: initial field: ``"zero"`` (the paper) or, for methods that have one, a discrete stage.
        preprocess, features, field, optim, engine: see the nested dataclasses.
    """

    method: str = "io"
    init: str = "zero"
    preprocess: PreprocessConfig = _field(default_factory=PreprocessConfig)
    features: FeatureConfig = _field(default_factory=FeatureConfig)
    field: FieldConfig = _field(default_factory=FieldConfig)
    optim: OptimConfig = _field(default_factory=OptimConfig)
    engine: EngineConfig = _field(default_factory=EngineConfig)

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
        """Apply dotted overrides: ``["optim.steps=100", "preprocess.use_masks=false"]`` or a dict of them.

        Values are parsed as YAML scalars/lists (``1.5``, ``true``, ``[-1000, 1000]``, ``null``).
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

        choose("RegistrationConfig", "preprocess.intensity", self.preprocess.intensity, ("window", "minmax", "none"))
        choose("RegistrationConfig", "optim.padding_mode", self.optim.padding_mode, ("border", "zeros", "reflection"))
        lo, hi = self.preprocess.window
        if not lo < hi:
            raise ValueError(f"RegistrationConfig: preprocess.window must be (low, high) with low < high, got {self.preprocess.window}.")
        if self.field.grid_factor < 1:
            raise ValueError(f"RegistrationConfig: field.grid_factor must be >= 1, got {self.field.grid_factor}.")
        if self.field.smoothing_passes < 0:
            raise ValueError(f"RegistrationConfig: field.smoothing_passes must be >= 0, got {self.field.smoothing_passes}.")
        if self.field.smoothing_kernel < 1 or self.field.smoothing_kernel % 2 == 0:
            raise ValueError(f"RegistrationConfig: field.smoothing_kernel must be a positive odd integer, got {self.field.smoothing_kernel}.")
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
    try:
        if text.startswith("tuple") or isinstance(current, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(current):
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
