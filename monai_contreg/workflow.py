"""The Learn2Reg workflow: register every pair of a split, resumably, then package the fields for submission.

* :func:`run_split` registers each pair of a split with :func:`monai_contreg.api.register` and writes
  ``OUT/disp_FFFF_MMMM.nii.gz``. Fields are written atomically, so a field that exists is complete: a run that
  was killed is resumed by running it again (existing fields are skipped). A failing pair is recorded and the
  others still run. ``OUT/runtimes.json`` (written atomically after every pair) logs per-pair times,
  steps and final loss, and the failures.
  With ``evaluate=True`` the folder is then evaluated once (:func:`evaluate_run`) into ``OUT/evaluation.json``.
* :func:`monai_contreg.distributed.run_split_distributed` runs the same pair loop sharded across processes
  (one rank per GPU or CPU process); each rank logs into ``OUT/runtimes.rank{r}.json``, which rank 0 merges
  into ``OUT/runtimes.json`` (:func:`merge_rank_logs`), so both runs leave the same folder.
* :func:`make_submission` checks every field of the split against the dataset's expected shape, then writes
  the official layout (``disp_FFFF_MMMM.nii.gz``, or ``.npz`` float16) into a zip, atomically.

Usage (a dataset on disk; not run as a doctest)::

    summary = run_split("/data/NLST", "val", "out/", "io", evaluate=True)
    summary.failed                                        # keys of pairs that failed ([] when all ran)
    summary.evaluation["aggregates"]["TRE_kp"]["mean"]    # mean TRE (mm) over the pairs, also in out/evaluation.json
    make_submission("out/", "/data/NLST", "submission.zip", split="val")
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import logging
import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import choose
from .errors import RegistrationDivergedError
from .data.learn2reg import Learn2RegDataset, Learn2RegPair, find_field, locate_fields
from .errors import UserInputError, is_user_facing
from .evaluation.learn2reg import RUNTIMES_FILE
from .io.atomic import atomic_path, writer_alive
from .io.fields import load_field, save_field
from .methods.config import RegistrationConfig
from .methods.presets import resolve_config
from .spatial.grid import Grid

__all__ = [
    "EVALUATION_FILE",
    "FIELD_FORMATS",
    "PairOutcome",
    "RunSummary",
    "evaluate_run",
    "make_submission",
    "locked_log",
    "merge_rank_logs",
    "outcome_dict",
    "rank_log_name",
    "run_split",
]

logger = logging.getLogger(__name__)

#: Field formats of :func:`run_split` and :func:`make_submission`.
FIELD_FORMATS = (".nii.gz", ".npz")
#: Evaluation JSON written into the output folder by ``run_split(..., evaluate=True)``.
EVALUATION_FILE = "evaluation.json"
_RANK_LOG = re.compile(r"^runtimes\.rank(\d+)\.json$")


def rank_log_name(rank: int) -> str:
    """File name of rank ``rank``'s run log in a distributed run (merged into ``runtimes.json`` at the end)."""
    return f"runtimes.rank{int(rank)}.json"


@dataclass
class PairOutcome:
    """What happened to one pair in :func:`run_split`.

    Attributes:
        key: case key ``"FFFF_MMMM"``.
        status: ``"done"``, ``"skipped"`` (field already there) or ``"failed"``.
        path: the field file (``None`` on failure).
        seconds: time of the registration (``register``'s total: loading, features, optimisation; 0 when skipped).
        wall_seconds: wall time of the pair including writing the field.
        final_loss: the loss of the last optimisation step (``None`` when skipped or failed).
        steps: Adam steps taken.
        error: the error message on failure.
        timings: the registration's timings (seconds: ``load``, ``features``, ``optimisation``, ``total``).
        kernels: the implementation of the similarity that ran: ``"compiled"`` (CPU kernels), ``"pytorch"``, or both
            joined by ``+`` (see :attr:`monai_contreg.api.RegistrationResult.kernels`).
        mask: what masked the registration (:attr:`monai_contreg.api.RegistrationResult.mask_report`: each image's
            mask source, the automatic mask's volumes per side, border contact and checks); ``None`` if unknown.
        quality: the landmark-free error estimate
            (:meth:`~monai_contreg.evaluation.quality.QualityReport.to_dict`) when the run asked for it, else ``None``.
        grid: the field's :class:`~monai_contreg.spatial.grid.Grid` (the fixed image's: the result's
            :attr:`~monai_contreg.api.RegistrationResult.fixed_grid`; a skipped NIfTI field: its header's); ``None``
            on failure or for a skipped ``.npz`` field (no geometry).
    """

    key: str
    status: str
    path: Path | None = None
    seconds: float = 0.0
    wall_seconds: float = 0.0
    final_loss: float | None = None
    steps: int = 0
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    kernels: str = ""
    mask: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    grid: Grid | None = None


