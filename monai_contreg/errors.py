"""The package's exception types: one home for what a caller (or the CLI) may catch.

* :class:`ContregError`: base class of every error this package raises on purpose.
* :class:`UserInputError`: a validated user error (a bad argument, option, file or geometry); the message
  names the argument and what was expected. Also a ``ValueError`` so existing ``except ValueError`` keeps
  working.
* :class:`RegistrationDivergedError`: an optimisation that ran off (non-finite loss, runaway field); the
  message names the likely cause and the fix.

The CLI prints these as one line (``contreg CMD: error: ...``); any other exception is a programming error
and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ContregError", "RegistrationDivergedError", "UserInputError"]


class ContregError(Exception):
    """Base class of the errors monai_contreg raises deliberately."""


class UserInputError(ContregError, ValueError):
    """A validated user error: the message names the argument/option/file and what was expected."""


class RegistrationDivergedError(ContregError, RuntimeError):
    """The optimisation diverged (non-finite loss, runaway displacement, exploding loss or folding)."""
