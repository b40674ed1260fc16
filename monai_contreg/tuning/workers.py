"""The workers: one process's trial loop (trial-start lock, Ctrl-C latch and re-queue), spawned and
``torchrun`` ranks.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..errors import UserInputError
from .objective import _Objective, _Surplus
from .report import _print, format_trial
from .study import _finished, _Job, _load_study, _prepare_study, _TrialStartLock, select_best_trial


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
            except (KeyboardInterrupt, UserInputError):
                # Ctrl-C, or a refusal that stops the search (a registration over --max-memory): Optuna marked the
                # running trial failed; the same command run again (e.g. with a higher limit) retries it first
                _requeue_interrupted(study, objective.current)
                raise
            finally:
                start_lock.release()
        ran += 1
        sigint.check()


def _requeue_interrupted(study, number: int | None) -> None:
    """Queue the parameters of trial ``number`` again if it failed by an interrupt (Ctrl-C) or a refusal after
    drawing them, so the same command run again retries it first (as the heartbeat does for a killed process's
    trial)."""
    from optuna.trial import TrialState

    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL and trial.params and not trial.user_attrs.get("surplus"):
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})



def _spawned(local_rank: int, job: _Job, tie_tolerance: float, on_trial) -> None:
    import ignite.distributed as idist

    _worker(idist.get_rank(), job, on_trial, tie_tolerance, prefix=idist.get_world_size() > 1)




def _torchrun_rank(local_rank: int, job: _Job, tie: float, on_trial) -> None:
    import ignite.distributed as idist

    if idist.get_rank() == 0:
        _prepare_study(job)
    idist.barrier()
    _worker(idist.get_rank(), job, on_trial, tie, prefix=idist.get_world_size() > 1)
    idist.barrier()
