"""The :func:`tune` entry: checks every option before any trial runs, builds the job, runs the workers (one
process, spawned ones, or ``torchrun`` ranks) and writes the outputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..methods.config import RegistrationConfig
from .measure import _select_pairs
from .report import TuneResult, _finish, _print
from .space import OBJECTIVES, default_search_space, load_search_space, parse_search_space, scale_schedule, schedule_steps
from .study import _finished, _Job, _load_study, _prepare_study
from .workers import _spawned, _torchrun_rank, _worker


def _auto_objective(objective: str, pairs) -> str:
    from .._validation import choose

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
    max_memory: str | float | int | None = None,
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
        max_memory: memory one registration may use, bytes or ``"8G"`` (``--max-memory``); ``None``: 80 % of the
            available memory (RAM, or the GPU's free memory). Every registration (trials, the full-length re-run,
            the hold-out comparison) is refused with :class:`~monai_contreg.errors.UserInputError` before it runs
            when its estimated peak memory exceeds it, as :func:`~monai_contreg.api.register` does.
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
        UserInputError / FileNotFoundError: bad dataset, split, pairs, space, options (``max_memory`` not a
            size), or a stored study made with other settings (before any trial runs); a registration over
            ``max_memory`` (when it would start: the search stops there).
    """
    import ignite.distributed as idist
    import optuna

    from ..data.learn2reg import Learn2RegDataset
    from ..distributed import _free_port, check_launch, default_threads, launched_by_torchrun
    from ..methods.presets import get_preset

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
    if max_memory is not None:
        from ..methods.memory import parse_memory

        max_memory = parse_memory(f"{where}: max_memory", max_memory)
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
        backend=backend or "gloo", max_memory=max_memory,
    )
    is_main = not torchrun or int(os.environ.get("RANK", "0")) == 0
    if distributed:
        from ..distributed import _quiet_launcher

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
