"""Self-configuring registration: search a dataset's best settings with Optuna (``contreg tune``).

A *search space* maps dotted keys of :class:`~monai_contreg.methods.config.RegistrationConfig` (the keys of
``--set``) to ranges or choices::

    optim.schedule.peak_lr: {low: 3, high: 30, log: true}     # float range (log scale)
    optim.schedule.constant_steps: {low: 20, high: 120}        # int field -> int range (step 1, or step: k)
    field.grid_factor: [2, 3]                                  # a list: categorical choices
    features.mind_radius: {choices: [1, 2]}                    # the same, spelled out

The value type (int or float) follows the config field. Unknown keys, sections given as keys, empty or
reversed ranges and values the config rejects are :class:`~monai_contreg.errors.UserInputError` naming the key.
A part that is an integer picks a level of a multi-level config (``multilevel.levels.1.reg_weight``: level 1,
counted from 0, coarse to fine); an index that is not an integer or out of range is an error naming the key and
the valid indices. :data:`DEFAULT_SPACES` holds the default space of the ``io`` preset (also used for
``io-authors`` and ``convex+io``, which share its schedule) and of ``accurate``::

    multilevel.levels.0.schedule.peak_lr: {low: 0.5, high: 15, log: true}     # half-resolution level
    multilevel.levels.0.reg_weight: {low: 0.75, high: 3.0, log: true}
    multilevel.levels.0.mind_dilation: [1, 2, 3]
    multilevel.levels.1.schedule.peak_lr: {low: 0.25, high: 4, log: true}  # full resolution: its lr
    multilevel.levels.1.schedule.total_steps: {low: 30, high: 120}
    multilevel.levels.1.reg_weight: {low: 0.75, high: 3.0, log: true}
    multilevel.levels.1.smoothing_kernel: [3, 5, 7]

Any other preset is tuned with a space given by the caller.

Each trial registers every tuning pair (:func:`monai_contreg.api.register`) with the base config plus the
sampled values, and measures each field with the metric code of ``contreg evaluate``
(:func:`~monai_contreg.evaluation.learn2reg.evaluate_field`):

* objective ``"tre"``: mean over the pairs of the mean keypoint TRE (mm, minimised), chosen by ``"auto"`` when
  every pair has keypoints; ``"dice"``: mean Dice of the warped labels (else masks), maximised;
* constraint: the largest per-pair SDlogJ (true std of log det J in the fixed mask, 2-voxel border cropped) must
  stay ``<= max_sdlogj`` and the largest folding percentage ``<= max_folding``. Trials over it are *infeasible*
  (Optuna's ``constraints_func`` of the TPE sampler), never chosen as best. A diverged registration or a sampled
  combination the config rejects (e.g. ``cosine_end < constant_steps``) makes the trial pruned and infeasible;
* best: the feasible completed trial with the best objective; values within ``tie_tolerance`` of it count as
  ties, broken by the registration time (sum over the pairs);
* search: TPE sampler (the base config's values are enqueued as trial 0 when they lie in the space) and a
  median pruner fed by an ignite handler (:class:`OptunaPruningHandler`): the TRE every ``report_every`` steps
  of each pair (objective ``tre``), or the running mean after each pair (``dice``); the median is taken over
  the feasible completed trials only (:func:`FeasibleMedianPruner`), so that trials are not stopped for being
  behind trials that broke the limits. Step ``s`` of level ``l`` of pair ``i`` is reported at index
  ``(i * levels + l) * 100000 + s`` (``levels`` = 1 for a single-level config), the same in every trial whatever
  its schedule lengths, so the median compares like with like;
* ``search_steps``: trials run a schedule shortened to this many steps (breakpoints scaled in proportion,
  :func:`scale_schedule`; a multi-level config's longest level gets this many steps, the others in proportion);
  the best config is written at full length and its full-length run is reported.

Storage is any Optuna RDB URL (default: a SQLite file beside the output). The study is loaded if it exists,
so the same call resumes an interrupted search (or extends it with a larger ``n_trials``; other SDlogJ/folding
limits re-judge the stored trials without running them again): finished trials are kept, a trial that was running when its
process died is marked failed (heartbeat) and its parameters are queued again, and the search stops when
``n_trials`` trials have finished (completed or pruned). Several workers (``nproc_per_node`` spawned processes,
or ranks of ``torchrun``) share one study; each takes trials until the total reaches ``n_trials``.

Example:
    >>> from monai_contreg.tuning import tune
    >>> result = tune("../shared/data/nlst_synth", "val", "tuned/best.yaml", pairs=["0101", "0102"],
    ...               n_trials=8, search_steps=100, holdout=["0103", "0104"], threads=1)
    >>> result.best.number, result.config_path   # tuned/best.yaml, tuned/best.trials.csv, tuned/best.*.png
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import MissingFileError, RegistrationDivergedError, UserInputError
from .methods.config import RegistrationConfig

__all__ = [
    "DEFAULT_SPACES",
    "OBJECTIVES",
    "FeasibleMedianPruner",
    "OptunaPruningHandler",
    "PairMetrics",
    "SearchParam",
    "TuneResult",
    "default_search_space",
    "evaluate_configs",
    "load_search_space",
    "parse_search_space",
    "scale_schedule",
    "schedule_steps",
    "select_best_trial",
    "trial_outcome",
    "tune",
]

logger = logging.getLogger(__name__)

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

#: Spacing of the pruner's step indices between pairs and levels (one level of a trial: at most this many steps).
_REPORT_STRIDE = 100_000

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
    from .methods.presets import get_preset

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


def _scaled(sched, steps: int):
    """``sched`` (a :class:`~monai_contreg.optim.schedule.PiecewiseSchedule`) at ``steps`` steps, breakpoints
    scaled by ``steps / total_steps`` and rounded; a constant schedule stays constant."""
    f = steps / sched.total_steps
    constant = sched.constant_steps >= sched.total_steps
    cs = steps if constant else min(steps, int(round(sched.constant_steps * f)))
    ce = max(cs, min(steps, int(round(sched.cosine_end * f))))
    return dataclasses.replace(sched, constant_steps=cs, cosine_end=ce, cosine_period=sched.cosine_period * f, total_steps=steps)


def schedule_steps(config: RegistrationConfig) -> list[int]:
    """The Adam steps a config runs: one entry per level of a multi-level config (coarse to fine), else
    ``[optim.schedule.total_steps]``."""
    if config.multilevel.levels:
        return [lv.schedule.total_steps for lv in config.multilevel.levels]
    return [config.optim.schedule.total_steps]


def scale_schedule(config: RegistrationConfig, steps: int) -> RegistrationConfig:
    """A copy of ``config`` whose schedules are shortened (or lengthened) to ``steps``, breakpoints in proportion.

    Single-level config: ``optim.schedule`` runs ``steps`` steps; ``constant_steps`` and ``cosine_end`` are
    scaled by ``steps / total_steps`` and rounded (a constant schedule, ``constant_steps >= total_steps``, stays
    constant), ``cosine_period`` is scaled; learning rates are unchanged.

    Multi-level config (``multilevel.levels``, e.g. preset ``accurate``): ``steps`` is the length of the longest
    level, and every level's schedule is scaled by the same factor ``steps / max(level total_steps)`` (each
    rounded, at least 1 step), so the levels keep their proportions: ``accurate``'s 100 + 40 steps become
    50 + 20 at ``steps=50``. ``optim.schedule`` (unused by such a config) is set to ``steps`` as well.

    Raises:
        UserInputError: ``steps`` < 1.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserInputError(f"scale_schedule: steps must be an integer >= 1, got {steps!r}.")
    out = RegistrationConfig.from_dict({}, config)
    out.optim.schedule = _scaled(config.optim.schedule, steps)
    if out.multilevel.levels:
        f = steps / max(lv.schedule.total_steps for lv in out.multilevel.levels)
        out.multilevel.levels = tuple(
            dataclasses.replace(lv, schedule=_scaled(lv.schedule, max(1, int(round(lv.schedule.total_steps * f)))))
            for lv in out.multilevel.levels
        )
    out.validate()
    return out


