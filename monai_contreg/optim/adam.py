"""Adam for one displacement-field parameter on CPU: the compiled update with the in-image bound in the same pass.

:class:`FieldAdam` is ``torch.optim.Adam`` (no weight decay, amsgrad or maximize; the same state: ``step``,
``exp_avg``, ``exp_avg_sq``) for the single ``(1, 3, h, w, d)`` parameter of a
:class:`~monai_contreg.optim.DisplacementField`, run by the compiled kernel
:func:`monai_contreg.kernels.ops.adam_clamp`: one pass over parameter, gradient and moments. With
``keep_in_image`` the same pass clamps the parameter so that every working-grid voxel maps inside the grid
(:meth:`~monai_contreg.optim.DisplacementField.clamp_to_image_`), instead of a separate handler's per-axis
comparisons, count, minimum, maximum and copy after the update. :func:`field_adam_available` says where it runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import UserInputError
from ..kernels.ops import adam_clamp, uses_compiled

__all__ = ["FieldAdam", "field_adam_available"]


def field_adam_available(param: torch.Tensor) -> bool:
    """Whether :class:`FieldAdam` can run on ``param``: a contiguous CPU float32/float64 ``(1, 3, h, w, d)``
    tensor, with the compiled kernels built."""
    return (
        param.dim() == 5 and tuple(param.shape[:2]) == (1, 3) and param.is_contiguous() and uses_compiled(param)
    )


class FieldAdam(torch.optim.Optimizer):
    """Adam over one displacement-field parameter, the in-image bound fused into the update (CPU, compiled).

    The update is ``torch.optim.Adam``'s (Kingma & Ba 2015; the order of operations of torch's fused CPU
    kernel, so the two agree to float rounding); learning rate and betas are read from ``param_groups`` at every
    step, so LR schedulers work as with Adam. The state dict has Adam's keys.

    Args:
        params: exactly one parameter, a contiguous CPU float32/float64 ``(1, 3, h, w, d)`` tensor (a MONAI DDF in
            voxels of its grid), e.g. ``DisplacementField.parameters()``.
        lr, betas, eps: as ``torch.optim.Adam``.
        keep_in_image: clamp component ``a`` at voxel ``x`` to ``[-x_a, n_a - 1 - x_a]`` after each update (in
            the same pass); the number of values changed by the last step is :attr:`clamped` (an int64 tensor,
            read without a host sync only when asked).

    Raises:
        UserInputError: not exactly one parameter, or one the compiled kernel cannot take
            (:func:`field_adam_available`); a negative learning rate or eps, betas outside ``[0, 1)``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        keep_in_image: bool = False,
    ) -> None:
        if not lr >= 0:
            raise UserInputError(f"FieldAdam: lr must be >= 0, got {lr}.")
        if not eps >= 0:
            raise UserInputError(f"FieldAdam: eps must be >= 0, got {eps}.")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise UserInputError(f"FieldAdam: betas must be two values in [0, 1), got {betas}.")
        defaults = {"lr": lr, "betas": tuple(float(b) for b in betas), "eps": float(eps), "weight_decay": 0.0,
                    "amsgrad": False, "maximize": False}
        super().__init__(params, defaults)
        found = [p for g in self.param_groups for p in g["params"]]
        if len(found) != 1:
            raise UserInputError(f"FieldAdam: expects exactly one parameter (the field's), got {len(found)}.")
        if not field_adam_available(found[0]):
            p = found[0]
            raise UserInputError(
                f"FieldAdam: the parameter must be a contiguous CPU float32/float64 (1, 3, h, w, d) tensor and the "
                f"compiled kernels available; got {tuple(p.shape)} {p.dtype} on {p.device}."
            )
        self.keep_in_image = bool(keep_in_image)
        self.clamped = torch.zeros(1, dtype=torch.int64)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One Adam step of the parameter (its ``.grad``), clamped into the image when ``keep_in_image``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                state["step"] += 1
                grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
                adam_clamp(
                    p, grad, state["exp_avg"], state["exp_avg_sq"], lr=group["lr"], betas=group["betas"],
                    eps=group["eps"], step=int(state["step"]), clamp=self.keep_in_image, clamped=self.clamped,
                )
        return loss
