"""How much memory a registration will need, known before it starts; a clear error when it will not fit.

:func:`estimate_memory` adds up the buffers of one :func:`monai_contreg.api.register` call on a grid of ``shape``
stage by stage, in bytes of the computation dtype ``b``, for ``N`` voxels of the registration grid and ``n`` of a
working grid (``N / grid_factor^3``); the peak is ``images`` plus the largest stage.

* ``images`` (held throughout): fixed and moving as loaded and normalised (``4 N b``), each mask (``2.5 N b``),
  ``minmax`` normalisation's copies (``6 N b``).

Single-level presets (``io``, ``io-authors``, ``io-lr1``, ``io-lr15``, ``refine``, ``convexadam``, ``convex+io``):

* ``features``: MIND-SSC of one image at full resolution with its temporaries (12 distance channels, the
  box-filter buffer, the padded image, minimum and variance: ``24 N b``) while the other image's pooled features
  (``12 n b``) are kept;
* ``optimisation``: both pooled feature maps and the compiled kernel's channels-last copies (``48 n b``), the field
  with its gradient, Adam's two moments, the smoothed field and the box-filter and regulariser buffers (``24 n b``);
* ``affine`` (an affine stage): the moving image resampled through the current estimate and its full-resolution
  MIND-SSC, ``(12 + 1) N b`` (about; its pooled features are smaller);
* ``discrete`` (a convex stage; ``convex`` has no other stage): the cost volume and its
  smoothing buffer, ``2 (2 disp_hw + 1)^3 N / grid_spacing^3 b``, and both images' pooled features.

Multi-level presets (``accurate``; :mod:`monai_contreg.methods.multilevel`), per level ``i`` on its grid of ``n_i``
voxels with ``C_i = 12`` MIND channels per dilation:

* ``level i features`` (a level that computes MIND): the full-resolution MIND of earlier levels kept for later ones
  (``12 N b`` per image and dilation), one image's MIND with temporaries (``24 N b``) and the other results of this
  level (``12 N b`` each if a later level reuses them, else pooled, ``12 n_i b``);
* ``level i optimisation``: the full-resolution MIND still kept for later levels, both images' features on the
  level's grid (``2 C_i n_i b``; channels-last already, so the compiled kernel makes no copy, and at
  ``grid_factor`` 1 they are the kept full-resolution maps themselves, counted once) and the field with its
  optimiser state and buffers (``24 n_i b``).

So ``accurate`` (half resolution, then full resolution) peaks in its last level at ``images + (24 + 24) N b``
against ``io``'s ``images + 24 N b + 12 n b``: 57 against 34.5 ``N b`` with two masks. The factors were measured
with the peak resident memory (``VmHWM``, reset before the run) of CPU runs (2026-12, torch 2.13, one thread):
single-level on 96^3-160^3 grids within 10 % for ``io``, ``convex`` and ``convexadam``; at NLST size
(224 x 192 x 224, nlst_synth pair 0101, ``benchmarks/memory_peak.py``) see ``docs/guides/memory.md``.
``tests/methods/test_memory.py`` checks runs of ``io`` and ``accurate`` against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import UserInputError
from ..options import parse_memory
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
        A :class:`MemoryEstimate` whose ``parts`` are ``images`` and one entry per stage (``features``,
        ``optimisation`` (0 for ``method="convex"``), ``discrete``; for a multi-level config ``level i features`` /
        ``level i optimisation``);
        ``working_shape`` is the finest optimised grid.
    """
    shape3 = tuple(int(s) for s in shape)
    b = torch.empty((), dtype=dtype).element_size()
    n_full = math.prod(shape3)
    images = n_full * (_IMAGES + _MASK * masks + (_MINMAX if config.preprocess.intensity == "minmax" else 0.0))
    parts: dict[str, float] = {"images": images}
    dense = list(config.dense_stages)
    convex = [st for st in config.stages if st.kind == "convex"]
    if len(dense) > 1:
        working = pooled_shape(shape3, min(st.grid_factor for st in dense))
        parts.update(_multilevel_stages(shape3, dense))
    else:
        # one dense stage, or the convex stage's coarse grid when it runs alone
        working = pooled_shape(shape3, dense[0].grid_factor if dense else (convex[0].grid_spacing if convex else 1))
        n_work = math.prod(working)
        parts["features"] = _MIND_FULL * n_full + 12 * n_work
        parts["optimisation"] = (_FEATURES + _FIELD) * n_work if dense else 0.0
    if config.affine_stage is not None:  # an affine stage: the resampled moving image and its full MIND-SSC
        parts["affine"] = (_MIND_FULL + 1) * n_full
    if convex:
        cc = convex[0]
        coarse = math.prod(pooled_shape(shape3, cc.grid_spacing))
        parts["discrete"] = (2 * (2 * cc.disp_hw + 1) ** 3 + 2 * 12) * coarse
    parts = {k: v * b for k, v in parts.items()}
    peak = parts["images"] + max(v for k, v in parts.items() if k != "images")
    return MemoryEstimate(int(peak), {k: int(v) for k, v in parts.items()}, shape3, working)


def _multilevel_stages(shape3: tuple[int, int, int], levels) -> dict[str, float]:
    """Per level, the features and optimisation stages of :func:`~monai_contreg.methods.multilevel.run_multilevel`
    in units of ``b`` (see the module docstring): full-resolution MIND per (radius, dilation) is cached for both
    images until the last level that uses it."""
    n_full = math.prod(shape3)

    def keys(lv):
        return [(lv.mind_radius, d) for d in [lv.mind_dilation] + ([lv.second_dilation] if lv.second_dilation else [])]

    last_use = {k: i for i, lv in enumerate(levels) for k in keys(lv)}
    cached: set = set()
    out: dict[str, float] = {}
    for i, lv in enumerate(levels):
        n_i = math.prod(pooled_shape(shape3, lv.grid_factor))
        ks = keys(lv)
        new = [k for k in ks if k not in cached]
        held = 2 * 12.0 * n_full * len(cached)  # both images' full-resolution MIND kept from earlier levels
        if new:
            # the last of this level's 2 x len(new) MIND computations with its temporaries; the others' results are
            # kept at full resolution if a later level reuses them, else only pooled
            kept = [last_use[k] > i for k in new for _ in (0, 1)][:-1]
            others = sum(12.0 * (n_full if k else n_i) for k in kept)
            out[f"level {i} features"] = held + _MIND_FULL * n_full + others
            cached.update(k for k in new if last_use[k] > i)
        cached = {k for k in cached if last_use[k] > i}  # released after their last level's pooling
        # at grid_factor 1 this level's features are the full-resolution maps themselves: counted once
        still = cached - set(ks) if lv.grid_factor == 1 else cached
        feats = 2 * 12.0 * n_i * len(ks)
        out[f"level {i} optimisation"] = 2 * 12.0 * n_full * len(still) + feats + _FIELD * n_i
    return out


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