# ------------------------------------------------------------------------------------------------- measuring
@dataclass
class PairMetrics:
    """What one registration of one pair scored (the metric code of ``contreg evaluate``).

    Attributes:
        key: case key ``"FFFF_MMMM"``.
        tre: mean keypoint TRE (mm) or ``None`` without keypoints.
        dice: mean Dice of warped labels (else masks) or ``None`` when not measured.
        sdlogj: true std of log det J (fixed mask, 2-voxel border cropped).
        folding_percent: % of ``det J <= 0`` (whole grid, border cropped).
        seconds: registration time (``register``'s total).
        steps: Adam steps taken.
    """

    key: str
    tre: float | None
    dice: float | None
    sdlogj: float
    folding_percent: float
    seconds: float
    steps: int


class _PairCache:
    """The tuning pairs with their evaluation data, loaded once per process."""

    def __init__(self, dataset: str, split: str, keys: Sequence[str], with_labels: bool) -> None:
        from .data.learn2reg import Learn2RegDataset

        self.ds = Learn2RegDataset(dataset)
        by_key = {p.key: p for p in self.ds.pairs(split)}
        self.pairs = [by_key[k] for k in keys]
        self.with_labels = with_labels
        self._data: dict[str, dict[str, Any]] = {}

    def data(self, pair) -> dict[str, Any]:
        if pair.key not in self._data:
            want = ["fixed_mask", "moving_mask", "fixed_keypoints", "moving_keypoints"]
            if self.with_labels:
                want += ["fixed_label", "moving_label"]
            want = [k for k in want if getattr(pair, k) is not None]
            self._data[pair.key] = self.ds.load_pair(pair, keys=want) if want else {}
        return self._data[pair.key]


def _spacings(pair) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    from .data.learn2reg import image_affine
    from .spatial.conventions import spacing_from_affine

    return spacing_from_affine(image_affine(pair.fixed)), spacing_from_affine(image_affine(pair.moving))


def _keypoints(data: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    if "fixed_keypoints" not in data or "moving_keypoints" not in data:
        return None
    return tuple(torch.as_tensor(data[k]).as_subclass(torch.Tensor).double() for k in ("fixed_keypoints", "moving_keypoints"))


def _register_and_measure(pair, data: dict[str, Any], cfg: RegistrationConfig, device, handlers=None,
                          dice: bool = False, stop: Callable[[], bool] | None = None) -> PairMetrics | None:
    from .api import register
    from .evaluation.learn2reg import evaluate_field

    if not dice:  # no moving segmentation: evaluate_field skips Dice/HD95 (the fixed mask still bounds SDlogJ)
        data = {k: v for k, v in data.items() if k not in ("moving_mask", "moving_label")}

    res = register(pair.fixed, pair.moving, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, config=cfg,
                   device=device, handlers=handlers, name=pair.key)
    if stop is not None and stop():  # a handler ended the run early (pruned): nothing to measure
        return None
    fixed_sp, moving_sp = _spacings(pair)
    scores = evaluate_field(res.ddf.as_tensor(), data, fixed_spacing=fixed_sp, moving_spacing=moving_sp, official_tre=False)
    return PairMetrics(
        key=pair.key,
        tre=scores["TRE_kp"]["mean"] if "TRE_kp" in scores else None,
        dice=scores["Dice"]["mean"] if "Dice" in scores else None,
        sdlogj=float(scores["SDlogJ"]["mean"]),
        folding_percent=float(scores["folding_percent"]["mean"]),
        seconds=float(res.timings.get("total", 0.0)),
        steps=int(res.steps),
    )


class OptunaPruningHandler:
    """ignite handler: report the keypoint TRE (mm) to an Optuna trial every ``every`` steps and prune.

    It measures the TRE with :class:`~monai_contreg.optim.handlers.KeypointTREMonitor` (never in the loss) and
    calls ``trial.report(tre, offset + step)``; from step ``prune_from`` on it asks ``trial.should_prune()``
    and, when the pruner says so, terminates the engine and sets :attr:`pruned` (``(step, tre)``): the caller
    then raises ``optuna.TrialPruned`` (terminating, not raising, keeps ignite from logging an error).

    Args:
        trial: the ``optuna.Trial``.
        fixed_points, moving_points: ``(N, 3)`` voxel keypoints of the full-resolution grid.
        image_shape: that grid ``(H, W, D)``.
        spacing: its voxel size (mm).
        every: reporting period (steps).
        offset: added to the reported index (:func:`tune` gives pair ``p`` the offset ``p * levels * stride``, so
            that every trial's value at one index comes from the same pair, level and step).
        prune_from: first step of this pair, counted across its levels, at which the trial may be pruned.
        level_offsets: multi-level registration (one engine per level, each counting its steps from 1; the level
            is ``engine.state.level``, set by the multi-level runner): the steps run before level ``i``
            (``[0, steps of level 0, ...]``); level ``i``'s step ``s`` is step ``level_offsets[i] + s`` of the pair.
            Default ``(0,)``: one level. Once the trial is pruned, the engines of the remaining levels stop as they
            start.
        level_stride: the reported index of level ``i``'s step ``s`` is ``offset + i * level_stride + s`` (a fixed
            stride keeps indices comparable between trials whose levels run different numbers of steps);
            ``None``: ``offset + level_offsets[i] + s`` (consecutive).
    """

    def __init__(self, trial: Any, fixed_points: torch.Tensor, moving_points: torch.Tensor, image_shape: Sequence[int],
                 spacing: Sequence[float], every: int, offset: int = 0, prune_from: int = 0,
                 level_offsets: Sequence[int] = (0,), level_stride: int | None = None) -> None:
        from .optim.handlers import KeypointTREMonitor

        self.trial = trial
        self.monitor = KeypointTREMonitor(fixed_points, moving_points, image_shape, spacing, every)
        self.offset = int(offset)
        self.prune_from = int(prune_from)
        self.level_offsets = tuple(int(o) for o in level_offsets) or (0,)
        self.level_stride = None if level_stride is None else int(level_stride)
        self.reported: list[tuple[int, float]] = []
        self.pruned: tuple[int, float] | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        self.monitor.attach(engine)
        engine.add_event_handler(Events.STARTED, self._skip_if_pruned)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.monitor.every), self)

    def _skip_if_pruned(self, engine) -> None:
        if self.pruned is not None:  # a later level of a pruned multi-level registration: do not run it
            engine.terminate()

    def __call__(self, engine) -> None:
        step, tre = engine.state.tre_history[-1]
        level = min(int(getattr(engine.state, "level", 0) or 0), len(self.level_offsets) - 1)
        pair_step = self.level_offsets[level] + int(step)
        index = self.offset + (pair_step if self.level_stride is None else level * self.level_stride + int(step))
        self.trial.report(tre, index)
        self.reported.append((index, tre))
        if pair_step >= self.prune_from and self.trial.should_prune():
            self.pruned = (pair_step, tre)
            engine.terminate()