@dataclass
class RunSummary:
    """The outcome of :func:`run_split` (or of a distributed run): one :class:`PairOutcome` per pair, in split order.

    Attributes:
        outcomes: per-pair outcomes (all ranks' in a distributed run).
        runtimes_path: the run log ``OUT/runtimes.json``.
        evaluation: :func:`~monai_contreg.evaluation.learn2reg.evaluate_learn2reg` results when the run was asked
            to evaluate and no pair failed (distributed: on rank 0 and in the spawning process only), else ``None``.
        evaluation_path: where those results were written.
        rank: rank of the process that returned this summary (0 in a single-process run and in the process
            that spawned the ranks).
    """

    outcomes: list[PairOutcome] = field(default_factory=list)
    runtimes_path: Path | None = None
    evaluation: dict[str, Any] | None = None
    evaluation_path: Path | None = None
    rank: int = 0

    def _with(self, status: str) -> list[str]:
        return [o.key for o in self.outcomes if o.status == status]

    @property
    def done(self) -> list[str]:
        """Keys of the pairs registered in this run."""
        return self._with("done")

    @property
    def skipped(self) -> list[str]:
        """Keys of the pairs whose field already existed."""
        return self._with("skipped")

    @property
    def failed(self) -> list[str]:
        """Keys of the pairs that failed."""
        return self._with("failed")

    def raise_on_failure(self) -> RunSummary:
        """Raise ``RuntimeError`` listing the failed pairs (after all pairs ran); return ``self`` otherwise."""
        if self.failed:
            raise RuntimeError(f"run_split: {len(self.failed)} pair(s) failed: {', '.join(self.failed)}.")
        return self


def _format(where: str, fmt: str) -> str:
    return choose(where, "fmt", fmt if fmt.startswith(".") else f".{fmt}", FIELD_FORMATS)  # type: ignore[return-value]


