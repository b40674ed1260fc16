"""Dispatch from a config's ``method`` to the method implementation (one entry per method)."""

from __future__ import annotations

import time
from typing import Any

import torch

from .._validation import choose
from .config import RegistrationConfig
from .io import MethodOutput, compute_features, instance_optimisation

__all__ = ["METHODS", "run_method"]

METHODS = ("io",)


def run_method(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    config: RegistrationConfig,
    *,
    init_ddf: torch.Tensor | None = None,
    keypoints: tuple[torch.Tensor, torch.Tensor] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    handlers: list[Any] | None = None,
    name: str = "",
) -> MethodOutput:
    """Register preprocessed ``fixed``/``moving`` ``(1, 1, H, W, D)`` with ``config.method``."""
    method = choose("run_method", "method", config.method, METHODS)
    init = choose("run_method", "init", config.init, ("zero",))
    del init  # only 'zero' for now: a given init_ddf overrides it
    t0 = time.perf_counter()
    ff, mf = compute_features(fixed, moving, config)
    if fixed.is_cuda:
        torch.cuda.synchronize(fixed.device)
    t_feat = time.perf_counter() - t0
    if method == "io":
        out = instance_optimisation(
            ff, mf, config, init_ddf=init_ddf, keypoints=keypoints, image_shape=tuple(fixed.shape[2:]),
            spacing=spacing, handlers=handlers, name=name,
        )
    out.timings = {"features": t_feat, **out.timings}
    return out
