"""The study and its storage: the job a worker runs, the Optuna RDB storage (with retries and one-line errors),
the trial-start lock of SQLite files, the feasible-median pruner, loading/creating a study, and judging trials.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..methods.config import RegistrationConfig
from .space import _config_value, parse_search_space


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
    max_memory: int | None = None  # bytes; None: register's default (80 % of the available memory)



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