# ----------------------------------------------------------------------------------------------- the search
@dataclass
class _Job:
    """Everything a worker needs (pickled into spawned processes)."""

    dataset: str
    split: str
    keys: list[str]
    base: RegistrationConfig
    space: dict[str, Any]
    objective: str
    direction: str
    max_sdlogj: float
    max_folding: float
    n_trials: int
    search_steps: int | None
    storage: str
    study_name: str
    seed: int | None
    startup_trials: int
    pruner_startup: int
    report_every: int
    prune_fraction: float
    device: str | None
    threads: int | None
    heartbeat: int
    backend: str = "gloo"


class _Invalid(Exception):
    """A sampled combination the config rejects."""


def _signature(job: _Job) -> dict[str, Any]:
    """What must stay the same for a study to be resumed."""
    return {
        "objective": job.objective,
        "space": job.space,
        "pairs": list(job.keys),
        "split": job.split,
        "search_steps": job.search_steps,
        "base": _method_dict(job.base),
    }


def _method_dict(cfg: RegistrationConfig) -> dict[str, Any]:
    """The config without the run-time ``engine`` section (what the best-config YAML holds)."""
    d = cfg.to_dict()
    d.pop("engine", None)
    return d


def _storage_error(url: str, exc: BaseException) -> UserInputError:
    """A one-line error for a storage URL that cannot be opened (bad form, missing driver, unreachable file)."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError):  # e.g. 'sqlite:///' (no file name): optuna finds no study record
        reason = "no database file in the URL"
    return UserInputError(
        f"tune: cannot open --storage {url!r}: {reason[:300]}. Give an Optuna RDB URL such as "
        "'sqlite:///path/study.db' (a writable folder) or 'postgresql://user@host/db' (with its driver installed)."
    )


def _storage(url: str, heartbeat: int):
    import inspect

    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    if heartbeat:
        kwargs["heartbeat_interval"] = int(heartbeat)
        kwargs["grace_period"] = 3 * int(heartbeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat and its retry callback are experimental in Optuna 3-5
        if heartbeat:
            retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
            names = inspect.signature(optuna.storages.RDBStorage).parameters
            key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
            kwargs[key] = retry_cls(max_retry=3)
        return _open_rdb(url, kwargs)


def _open_rdb(url: str, kwargs: dict[str, Any], attempts: int = 8):
    """``optuna.storages.RDBStorage(url, **kwargs)``, retried when another process initialises the same new database.

    Two processes opening a new SQLite study at once may both find its ``alembic_version`` table empty and both stamp
    it; the second fails with a UNIQUE-constraint ``IntegrityError`` (or a locked-database ``OperationalError``).
    Opened again, it finds the schema in place.
    """
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.25 * (attempt + 1))


def _native_constraints() -> bool:
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency
        return False
    return hasattr(optuna.trial.Trial, "set_constraint")


_NATIVE_CONSTRAINTS = _native_constraints()


def _constraints(trial) -> list[float]:
    """Optuna ``constraints_func``: ``<= 0`` everywhere is feasible (values stored by the objective)."""
    return [float(v) for v in trial.user_attrs.get("constraints", (0.0, 0.0))]


class _FeasibleTrials:
    """A view of a study whose completed trials are only the feasible ones (for the pruner's median)."""

    def __init__(self, study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None):
        from optuna.trial import TrialState

        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.state != TrialState.COMPLETE or trial_outcome(t) == "feasible"]


def _feasible_median_pruner():
    import optuna

    class FeasibleMedianPruner(optuna.pruners.MedianPruner):
        """Optuna's median pruner, with the median taken over the *feasible* completed trials only: a trial
        is not stopped for being behind trials that broke the SDlogJ/folding limits (and cannot win)."""

        def prune(self, study, trial) -> bool:
            return super().prune(_FeasibleTrials(study), trial)

    return FeasibleMedianPruner


def FeasibleMedianPruner(**kwargs: Any):  # noqa: N802 - a class, built lazily (optuna is imported on use)
    """:class:`optuna.pruners.MedianPruner` whose median is over the feasible completed trials only (same
    arguments)."""
    return _feasible_median_pruner()(**kwargs)


def _sqlite_database(url: str) -> str | None:
    """The database file of a SQLite storage URL; ``""`` for an in-memory SQLite database (``sqlite://``,
    ``sqlite:///``, ``:memory:``); ``None`` for another backend or a URL sqlalchemy cannot parse (it is rejected
    later with sqlalchemy's own message)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    return "" if parsed.database in (None, "", ":memory:") else parsed.database


class _TrialStartLock:
    """An inter-process lock around the start of a trial, for studies in a SQLite file.

    Optuna takes a queued (``WAITING``) trial -- the enqueued baseline, or a retry of an interrupted trial -- with a
    ``SELECT ... FOR UPDATE``, which SQLite ignores: two workers could both take the same queued trial, run it, and
    the second then failed with Optuna's "Cannot tell a COMPLETE trial" (optuna/optuna#4621). Held from before
    ``study.optimize`` until the objective starts (the trial is then ``RUNNING`` and owned), and around the check for
    stale trials, it makes taking a trial one step per file. An exclusive ``flock`` on ``<database>.lock``, released by
    the kernel when the holder dies (SIGKILL included). Other storages (PostgreSQL, MySQL) lock the row themselves:
    there, and where ``fcntl`` is missing, it does nothing.
    """

    def __init__(self, url: str) -> None:
        self.path: Path | None = None
        self._fd: int | None = None
        try:
            import fcntl  # noqa: F401 - POSIX only
        except ImportError:
            return
        database = _sqlite_database(url)
        if database:
            self.path = Path(database + ".lock")

    def acquire(self) -> None:
        if self.path is None or self._fd is not None:
            return
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        """Release if held (idempotent: the objective and the worker's ``finally`` both call it)."""
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> _TrialStartLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _load_study(job: _Job, seed_offset: int = 0, create: bool = False):
    import optuna

    # Optuna >= 5 takes constraints from Trial.set_constraint (constraints_func is deprecated there)
    extra = {} if _NATIVE_CONSTRAINTS else {"constraints_func": _constraints}

    def make_sampler(offset: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=None if job.seed is None else job.seed + offset, n_startup_trials=job.startup_trials,
                multivariate=True, **extra,
            )

    sampler = make_sampler(seed_offset)
    pruner = FeasibleMedianPruner(n_startup_trials=job.pruner_startup, n_warmup_steps=0)
    try:
        if _sqlite_database(job.storage) == "":
            raise UserInputError(
                f"tune: --storage {job.storage!r} is an in-memory SQLite database, which the workers and a resumed run "
                "cannot share; give a file, e.g. 'sqlite:///path/study.db'."
            )
        storage = _storage(job.storage, job.heartbeat)
    except UserInputError:
        raise
    except (ImportError, KeyError, ValueError, OSError) as exc:
        raise _storage_error(job.storage, exc) from exc
    except Exception as exc:  # sqlalchemy.exc.ArgumentError / OperationalError (sqlalchemy is imported lazily)
        if type(exc).__module__.startswith("sqlalchemy"):
            raise _storage_error(job.storage, exc) from exc
        raise
    if create:
        return optuna.create_study(storage=storage, study_name=job.study_name, direction=job.direction,
                                   sampler=sampler, pruner=pruner, load_if_exists=True)
    study = optuna.load_study(storage=storage, study_name=job.study_name, sampler=sampler, pruner=pruner)
    taken = len(study.get_trials(deepcopy=False))
    if job.seed is not None and taken:
        # a resumed or extended study: seeded by the trials already taken, so the sampler does not draw the seed's
        # first values again (a resumed run repeated an earlier trial's parameters); still reproducible
        study.sampler = make_sampler(seed_offset + 7919 * taken)
    return study


def _prepare_study(job: _Job) -> None:
    """Create (or open and check) the study; enqueue the base config's values as the first trial of a new one."""
    import optuna

    study = _load_study(job, create=True)
    sig = _signature(job)
    old = study.user_attrs.get("contreg_signature")
    if old is None:
        if study.trials:
            raise UserInputError(
                f"tune: study {job.study_name!r} in {job.storage} holds trials not made by contreg tune; give another --study."
            )
        study.set_user_attr("contreg_signature", sig)
        params = parse_search_space(job.space, job.base)
        values = {p.key: _config_value(job.base, p.key) for p in params}
        if all(p.contains(values[p.key]) for p in params):
            study.enqueue_trial(values, user_attrs={"baseline": True})
    else:
        if study.direction != (optuna.study.StudyDirection.MINIMIZE if job.direction == "minimize" else optuna.study.StudyDirection.MAXIMIZE):
            old = {**old, "direction": str(study.direction)}
        diff = sorted(k for k in [*sig, "direction"] if sig.get(k) != old.get(k))  # keys of this version only
        if diff:
            raise UserInputError(
                f"tune: study {job.study_name!r} in {job.storage} was made with different settings ({', '.join(diff)}); "
                "run the same command to resume it, or give another --study (or another -o / --storage) for a new search."
            )


def _finished(trials) -> list:
    from optuna.trial import TrialState

    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def trial_outcome(trial, limits: tuple[float, float] | None = None) -> str:
    """``"feasible"``, ``"infeasible"`` (over the SDlogJ/folding limits), ``"pruned"``, ``"diverged"``,
    ``"invalid"`` (a combination the config rejects), ``"interrupted"`` (its process died), ``"running"``,
    ``"waiting"`` or ``"failed"`` of a finished or pending Optuna trial.

    ``limits``: ``(max_sdlogj, max_folding)`` to judge a completed trial by its stored maxima
    (``user_attrs["sdlogj_max"]``, ``["folding_max"]``); default: the constraints stored when it ran."""
    from optuna.trial import TrialState

    error = trial.user_attrs.get("error_kind")
    if error:
        return str(error)
    if trial.state == TrialState.COMPLETE:
        ua = trial.user_attrs
        if limits is not None and "sdlogj_max" in ua and "folding_max" in ua:
            ok = ua["sdlogj_max"] <= limits[0] and ua["folding_max"] <= limits[1]
        else:
            ok = all(c <= 0 for c in _constraints(trial))
        return "feasible" if ok else "infeasible"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.WAITING:
        return "waiting"
    if trial.state == TrialState.FAIL and trial.user_attrs.get("surplus"):
        return "surplus"
    return "interrupted" if trial.state == TrialState.FAIL else str(trial.state.name).lower()


def select_best_trial(trials: Sequence[Any], direction: str = "minimize", tie_tolerance: float = 0.0,
                      limits: tuple[float, float] | None = None):
    """The best feasible completed trial: best value; values within ``tie_tolerance`` of it are ties, won by the
    shortest registration time (``user_attrs["seconds"]``), then the lower trial number. ``None`` if none.
    ``limits``: see :func:`trial_outcome`."""
    from optuna.trial import TrialState

    feasible = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and trial_outcome(t, limits) == "feasible"]
    if not feasible:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    best = min(sign * t.value for t in feasible)
    ties = [t for t in feasible if sign * t.value <= best + abs(tie_tolerance)]
    return min(ties, key=lambda t: (t.user_attrs.get("seconds", math.inf), t.number))


