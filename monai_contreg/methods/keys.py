"""Dotted keys of a :class:`~monai_contreg.methods.config.RegistrationConfig`: the one function every source of
settings goes through (``--set``, ``--config``, ``from_dict``, bundle overrides, tune spaces, Python attributes).

:func:`apply_items` sets ``(key, value)`` pairs on a config in place (keys that change the list of stages first),
then validates it; :func:`get_key` reads one. A key is canonical (``stages.1.reg_weight``, ``optim.betas``) or an
alias of earlier versions (:data:`STAGE_ALIASES`, ``multilevel.levels.I``, ``convex.*``, ``method``, ``init``); an
alias with no single target on the config is an error naming the key to use.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, get_type_hints

from .._validation import suggest
from ..errors import UserInputError
from .stages import INIT_NAMES, METHOD_NAMES, STAGE_KINDS, ConvexConfig, ConvexStage, DenseStage

# ``RegistrationConfig`` in the annotations below is :class:`monai_contreg.methods.config.RegistrationConfig`, not
# imported: config.py imports this module (the annotations are never evaluated)

__all__ = ["STAGE_ALIASES", "apply_items", "flatten", "get_key", "make_stages", "scale_schedules", "schedule_steps"]


#: Keys of earlier versions that name a stage field: key -> (stage kinds it reaches, field name).
#: ``"dense"``: the config's one dense stage (an error naming ``stages.I.<field>`` with several, or none);
#: ``"mind"``: every stage, where the config has at most one dense stage (its stages share one MIND, as before);
#: ``"every dense"``: every dense stage (an error with none; reading it where they differ names ``stages.I.<field>``);
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
    "features.similarity": ("every dense", "similarity"),
}

#: Sections of shared settings (the dataclass fields of :class:`RegistrationConfig` besides ``stages``).
_SECTIONS = ("preprocess", "features", "field", "optim", "engine", "multilevel", "auto_affine")


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
_STAGE_TYPES = tuple(STAGE_KINDS.values())
#: Top-level names a key may start with.
_HEADS = ("stages", "method", "init", "convex", *_SECTIONS)
#: Keys that change the list of stages: applied before the others of one call.
_STRUCTURAL = ("stages", "method", "init", "multilevel.levels")


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or any(not p.strip() or p != p.strip() for p in key.split(".")):
        raise UserInputError(f"RegistrationConfig: {key!r} is not a dotted key such as 'optim.reg_weight' or 'stages.0.reg_weight'.")
    return key


def flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """``(dotted key, leaf value)`` pairs of a nested mapping (a non-mapping value is one leaf)."""
    if not isinstance(value, dict):
        return [(prefix, value)]
    out: list[tuple[str, Any]] = []
    for k, v in value.items():
        if isinstance(k, bool) or not isinstance(k, (str, int)):
            raise UserInputError(f"RegistrationConfig: {prefix or 'config'} has a key {k!r} that is not a name or an index.")
        out.extend(flatten(f"{prefix}.{k}" if prefix else str(k), v))
    return out


def apply_items(cfg: RegistrationConfig, items: list[tuple[str, Any]]) -> None:
    """Set ``items`` (dotted key, value) on ``cfg`` in place, stage-changing keys first, then validate.

    This is the one path of every source of settings (:meth:`RegistrationConfig.set`).
    """
    flat: list[tuple[str, Any]] = []
    for key, value in items:
        flat.extend(flatten(_check_key(key), value))
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
    if mode == "every dense" and dense:
        return dense
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


def make_stages(where: str, value: Any, only: str | None = None) -> tuple[Any, ...]:
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
            for k, v in flatten("", {k: v for k, v in item.items() if k != "kind"}):
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
            cfg.stages = make_stages("stages", value)
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
        lead = tuple(s for s in stages if s.kind == "affine")  # an affine stage stays first
        if method == "convex":
            cfg.stages = (*lead, convex[0] if convex else _new_convex(cfg))
        elif not cfg.dense_stages:
            c = convex[0] if convex else ConvexStage()
            cfg.stages = (*stages, DenseStage(mind_radius=c.mind_radius, mind_dilation=c.mind_dilation))
        return
    if head == "init" and len(parts) == 1:
        init = choose("RegistrationConfig", "init", value, INIT_NAMES)
        lead = tuple(s for s in stages if s.kind == "affine")  # an affine stage stays first
        rest = [s for s in stages if s.kind != "affine"]
        if init == "convex" and cfg.init != "convex":
            cfg.stages = (*lead, _new_convex(cfg), *rest)
        elif init == "zero" and cfg.init == "convex":
            if not cfg.dense_stages:
                raise UserInputError(
                    f"RegistrationConfig: init=zero: this config is the convex stage alone (stages: {_kinds(cfg)}), which "
                    "starts from no field anyway; to run Adam from zero set method=io as well (or give stages)."
                )
            cfg.stages = (*lead, *rest[1:])
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
        levels = make_stages("multilevel.levels", value, only="dense")
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


def get_key(cfg: RegistrationConfig, key: str) -> Any:
    """The value of the dotted ``key`` of ``cfg`` (:meth:`RegistrationConfig.get`)."""
    parts = _check_key(key).split(".")
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