def _read_log(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        log = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("run log %s is unreadable; starting a new one", path)
        return {}
    return log if isinstance(log, dict) else {}


def _open_log(path: Path, header: dict[str, Any] | None) -> dict[str, Any]:
    """The run log at ``path`` (or a new one) with ``header`` set and ``cases``/``failures`` present."""
    log = _read_log(path)
    log.update(header or {})
    log.setdefault("cases", {})
    log.setdefault("failures", {})
    return log


def _write_log(path: Path, log: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(log, indent=2))


@contextlib.contextmanager
def locked_log(path: str | Path):
    """Hold an exclusive lock for the run log ``path`` (``fcntl.flock`` on ``.NAME.lock`` beside it).

    Every read-modify-write of a run log happens under this lock, so that processes writing into one folder (two
    ``contreg run`` on the same OUT, the ranks of a distributed run and rank 0's merge) never lose each other's
    records. Without ``fcntl`` (Windows) it does nothing.
    """
    p = Path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_name(f".{p.name}.lock"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _record(path: Path, log: dict[str, Any], key: str, case: dict[str, Any] | None, failure: str | None) -> None:
    """Record one pair's outcome into ``log`` (in memory) and into the run log file ``path``: under
    :func:`locked_log`, re-read the file, apply this pair's change (and ``log``'s top-level entries), write it back
    atomically. Records written by other processes meanwhile are kept."""
    if case is not None:
        log["cases"][key] = case
        log["failures"].pop(key, None)
    elif failure is not None:
        log["failures"][key] = failure
        log["cases"].pop(key, None)  # an earlier run's record of this pair (its field is gone, see _run_pair)
    with locked_log(path):
        current = _read_log(path)
        for k, v in log.items():  # in log's order (header, cases, failures, config), as a single writer leaves it
            if k in ("cases", "failures"):
                current.setdefault(k, {})
            else:
                current[k] = v
        if case is not None:
            current["cases"][key] = case
            current["failures"].pop(key, None)
        elif failure is not None:
            current["failures"][key] = failure
            current["cases"].pop(key, None)
        _write_log(path, current)


def _clean_stale_temporaries(out: Path) -> None:
    # temporaries of atomic writes interrupted by a kill (.disp_XXXX.nii.gz.PID.abc.tmp.nii.gz,
    # .runtimes.rank1.json.PID.abc.tmp.json); those of a live process (another run writing into this folder) stay
    for pattern in (".disp_*.tmp*", ".runtimes*.json.*.tmp*"):
        for tmp in out.glob(pattern):
            if writer_alive(tmp):
                continue
            with contextlib.suppress(OSError):
                tmp.unlink()


def _rank_logs(out: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in out.glob("runtimes.rank*.json") if (m := _RANK_LOG.match(p.name))]
    return [p for _, p in sorted(found)]


def _in_order(entries: dict[str, Any], order: Sequence[str]) -> dict[str, Any]:
    first = [k for k in order if k in entries]
    return {**{k: entries[k] for k in first}, **{k: v for k, v in entries.items() if k not in first}}


def merge_rank_logs(out_dir: str | Path, header: dict[str, Any] | None = None, order: Sequence[str] = ()) -> Path | None:
    """Merge the per-rank run logs ``OUT/runtimes.rank{r}.json`` of a distributed run into ``OUT/runtimes.json``.

    Each rank log holds the pairs its rank registered or failed in one run; they update ``runtimes.json`` as
    the single-process run does pair by pair (a registered pair replaces its entry and clears its failure, a
    failed pair is listed under ``failures``). The merged log is written atomically, then the rank logs are
    deleted. Rank logs left by a killed run are merged the same way at the start of the next run (single- or
    multi-process), so no pair's record is lost.

    Args:
        out_dir: the output folder.
        header: top-level entries to set (``name``, ``dataset``, ``split``) when anything is merged.
        order: case keys in split order: ``cases`` and ``failures`` are listed in this order (others after).

    Returns:
        ``OUT/runtimes.json`` when rank logs were merged, else ``None`` (nothing written).
    """
    out = Path(out_dir)
    parts = _rank_logs(out)
    if not parts:
        return None
    log_path = out / RUNTIMES_FILE
    with locked_log(log_path):  # another process may be writing runtimes.json: re-read and write under the lock
        return _merge_parts(log_path, header, parts, order)


def _merge_parts(log_path: Path, header: dict[str, Any] | None, parts: list[Path], order: Sequence[str]) -> Path:
    log = _open_log(log_path, header)
    for part_path in parts:
        part = _read_log(part_path)
        for key, case in (part.get("cases") or {}).items():
            log["cases"][key] = case
            log["failures"].pop(key, None)
        log["failures"].update(part.get("failures") or {})
        if part.get("config") is not None:
            log["config"] = part["config"]
        for k in ("name", "dataset", "split"):
            if header is None and k in part:
                log.setdefault(k, part[k])
    log["cases"] = _in_order(log["cases"], order)
    log["failures"] = _in_order(log["failures"], order)
    _write_log(log_path, log)
    for part_path in parts:
        for done in (part_path, part_path.with_name(f".{part_path.name}.lock")):
            with contextlib.suppress(FileNotFoundError):
                done.unlink()
    return log_path


def _log_header(ds: Learn2RegDataset, split_key: str) -> dict[str, Any]:
    return {"name": ds.name, "dataset": str(ds.json_path), "split": split_key}


def _prepare_run(where: str, dataset, split: str, config, fmt: str):
    """Check everything a run needs before any pair runs: ``(dataset, split key, pairs, config, format)``."""
    fmt = _format(where, fmt)
    cfg = resolve_config(where, config)
    ds = dataset if isinstance(dataset, Learn2RegDataset) else Learn2RegDataset(dataset)
    pairs = ds.pairs(split)
    key = ds.resolve_split(split)
    if not pairs:
        raise UserInputError(f"{where}: split {key!r} of {ds.json_path.name} lists no pairs; it lists pairs in "
                         f"{[s for s in ds.splits if ds.description.get(s)]}.")
    return ds, key, pairs, cfg, fmt


def _prepare_output(out: Path, ds: Learn2RegDataset, split_key: str, pairs: Sequence[Learn2RegPair]) -> None:
    """Create the output folder, delete temporaries of killed writes, merge rank logs of a killed distributed run."""
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale_temporaries(out)
    merge_rank_logs(out, _log_header(ds, split_key), [p.key for p in pairs])


def _run_pairs(
    todo: Iterable[tuple[int, Learn2RegPair]],
    total: int,
    out: Path,
    *,
    fmt: str,
    overwrite: bool,
    cfg: RegistrationConfig,
    device,
    fn: Callable[..., Any],
    log_path: Path,
    log: dict[str, Any],
    outcomes: list[PairOutcome],
    on_pair: Callable[[PairOutcome, int, int], None] | None = None,
    bar=None,
    case_extra: dict[str, Any] | None = None,
    quality: bool = False,
) -> list[PairOutcome]:
    """The pair loop of a run (all pairs, or one rank's shard): register ``todo`` (``(index in split, pair)``),
    appending to ``outcomes`` and recording each pair that ran into ``log`` and into ``log_path`` (merged into the
    file under its lock, atomically: :func:`_record`)."""
    for i, pair in todo:
        outcome = _run_pair(pair, out, fmt, overwrite, cfg, device, fn, quality=quality)
        outcomes.append(outcome)
        if outcome.status == "done":
            log["config"] = cfg.to_dict()
            _record(log_path, log, pair.key, {
                "seconds": outcome.seconds,
                "wall_seconds": outcome.wall_seconds,
                "steps": outcome.steps,
                "final_loss": outcome.final_loss,
                "field": outcome.path.name if outcome.path else None,
                "device": str(device or "default"),
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "timings": outcome.timings,
                "kernels": outcome.kernels,
                "mask": outcome.mask,
                **({"quality": outcome.quality} if outcome.quality is not None else {}),
                **(case_extra or {}),
            }, None)
        elif outcome.status == "failed":
            _record(log_path, log, pair.key, None, outcome.error)
        if bar is not None:
            bar.update(1)
        if on_pair is not None:
            on_pair(outcome, i, total)
    return outcomes


def evaluate_run(
    dataset: str | Path | Learn2RegDataset, split: str, out_dir: str | Path, json_path: str | Path | None = None
) -> tuple[dict[str, Any], Path]:
    """Evaluate the fields of a finished run once, as ``contreg evaluate DATASET OUT --json JSON`` does
    (runtimes from ``OUT/runtimes.json``), and write the results JSON atomically.

    Args:
        dataset: the dataset (folder, description file or :class:`Learn2RegDataset`).
        split: split name or alias.
        out_dir: the run's output folder.
        json_path: where to write the results (default ``OUT/evaluation.json``).

    Returns:
        ``(results, path of the JSON)``.
    """
    from .evaluation.learn2reg import evaluate_learn2reg, write_evaluation_json

    res = evaluate_learn2reg(dataset, out_dir, split, runtimes="auto")
    path = write_evaluation_json(res, Path(out_dir) / EVALUATION_FILE if json_path is None else json_path)
    return res, path


def _evaluation_target(evaluate: bool | str | Path | None) -> str | Path | None | bool:
    """``False`` (no evaluation), ``None`` (the default file) or a path."""
    if evaluate is None or evaluate is False:
        return False
    return None if evaluate is True else evaluate


def run_split(
    dataset: str | Path | Learn2RegDataset,
    split: str,
    out_dir: str | Path,
    config: RegistrationConfig | str | None = None,
    *,
    device: str | torch.device | None = None,
    fmt: str = ".nii.gz",
    overwrite: bool = False,
    progress: bool = False,
    on_pair: Callable[[PairOutcome, int, int], None] | None = None,
    register_fn: Callable[..., Any] | None = None,
    evaluate: bool | str | Path = False,
    max_memory: str | float | int | None = None,
    quality: bool = False,
) -> RunSummary:
    """Register every pair of a Learn2Reg split and write its field into ``out_dir``.

    The multi-process version is :func:`monai_contreg.distributed.run_split_distributed` (same folder, same log).

    Args:
        dataset: a :class:`Learn2RegDataset`, its folder or its description file.
        split: ``training_paired_images``, ``registration_val``, ``registration_test`` or ``train``/``val``/``test``.
        out_dir: output folder (created); fields are ``disp_FFFF_MMMM`` + ``fmt``.
        config: a :class:`RegistrationConfig` or a preset name (default ``io``).
        device: passed to :func:`~monai_contreg.api.register`.
        fmt: ``".nii.gz"`` (float32, fixed affine) or ``".npz"`` (float16).
        overwrite: register pairs whose field exists instead of skipping them.
        progress: show a tqdm progress bar over pairs (stderr).
        on_pair: called as ``on_pair(outcome, index, total)`` after each pair (CLI log lines).
        register_fn: replaces :func:`~monai_contreg.api.register` (tests).
        evaluate: after the last pair, evaluate the folder (:func:`evaluate_run`) and write the results JSON:
            ``True`` into ``OUT/evaluation.json``, a path there. Skipped (with a warning) when a pair failed.
        max_memory: memory each registration may use (bytes or ``"8G"``; ``register(max_memory=)``); ``None``:
            80 % of the available memory.
        quality: after each pair, estimate its error without landmarks
            (:meth:`~monai_contreg.api.RegistrationResult.quality`), kept in the outcome and in ``runtimes.json``
            under ``"quality"`` (a failed estimate is recorded as ``{"error": ...}``, the pair stays done).

    Returns:
        A :class:`RunSummary`; failures are recorded there and in ``runtimes.json``, not raised.

    Raises:
        FileNotFoundError / ValueError: bad dataset, split, format or configuration (before any pair runs).
    """
    from .api import register

    ds, key, pairs, cfg, fmt = _prepare_run("run_split", dataset, split, config, fmt)
    target = _evaluation_target(evaluate)
    out = Path(out_dir)
    _prepare_output(out, ds, key, pairs)
    log_path = out / RUNTIMES_FILE
    log = _open_log(log_path, _log_header(ds, key))
    summary = RunSummary(runtimes_path=log_path)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc=f"{ds.name} {key}", unit="pair")
    try:
        _run_pairs(
            enumerate(pairs), len(pairs), out, fmt=fmt, overwrite=overwrite, cfg=cfg, device=device,
            fn=with_max_memory(register_fn or register, max_memory), log_path=log_path, log=log,
            outcomes=summary.outcomes, on_pair=on_pair, bar=bar,
            quality=quality,
        )
    finally:
        if bar is not None:
            bar.close()
    if target is not False:
        if summary.failed:
            logger.warning("run_split: evaluation skipped: %d pair(s) failed", len(summary.failed))
        else:
            summary.evaluation, summary.evaluation_path = evaluate_run(ds, key, out, target)
    return summary


def with_max_memory(fn: Callable[..., Any], max_memory: str | float | int | None) -> Callable[..., Any]:
    """``fn`` (a :func:`~monai_contreg.api.register`) with ``max_memory=`` bound; ``fn`` itself for ``None``.
    The result pickles when ``fn`` does (it is sent to spawned ranks)."""
    if max_memory is None:
        return fn
    from .options import parse_memory

    return functools.partial(fn, max_memory=parse_memory("max_memory", max_memory))


def _pair_quality(pair: Learn2RegPair, res, cfg) -> dict[str, Any]:
    """The error estimate of one registered pair (its ``to_dict()`` plus ``seconds``), or ``{"error": ...}``."""
    t0 = time.perf_counter()
    try:
        if getattr(res, "inputs", None):  # the images the registration loaded: nothing read twice
            rep = res.quality(auto_mask=bool(cfg.preprocess.auto_mask))
        else:
            rep = res.quality(pair.fixed, pair.moving, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask,
                              auto_mask=bool(cfg.preprocess.auto_mask))
    except Exception as exc:  # an estimate that cannot be made must not fail a registered pair
        logger.info("%s: quality estimate failed", pair.key, exc_info=True)
        return {"error": " ".join(f"{type(exc).__name__}: {exc}".split()), "seconds": time.perf_counter() - t0}
    d = rep.to_dict()
    d["seconds"] = time.perf_counter() - t0
    return d


def _pair_resume(pair: Learn2RegPair, cfg: RegistrationConfig) -> RegistrationConfig:
    """``engine.resume`` per pair: a pair that left a checkpoint (any level) in ``engine.checkpoint_dir``
    continues from it; one that did not (not reached before the interruption) starts from step 0."""
    ecfg = cfg.engine
    if not (ecfg.resume and ecfg.checkpoint_dir):
        return cfg
    from .methods.io import registration_checkpoints

    if registration_checkpoints(ecfg.checkpoint_dir, pair.key, levels=None):
        logger.info("%s: resuming from its checkpoint in %s", pair.key, ecfg.checkpoint_dir)
        return cfg
    logger.info("%s: no checkpoint in %s: registered from step 0", pair.key, ecfg.checkpoint_dir)
    return cfg.with_overrides({"engine.resume": False})


def _existing_field_grid(pair: Learn2RegPair, existing: Path) -> tuple[bool, Grid | None]:
    """Whether an existing field belongs to the pair's fixed grid (so a resumed run may skip the pair), and its
    grid. A NIfTI field is compared with the fixed image's header grid (:meth:`Grid.same_as`, the one tolerance);
    a ``.npz`` field carries no geometry and is kept; an unreadable fixed header cannot tell and keeps it too."""
    from .data.learn2reg import image_grid
    from .io.fields import field_grid

    try:
        grid = field_grid(existing)
    except UserInputError as exc:
        logger.warning("%s: field %s cannot be read (%s): registered again", pair.key, existing.name, exc)
        return False, None
    if grid is None:
        return True, None
    try:
        fixed = image_grid(pair.fixed)
    except UserInputError:
        return True, grid
    if not grid.same_as(fixed):
        logger.warning("%s: field %s lies on another grid (%s) than the fixed image (%s): registered again",
                       pair.key, existing.name, grid.describe(), fixed.describe())
        return False, grid
    return True, grid


def _run_pair(pair: Learn2RegPair, out: Path, fmt: str, overwrite: bool, cfg, device, fn, quality: bool = False) -> PairOutcome:
    existing = find_field(pair, out)
    if existing is not None and not overwrite:
        keep, grid = _existing_field_grid(pair, existing)
        if keep:
            logger.info("%s: field %s exists, skipped", pair.key, existing.name)
            return PairOutcome(pair.key, "skipped", path=existing, grid=grid)
    target = out / pair.field_name(fmt)
    t0 = time.perf_counter()
    try:
        cfg = _pair_resume(pair, cfg)
        kp = None
        if cfg.engine.tre_every and pair.fixed_keypoints is not None and pair.moving_keypoints is not None:
            from .data.keypoints import load_keypoints

            kp = (load_keypoints(pair.fixed_keypoints, "fixed keypoints"), load_keypoints(pair.moving_keypoints, "moving keypoints"))
        res = fn(
            pair.fixed, pair.moving, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, config=cfg,
            device=device, keypoints=kp, name=pair.key,
        )
        path = res.save(target)
        if existing is not None and existing != path:
            existing.unlink()
    except Exception as exc:  # one pair's failure must not stop the split
        if is_user_facing(exc):  # a bad input or a full disk: the one-line outcome says it; traceback under -v
            logger.info("%s: registration failed", pair.key, exc_info=True)
        else:  # a programming error keeps its traceback
            logger.exception("%s: registration failed", pair.key)
        dt = time.perf_counter() - t0
        error = " ".join(f"{type(exc).__name__}: {exc}".split())
        if existing is not None and existing.exists():
            # --overwrite asked for this run's field: an earlier run's field left beside the others would be read by
            # `contreg evaluate` / the submission as if it were this run's
            existing.unlink()
            error += f" (the earlier field {existing.name} was removed: --overwrite)"
        return PairOutcome(pair.key, "failed", seconds=dt, wall_seconds=dt, error=error)
    losses = (res.history or {}).get("loss") or [None]
    return PairOutcome(
        pair.key, "done", path=path, seconds=float(res.timings.get("total", time.perf_counter() - t0)),
        wall_seconds=time.perf_counter() - t0,
        final_loss=None if losses[-1] is None else float(losses[-1]), steps=int(res.steps),
        timings={k: float(v) for k, v in res.timings.items()}, kernels=str(getattr(res, "kernels", "") or ""),
        mask=getattr(res, "mask_report", None),
        quality=_pair_quality(pair, res, cfg) if quality else None,
        grid=getattr(res, "fixed_grid", None),
    )


def make_submission(
    fields_dir: str | Path,
    dataset: str | Path | Learn2RegDataset,
    output: str | Path,
    *,
    split: str = "val",
    fmt: str = ".nii.gz",
) -> Path:
    """Zip the fields of a split in the official layout, after checking all of them.

    Every pair's field must exist in ``fields_dir`` (any of ``.nii.gz``, ``.nii``, ``.npz``) with shape
    ``tensorImageShape + (3,)``; nothing is written otherwise. Fields already in the requested format are
    copied byte for byte; others are converted (``.npz``: float16).

    Args:
        fields_dir: folder written by :func:`run_split`.
        dataset: the dataset (folder, description file or :class:`Learn2RegDataset`).
        output: the zip file (written atomically).
        split: split name or alias.
        fmt: ``".nii.gz"`` or ``".npz"``.

    Returns:
        ``output``.

    Raises:
        FileNotFoundError: missing fields (all listed); ValueError: wrong shapes (all listed), bad format.
    """
    from .data.learn2reg import image_grid

    fmt = _format("make_submission", fmt)
    ds = dataset if isinstance(dataset, Learn2RegDataset) else Learn2RegDataset(dataset)
    pairs = ds.pairs(split)
    if not pairs:
        raise UserInputError(f"make_submission: split {ds.resolve_split(split)!r} of {ds.json_path.name} lists no pairs.")
    if ds.expected_shape is None:
        logger.warning("make_submission: %s declares no tensorImageShape; field shapes not checked", ds.json_path.name)
    found = locate_fields(pairs, fields_dir, ds.expected_shape)
    out = Path(output)
    if not out.name.endswith(".zip"):
        raise UserInputError(f"make_submission: output must be a .zip file, got {str(out)!r}.")
    with atomic_path(out) as tmp_zip, tempfile.TemporaryDirectory(prefix="contreg_submit_") as tmp_dir:
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_STORED) as zf:  # fields are compressed already
            for pair in pairs:
                src = found[pair.key]
                name = pair.field_name(fmt)
                if not src.name.endswith(fmt):
                    ddf, affine = load_field(src)
                    # a .npz field has no geometry: a NIfTI made from it carries the fixed image's grid
                    grid = image_grid(pair.fixed) if src.name.endswith(".npz") else affine
                    src = save_field(Path(tmp_dir) / name, ddf, grid)
                info = zipfile.ZipInfo(name, date_time=time.localtime(src.stat().st_mtime)[:6])
                info.external_attr = 0o644 << 16  # readable fields whatever the temporary file's mode was
                info.compress_type = zf.compression
                zf.writestr(info, src.read_bytes())
                if src.parent == Path(tmp_dir):
                    src.unlink()
    return out


def outcome_dict(outcome: PairOutcome) -> dict[str, Any]:
    """A JSON-friendly dict of a :class:`PairOutcome`."""
    d = asdict(outcome)
    d["path"] = str(outcome.path) if outcome.path else None
    g = outcome.grid
    d["grid"] = None if g is None else {"shape": list(g.shape), "affine": np.asarray(g.affine).tolist()}
    return d