class _Objective:
    """The trial function of one worker."""

    def __init__(self, job: _Job, rank: int = 0) -> None:
        self.job = job
        self.rank = rank
        self.params = parse_search_space(job.space, job.base)
        self.cache = _PairCache(job.dataset, job.split, job.keys, with_labels=job.objective == "dice")
        self.on_start: Callable[[], None] = lambda: None  # the worker's trial-start lock release
        self.current: int | None = None  # number of the trial being run (re-queued on Ctrl-C)

    def config(self, values: dict[str, Any]) -> RegistrationConfig:
        try:
            cfg = self.job.base.with_overrides(values)
            if self.job.search_steps:
                cfg = scale_schedule(cfg, self.job.search_steps)
        except (ValueError, TypeError) as exc:
            raise _Invalid(str(exc)) from None
        cfg.engine.num_threads = self.job.threads or 0
        cfg.engine.progress = False
        return cfg

    def _surplus(self, trial) -> bool:
        from optuna.trial import TrialState

        others = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        ahead = [t for t in others if t.number < trial.number]
        return len(ahead) >= self.job.n_trials

    def __call__(self, trial) -> float:
        import optuna

        self.on_start()  # the trial is RUNNING and this worker's: other workers may take the next one
        self.current = trial.number
        if self._surplus(trial):  # another worker took the last trial meanwhile
            trial.set_user_attr("surplus", True)
            raise _Surplus()
        values = {p.key: p.suggest(trial) for p in self.params}
        trial.set_user_attr("worker", self.rank)
        job = self.job
        try:
            cfg = self.config(values)
        except _Invalid as exc:
            return self._reject(trial, "invalid", str(exc))
        metrics: list[PairMetrics] = []
        level_steps = schedule_steps(cfg)
        steps = sum(level_steps)  # of one pair, over its levels
        level_offsets = [sum(level_steps[:k]) for k in range(len(level_steps))]
        # reported index of pair i, level l, step s: (i * levels + l) * stride + s, the same in every trial
        stride = max(_REPORT_STRIDE, max(level_steps) + 1)
        for i, pair in enumerate(self.cache.pairs):
            data = self.cache.data(pair)
            handlers = []
            kp = _keypoints(data)
            if job.objective == "tre" and kp is not None and job.report_every:
                shape = tuple(data["fixed_mask"].shape[-3:]) if "fixed_mask" in data else _image_shape(pair.fixed)
                handlers.append(OptunaPruningHandler(
                    trial, kp[0], kp[1], shape, _spacings(pair)[0], min(job.report_every, max(level_steps)),
                    offset=i * len(level_steps) * stride, prune_from=int(math.ceil(job.prune_fraction * steps)),
                    level_offsets=level_offsets, level_stride=stride,
                ))
            try:
                m = _register_and_measure(pair, data, cfg, job.device, handlers, dice=job.objective == "dice",
                                          stop=lambda: any(h.pruned for h in handlers))
            except RegistrationDivergedError as exc:
                return self._reject(trial, "diverged", f"{pair.key}: {exc}")
            if m is None:
                step, tre = handlers[0].pruned
                raise optuna.TrialPruned(f"pruned at step {step} of {pair.key}: TRE {tre:.3f} mm")
            metrics.append(m)
            self._record(trial, metrics)
            if job.objective == "dice":
                trial.report(self._value(metrics), i)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after pair {pair.key}")
        _set_native_constraints(trial, [max(m.sdlogj for m in metrics) - job.max_sdlogj,
                                        max(m.folding_percent for m in metrics) - job.max_folding])
        return self._value(metrics)

    def _value(self, metrics: list[PairMetrics]) -> float:
        vals = [m.tre if self.job.objective == "tre" else m.dice for m in metrics]
        if any(v is None for v in vals):
            raise UserInputError(f"tune: objective {self.job.objective!r} could not be measured on every pair.")
        return float(sum(vals) / len(vals))

    def _record(self, trial, metrics: list[PairMetrics]) -> None:
        sd = max(m.sdlogj for m in metrics)
        fold = max(m.folding_percent for m in metrics)
        trial.set_user_attr("pairs", {m.key: dataclasses.asdict(m) for m in metrics})
        trial.set_user_attr("sdlogj_max", sd)
        trial.set_user_attr("folding_max", fold)
        trial.set_user_attr("seconds", float(sum(m.seconds for m in metrics)))
        trial.set_user_attr("constraints", [sd - self.job.max_sdlogj, fold - self.job.max_folding])

    def _reject(self, trial, kind: str, message: str) -> float:
        import optuna

        trial.set_user_attr("error_kind", kind)
        trial.set_user_attr("error", message[:500])
        trial.set_user_attr("constraints", [1e3, 1e3])
        _set_native_constraints(trial, [1e3, 1e3])
        raise optuna.TrialPruned(f"{kind}: {message}")


