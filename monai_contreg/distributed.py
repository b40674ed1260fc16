"""Learn2Reg split registration across processes with ``ignite.distributed``: one rank per GPU or CPU process.

:func:`run_split_distributed` runs :func:`~monai_contreg.workflow.run_split`'s pair loop sharded across ranks:

* rank ``r`` of ``W`` registers ``pairs[r::W]`` (deterministic) and writes its fields into the shared output
  folder atomically, so a field that exists is complete and a rerun skips it (resume), as in a single-process run;
* each rank logs its pairs into ``OUT/runtimes.rank{r}.json``; when all ranks are done, rank 0 merges them into
  ``OUT/runtimes.json`` (the single-process layout, each case also naming its ``rank``) and, asked to evaluate,
  evaluates the folder once and writes ``OUT/evaluation.json``;
* devices: backend ``nccl``: ``cuda:LOCAL_RANK`` (one process per GPU, :func:`ignite.distributed.device`);
  backend ``gloo``: the CPU, or the device asked for (``"cuda"`` meaning ``cuda:LOCAL_RANK % number of GPUs``).
  Torch CPU threads per rank: ``threads``, by default the CPUs available // processes per node (at least 1);
* launch: with ``nproc_per_node=N`` the function spawns N processes itself
  (``idist.Parallel(backend, nproc_per_node=N)``); without it, in processes started by ``torchrun`` it joins
  torchrun's process group (``idist.Parallel(backend)``), every rank calling it with the same arguments;
* a failure does not hang the other ranks: pair failures are recorded per pair as in :func:`run_split`; any other
  error on a rank is caught, the rank still reaches every synchronisation point, and then every rank raises
  :class:`DistributedRunError` naming the failing rank(s). The ranks synchronise over a gloo group with a long
  timeout (:data:`SYNC_TIMEOUT`), because a rank may wait at the end for another rank's last pairs for long.

Examples:
    >>> from monai_contreg.distributed import run_split_distributed
    >>> summary = run_split_distributed("../shared/data/nlst_synth", "val", "out/", "convexadam",
    ...                                 backend="gloo", nproc_per_node=2, evaluate=True)
    >>> summary.done, summary.evaluation_path
    (['0101_0101', '0102_0102', '0103_0103', '0104_0104'], PosixPath('out/evaluation.json'))

Command line (see ``contreg run --help``)::

    contreg run DATASET --split val -o OUT --nproc-per-node 2 --backend gloo --evaluate
    torchrun --nproc_per_node 2 -m monai_contreg.cli run DATASET --split val -o OUT --backend gloo --evaluate
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from ._validation import suggest
from .data.learn2reg import Learn2RegDataset
from .errors import ContregError, UserInputError
from .evaluation.learn2reg import RUNTIMES_FILE
from .io.atomic import atomic_path
from .methods.config import RegistrationConfig
from .options import parse_memory
from .workflow import (
    PairOutcome,
    RunSummary,
    _evaluation_target,
    _log_header,
    _prepare_output,
    _prepare_run,
    _run_pairs,
    evaluate_run,
    merge_rank_logs,
    rank_log_name,
    with_max_memory,
)

__all__ = [
    "BACKENDS",
    "SYNC_TIMEOUT",
    "DistributedRunError",
    "check_launch",
    "default_threads",
    "launched_by_torchrun",
    "rank_device",
    "run_split_distributed",
]

logger = logging.getLogger(__name__)

#: Backends of :func:`run_split_distributed`: ``gloo`` (CPU processes, or GPUs) and ``nccl`` (one process per GPU).
BACKENDS = ("gloo", "nccl")
#: Timeout of the ranks' synchronisation points (a rank may wait there for the other ranks' last pairs).
SYNC_TIMEOUT = timedelta(days=7)

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class DistributedRunError(ContregError, RuntimeError):
    """A rank of a distributed run failed outside the per-pair registrations; the message names the rank(s)."""


def launched_by_torchrun() -> bool:
    """Whether this process is a rank started by ``torchrun`` (or by another launcher setting ``RANK``,
    ``LOCAL_RANK`` and ``WORLD_SIZE``)."""
    return all(k in os.environ for k in _TORCHRUN_VARS)


def default_threads(processes_per_node: int) -> int:
    """Torch CPU threads per rank: the CPUs this process may use // ``processes_per_node``, at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(processes_per_node)))


