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

The package, by concern (each name above is importable from ``monai_contreg.tuning``):
:mod:`~monai_contreg.tuning.space` (search spaces, schedule shortening), :mod:`~monai_contreg.tuning.measure`
(registering and scoring a pair), :mod:`~monai_contreg.tuning.objective` (the pruning handler, the trial function),
:mod:`~monai_contreg.tuning.study` (storage, trial-start lock, pruner, judging trials),
:mod:`~monai_contreg.tuning.workers` (the trial loop of each process), :mod:`~monai_contreg.tuning.report`
(progress lines, CSV, plots, best config, summary) and :mod:`~monai_contreg.tuning.search` (:func:`tune`).

Examples:
    >>> from monai_contreg.tuning import tune
    >>> result = tune("../shared/data/nlst_synth", "val", "tuned/best.yaml", pairs=["0101", "0102"],
    ...               n_trials=8, search_steps=100, holdout=["0103", "0104"], threads=1)
    >>> result.best.number, result.config_path   # tuned/best.yaml, tuned/best.trials.csv, tuned/best.*.png
"""

from __future__ import annotations

from .measure import PairMetrics, evaluate_configs
from .objective import OptunaPruningHandler
from .report import TuneResult, format_trial, summarize, write_best_config, write_plots, write_trials_csv
from .search import tune
from .space import (
    DEFAULT_SPACES,
    OBJECTIVES,
    SearchParam,
    default_search_space,
    load_search_space,
    parse_search_space,
    scale_schedule,
    schedule_steps,
)
from .study import FeasibleMedianPruner, select_best_trial, trial_outcome

# private helpers that tests and tools reach (kept importable from the package as before the split)
from .space import _config_value  # noqa: E402,F401
from .study import _open_rdb, _TrialStartLock  # noqa: E402,F401
from .workers import _SigintLatch  # noqa: E402,F401

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
