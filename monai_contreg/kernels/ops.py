"""Autograd wrappers of the compiled CPU kernels (callers check arguments and choose the path).

* :func:`compiled_warp_ssd`: the SSD of fixed features and moving features sampled trilinearly at ``x + u(x)``
  (positions in voxels of the features' grid, i.e. the ``align_corners=False`` frame of
  :mod:`monai_contreg.spatial.conventions`, where ``grid_sample``'s unnormalised coordinate is the voxel index),
  ``loss = mean_x sum_c (moving_c(x + u(x)) - fixed_c(x))^2``, with the gradient of the trilinear interpolant.
  Equal to ``grid_sample`` + :func:`monai_contreg.losses.ssd` (see :func:`monai_contreg.optim.step.warped_ssd`).
* :func:`compiled_box_smooth`: :func:`monai_contreg.spatial.filters.box_filter`'s operator, backward by its
  exact adjoint (no intermediate tensors kept for autograd).
* :func:`compiled_diffusion`: :func:`monai_contreg.losses.diffusion` and its gradient in one pass.
* :class:`FieldStepBuffers` / :func:`field_step_grad`: the gradient half of a whole optimisation step (smoothing,
  warp + SSD, diffusion, adjoint smoothing) into buffers allocated once per run, no autograd;
  :func:`adam_clamp`: the Adam update with the in-image bound in the same pass.
"""

from __future__ import annotations

import torch

from ..errors import UserInputError
from . import load_extension

__all__ = [
    "FieldStepBuffers",
    "adam_clamp",
    "channels_last",
    "compiled_box_smooth",
    "compiled_diffusion",
    "compiled_warp_ssd",
    "field_step_grad",
    "uses_compiled",
]


def uses_compiled(*tensors: torch.Tensor) -> bool:
    """Whether the compiled CPU kernels can run on these tensors (CPU, one float32/float64 dtype, built)."""
    return (
        all(t.device.type == "cpu" for t in tensors)
        and len({t.dtype for t in tensors}) == 1
        and tensors[0].dtype in (torch.float32, torch.float64)
        and load_extension() is not None
    )


def channels_last(features: torch.Tensor) -> torch.Tensor:
    """``(1, C, h, w, d)`` -> contiguous ``(h, w, d, C)``: the layout :func:`compiled_warp_ssd` samples from."""
    return features.detach()[0].permute(1, 2, 3, 0).contiguous()


class _WarpSSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ddf, moving_cl, fixed_cl, zeros, want_warped):  # type: ignore[override]
        total, grad, warped = load_extension().warp_ssd(ddf.detach()[0].contiguous(), moving_cl, fixed_cl, zeros, want_warped)
        ctx.save_for_backward(grad)
        ctx.scale = 1.0 / (ddf.shape[2] * ddf.shape[3] * ddf.shape[4])
        loss = (total * ctx.scale).to(ddf.dtype)
        if not want_warped:
            return loss, None
        warped = warped.permute(3, 0, 1, 2).unsqueeze(0)  # (1, C, h, w, d) view of the channels-last result
        ctx.mark_non_differentiable(warped)
        return loss, warped

    @staticmethod
    def backward(ctx, grad_loss, _grad_warped):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad_loss * ctx.scale) * grad.unsqueeze(0), None, None, None, None