def check_launch(
    backend: str | None = None,
    nproc_per_node: int | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    *,
    where: str = "run_split_distributed",
    cli: bool = False,
) -> str:
    """Check the launch options of a distributed run before anything starts; return the backend to use.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``None``: ``nccl`` when ``device`` is ``"cuda"`` and CUDA is available,
            else ``gloo``.
        nproc_per_node: processes to spawn (at least 1), or ``None`` (processes started by ``torchrun``).
        device: ``None``/``"cpu"``/``"cuda"``/``"cuda:k"``; with ``nccl`` only ``None`` or ``"cuda"`` (each rank
            uses ``cuda:LOCAL_RANK``).
        threads: torch CPU threads per rank; ``None`` or 0: :func:`default_threads`.
        where: the caller, for messages.
        cli: name the command-line options (``--backend``...) in messages instead of ``where``.

    Raises:
        ValueError: naming the option, what was expected and what arrived.
    """

    def opt(arg: str) -> str:
        return f"--{arg.replace('_', '-')}" if cli else arg

    def fail(arg: str, msg: str) -> ValueError:
        return UserInputError(f"{opt(arg) if cli else where}: {msg}")

    def subject(arg: str) -> str:  # the CLI message starts with the option already
        return "" if cli else f"{arg} "

    def use(arg: str, value: str) -> str:
        return f"{opt(arg)} {value}" if cli else f"{arg}={value!r}"

    dev = None
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise fail("device", f"unknown device {device!r} ({exc}).") from None
    if backend is None:
        backend = "nccl" if dev is not None and dev.type == "cuda" and dev.index is None and torch.cuda.is_available() else "gloo"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise fail("backend", f"unknown backend {backend!r}; expected one of {list(BACKENDS)}.{suggest(str(backend), BACKENDS)}")
    if nproc_per_node is not None:
        if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
            raise fail("nproc_per_node", f"{subject('nproc_per_node')}must be a whole number of processes >= 1, got {nproc_per_node!r}.")
        if launched_by_torchrun():
            raise fail(
                "nproc_per_node",
                f"this process is a rank started by torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); leave "
                f"{opt('nproc_per_node')} out: torchrun's --nproc_per_node sets the processes.",
            )
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise fail("threads", f"{subject('threads')}must be a whole number >= 1 (0: default), got {threads!r}.")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise fail(
                "backend",
                f"backend 'nccl' needs CUDA GPUs, but torch.cuda.is_available() is False (torch {torch.__version__}); "
                f"use {use('backend', 'gloo')} for CPU processes.",
            )
        if dev is not None and (dev.type != "cuda" or dev.index is not None):
            raise fail(
                "device",
                f"with backend 'nccl' every rank uses its own GPU cuda:LOCAL_RANK; got {subject('device')}{str(device)!r}: "
                f"leave it out or give 'cuda' (use {use('backend', 'gloo')} for other devices).",
            )
        n_gpu = torch.cuda.device_count()
        if nproc_per_node is not None and nproc_per_node > n_gpu:
            raise fail("nproc_per_node", f"{subject('nproc_per_node')}{nproc_per_node} exceeds the {n_gpu} visible GPU(s); "
                                          "backend 'nccl' runs one process per GPU.")
    elif dev is not None and dev.type == "cuda" and not torch.cuda.is_available():
        raise fail("device", f"device {str(device)!r} requested but CUDA is not available.")
    return backend


def rank_device(backend: str, device: str | torch.device | None, local_rank: int) -> torch.device:
    """The device of a rank: ``cuda:LOCAL_RANK`` with ``nccl``; with ``gloo`` the CPU when ``device`` is ``None``,
    ``cuda:LOCAL_RANK % GPUs`` for ``"cuda"``, else ``device``."""
    if backend == "nccl":
        return torch.device("cuda", local_rank)
    if device is None:
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return dev