def _set_native_constraints(trial, values: Sequence[float]) -> None:
    """Optuna >= 5: hand the constraint values to the sampler (once per trial)."""
    if _NATIVE_CONSTRAINTS:
        trial.set_constraint("sdlogj", float(values[0]))
        trial.set_constraint("folding", float(values[1]))


class _Surplus(Exception):
    """The study had its trials already when this one started."""


def _image_shape(path) -> tuple[int, int, int]:
    from .evaluation.learn2reg import _image_shape as shape

    return tuple(shape(Path(path)))[:3]


def format_trial(trial, n_trials: int, done: int, best, objective: str, rank_prefix: str = "",
                 limits: tuple[float, float] | None = None) -> str:
    """The progress line of one trial."""
    unit = " mm" if objective == "tre" else ""
    outcome = trial_outcome(trial, limits)
    head = f"{rank_prefix}trial {trial.number} [{done}/{n_trials}] {outcome}"
    if trial.value is not None and outcome in ("feasible", "infeasible"):
        head += f" {objective} {trial.value:.4f}{unit}"
    elif trial.intermediate_values and outcome == "pruned":
        step = max(trial.intermediate_values)
        head += f" (last report {trial.intermediate_values[step]:.4f}{unit} at {step})"
    if "sdlogj_max" in trial.user_attrs:
        head += f" SDlogJ<={trial.user_attrs['sdlogj_max']:.4f} folding<={trial.user_attrs['folding_max']:.4f}%"
    if "seconds" in trial.user_attrs:
        head += f" {trial.user_attrs['seconds']:.1f}s"
    if trial.user_attrs.get("error"):
        head += f" ({trial.user_attrs['error'][:160]})"
    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    best_txt = "none feasible yet" if best is None else f"#{best.number} {best.value:.4f}{unit}"
    return f"{head} | best {best_txt} | {params}"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _worker(rank: int, job: _Job, on_trial: Callable[[str], None] | None, tie_tolerance: float, prefix: bool) -> int:
    """Take trials of the study until ``job.n_trials`` have finished; return how many this worker ran."""
    import optuna

    if job.threads:
        torch.set_num_threads(int(job.threads))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is our own one-line report (no traceback on Ctrl-C)
    study = _load_study(job, seed_offset=rank)
    objective = _Objective(job, rank)
    rank_prefix = f"[worker {rank}] " if prefix else ""

    def report(study, frozen) -> None:
        if frozen.user_attrs.get("surplus"):
            return
        trials = study.get_trials(deepcopy=False)
        best = select_best_trial(trials, job.direction, tie_tolerance, (job.max_sdlogj, job.max_folding))
        line = format_trial(frozen, job.n_trials, len(_finished(trials)), best, job.objective, rank_prefix,
                            (job.max_sdlogj, job.max_folding))
        (on_trial or _print)(line)

    start_lock = _TrialStartLock(job.storage)
    objective.on_start = start_lock.release
    with _SigintLatch() as sigint:
        return _take_trials(study, job, objective, start_lock, report, sigint)


class _SigintLatch:
    """Remember a Ctrl-C (SIGINT) even where Python swallows the ``KeyboardInterrupt`` it raises.

    A SIGINT that arrives while a garbage-collection callback runs (e.g. SQLAlchemy's weakref callbacks during the
    ``gc.collect()`` after each trial) raises inside that callback, where the interpreter prints "Exception ignored"
    and goes on: the search then ran to its end and exited 0. The handler raises ``KeyboardInterrupt`` as the default
    one does and also sets ``hit``, which the trial loop checks between trials. Installed only in the main thread.
    """

    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None
        self._unraisable: Any = None

    def _unraisable_hook(self, unraisable) -> None:
        # the KeyboardInterrupt lost in a gc callback: remembered (the loop re-raises it), not printed as a traceback
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.hit = True
            return
        self._unraisable(unraisable)

    def _handler(self, signum, frame) -> None:
        self.hit = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a SIGINT came (whether or not its first ``KeyboardInterrupt`` was lost)."""
        if self.hit:
            raise KeyboardInterrupt

    def __enter__(self) -> _SigintLatch:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._unraisable, sys.unraisablehook = sys.unraisablehook, self._unraisable_hook
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            sys.unraisablehook = self._unraisable


def _take_trials(study, job: _Job, objective: _Objective, start_lock: _TrialStartLock, report, sigint: _SigintLatch) -> int:
    """The worker's loop: take trials until ``job.n_trials`` have finished; return how many this worker ran."""
    import optuna
    from optuna.trial import TrialState

    ran = 0
    while True:
        sigint.check()
        if job.heartbeat:
            with start_lock, warnings.catch_warnings():  # one worker marks a stale trial failed and queues its retry
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        done = len(_finished(trials))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= job.n_trials:
            return ran
        if done + running >= job.n_trials:  # the last trials run elsewhere: wait for them (or for them to go stale)
            time.sleep(max(1.0, job.heartbeat / 2 if job.heartbeat else 1.0))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            start_lock.acquire()  # released by the objective once the trial is taken
            try:
                study.optimize(objective, n_trials=1, catch=(_Surplus,), callbacks=[report], gc_after_trial=True)
            except KeyboardInterrupt:  # Ctrl-C: Optuna marked the running trial failed; the next run retries it
                _requeue_interrupted(study, objective.current)
                raise
            finally:
                start_lock.release()
        ran += 1
        sigint.check()


def _requeue_interrupted(study, number: int | None) -> None:
    """Queue the parameters of trial ``number`` again if it failed by an interrupt (Ctrl-C) after drawing them, so
    the same command run again retries it first (as the heartbeat does for a killed process's trial)."""
    from optuna.trial import TrialState

    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL and trial.params and not trial.user_attrs.get("surplus"):
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _spawned(local_rank: int, job: _Job, tie_tolerance: float, on_trial) -> None:
    import ignite.distributed as idist

    _worker(idist.get_rank(), job, on_trial, tie_tolerance, prefix=idist.get_world_size() > 1)


# ------------------------------------------------------------------------------------------------ the result
@dataclass
class TuneResult:
    """The outcome of :func:`tune`.

    Attributes:
        study_name, storage: where the study lives (resume with the same call).
        objective, direction: ``"tre"`` (minimize) or ``"dice"`` (maximize).
        n_finished: completed + pruned trials in the study.
        best: the chosen Optuna ``FrozenTrial`` (``None`` when no trial was feasible).
        config: the best config at full length (``None`` when none).
        config_path, csv_path, plot_paths, summary_path: files written.
        full_run: the best config's full-length scores on the tuning pairs (when ``search_steps`` was given).
        holdout: ``{"tuned": [...], "base": [...]}`` :class:`PairMetrics` on the hold-out pairs (when asked).
        outcomes: count of trials per outcome (:func:`trial_outcome`).
        rank: the process's rank under ``torchrun`` (only rank 0 writes the outputs and fills the fields above
            ``n_finished``); 0 otherwise.
    """

    study_name: str
    storage: str
    objective: str
    direction: str
    n_finished: int
    best: Any = None
    config: RegistrationConfig | None = None
    config_path: Path | None = None
    csv_path: Path | None = None
    plot_paths: list[Path] = field(default_factory=list)
    summary_path: Path | None = None
    full_run: list[PairMetrics] | None = None
    holdout: dict[str, list[PairMetrics]] | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    rank: int = 0


