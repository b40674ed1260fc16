"""How much memory a registration will need, known before it starts; a clear error when it will not fit.

:func:`estimate_memory` adds up the buffers of one :func:`monai_contreg.api.register` call on a grid of ``shape``
(``N`` voxels, working grid of ``n = N / grid_factor^3``, the finest dense stage's), in bytes of the computation dtype ``b``:

* ``images``: fixed and moving as loaded and normalised (``4 N b``), each mask (``2.5 N b``), ``minmax``
  normalisation's copies (``6 N b``);
* ``features``: MIND-SSC of one image at full resolution with its temporaries (12 distance channels, the
  box-filter buffer, the padded image, minimum and variance: ``24 N b``) while the other image's pooled features
  (``12 n b``) are kept;
* ``optimisation``: both pooled feature maps and the compiled kernel's channels-last copies (``48 n b``), the field
  with its gradient, Adam's two moments, the smoothed field and the box-filter and regulariser buffers (``24 n b``);
* ``discrete`` (a convex stage): the cost volume and its smoothing buffer,
  ``2 (2 disp_hw + 1)^3 N / grid_spacing^3 b``.

The peak is ``images + max(features, optimisation, discrete)``. The factors were measured with the peak resident
memory (``VmHWM``) of CPU runs on 96^3-160^3 grids (2026-12, torch 2.13): within 10 % for the ``io``, ``convex``
and ``convexadam`` presets; ``tests/methods/test_memory.py`` checks a run against it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import UserInputError
from ..spatial.filters import pooled_shape
from .config import RegistrationConfig

__all__ = ["MemoryEstimate", "available_memory", "check_memory", "estimate_memory", "format_bytes", "parse_memory"]

#: Share of the available memory a run may use when no limit is given.
DEFAULT_MEMORY_FRACTION = 0.8

_IMAGES, _MASK, _MINMAX = 4.0, 2.5, 6.0
_MIND_FULL, _FEATURES, _FIELD = 24.0, 48.0, 24.0


@dataclass
class MemoryEstimate:
    """Peak memory of a registration, in bytes.

    Attributes:
        total: the estimated peak.
        parts: ``images``, ``features``, ``optimisation`` (and ``discrete``) in bytes; the peak is ``images`` plus
            the largest of the others.
        shape: the registration grid; ``working_shape`` the optimised field's grid.
    """

    total: int
    parts: dict[str, int] = field(default_factory=dict)
    shape: tuple[int, int, int] = (0, 0, 0)
    working_shape: tuple[int, int, int] = (0, 0, 0)

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.parts.items())
        return f"{format_bytes(self.total)} ({parts})"


def format_bytes(n: float) -> str:
    """``1536 * 2**20`` -> ``"1.50 GiB"``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def parse_memory(where: str, value: str | float | int) -> int:
    """``"8G"``, ``"8GiB"``, ``"8GB"``, ``"500M"``, ``"1.5T"`` or a number of bytes -> bytes (powers of 1024).

    Raises:
        UserInputError naming ``where`` for anything else.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0 and math.isfinite(value):
            return int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(value).lower())
        if m and float(m.group(1)) > 0:
            return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))
    raise UserInputError(f"{where}: expected a memory size such as 8G, 500M or 8GiB (bytes without a unit), got {value!r}.")


def estimate_memory(
    shape: Sequence[int], config: RegistrationConfig, *, masks: int = 0, dtype: torch.dtype = torch.float32
) -> MemoryEstimate:
    """The peak memory of registering two images of ``shape`` with ``config`` (see the module docstring).

    Args:
        shape: the registration grid ``(H, W, D)`` (for :func:`~monai_contreg.native.register_native`: the
            working grid).
        config: the registration config (its stages and ``preprocess``).
        masks: how many masks are given (0-2).
        dtype: computation dtype.

    Returns:
        A :class:`MemoryEstimate`.
    """
    shape3 = tuple(int(s) for s in shape)
    b = torch.empty((), dtype=dtype).element_size()
    n_full = math.prod(shape3)
    dense = config.dense_stages
    convex = [s for s in config.stages if s.kind == "convex"]
    # the largest working grid: the finest dense stage (or the convex stage's coarse grid when it runs alone)
    factor = min(s.grid_factor for s in dense) if dense else convex[0].grid_spacing
    working = pooled_shape(shape3, factor)
    n_work = math.prod(working)
    images = n_full * (_IMAGES + _MASK * masks + (_MINMAX if config.preprocess.intensity == "minmax" else 0.0))
    channels = max([24 if s.second_dilation else 12 for s in dense] or [12])
    parts = {
        "images": images * b,
        "features": (_MIND_FULL * n_full + channels * n_work) * b,
        "optimisation": (_FEATURES * channels / 12 + _FIELD) * n_work * b if dense else 0.0,
    }
    if convex:
        cc = convex[0]
        coarse = math.prod(pooled_shape(shape3, cc.grid_spacing))
        parts["discrete"] = (2 * (2 * cc.disp_hw + 1) ** 3 + 2 * 12) * coarse * b
    peak = parts["images"] + max(v for k, v in parts.items() if k != "images")
    return MemoryEstimate(int(peak), {k: int(v) for k, v in parts.items()}, shape3, working)


def available_memory(device: str | torch.device | None = None) -> int:
    """Free memory (bytes) a run can use: the CUDA device's free memory, or the host's ``MemAvailable``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # no way to know: do not block the run
        return 2**62


def check_memory(
    where: str,
    shape: Sequence[int],
    config: RegistrationConfig,
    *,
    max_memory: str | float | int | None = None,
    masks: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    hint: str = "",
) -> MemoryEstimate:
    """Raise :class:`UserInputError` when :func:`estimate_memory` exceeds ``max_memory``; return the estimate.

    Args:
        where: caller, for the message.
        shape, config, masks, dtype: passed to :func:`estimate_memory`.
        max_memory: limit in bytes or as ``"8G"``; ``None``: :data:`DEFAULT_MEMORY_FRACTION` of
            :func:`available_memory` on ``device``.
        hint: what to do about it (the message's end), e.g. naming ``--working-spacing``.
    """
    est = estimate_memory(shape, config, masks=masks, dtype=dtype)
    if max_memory is None:
        limit = int(DEFAULT_MEMORY_FRACTION * available_memory(device))
        which = f"the default limit, {DEFAULT_MEMORY_FRACTION:.0%} of the available memory"
    else:
        limit = parse_memory(f"{where}: max_memory", max_memory)
        which = "max_memory (--max-memory)"
    if est.total > limit:
        raise UserInputError(
            f"{where}: the registration on a {est.shape} grid needs about {est}, more than {which}, "
            f"{format_bytes(limit)}. {hint or 'Use a coarser grid or raise --max-memory.'}"
        )
    return est