@dataclass
class _Job:
    """Everything a rank needs (sent to spawned processes, so it must pickle)."""

    dataset: str
    split: str
    out: str
    config: RegistrationConfig
    backend: str
    device: str | None
    fmt: str
    overwrite: bool
    evaluate: bool
    eval_json: str | None
    threads: int | None
    on_pair: Callable[[PairOutcome, int, int], None] | None
    register_fn: Callable[..., Any] | None
    log_level: int
    max_memory: int | None = None
    result_path: str | None = None
    quality: bool = False


def _describe(rank: int, stage: str, exc: BaseException) -> str:
    return f"rank {rank} failed {stage}: {type(exc).__name__}: {exc}"


def _configure_logging(level: int, rank: int) -> None:
    # spawned processes start with no logging set up: log as the parent would, naming the rank
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {rank}] %(name)s %(levelname)s: %(message)s")
    if level >= logging.WARNING:
        logging.getLogger("ignite").setLevel(logging.WARNING)


def _rank_main(local_rank: int, job: _Job) -> RunSummary:
    """One rank's part of a distributed run (every rank runs this; rank 0 also merges and evaluates)."""
    import ignite.distributed as idist

    from .api import register

    rank, world = idist.get_rank(), idist.get_world_size()
    _configure_logging(job.log_level, rank)
    _quiet_launcher()
    threads = job.threads or default_threads(idist.get_nproc_per_node())
    torch.set_num_threads(threads)
    device = rank_device(job.backend, job.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # gloo group with a long timeout for the synchronisation points (Python objects travel on the CPU)
    sync = idist.new_group(list(range(world)), backend="gloo", timeout=SYNC_TIMEOUT)
    out = Path(job.out)
    logger.info("rank %d/%d: device %s, %d torch threads", rank, world, device, threads)

    # 1. every rank reads the split; rank 0 prepares the folder before anyone writes into it
    pairs: list = []
    err = None
    try:
        ds = Learn2RegDataset(job.dataset)
        pairs = ds.pairs(job.split)
        if rank == 0:
            _prepare_output(out, ds, job.split, pairs)
    except Exception as exc:  # reported by every rank below, after the synchronisation
        logger.exception("rank %d: preparing the run failed", rank)
        err = _describe(rank, "preparing the run", exc)
    errors = [g["error"] for g in idist.all_gather({"error": err}, group=sync) if g["error"]]  # the start barrier
    if errors:
        raise DistributedRunError("; ".join(errors))

    # 2. each rank registers its shard, logging into its own run log
    outcomes: list[PairOutcome] = []
    log = {**_log_header(ds, job.split), "rank": rank, "world_size": world, "cases": {}, "failures": {}}
    err = None
    try:
        _run_pairs(
            list(enumerate(pairs))[rank::world], len(pairs), out, fmt=job.fmt, overwrite=job.overwrite, cfg=job.config,
            device=device, fn=with_max_memory(job.register_fn or register, job.max_memory),
            log_path=out / rank_log_name(rank), log=log, outcomes=outcomes, on_pair=job.on_pair, case_extra={"rank": rank},
            quality=job.quality,
        )
    except Exception as exc:
        logger.exception("rank %d: the run failed", rank)
        err = _describe(rank, "registering its pairs", exc)
    gathered = idist.all_gather({"outcomes": outcomes, "error": err}, group=sync)  # all ranks are done
    errors = [g["error"] for g in gathered if g["error"]]
    by_key = {o.key: o for g in gathered for o in g["outcomes"]}
    summary = RunSummary(outcomes=[by_key[p.key] for p in pairs if p.key in by_key], runtimes_path=out / RUNTIMES_FILE,
                         rank=rank)

    # 3. rank 0 merges the run logs (also after a failure: no record is lost) and evaluates once
    status: dict[str, Any] = {"error": None, "evaluation_path": None}
    if rank == 0:
        try:
            merge_rank_logs(out, _log_header(ds, job.split), [p.key for p in pairs])
            if job.evaluate and not errors:
                if summary.failed:
                    logger.warning("evaluation skipped: %d pair(s) failed", len(summary.failed))
                else:
                    summary.evaluation, summary.evaluation_path = evaluate_run(ds, job.split, out, job.eval_json)
        except Exception as exc:
            logger.exception("rank 0: merging the run logs or evaluating failed")
            status["error"] = _describe(rank, "merging the run logs / evaluating", exc)
        status["evaluation_path"] = summary.evaluation_path
    final = idist.all_gather(status, group=sync)[0]
    if final["error"]:
        errors.append(final["error"])
    summary.evaluation_path = final["evaluation_path"]
    if errors:
        raise DistributedRunError("; ".join(errors))
    return summary


def _spawned(local_rank: int, job: _Job) -> None:
    """Entry point of a spawned rank: rank 0 hands its summary (or the run's error) to the spawning process."""
    import ignite.distributed as idist

    result: dict[str, Any] = {"summary": None, "error": None}
    try:
        result["summary"] = _rank_main(local_rank, job)
    except DistributedRunError as exc:  # every rank raises it together; the spawning process re-raises it
        result["error"] = str(exc)
    if idist.get_rank() == 0 and job.result_path:
        with atomic_path(job.result_path) as tmp:
            tmp.write_bytes(pickle.dumps(result))


class _IgniteLevel(logging.Filter):
    """Make ignite's launcher logger (``setup_logger`` gives it level INFO and its own handler) obey the level
    set on the ``ignite`` logger (or the root), so that launches are quiet unless logging asks for INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.getLogger("ignite").getEffectiveLevel()


def _quiet_launcher() -> None:
    launcher = logging.getLogger("ignite.distributed.launcher.Parallel")
    if not any(isinstance(f, _IgniteLevel) for f in launcher.filters):
        launcher.addFilter(_IgniteLevel())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _master_port(port: int) -> Iterator[None]:
    """Set ``MASTER_PORT`` for a one-process group made in this process (ignite's default 15000 may be taken)."""
    old = os.environ.get("MASTER_PORT")
    os.environ["MASTER_PORT"] = str(port)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MASTER_PORT", None)
        else:
            os.environ["MASTER_PORT"] = old


def run_split_distributed(
    dataset: str | Path | Learn2RegDataset,
    split: str,
    out_dir: str | Path,
    config: RegistrationConfig | str | None = None,
    *,
    backend: str | None = None,
    nproc_per_node: int | None = None,
    master_port: int | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    fmt: str = ".nii.gz",
    overwrite: bool = False,
    evaluate: bool | str | Path = False,
    on_pair: Callable[[PairOutcome, int, int], None] | None = None,
    register_fn: Callable[..., Any] | None = None,
    max_memory: str | float | int | None = None,
    quality: bool = False,
) -> RunSummary:
    """Register every pair of a Learn2Reg split across processes (see the module docstring) into ``out_dir``.

    The output folder is the one :func:`~monai_contreg.workflow.run_split` writes: the same fields (bitwise, with
    the same threads per process), one ``runtimes.json`` listing every pair, and with ``evaluate`` one evaluation.

    Args:
        dataset: a :class:`Learn2RegDataset`, its folder or its description file.
        split: split name or alias (``train``/``val``/``test``).
        out_dir: output folder (created), shared by all ranks.
        config: a :class:`RegistrationConfig` or a preset name (default ``io``).
        backend: ``"gloo"`` or ``"nccl"``; default: ``nccl`` when ``device="cuda"`` and CUDA is available, else ``gloo``.
        nproc_per_node: spawn this many processes (ranks) here; ``None`` in processes started by ``torchrun``
            (each calls this function with the same arguments) or to run as a group of one.
        master_port: rendezvous port of the spawned processes (default: ``$MASTER_PORT``, else a free port).
        device: ``None`` (gloo: CPU), ``"cpu"``, ``"cuda"`` (each rank its GPU ``cuda:LOCAL_RANK``) or ``"cuda:k"``
            (gloo only).
        threads: torch CPU threads per rank (default: CPUs available // processes per node, at least 1).
        fmt: ``".nii.gz"`` or ``".npz"``.
        overwrite: register pairs whose field exists instead of skipping them.
        evaluate: when every rank is done and no pair failed, rank 0 evaluates the folder once
            (:func:`~monai_contreg.workflow.evaluate_run`): ``True`` into ``OUT/evaluation.json``, a path there.
        on_pair: called on the rank that ran the pair as ``on_pair(outcome, index in split, number of pairs)``;
            must pickle (a module-level function) when processes are spawned.
        register_fn: replaces :func:`~monai_contreg.api.register` (tests); must pickle when processes are spawned.
        max_memory: memory each registration may use, on every rank (bytes or ``"8G"``; ``register(max_memory=)``);
            ``None``: 80 % of the memory available to the rank.
        quality: after each pair, on the rank that registered it, estimate its error without landmarks
            (:meth:`~monai_contreg.api.RegistrationResult.quality`), kept in the outcome and in ``runtimes.json``
            under ``"quality"``, as :func:`~monai_contreg.workflow.run_split` does.

    Returns:
        A :class:`~monai_contreg.workflow.RunSummary` of all pairs in split order, in the spawning process and on
        every rank (``rank`` says which); ``evaluation`` on rank 0 and in the spawning process.

    Raises:
        ValueError / FileNotFoundError: bad options, dataset, split, format or configuration (before anything starts).
        DistributedRunError: a rank failed outside the per-pair registrations (after all ranks synchronised).

    Examples:
        >>> summary = run_split_distributed("../shared/data/nlst_synth", "val", "out/", "convexadam",
        ...                                 backend="gloo", nproc_per_node=2, threads=1, evaluate=True)
        >>> summary.failed, summary.evaluation_path
        ([], PosixPath('out/evaluation.json'))
    """
    import ignite.distributed as idist

    where = "run_split_distributed"
    backend = check_launch(backend, nproc_per_node, device, threads, where=where)
    if master_port is not None and (isinstance(master_port, bool) or not isinstance(master_port, int) or not 0 < master_port < 65536):
        raise UserInputError(f"{where}: master_port must be a TCP port number in 1..65535, got {master_port!r}.")
    ds, key, _, cfg, fmt = _prepare_run(where, dataset, split, config, fmt)
    _quiet_launcher()
    target = _evaluation_target(evaluate)
    job = _Job(
        dataset=str(ds.json_path), split=key, out=str(out_dir), config=cfg, backend=backend,
        device=None if device is None else str(device), fmt=fmt, overwrite=bool(overwrite), evaluate=target is not False,
        eval_json=None if target in (False, None) else str(target), threads=threads or None, on_pair=on_pair,
        register_fn=register_fn, log_level=logging.getLogger().getEffectiveLevel(),
        max_memory=None if max_memory is None else parse_memory(f"{where}: max_memory", max_memory),
        quality=bool(quality),
    )
    if nproc_per_node is not None:
        try:
            pickle.dumps(job)
        except Exception as exc:
            raise UserInputError(f"{where}: on_pair, register_fn and config are sent to the spawned processes and must "
                             f"pickle (use module-level functions): {exc}") from None
        port = master_port or int(os.environ.get("MASTER_PORT") or 0) or _free_port()
        with tempfile.TemporaryDirectory(prefix="contreg_dist_") as tmp:
            job.result_path = str(Path(tmp) / "rank0_result.pkl")
            try:
                with idist.Parallel(backend=backend, nproc_per_node=nproc_per_node, master_port=port) as parallel:
                    parallel.run(_spawned, job)
            except Exception as exc:  # a process died (killed, or an error before the first synchronisation)
                raise DistributedRunError(f"{where}: a process of the {nproc_per_node}-process run failed: {exc}") from exc
            result_file = Path(job.result_path)
            if not result_file.is_file():
                raise DistributedRunError(f"{where}: rank 0 ended without reporting its result.")
            result = pickle.loads(result_file.read_bytes())
        if result["error"]:
            raise DistributedRunError(result["error"])
        return result["summary"]
    if idist.backend() is not None:  # the caller set up the process group already: run in it
        job.backend = idist.backend()
        return _rank_main(idist.get_local_rank(), job)
    results: list[RunSummary] = []
    port_env = contextlib.nullcontext() if launched_by_torchrun() or "MASTER_PORT" in os.environ else _master_port(_free_port())
    with port_env, idist.Parallel(backend=backend) as parallel:  # torchrun's ranks, or a group of one
        parallel.run(lambda local_rank: results.append(_rank_main(local_rank, job)))
    return results[0]
