"""Cheap parsers of option values, shared by the command line and the API: no torch, MONAI or NumPy import.

The command line (:mod:`monai_contreg.cli`) validates its arguments with these before it imports anything heavy,
so that a bad value is refused at once; the API calls the same functions, so a value means the same everywhere.

* :func:`parse_memory`: ``"8G"``, ``"500M"``, ``"8GiB"`` or bytes -> bytes;
* :func:`parse_spacing`: ``"1.5"`` or ``"1.5,1.5,2"`` (mm) -> a number or three;
* :func:`choose_name`: one of a list of names, with the nearest one suggested (:func:`suggest`);
* :func:`parse_device`: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... checked for its form only (whether the device
  exists is checked when a command runs, :meth:`monai_contreg.request.RunRequest.torch_device`).

Every parser raises :class:`~monai_contreg.errors.UserInputError` naming the option and what was expected.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable

from .errors import UserInputError

__all__ = ["DEVICE_TYPES", "choose_name", "parse_device", "parse_memory", "parse_spacing", "suggest"]

#: Device types accepted by ``--device`` (torch's names; whether one is usable is checked when a command runs).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def suggest(value: str, choices: Iterable[str]) -> str:
    """Return a ``" Did you mean 'x'?"`` hint for the choice closest to ``value`` (or ``""``)."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def choose_name(option: str, what: str, value: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``.

    Raises:
        UserInputError: ``"OPTION: unknown WHAT 'x'; expected one of [...]. Did you mean 'y'?"``.
    """
    names = list(choices)
    if value in names:
        return value
    raise UserInputError(f"{option}: unknown {what} {value!r}; expected one of {names}.{suggest(str(value), names)}")


def parse_memory(where: str, value: str | float | int) -> int:
    """``"8G"``, ``"8GiB"``, ``"8GB"``, ``"500M"``, ``"1.5T"`` or a number of bytes -> bytes (powers of 1024).

    Raises:
        UserInputError: naming ``where`` for anything else (zero, negative, not finite, unknown unit).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0 and math.isfinite(value):
            return int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(value).lower())
        if m and float(m.group(1)) > 0:
            return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))
    raise UserInputError(f"{where}: expected a memory size such as 8G, 500M or 8GiB (bytes without a unit), got {value!r}.")


def parse_spacing(text: str, option: str = "--working-spacing") -> float | tuple[float, float, float]:
    """Parse a spacing option: one number or three comma-separated numbers (mm), each finite and > 0.

    Raises:
        UserInputError: naming ``option`` and the text.
    """
    parts = [t.strip() for t in str(text).split(",")]
    try:
        vals = [float(t) for t in parts]
    except ValueError:
        vals = []
    if len(vals) not in (1, 3) or not all(math.isfinite(v) and v > 0 for v in vals):
        raise UserInputError(
            f"{option}: expected one spacing in mm or three comma-separated (e.g. 1.5 or 1.5,1.5,2), each > 0; got {text!r}."
        )
    return vals[0] if len(vals) == 1 else (vals[0], vals[1], vals[2])


def parse_device(text: str, option: str = "--device") -> str:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"xpu:0"`` -> the same text, lower-cased and stripped.

    Only the form is checked here (a type of :data:`DEVICE_TYPES`, an optional ``:index``).

    Raises:
        UserInputError: naming ``option`` for any other text.
    """
    value = str(text).strip().lower()
    m = re.fullmatch(r"([a-z]+)(?::(\d+))?", value)
    if m is None or m.group(1) not in DEVICE_TYPES:
        raise UserInputError(
            f"{option}: expected a device such as cpu, cuda or cuda:1 (types {list(DEVICE_TYPES)}), got {text!r}."
        )
    return value
