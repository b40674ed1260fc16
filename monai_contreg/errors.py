"""The package's exception types and the one place where failures become user-facing messages.

* :class:`ContregError`: base class of every error this package raises on purpose.
* :class:`UserInputError`: a validated user error (a bad argument, option, file or geometry); the message
  names the argument and what was expected. Also a ``ValueError`` so existing ``except ValueError`` keeps
  working.
* :class:`MissingFileError`: an input file or folder that does not exist (a ``UserInputError`` and a
  ``FileNotFoundError``).
* :class:`InputTypeError`: an argument of the wrong type (a ``UserInputError`` and a ``TypeError``).
* :class:`RegistrationDivergedError`: an optimisation that ran off (non-finite loss, runaway field); the
  message names the likely cause and the fix.

:func:`describe_read_error` turns the exception of a failed read (MONAI wraps the reader's exception in
``RuntimeError("applying transform <LoadImaged ...>")``) into what is wrong with the file: truncated gzip data,
a text file named ``.nii.gz``, an empty file, not a NIfTI file, ...

:func:`cli_error` is the CLI's single exception handler: it prints ``contreg CMD: error: ...`` as one line and
returns the exit status (2 for user errors, 3 for a diverged registration, 1 for an environment failure such as
a full disk, 130 for Ctrl-C), with the traceback only under ``-v`` (never for Ctrl-C). Any other exception is a programming error:
:func:`cli_error` returns ``None`` and the caller re-raises it, traceback included.
"""

from __future__ import annotations

import errno
import sys
import traceback
from pathlib import Path
from typing import TextIO

__all__ = [
    "EXIT_DIVERGED",
    "EXIT_ENVIRONMENT",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "ContregError",
    "InputTypeError",
    "MissingFileError",
    "RegistrationDivergedError",
    "UserInputError",
    "cli_error",
    "describe_parse_error",
    "describe_read_error",
    "is_user_facing",
    "root_cause",
]

#: Exit status of ``contreg`` for a user error (bad option, file, geometry), as argparse's.
EXIT_USER_ERROR = 2
#: Exit status for a diverged registration.
EXIT_DIVERGED = 3
#: Exit status for a failure of the environment (disk full, read-only file system, permission denied).
EXIT_ENVIRONMENT = 1
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

#: ``errno`` values of an ``OSError`` that are the environment's fault, not the program's: one line, no traceback.
ENVIRONMENT_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO, errno.ENOENT,
                errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EMFILE, errno.ENAMETOOLONG)
)


class ContregError(Exception):
    """Base class of the errors monai_contreg raises deliberately."""


class UserInputError(ContregError, ValueError):
    """A validated user error: the message names the argument/option/file and what was expected."""


class InputTypeError(UserInputError, TypeError):
    """An argument of the wrong type (a file path where an array was expected, ...); also a ``TypeError``."""


class MissingFileError(UserInputError, FileNotFoundError):
    """An input file or folder named by the user does not exist (also a ``FileNotFoundError``)."""

    def __init__(self, message: str) -> None:
        # FileNotFoundError(msg) keeps msg as str(exc) (one argument: no errno formatting)
        super().__init__(message)


