"""MIND-SSC: modality independent neighbourhood descriptor, self-similarity context (Heinrich et al. 2013)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..errors import InputTypeError, UserInputError
from .._validation import check_finite, check_tensor
from ..spatial.filters import box_filter, box_filter_

__all__ = ["MINDSSC", "mind_ssc", "mind_ssc_pairs"]


def mind_ssc_pairs() -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """The 12 neighbour pairs of the 6-neighbourhood at squared distance 2 (the MIND-SSC channels).

    Each pair ``(a, b)`` joins two unit offsets on different axes; opposite offsets are never paired.
    """
    six = []
    for axis in range(3):
        for sign in (-1, 1):
            v = [0, 0, 0]
            v[axis] = sign
            six.append(tuple(v))
    pairs = []
    for a, b in itertools.combinations(six, 2):
        if sum((p - q) ** 2 for p, q in zip(a, b)) == 2:
            pairs.append((a, b))
    return pairs


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2, eps: float = 1e-12) -> torch.Tensor:
    """MIND-SSC features of a 3-D image.

    For each of the 12 neighbour pairs ``(a, b)`` (:func:`mind_ssc_pairs`), scaled by ``dilation``:
    ``D_c(x) = box_{2r+1}((I(x + d a) - I(x + d b))^2)`` with replication padding; then
    ``m = D - min_c D``, ``v = mean_c m`` clamped to ``[1e-3, 1e3] * mean_x(v)`` (per batch item), and
    ``MIND = exp(-m / v)``, values in ``(0, 1]``. A constant image gives 1 everywhere.

    Args:
        image: ``(B, 1, H, W, D)`` floating tensor (a single channel).
        radius: half-width ``r`` of the box filter over patch distances.
        dilation: spacing ``d`` (voxels) of the neighbourhood.
        eps: absolute floor of the variance estimate (guards constant images).

    Returns:
        ``(B, 12, H, W, D)`` tensor, dtype of ``image``.
    """
    check_tensor("mind_ssc", "image", image, 5)
    if image.shape[1] != 1:
        raise UserInputError(f"mind_ssc: image must have one channel, shape (B, 1, H, W, D); got {tuple(image.shape)}.")
    if not image.is_floating_point():
        raise InputTypeError(f"mind_ssc: image must be floating point, got {image.dtype}.")
    if radius < 0 or dilation < 1:
        raise UserInputError(f"mind_ssc: need radius >= 0 and dilation >= 1, got radius={radius}, dilation={dilation}.")
    check_finite("mind_ssc", "image", image)
    d = int(dilation)
    h, w, dd = image.shape[2:]
    padded = torch.nn.functional.pad(image, (d, d, d, d, d, d), mode="replicate")

    def shifted(offset: tuple[int, int, int]) -> torch.Tensor:
        o = [d + d * k for k in offset]
        return padded[:, :, o[0] : o[0] + h, o[1] : o[1] + w, o[2] : o[2] + dd]

    if image.requires_grad and torch.is_grad_enabled():  # differentiable (MINDSSCLoss): out-of-place ops
        dist = torch.cat([(shifted(a) - shifted(b)).square() for a, b in mind_ssc_pairs()], dim=1)
        dist = box_filter(dist, 2 * radius + 1, passes=1)
        m = dist - dist.min(dim=1, keepdim=True).values
        return torch.exp(-m / _variance(m, eps))
    # features for registration: one 12-channel buffer, filtered and normalised in place (about a third of the
    # memory of the out-of-place ops at NLST size; same values)
    with torch.no_grad():
        dist = image.new_empty((image.shape[0], 12, h, w, dd))
        for c, (a, b) in enumerate(mind_ssc_pairs()):
            torch.sub(shifted(a), shifted(b), out=dist[:, c : c + 1])
        dist.square_()
        box_filter_(dist, 2 * radius + 1, passes=1)
        dist.sub_(dist.min(dim=1, keepdim=True).values)
        v = _variance(dist, eps)
        return dist.div_(v).neg_().exp_()


def _variance(m: torch.Tensor, eps: float) -> torch.Tensor:
    """MIND's per-voxel variance estimate: the channel mean of ``m``, clamped to [1e-3, 1e3] x its image mean."""
    v = m.mean(dim=1, keepdim=True)
    mean_v = v.mean(dim=(2, 3, 4), keepdim=True)
    lo = torch.clamp(mean_v * 1e-3, min=eps)
    hi = torch.clamp(mean_v * 1e3, min=eps)
    return torch.maximum(torch.minimum(v, hi), lo)


class MINDSSC(nn.Module):
    """Module form of :func:`mind_ssc`: ``(B, 1, H, W, D) -> (B, 12, H, W, D)``."""

    def __init__(self, radius: int = 1, dilation: int = 2) -> None:
        super().__init__()
        self.radius = int(radius)
        self.dilation = int(dilation)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return mind_ssc(image, self.radius, self.dilation)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, dilation={self.dilation}"