def _select_pairs(where: str, ds, split: str, wanted: Sequence[str] | None, what: str):
    pairs = ds.pairs(split)
    if not pairs:
        raise UserInputError(f"{where}: split {ds.resolve_split(split)!r} of {ds.json_path.name} lists no pairs.")
    if not wanted:
        return pairs
    out = []
    for w in wanted:
        w = str(w).strip()
        hit = [p for p in pairs if w in (p.key, p.fixed_case)]
        if not hit:
            raise UserInputError(
                f"{where}: {what} {w!r} is not a pair of split {ds.resolve_split(split)!r}; its pairs are "
                f"{[p.key for p in pairs]} (give the key or the fixed case id)."
            )
        out.extend(p for p in hit if p not in out)
    return out


def _auto_objective(objective: str, pairs) -> str:
    from ._validation import choose

    objective = choose("tune", "objective", objective, OBJECTIVES)
    has_kp = all(p.fixed_keypoints is not None and p.moving_keypoints is not None for p in pairs)
    has_seg = all((p.fixed_label or p.fixed_mask) is not None and (p.moving_label or p.moving_mask) is not None for p in pairs)
    if objective == "auto":
        if has_kp:
            return "tre"
        if has_seg:
            return "dice"
        raise UserInputError("tune: the tuning pairs have neither keypoints nor masks/labels: nothing to optimise.")
    if objective == "tre" and not has_kp:
        raise UserInputError("tune: objective 'tre' needs keypoints (keypointsTr/*.csv) for every tuning pair.")
    if objective == "dice" and not has_seg:
        raise UserInputError("tune: objective 'dice' needs labels or masks for every tuning pair.")
    return objective


def evaluate_configs(
    dataset: str | Path,
    split: str,
    configs: Mapping[str, RegistrationConfig],
    pairs: Sequence[str] | None = None,
    *,
    device: str | None = None,
    threads: int | None = None,
    on_pair: Callable[[str, PairMetrics], None] | None = None,
    dice: bool = False,
) -> dict[str, list[PairMetrics]]:
    """Register the pairs with each config (in turn, one process) and score them as ``contreg evaluate`` does.

    Args:
        dataset: Learn2Reg folder or description file.
        split: split name or alias.
        configs: ``{name: config}``.
        pairs: keys or fixed case ids (default: the whole split).
        device: passed to :func:`~monai_contreg.api.register`.
        threads: torch CPU threads (``engine.num_threads``) of each registration.
        on_pair: called as ``on_pair(name, metrics)`` after each registration.
        dice: also measure Dice (and HD95, the cost of ``contreg evaluate``) of the warped labels or masks.

    Returns:
        ``{name: [PairMetrics per pair]}``.
    """
    from .data.learn2reg import Learn2RegDataset

    ds = Learn2RegDataset(dataset)
    chosen = _select_pairs("evaluate_configs", ds, split, pairs, "pair")
    cache = _PairCache(str(ds.json_path), split, [p.key for p in chosen], with_labels=dice)
    out: dict[str, list[PairMetrics]] = {}
    for name, cfg in configs.items():
        cfg = RegistrationConfig.from_dict({}, cfg)
        cfg.engine.num_threads = threads or 0
        out[name] = []
        for pair in cache.pairs:
            m = _register_and_measure(pair, cache.data(pair), cfg, device, dice=dice)
            out[name].append(m)
            if on_pair is not None:
                on_pair(name, m)
    return out


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return float(sum(vals) / len(vals)) if vals else None


def summarize(metrics: Sequence[PairMetrics]) -> dict[str, Any]:
    """Mean TRE/Dice, largest SDlogJ/folding and total seconds of a list of :class:`PairMetrics`."""
    return {
        "tre": _mean(m.tre for m in metrics),
        "dice": _mean(m.dice for m in metrics),
        "sdlogj_mean": _mean(m.sdlogj for m in metrics),
        "sdlogj_max": max(m.sdlogj for m in metrics),
        "folding_max": max(m.folding_percent for m in metrics),
        "seconds": float(sum(m.seconds for m in metrics)),
        "pairs": {m.key: dataclasses.asdict(m) for m in metrics},
    }


def write_best_config(path: str | Path, config: RegistrationConfig, header: Sequence[str] = ()) -> Path:
    """Write the config (all sections but the run-time ``engine``) as YAML, atomically; ``header``: comment lines.

    The file is what ``contreg register --config``, ``contreg run --config`` and the bundle's
    ``--method_overrides "%FILE"`` take: it sets every method field, whatever preset it is applied on."""
    import yaml

    from .io.atomic import atomic_path

    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(_method_dict(config), sort_keys=False)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        tmp.write_text(text)
    return p


def write_trials_csv(path: str | Path, trials: Sequence[Any], param_keys: Sequence[str],
                     limits: tuple[float, float] | None = None) -> Path:
    """One row per trial: number, state, outcome (judged with ``limits``, see :func:`trial_outcome`), value (the
    objective of a completed trial; blank otherwise),
    SDlogJ/folding maxima, seconds, per-pair objective, times, worker, parameters (``surplus`` rows, never run,
    are left out)."""
    from .io.atomic import atomic_path

    pair_keys: list[str] = []
    for t in trials:
        for k in t.user_attrs.get("pairs", {}):
            if k not in pair_keys:
                pair_keys.append(k)
    header = ["number", "state", "outcome", "value", "sdlogj_max", "folding_max", "seconds", "baseline",
              *[f"tre_{k}" for k in pair_keys], *[f"dice_{k}" for k in pair_keys],
              "datetime_start", "datetime_complete", "worker", "error", *param_keys]
    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for t in trials:
            if t.user_attrs.get("surplus"):
                continue
            ua = t.user_attrs
            pairs = ua.get("pairs", {})
            w.writerow([
                # a pruned trial's Optuna value is its last intermediate report (one pair, part of a run): not
                # comparable with a completed trial's objective, so left blank (its reports are in the study)
                t.number, t.state.name, trial_outcome(t, limits), "" if t.value is None or t.state.name != "COMPLETE" else t.value,
                ua.get("sdlogj_max", ""), ua.get("folding_max", ""), ua.get("seconds", ""), bool(ua.get("baseline", False)),
                *[_blank(pairs.get(k, {}).get("tre")) for k in pair_keys],
                *[_blank(pairs.get(k, {}).get("dice")) for k in pair_keys],
                t.datetime_start or "", t.datetime_complete or "", ua.get("worker", ""), ua.get("error", ""),
                *[_blank(t.params.get(k)) for k in param_keys],
            ])
    return p


def _blank(v: Any) -> Any:
    return "" if v is None else v