class RegistrationDivergedError(ContregError, RuntimeError):
    """The optimisation diverged (non-finite loss, runaway displacement, exploding loss or folding)."""


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of ``exc``'s chain (``__cause__``, else ``__context__``), cycles excluded."""
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _head(path: Path, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _looks_like_text(data: bytes) -> bool:
    if not data:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def describe_read_error(exc: BaseException, path: str | Path | None = None) -> str:
    """Say what is wrong with a file whose read raised ``exc`` (unwrapping MONAI's and our wrappers).

    Args:
        exc: the exception raised while reading (any depth of wrapping).
        path: the file (used to look at its first bytes: empty, text, gzip).

    Returns:
        One line such as ``"truncated gzip data (the compressed stream ends early: an incomplete download or
        copy?)"`` or, for an unknown cause, ``"<ExceptionType>: <message>"`` of the innermost exception.
    """
    inner = root_cause(exc)
    msg = " ".join(str(inner).split())
    low = msg.lower()
    p = Path(path) if path is not None else None
    name = p.name.lower() if p is not None else ""
    head = _head(p) if p is not None and p.is_file() else b""
    size = p.stat().st_size if p is not None and p.is_file() else None
    if isinstance(inner, IsADirectoryError) or (p is not None and p.is_dir() and name.endswith((".nii", ".nii.gz"))):
        return "it is a directory, not an image file"
    if size == 0 or "empty file" in low:
        return "the file is empty (0 bytes)"
    if isinstance(inner, EOFError) or "compressed file ended" in low or "end-of-stream" in low:
        return "truncated gzip data: the compressed stream ends early (an incomplete download or copy?)"
    if "error -3 while decompressing" in low or "invalid stored block" in low or "crc check failed" in low:
        return f"corrupt gzip data ({msg})"
    if "not a gzip" in low or (name.endswith(".gz") and head and not head.startswith(b"\x1f\x8b")):
        what = "text" if _looks_like_text(head) else "binary data"
        start = head[:24].decode("utf-8", "replace").splitlines()[0] if what == "text" else ""
        shown = f" starting {start!r}" if start else ""
        return f"the name ends in .gz but the file is not gzip-compressed: it holds {what}{shown}"
    if "cannot work out file type" in low:
        kind = "NIfTI" if name.endswith((".nii", ".nii.gz")) else "readable image"
        what = " (it holds text)" if _looks_like_text(head) else ""
        return f"not a {kind} file: no valid header{what}"
    if "could not create io object" in low:
        what = "it holds text, not " if _looks_like_text(head) else ""
        return f"ITK cannot read it: {what}an image in a format ITK knows (.nrrd, .mha, .mhd, .nii.gz, DICOM) or its header is corrupt"
    if type(inner).__name__ == "HeaderDataError":
        return f"bad NIfTI header: {msg}"
    if isinstance(inner, MemoryError):
        return "not enough memory to read it"
    return f"{type(inner).__name__}: {msg}" if msg else type(inner).__name__


def describe_parse_error(exc: BaseException) -> str:
    """One line for a YAML/JSON parse error: ``"line L, column C: <problem>"`` (YAML's own text runs over lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:  # yaml.MarkedYAMLError
        context = getattr(exc, "context", None)
        extra = f" ({context})" if context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}{extra}"
    if hasattr(exc, "lineno") and hasattr(exc, "colno") and hasattr(exc, "msg"):  # json.JSONDecodeError
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if isinstance(exc, UnicodeDecodeError):
        return "not a text file (it holds binary data)"
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def is_user_facing(exc: BaseException) -> bool:
    """Whether ``exc`` is printed as one line by the CLI (a :class:`ContregError` or an environment ``OSError``)."""
    if isinstance(exc, ContregError):
        return True
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, ContregError) and exc.errno is not None:
        where = f": {exc.filename!r}" if exc.filename else ""
        text = f"{exc.strerror or text}{where}"
    return text


def cli_error(command: str, exc: BaseException, verbose: int = 0, stream: TextIO | None = None) -> int | None:
    """The CLI's exception handler: print one line ``contreg COMMAND: error: ...`` and return the exit status.

    Args:
        command: the subcommand (``register``, ``run``...).
        exc: the exception that ended the command.
        verbose: the ``-v`` count; with ``-v`` the traceback is printed before the line.
        stream: where to print (default ``sys.stderr``).

    Returns:
        130 for ``KeyboardInterrupt``; 2 for :class:`UserInputError`; 3 for
        :class:`RegistrationDivergedError`; 1 for any other :class:`ContregError` and for an ``OSError`` of the
        environment (disk full, read-only file system, permission denied); ``None`` for anything else, a
        programming error the caller re-raises with its traceback.
    """
    out = stream if stream is not None else sys.stderr
    if isinstance(exc, KeyboardInterrupt):  # never a bug: one line, also under -v
        print(f"contreg {command}: interrupted (Ctrl-C); finished outputs are complete, unfinished ones were not written",
              file=out)
        return EXIT_INTERRUPTED
    if not is_user_facing(exc):
        return None
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=out)
    print(f"contreg {command}: error: {_one_line(exc)}", file=out)
    out.flush()
    if isinstance(exc, UserInputError):
        return EXIT_USER_ERROR
    if isinstance(exc, RegistrationDivergedError):
        return EXIT_DIVERGED
    return EXIT_ENVIRONMENT
