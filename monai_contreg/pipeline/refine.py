"""Refinement of a network's predicted DDF by instance optimisation (after inference)."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events

from .._validation import check_ddf
from ..api import RegistrationResult, register
from ..methods.config import RegistrationConfig

__all__ = ["RefineHandler", "refine"]


def refine(
    fixed: Any,
    moving: Any,
    ddf: torch.Tensor,
    *,
    fixed_mask: Any = None,
    moving_mask: Any = None,
    config: RegistrationConfig | str = "refine",
    device: str | torch.device | None = None,
    spacing: Any = None,
    affine: Any = None,
    assume_unit_spacing: bool = False,
) -> RegistrationResult:
    """Instance-optimise starting from ``ddf`` (a network's prediction, MONAI DDF ``(1, 3, ...)`` in voxels).

    The default ``refine`` preset runs a short constant low-learning-rate Adam schedule so the prediction is
    improved, not replaced; any preset or config can be given. ``fixed`` and ``moving`` lie on one grid (the
    prediction's); plain arrays need ``spacing``/``affine`` (or ``assume_unit_spacing=True``) as in
    :func:`~monai_contreg.api.register`.
    """
    check_ddf("refine", "ddf", ddf)
    return register(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask, config=config, device=device, init_ddf=ddf,
                    spacing=spacing, affine=affine, assume_unit_spacing=assume_unit_spacing)


class RefineHandler:
    """ignite handler refining the DDF an inference engine produced, at every ``ITERATION_COMPLETED``.

    Reads ``engine.state.output[ddf_key]`` ``(B, 3, H, W, D)`` and ``engine.state.batch[fixed_key / moving_key]``
    ``(B, 1, H, W, D)``, refines each batch item and writes the refined DDFs under ``output[refined_key]``.
    Batch items that are plain tensors (not MetaTensors with an affine) take ``spacing`` (mm), which is then required.
    """

    def __init__(
        self,
        config: RegistrationConfig | str = "refine",
        ddf_key: str = "ddf",
        fixed_key: str = "fixed",
        moving_key: str = "moving",
        refined_key: str = "ddf_refined",
        spacing: Any = None,
    ) -> None:
        self.config, self.ddf_key, self.fixed_key, self.moving_key, self.refined_key = config, ddf_key, fixed_key, moving_key, refined_key
        self.spacing = spacing

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        for name, src in ((self.ddf_key, out), (self.fixed_key, batch), (self.moving_key, batch)):
            if name not in src:
                raise KeyError(f"RefineHandler: key {name!r} not found in the engine's output/batch.")
        ddf = out[self.ddf_key].detach()
        refined = []
        for i in range(ddf.shape[0]):
            res = refine(batch[self.fixed_key][i, 0], batch[self.moving_key][i, 0], ddf[i : i + 1], config=self.config,
                         device=ddf.device, spacing=self.spacing)
            refined.append(res.ddf.as_tensor())
        out[self.refined_key] = torch.cat(refined, 0)