def write_plots(study, stem: Path) -> tuple[list[Path], list[str]]:
    """Optuna's optimisation history and parameter importances as PNGs (matplotlib backend ``Agg``).

    Returns:
        ``(written paths, notes on plots left out)``: the history needs one completed trial, importances
        two completed trials with distinct parameter values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    written, notes = [], []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    plots = [("history", lambda: optuna.visualization.matplotlib.plot_optimization_history(study), 1)]
    evaluator = getattr(optuna.importance, "PedAnovaImportanceEvaluator", None)
    plots.append(("importances", lambda: optuna.visualization.matplotlib.plot_param_importances(
        study, evaluator=evaluator() if evaluator else None), 2))
    for name, make, need in plots:
        if len(complete) < need:
            notes.append(f"{name} plot left out: it needs {need} completed trial(s), the study has {len(complete)}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            path = stem.parent / f"{stem.name}.{name}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
        except Exception as exc:  # e.g. importances with a single distinct value per parameter
            notes.append(f"{name} plot left out: {type(exc).__name__}: {exc}")
            plt.close("all")
    return written, notes


def _outputs_stem(output: Path) -> Path:
    name = output.name
    for suffix in (".yaml", ".yml", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return output.parent / name


def tune(
    dataset: str | Path,
    split: str,
    output: str | Path,
    *,
    preset: str = "io",
    base: RegistrationConfig | None = None,
    space: Mapping[str, Any] | str | Path | None = None,
    pairs: Sequence[str] | None = None,
    n_trials: int = 20,
    objective: str = "auto",
    max_sdlogj: float = 0.1,
    max_folding: float = 0.0,
    search_steps: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int | None = 0,
    startup_trials: int | None = None,
    pruner_startup: int | None = None,
    report_every: int = 10,
    prune_fraction: float = 0.5,
    tie_tolerance: float | None = None,
    nproc_per_node: int | None = None,
    backend: str | None = None,
    master_port: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    heartbeat: int = 10,
    holdout: Sequence[str] | None = None,
    final_run: bool = True,
    on_trial: Callable[[str], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search the settings that register a dataset's pairs best (see the module docstring).

    Args:
        dataset: Learn2Reg folder or description file.
        split: split name or alias whose pairs are tuned on.
        output: the best config's YAML; beside it ``STEM.trials.csv``, ``STEM.history.png``,
            ``STEM.importances.png``, ``STEM.summary.json`` and, without ``storage``, the study ``STEM.study.db``.
        preset: preset of the base config and of the default search space.
        base: the base config (default: the preset's); trials apply the sampled values to it.
        space: search space (mapping, or a YAML/JSON file); default :func:`default_search_space` ``(preset)``.
        pairs: keys (``"0101_0101"``) or fixed case ids (``"0101"``) of the split to tune on (default: all).
        n_trials: trials to finish (completed or pruned) in the study, counting those of earlier runs.
        objective: ``"auto"``, ``"tre"`` or ``"dice"``.
        max_sdlogj, max_folding: feasibility limits (largest per-pair SDlogJ, folding %).
        search_steps: shortened schedule length of the trials (``None``: the full schedule).
        storage: Optuna RDB URL (``sqlite:///...``, ``postgresql://...``); default the SQLite file above.
        study_name: default ``contreg-<dataset name>-<split>-<preset>``.
        seed: TPE seed (worker ``r`` uses ``seed + r``); ``None``: random.
        startup_trials: random trials before TPE models (default ``max(2, min(10, n_trials // 4))``).
        pruner_startup: finished trials before the median pruner acts (default ``max(2, min(5, n_trials // 4))``).
        report_every: TRE report period (steps) of the pruning handler (0: per pair only).
        prune_fraction: no pruning before this fraction of each pair's steps.
        tie_tolerance: objective difference counted as a tie (default 0.01 mm TRE, 0.001 Dice).
        nproc_per_node: spawn this many worker processes (ignite.distributed); under ``torchrun`` leave it out.
        backend: process-group backend of the workers (default gloo).
        master_port: rendezvous port of spawned workers (default: a free port).
        device: passed to :func:`~monai_contreg.api.register` in every worker.
        threads: torch CPU threads per worker (default: CPUs // workers).
        heartbeat: seconds between a running trial's heartbeats (a trial silent for 3 heartbeats is marked
            failed and its parameters re-queued).
        holdout: pairs (keys or case ids) on which to compare the tuned config with the base at full length; never
            tuned on (without ``pairs`` the tuning pairs are the split's others; repeating one of ``pairs`` is an
            error).
        final_run: with ``search_steps``, re-run the best config at full length on the tuning pairs.
        on_trial: receives each trial's progress line (default: print).
        on_line: receives the summary lines (default: print).

    Returns:
        A :class:`TuneResult`.

    Raises:
        UserInputError / FileNotFoundError: bad dataset, split, pairs, space, options, or a stored study made
        with other settings (before any trial runs).
    """
    import ignite.distributed as idist
    import optuna

    from .data.learn2reg import Learn2RegDataset
    from .distributed import _free_port, check_launch, default_threads, launched_by_torchrun
    from .methods.presets import get_preset

    say = on_line or _print
    where = "tune"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name, value, low in (("n_trials", n_trials, 1), ("report_every", report_every, 0), ("heartbeat", heartbeat, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserInputError(f"{where}: {name} must be an integer >= {low}, got {value!r}.")
    if search_steps is not None and (isinstance(search_steps, bool) or not isinstance(search_steps, int) or search_steps < 1):
        raise UserInputError(f"{where}: search_steps must be an integer >= 1, got {search_steps!r}.")
    for name, value in (("max_sdlogj", max_sdlogj), ("max_folding", max_folding)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise UserInputError(f"{where}: {name} must be a number >= 0, got {value!r}.")
    if not 0 <= prune_fraction <= 1:
        raise UserInputError(f"{where}: prune_fraction must lie in [0, 1], got {prune_fraction!r}.")
    torchrun = launched_by_torchrun()
    distributed = nproc_per_node is not None or torchrun
    if distributed:
        backend = check_launch(backend, nproc_per_node, device, threads, where=where)
    base_cfg = RegistrationConfig.from_dict({}, base) if base is not None else get_preset(preset)
    if space is None:
        space_dict = default_search_space(preset)
    elif isinstance(space, (str, Path)):
        space_dict = load_search_space(space)
    else:
        space_dict = json.loads(json.dumps(dict(space)))
    params = parse_search_space(space_dict, base_cfg, where="--space" if isinstance(space, (str, Path)) else where)
    if search_steps is not None:
        longest = max(schedule_steps(base_cfg))
        if search_steps > longest:
            raise UserInputError(
                f"{where}: search_steps ({search_steps}) is above the base config's schedule length ({longest} steps); "
                "it shortens the schedules while searching: give fewer steps, or leave it out to search at full length."
            )
        scale_schedule(base_cfg, search_steps)
    ds = Learn2RegDataset(dataset)
    tune_pairs = _select_pairs(where, ds, split, pairs, "--pairs")
    hold_pairs = _select_pairs(where, ds, split, holdout, "--holdout") if holdout else []
    if hold_pairs and not pairs:  # tune on the split's other pairs: a hold-out pair is never tuned on
        tune_pairs = [p for p in tune_pairs if p not in hold_pairs]
        if not tune_pairs:
            raise UserInputError(f"{where}: --holdout takes every pair of the split; leave some to tune on (or give --pairs).")
    overlap = [p.key for p in hold_pairs if p in tune_pairs]
    if overlap:
        raise UserInputError(
            f"{where}: --holdout repeats tuning pairs {overlap} of --pairs: a hold-out pair must not be tuned on "
            "(its figures would be in-sample)."
        )
    obj = _auto_objective(objective, tune_pairs)
    direction = "minimize" if obj == "tre" else "maximize"
    tie = (0.01 if obj == "tre" else 0.001) if tie_tolerance is None else float(tie_tolerance)
    out = Path(output)
    stem = _outputs_stem(out)
    if storage is None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(stem.parent / (stem.name + '.study.db')).resolve()}"
    split_key = ds.resolve_split(split)
    name = study_name or f"contreg-{ds.name}-{split_key}-{preset}"
    workers = nproc_per_node or (int(os.environ.get("WORLD_SIZE", "1")) if torchrun else 1)
    job = _Job(
        dataset=str(ds.json_path), split=split_key, keys=[p.key for p in tune_pairs], base=base_cfg, space=space_dict,
        objective=obj, direction=direction, max_sdlogj=float(max_sdlogj), max_folding=float(max_folding),
        n_trials=n_trials, search_steps=search_steps, storage=storage, study_name=name, seed=seed,
        startup_trials=startup_trials if startup_trials is not None else max(2, min(10, n_trials // 4)),
        pruner_startup=pruner_startup if pruner_startup is not None else max(2, min(5, n_trials // 4)),
        report_every=report_every, prune_fraction=float(prune_fraction), device=device,
        threads=threads or (default_threads(workers) if distributed else None), heartbeat=heartbeat,
        backend=backend or "gloo",
    )
    is_main = not torchrun or int(os.environ.get("RANK", "0")) == 0
    if distributed:
        from .distributed import _quiet_launcher

        _quiet_launcher()
    if nproc_per_node is not None:
        _prepare_study(job)
        port = master_port or _free_port()
        with idist.Parallel(backend=job.backend, nproc_per_node=nproc_per_node, master_port=port) as parallel:
            parallel.run(_spawned, job, tie, on_trial)
    elif torchrun:
        with idist.Parallel(backend=job.backend) as parallel:
            parallel.run(_torchrun_rank, job, tie, on_trial)
    else:
        _prepare_study(job)
        _worker(0, job, on_trial, tie, prefix=False)
    if not is_main:
        study = _load_study(job)
        return TuneResult(name, storage, obj, direction, len(_finished(study.get_trials(deepcopy=False))),
                          rank=int(os.environ.get("RANK", "0")))
    return _finish(job, stem, out, params, tie, tune_pairs, hold_pairs, final_run, say, preset)


def _torchrun_rank(local_rank: int, job: _Job, tie: float, on_trial) -> None:
    import ignite.distributed as idist

    if idist.get_rank() == 0:
        _prepare_study(job)
    idist.barrier()
    _worker(idist.get_rank(), job, on_trial, tie, prefix=idist.get_world_size() > 1)
    idist.barrier()


def _finish(job: _Job, stem: Path, out: Path, params, tie: float, tune_pairs, hold_pairs, final_run, say, preset) -> TuneResult:
    """Outputs of a finished study: best YAML, CSV, plots, full-length re-run, hold-out comparison, summary."""
    from .io.atomic import atomic_path

    study = _load_study(job)
    trials = study.get_trials(deepcopy=False)
    finished = _finished(trials)
    limits = (job.max_sdlogj, job.max_folding)
    result = TuneResult(job.study_name, job.storage, job.objective, job.direction, len(finished))
    counts: dict[str, int] = {}
    for t in trials:
        o = trial_outcome(t, limits)
        if o != "surplus":
            counts[o] = counts.get(o, 0) + 1
    result.outcomes = counts
    result.csv_path = write_trials_csv(stem.parent / f"{stem.name}.trials.csv", trials, [p.key for p in params], limits)
    result.plot_paths, notes = write_plots(study, stem)
    say(f"study {job.study_name!r} ({job.storage}): {len(finished)} of {job.n_trials} trials finished "
        f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})")
    for n in notes:
        say(n)
    best = select_best_trial(trials, job.direction, tie, limits)
    result.best = best
    unit = " mm" if job.objective == "tre" else ""
    summary: dict[str, Any] = {
        "study": job.study_name, "storage": job.storage, "objective": job.objective, "direction": job.direction,
        "n_trials": job.n_trials, "finished": len(finished), "outcomes": counts, "tuning_pairs": job.keys,
        "search_steps": job.search_steps, "max_sdlogj": job.max_sdlogj, "max_folding": job.max_folding,
    }
    if best is None:
        say(f"no feasible trial (SDlogJ <= {job.max_sdlogj}, folding <= {job.max_folding}%): no config written; "
            "widen the space, raise the limits or run more trials (the same command resumes the study)")
    else:
        cfg = job.base.with_overrides(dict(best.params))
        result.config = cfg
        steps = f" with {job.search_steps}-step schedules" if job.search_steps else ""
        header = [
            f"contreg tune: study {job.study_name!r}, trial {best.number} of {len(finished)}, base preset {preset!r}",
            f"objective {job.objective} {best.value:.4f}{unit} on {', '.join(job.keys)}{steps}; "
            f"SDlogJ <= {best.user_attrs.get('sdlogj_max', float('nan')):.4f}, {best.user_attrs.get('seconds', 0):.1f}s",
            "use: contreg register/run --config THIS_FILE; bundle: --method_overrides \"%THIS_FILE\"",
        ]
        result.config_path = write_best_config(out, cfg, header)
        say(f"best: trial {best.number} {job.objective} {best.value:.4f}{unit} "
            f"(SDlogJ <= {best.user_attrs.get('sdlogj_max', float('nan')):.4f}, {best.user_attrs.get('seconds', 0):.1f}s): "
            + " ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
        say(f"wrote {result.config_path}")
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "sdlogj_max": best.user_attrs.get("sdlogj_max"), "seconds": best.user_attrs.get("seconds")}
        if job.search_steps and final_run:
            say(f"re-running trial {best.number} at full length ({' + '.join(map(str, schedule_steps(cfg)))} steps) on the tuning pairs")
            full = evaluate_configs(job.dataset, job.split, {"tuned": cfg}, job.keys, device=job.device, threads=job.threads,
                                    on_pair=lambda name, m: say(_pair_line(name, m)), dice=job.objective == "dice")
            result.full_run = full["tuned"]
            s = summarize(full["tuned"])
            summary["full_run"] = s
            say(_summary_line("tuned, full length, tuning pairs", s, job.objective))
        if hold_pairs:
            say(f"hold-out: {', '.join(p.key for p in hold_pairs)}: tuned vs base ({preset}), full length")
            cmp = evaluate_configs(job.dataset, job.split, {"tuned": cfg, "base": job.base}, [p.key for p in hold_pairs],
                                   device=job.device, threads=job.threads, dice=job.objective == "dice",
                                   on_pair=lambda name, m: say(_pair_line(name, m)))
            result.holdout = cmp
            summary["holdout"] = {k: summarize(v) for k, v in cmp.items()}
            for k in ("base", "tuned"):
                say(_summary_line(f"{k}, hold-out", summary["holdout"][k], job.objective))
    summary["csv"] = str(result.csv_path)
    summary["plots"] = [str(p) for p in result.plot_paths]
    result.summary_path = stem.parent / f"{stem.name}.summary.json"
    with atomic_path(result.summary_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))
    say(f"wrote {result.csv_path}, {', '.join(str(p) for p in result.plot_paths) or 'no plots'}, {result.summary_path}")
    return result


def _pair_line(name: str, m: PairMetrics) -> str:
    score = f"TRE {m.tre:.3f} mm" if m.tre is not None else f"Dice {m.dice:.4f}"
    return f"  {name} {m.key}: {score}, SDlogJ {m.sdlogj:.4f}, folding {m.folding_percent:.4f}%, {m.steps} steps, {m.seconds:.1f}s"


def _summary_line(label: str, s: dict[str, Any], objective: str) -> str:
    per = " ".join(
        f"{k} {v['tre']:.3f}" if v.get("tre") is not None else f"{k} dice {v['dice']:.3f}" for k, v in s["pairs"].items()
    )
    main = f"TRE {s['tre']:.3f} mm" if s.get("tre") is not None else f"Dice {s['dice']:.4f}"
    if objective == "dice" and s.get("dice") is not None and s.get("tre") is not None:
        main += f" Dice {s['dice']:.4f}"
    return (f"{label}: {main} ({per}), SDlogJ mean {s['sdlogj_mean']:.4f} max {s['sdlogj_max']:.4f}, "
            f"folding max {s['folding_max']:.4f}%, {s['seconds']:.1f}s")