def compiled_warp_ssd(
    ddf: torch.Tensor, moving_cl: torch.Tensor, fixed_cl: torch.Tensor, zeros: bool, want_warped: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(loss, warped)`` for a ``(1, 3, h, w, d)`` DDF and :func:`channels_last` features.

    ``warped`` (``(1, C, h, w, d)``, or ``None`` when not wanted) carries no gradient; the loss does (to ``ddf``).
    ``zeros`` selects zero padding instead of border (clipped positions, zero gradient where clipped).
    """
    return _WarpSSD.apply(ddf, moving_cl, fixed_cl, bool(zeros), bool(want_warped))


class _BoxSmooth(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, passes):  # type: ignore[override]
        ctx.kernel_size, ctx.passes = kernel_size, passes
        return load_extension().box_smooth(x.detach().contiguous(), kernel_size, passes, False, False)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return load_extension().box_smooth(grad.contiguous(), ctx.kernel_size, ctx.passes, True, False), None, None


def compiled_box_smooth(x: torch.Tensor, kernel_size: int, passes: int, inplace: bool = False) -> torch.Tensor:
    """``passes`` rounds of replicate-padded mean filters of width ``kernel_size`` along axes 2, 3, 4.

    ``inplace=True`` overwrites the contiguous ``x`` (no autograd; one scratch tensor instead of two).
    """
    if inplace:
        if not x.is_contiguous():
            raise UserInputError("compiled_box_smooth: inplace needs a contiguous tensor (x.contiguous()), got strides "
                                 f"{tuple(x.stride())}.")
        with torch.no_grad():
            return load_extension().box_smooth(x, int(kernel_size), int(passes), False, True)
    return _BoxSmooth.apply(x, int(kernel_size), int(passes))


class _Diffusion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, mean):  # type: ignore[override]
        loss, grad = load_extension().diffusion(u.detach().contiguous(), bool(mean))
        ctx.save_for_backward(grad)
        return loss.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_loss * grad, None


def compiled_diffusion(u: torch.Tensor, mean: bool = True) -> torch.Tensor:
    """Sum over axes of the mean (``mean=True``) or sum of squared forward differences of ``(B, C, H, W, D)``."""
    return _Diffusion.apply(u, bool(mean))


class FieldStepBuffers:
    """The tensors one fused optimisation step writes, allocated once per run (:func:`field_step_grad`).

    A full-size temporary allocated afresh every step is page-faulted in again every time once it is above
    glibc's mmap threshold (32 MiB: the ``accurate`` preset's full-resolution level); these are allocated once and
    overwritten in place.

    Attributes:
        ddf: ``(1, 3, h, w, d)`` the smoothed field of the last step (the one its loss saw).
        grad: ``(1, 3, h, w, d)`` the parameter's gradient of the last step.
        scratch: ``(1, 3, h, w, d)`` the smoothing passes' intermediate.
        rows: float64 ``(4 h w,)`` per-row partial sums of the losses.
        losses: float64 ``(2,)``: the last step's similarity and diffusion loss.
        clamped: int64 ``(1,)``: how many parameter values the last in-image bound changed.
    """

    def __init__(self, param: torch.Tensor) -> None:
        shape = tuple(param.shape)
        opts = {"dtype": param.dtype, "device": param.device}
        self.ddf = torch.empty(shape, **opts)
        self.grad = torch.empty(shape, **opts)
        self.scratch = torch.empty(shape, **opts)
        self.rows = torch.empty(4 * shape[2] * shape[3], dtype=torch.float64, device=param.device)
        self.losses = torch.zeros(2, dtype=torch.float64, device=param.device)
        self.clamped = torch.zeros(1, dtype=torch.int64, device=param.device)


def field_step_grad(
    param: torch.Tensor, buffers: FieldStepBuffers, moving_cl: torch.Tensor, fixed_cl: torch.Tensor, zeros: bool,
    kernel_size: int, passes: int, reg_weight: float,
) -> None:
    """The gradient of ``SSD(box(param)) / N + reg_weight * diffusion(box(param))`` into ``buffers``, no autograd.

    ``param`` is a contiguous ``(1, 3, h, w, d)`` CPU parameter (voxels of the working grid); ``box`` =
    ``passes`` replicate-padded mean filters of width ``kernel_size`` per axis
    (:func:`monai_contreg.spatial.filters.box_filter`), the SSD and diffusion as :func:`compiled_warp_ssd` and
    :func:`compiled_diffusion` (mean reduction). Writes ``buffers.ddf`` (the smoothed field), ``buffers.grad``
    (``d loss / d param``) and ``buffers.losses`` (similarity, diffusion). The same values as those three
    operations chained by autograd, to float rounding (a few additions are ordered differently).
    """
    load_extension().field_step_grad(
        param.detach(), buffers.ddf, buffers.grad, buffers.scratch, moving_cl, fixed_cl, buffers.rows, buffers.losses,
        bool(zeros), int(kernel_size), int(passes), float(reg_weight),
    )


def adam_clamp(
    param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *, lr: float,
    betas: tuple[float, float], eps: float, step: int, clamp: bool, clamped: torch.Tensor,
) -> None:
    """One Adam step of a contiguous ``(1, 3, h, w, d)`` CPU parameter in place, with the in-image bound fused.

    The update is ``torch.optim.Adam``'s (no weight decay, amsgrad or maximize), ``step`` the step number after
    it; with ``clamp`` each component ``a`` at voxel ``x`` is then clamped to ``[-x_a, n_a - 1 - x_a]`` in the same
    pass (:meth:`monai_contreg.optim.DisplacementField.clamp_to_image_`), the count of clamped values written to
    the int64 tensor ``clamped``.
    """
    with torch.no_grad():
        load_extension().adam_clamp(
            param, grad, exp_avg, exp_avg_sq, float(lr), float(betas[0]), float(betas[1]), float(eps), float(step),
            bool(clamp), clamped,
        )
