"""What a search reports and writes: progress lines, :class:`TuneResult`, the best-config YAML, the trials CSV,
the plots, and the outputs of a finished study.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..methods.config import RegistrationConfig
from .measure import PairMetrics, evaluate_configs
from .space import schedule_steps
from .study import _finished, _Job, _load_study, _method_dict, select_best_trial, trial_outcome


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



def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()



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

    from ..io.atomic import atomic_path

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
    from ..io.atomic import atomic_path

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



def _finish(job: _Job, stem: Path, out: Path, params, tie: float, tune_pairs, hold_pairs, final_run, say, preset) -> TuneResult:
    """Outputs of a finished study: best YAML, CSV, plots, full-length re-run, hold-out comparison, summary."""
    from ..io.atomic import atomic_path

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
            full = evaluate_configs(job.dataset, job.split, {"tuned": cfg}, job.keys, device=job.device, threads=job.threads, max_memory=job.max_memory,
                                    on_pair=lambda name, m: say(_pair_line(name, m)), dice=job.objective == "dice")
            result.full_run = full["tuned"]
            s = summarize(full["tuned"])
            summary["full_run"] = s
            say(_summary_line("tuned, full length, tuning pairs", s, job.objective))
        if hold_pairs:
            say(f"hold-out: {', '.join(p.key for p in hold_pairs)}: tuned vs base ({preset}), full length")
            cmp = evaluate_configs(job.dataset, job.split, {"tuned": cfg, "base": job.base}, [p.key for p in hold_pairs],
                                   device=job.device, threads=job.threads, dice=job.objective == "dice", max_memory=job.max_memory,
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
