"""The optimised displacement field: an ``nn.Parameter`` on a working grid, smoothed on read."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserInputError
from .._validation import check_ddf, check_finite
from ..spatial.conventions import check_shape3, resize_ddf
from ..spatial.filters import box_filter

__all__ = ["DisplacementField"]


class DisplacementField(nn.Module):
    """A dense displacement field ``u`` optimised directly (one parameter per working-grid voxel and axis).

    The parameter is a MONAI DDF ``(1, 3, h, w, d)`` in voxels of the working grid (a coarser grid over the
    fixed image's field of view, see :func:`monai_contreg.spatial.conventions.resize_ddf`). Reading the field
    (``forward``) applies ``smoothing_passes`` box filters of width ``kernel_size``: the optimiser moves the raw
    parameter, the loss sees the smoothed field (ConvexAdam's B-spline-like parametrisation).

    Args:
        shape: working-grid shape ``(h, w, d)``.
        init: optional initial DDF ``(1, 3, H', W', D')`` on any grid over the same field of view (voxels of
            that grid), e.g. the discrete stage's result or a network's prediction; resampled to ``shape``.
        smoothing_passes: number of box-filter passes applied on read (0 = none).
        kernel_size: odd box-filter width.
    """

    def __init__(
        self,
        shape: Sequence[int],
        init: torch.Tensor | None = None,
        smoothing_passes: int = 3,
        kernel_size: int = 3,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.shape = check_shape3("DisplacementField", "shape", shape)
        if smoothing_passes < 0:
            raise UserInputError(f"DisplacementField: smoothing_passes must be >= 0, got {smoothing_passes}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserInputError(f"DisplacementField: kernel_size must be a positive odd integer, got {kernel_size}.")
        self.smoothing_passes = int(smoothing_passes)
        self.kernel_size = int(kernel_size)
        data = torch.zeros((1, 3, *self.shape), dtype=dtype, device=device)
        if init is not None:
            check_ddf("DisplacementField", "init", init)
            if init.shape[0] != 1:
                raise UserInputError(f"DisplacementField: init must hold one field (batch 1), got {tuple(init.shape)}.")
            check_finite("DisplacementField", "init", init)
            data = resize_ddf(init.detach().to(device=data.device, dtype=dtype), self.shape).clone()
        self.displacement = nn.Parameter(data)

    def forward(self) -> torch.Tensor:
        """The smoothed working-grid DDF ``(1, 3, h, w, d)`` (differentiable)."""
        return box_filter(self.displacement, self.kernel_size, self.smoothing_passes)

    def ddf(self, shape: Sequence[int] | None = None) -> torch.Tensor:
        """The smoothed field, resampled to ``shape`` (e.g. the fixed image's) and in that grid's voxels."""
        out = self.forward()
        return out if shape is None else resize_ddf(out, check_shape3("DisplacementField.ddf", "shape", shape))

    @torch.no_grad()
    def clamp_to_image_(self, as_tensor: bool = False) -> int | torch.Tensor:
        """Clamp the parameter in place so that every voxel ``x`` maps inside the grid: ``0 <= x_i + u_i <= n_i - 1``.

        Args:
            as_tensor: return the count as a 0-dim int64 tensor on the parameter's device (no host sync: the
                engine's step path on CUDA) instead of an ``int``.

        Returns:
            How many values were changed (0 when the field already maps inside).
        """
        p = self.displacement
        changed = torch.zeros((), dtype=torch.int64, device=p.device)
        for axis, size in enumerate(self.shape):
            view = [1, 1, 1]
            view[axis] = size
            x = torch.arange(size, device=p.device, dtype=p.dtype).view(view)
            comp = p[0, axis]
            low, high = -x, (size - 1) - x
            changed += ((comp < low) | (comp > high)).sum()
            torch.clamp(comp, low, high, out=comp)
        return changed if as_tensor else int(changed)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, smoothing_passes={self.smoothing_passes}, kernel_size={self.kernel_size}"
