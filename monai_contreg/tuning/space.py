"""Search spaces of :func:`~monai_contreg.tuning.tune`: parsing and checking against the config, the default
spaces, and the schedule shortening of ``search_steps``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingFileError, UserInputError
from ..methods.config import RegistrationConfig


#: Objectives of :func:`tune` (``"auto"``: ``"tre"`` when every pair has keypoints, else ``"dice"``).
OBJECTIVES = ("auto", "tre", "dice")

_IO_SPACE: dict[str, Any] = {
    "optim.schedule.peak_lr": {"low": 1.0, "high": 30.0, "log": True},
    "optim.schedule.constant_steps": {"low": 20, "high": 120},
    "optim.schedule.cosine_end": {"low": 130, "high": 240},
    "optim.reg_weight": {"low": 0.75, "high": 3.0, "log": True},
    "field.smoothing_passes": {"low": 1, "high": 4},
    "field.grid_factor": {"choices": [2, 3]},
    "features.mind_radius": {"choices": [1, 2]},
    "features.mind_dilation": {"choices": [1, 2, 3]},
}

# the ``accurate`` preset: level 0 = the half-resolution run (constant lr: peak_lr), level 1 = the full-resolution
# level (lr linear from peak_lr at step 0 to 0.25: its linear_start_lr is None, continuing from the peak)
_ACCURATE_SPACE: dict[str, Any] = {
    "multilevel.levels.0.schedule.peak_lr": {"low": 0.5, "high": 15.0, "log": True},
    "multilevel.levels.0.reg_weight": {"low": 0.75, "high": 3.0, "log": True},
    "multilevel.levels.0.mind_dilation": {"choices": [1, 2, 3]},
    "multilevel.levels.1.schedule.peak_lr": {"low": 0.25, "high": 4.0, "log": True},
    "multilevel.levels.1.schedule.total_steps": {"low": 30, "high": 120},
    "multilevel.levels.1.reg_weight": {"low": 0.75, "high": 3.0, "log": True},
    "multilevel.levels.1.smoothing_kernel": {"choices": [3, 5, 7]},
}


#: Default search spaces by preset name (dotted config keys -> ranges/choices; full-length schedule steps).
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "io": _IO_SPACE, "io-authors": _IO_SPACE, "convex+io": _IO_SPACE, "accurate": _ACCURATE_SPACE,
}



# --------------------------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class SearchParam:
    """One searched config field.

    Attributes:
        key: dotted config key (``"optim.reg_weight"``), also the Optuna parameter name.
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low, high: range bounds (inclusive) of ``float``/``int``.
        log: sample on a log scale.
        step: grid step of the range (``None``: continuous float / step 1 int).
        choices: the values of ``categorical``.
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Sample this parameter in an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's range or choices."""
        if self.kind == "categorical":
            return value in self.choices
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        if not self.low <= v <= self.high:
            return False
        if self.kind == "int" and v != int(v):
            return False
        if self.step is not None:
            k = (v - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True

    def describe(self) -> Any:
        """A plain dict of this parameter (the search-space file's spelling)."""
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        d: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


def _config_value(cfg: RegistrationConfig, key: str) -> Any:
    """The value of a dotted key in ``cfg``; a part that is an integer indexes a list of levels
    (``multilevel.levels.1.reg_weight``).

    Raises:
        AttributeError: no such field, or an index that is not an integer or out of range (the caller asks
        :meth:`RegistrationConfig.with_overrides` for the message naming the key).
    """
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                raise AttributeError(part)
            node = node[int(part)]
        else:
            node = getattr(node, part)
    return node


def _number(where: str, key: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UserInputError(f"{where}: {key}: {name} must be a finite number, got {value!r}.")
    return float(value)


def parse_search_space(space: Mapping[str, Any], base: RegistrationConfig | None = None, where: str = "search space") -> list[SearchParam]:
    """Check a search space against the config and return its parameters (in the given order).

    Args:
        space: ``{dotted key: range or choices}``: ``{"low": a, "high": b[, "log": true][, "step": s]}``,
            ``{"choices": [...]}`` or a list (choices). A key may index a level of a multi-level config
            (``multilevel.levels.1.reg_weight``).
        base: the config the values are applied to (default: the ``io`` preset); every bound and choice is
            applied to it with :meth:`RegistrationConfig.with_overrides`, so values it rejects are errors here.
        where: prefix of error messages (``--space FILE``, ``tune``).

    Returns:
        A list of :class:`SearchParam`.

    Raises:
        UserInputError: naming the key: unknown key, a level index that is not an integer or out of range (with
            the valid indices), a section or the list of levels instead of a field, an empty space, bad bounds
            (not numbers, ``low >= high``, ``log`` with ``low <= 0``), empty or duplicate choices, a value the
            config rejects (with the config's message).
    """
    from ..methods.presets import get_preset

    base = base if base is not None else get_preset("io")
    if not isinstance(space, Mapping) or not space:
        raise UserInputError(f"{where}: must be a non-empty mapping of dotted config keys to ranges or choices, got {space!r}.")
    params = []
    for key, spec in space.items():
        if not isinstance(key, str) or not key:
            raise UserInputError(f"{where}: keys must be dotted config keys such as 'optim.reg_weight', got {key!r}.")
        try:  # unknown keys: the config's own message (names the key, suggests the nearest)
            current = _config_value(base, key)
        except AttributeError:
            try:
                base.with_overrides({key: None})
            except ValueError as exc:
                raise UserInputError(f"{where}: unknown key {key!r}: {exc}") from None
            raise UserInputError(f"{where}: unknown key {key!r}.") from None
        if dataclasses.is_dataclass(current):
            names = [f"{key}.{f.name}" for f in dataclasses.fields(current)]
            raise UserInputError(f"{where}: {key!r} is a section, not a field; search one of its fields: {names}.")
        if isinstance(current, tuple) and all(dataclasses.is_dataclass(c) for c in current) and current:
            names = [f"{key}.{i}.{f.name}" for i in range(len(current)) for f in dataclasses.fields(current[i])][:4]
            raise UserInputError(
                f"{where}: {key!r} is a list of {len(current)} levels (indices {list(range(len(current)))}), not a field; "
                f"search a field of one level, e.g. {names}."
            )
        if isinstance(spec, (list, tuple)):
            spec = {"choices": list(spec)}
        if not isinstance(spec, Mapping):
            raise UserInputError(
                f"{where}: {key}: expected {{low: a, high: b}}, {{choices: [...]}} or a list of choices, got {spec!r}."
            )
        allowed = {"choices"} if "choices" in spec else {"low", "high", "log", "step"}
        extra = sorted(set(spec) - allowed)
        if extra:
            raise UserInputError(f"{where}: {key}: unexpected entries {extra}; expected {sorted(allowed)}.")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, (list, tuple)) or not choices:
                raise UserInputError(f"{where}: {key}: choices must be a non-empty list, got {choices!r}.")
            if any(isinstance(c, (list, dict)) for c in choices):
                raise UserInputError(f"{where}: {key}: choices must be numbers, strings, booleans or null, got {choices!r}.")
            if len({json.dumps(c) for c in choices}) != len(choices):
                raise UserInputError(f"{where}: {key}: choices must be distinct, got {list(choices)}.")
            param = SearchParam(key, "categorical", choices=tuple(choices))
            probes = list(choices)
        else:
            if "low" not in spec or "high" not in spec:
                raise UserInputError(f"{where}: {key}: a range needs both low and high, got {dict(spec)}.")
            low = _number(where, key, "low", spec["low"])
            high = _number(where, key, "high", spec["high"])
            if not low < high:
                raise UserInputError(f"{where}: {key}: low must be < high, got low={spec['low']!r}, high={spec['high']!r}.")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise UserInputError(f"{where}: {key}: log must be true or false, got {log!r}.")
            if log and low <= 0:
                raise UserInputError(f"{where}: {key}: a log range needs low > 0, got low={spec['low']!r}.")
            step = spec.get("step")
            if step is not None:
                step = _number(where, key, "step", step)
                if step <= 0:
                    raise UserInputError(f"{where}: {key}: step must be > 0, got {spec['step']!r}.")
                if log:
                    raise UserInputError(f"{where}: {key}: give either log or step, not both.")
            is_int = isinstance(current, int) and not isinstance(current, bool)
            if isinstance(current, bool) or not isinstance(current, (int, float)) and current is not None:
                raise UserInputError(
                    f"{where}: {key}: a range needs a numeric field, but {key} holds {type(current).__name__} "
                    f"({current!r}); give choices instead."
                )
            if is_int:
                if low != int(low) or high != int(high) or (step is not None and step != int(step)):
                    raise UserInputError(f"{where}: {key} is an integer field: low, high and step must be integers, got {dict(spec)}.")
                param = SearchParam(key, "int", int(low), int(high), log, None if step is None else int(step))
            else:
                param = SearchParam(key, "float", low, high, log, step)
            probes = [param.low, param.high]
        for value in probes:  # the config must accept every bound/choice on its own
            try:
                base.with_overrides({key: value})
            except (ValueError, TypeError) as exc:
                raise UserInputError(f"{where}: {key}: value {value!r} is rejected by the config: {exc}") from None
        params.append(param)
    return params


def load_search_space(path: str | Path) -> dict[str, Any]:
    """Read a search space from a YAML or JSON file (a mapping; see :func:`parse_search_space`).

    Raises:
        FileNotFoundError: no such file. UserInputError: unparsable, or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"--space: search-space file {str(p)!r} does not exist.")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(p.read_text())
        else:
            import yaml

            data = yaml.safe_load(p.read_text())
    except Exception as exc:
        raise UserInputError(f"--space: cannot parse {str(p)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"--space: {str(p)!r} must hold a mapping of dotted config keys, got {type(data).__name__}.")
    return data


def default_search_space(preset: str) -> dict[str, Any]:
    """The default search space of a preset (a copy of :data:`DEFAULT_SPACES` ``[preset]``).

    Raises:
        UserInputError: the preset has no default space (give one: ``--space FILE`` / ``space=``).
    """
    if preset not in DEFAULT_SPACES:
        raise UserInputError(
            f"tune: preset {preset!r} has no default search space (defaults exist for {sorted(DEFAULT_SPACES)}); "
            "give one with --space FILE (a YAML mapping of dotted config keys to ranges or choices)."
        )
    return json.loads(json.dumps(DEFAULT_SPACES[preset]))


def schedule_steps(config: RegistrationConfig) -> list[int]:
    """The Adam steps a config runs: one entry per dense stage, coarse to fine (``[]`` for a convex stage alone);
    :func:`monai_contreg.methods.keys.schedule_steps`."""
    from ..methods.keys import schedule_steps as steps_of

    return steps_of(config)


def scale_schedule(config: RegistrationConfig, steps: int) -> RegistrationConfig:
    """A copy of ``config`` whose dense stages' schedules are scaled so the longest runs ``steps`` steps
    (:func:`monai_contreg.methods.keys.scale_schedules`: ``accurate``'s 100 + 40 steps become 50 + 20 at
    ``steps=50``; breakpoints in proportion, learning rates unchanged).

    Raises:
        UserInputError: ``steps`` < 1, or a config without a dense stage.
    """
    from ..methods.keys import scale_schedules

    return scale_schedules(config, steps)
