"""One run request: the run-wide options of a command, built once from the command line and read by every command.

:class:`RunRequest` holds what every command that registers images shares (the device, torch's CPU threads, the
memory limit, progress bars and the log level). The command line builds it once from its parsed arguments
(:meth:`RunRequest.from_args`) and hands it to the command; a command that accepts an option reads it from the
request and nowhere else, so an option accepted is an option honoured (``contreg register``, ``register-native``,
``run`` single and distributed, ``demo`` and ``tune`` alike).

Building a request imports nothing heavy (it is built before torch is imported); :meth:`RunRequest.torch_device`
checks the device against the torch installation when a command starts.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from .errors import UserInputError
from .options import parse_device, parse_memory

__all__ = ["RunRequest"]


@dataclass(frozen=True)
class RunRequest:
    """The run-wide options of one command.

    Attributes:
        command: the subcommand (``register``, ``run``...), first word of its messages.
        device: ``None`` (the default: CPU) or a device name such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``
            (form checked by :func:`~monai_contreg.options.parse_device`).
        threads: torch CPU threads (``--threads``; per process in a distributed run), ``None``: torch's choice
            (distributed: CPUs // processes per node).
        max_memory: memory the registration may use, bytes (``--max-memory``); ``None``: 80 % of the available
            memory (:func:`~monai_contreg.methods.memory.check_memory`).
        progress: show progress bars (``--progress``, or stderr is a terminal), never with ``quiet``.
        quiet: ``--quiet`` (no progress bar).
        verbosity: the ``-v`` count (0 warnings, 1 info, 2 debug).
        checkpoint_dir: ``--checkpoint-dir``: the folder the optimisation writes its checkpoints to
            (``engine.checkpoint_dir``; ``run``: one set per pair, named by the pair), ``None``: no checkpoints.
        checkpoint_every: ``--checkpoint-every``: steps between checkpoints (``engine.checkpoint_every``), ``None``:
            the config's.
        resume: ``--resume``: continue each registration from its latest checkpoint in ``checkpoint_dir``
            (``engine.resume``; ``run``: pairs without a checkpoint start from step 0).
    """

    command: str = ""
    device: str | None = None
    threads: int | None = None
    max_memory: int | None = None
    progress: bool = False
    quiet: bool = False
    verbosity: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.device is not None:
            object.__setattr__(self, "device", parse_device(self.device))
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise UserInputError(f"--threads: expected a whole number >= 1, got {self.threads!r}.")
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", parse_memory("--max-memory", self.max_memory))
        if self.quiet and self.progress:
            object.__setattr__(self, "progress", False)
        if self.checkpoint_every is not None and (isinstance(self.checkpoint_every, bool)
                                                  or not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1):
            raise UserInputError(f"--checkpoint-every: expected a whole number of steps >= 1, got {self.checkpoint_every!r}.")
        if self.checkpoint_dir is not None and not str(self.checkpoint_dir).strip():
            raise UserInputError("--checkpoint-dir: expected a folder, got an empty path.")
        if (self.resume or self.checkpoint_every is not None) and self.checkpoint_dir is None:
            opt = "--resume" if self.resume else "--checkpoint-every"
            raise UserInputError(f"{opt}: give --checkpoint-dir DIR too (the folder the checkpoints are written to "
                                 "and resumed from).")

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, stderr_is_tty: bool | None = None) -> RunRequest:
        """The request of parsed command-line arguments (options a command lacks take their defaults).

        Args:
            args: the namespace of :func:`monai_contreg.cli.build_parser`'s parser.
            stderr_is_tty: whether progress bars would reach a terminal (default: ``sys.stderr.isatty()``).

        Raises:
            UserInputError: naming the option (``--max-memory``, ``--device``, ``--threads``, ``--resume`` without
                ``--checkpoint-dir``) of a bad value.
        """
        tty = sys.stderr.isatty() if stderr_is_tty is None else stderr_is_tty
        quiet = bool(getattr(args, "quiet", False))
        threads = getattr(args, "threads", None)
        return cls(
            command=str(getattr(args, "command", "") or ""),
            device=getattr(args, "device", None),
            threads=threads or None,  # 0: torch's choice
            max_memory=getattr(args, "max_memory", None),
            progress=not quiet and (bool(getattr(args, "progress", False)) or tty),
            quiet=quiet,
            verbosity=int(getattr(args, "verbose", 0) or 0),
            checkpoint_dir=getattr(args, "checkpoint_dir", None),
            checkpoint_every=getattr(args, "checkpoint_every", None),
            resume=bool(getattr(args, "resume", False)),
        )

    def torch_device(self) -> Any:
        """The requested device as a ``torch.device`` (``None`` when none was asked for), checked to exist here.

        Raises:
            UserInputError: ``--device`` names a device this torch cannot use (``cuda`` without CUDA, an index
                beyond the visible GPUs, ``mps``/``xpu`` unavailable).
        """
        if self.device is None:
            return None
        import torch

        dev = torch.device(self.device)
        where = f"{self.command}: --device" if self.command else "--device"
        build = f"torch {torch.__version__}"
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                cuda = "built without CUDA" if torch.version.cuda is None else "no CUDA GPU visible"
                raise UserInputError(f"{where} {self.device!r} requested but CUDA is not available ({build}, {cuda}); "
                                     "use --device cpu or leave --device out.")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise UserInputError(f"{where} {self.device!r}: only {torch.cuda.device_count()} CUDA GPU(s) visible "
                                     f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1}).")
        elif dev.type in ("mps", "xpu"):
            backend = getattr(torch.backends, "mps", None) if dev.type == "mps" else getattr(torch, "xpu", None)
            if backend is None or not backend.is_available():
                raise UserInputError(f"{where} {self.device!r} requested but {dev.type} is not available ({build}).")
        return dev
