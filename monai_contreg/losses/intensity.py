"""Intensity similarities of a dense stage: MONAI's image losses on the warped moving image.

A dense stage whose ``similarity`` is ``"lncc"`` or ``"mi"`` (:class:`~monai_contreg.modes.Similarity`) optimises
one of MONAI's losses between the fixed image and the moving image warped by the field, both average-pooled onto
the stage's working grid (one channel, the preprocessed intensities in [0, 1]):

* ``"lncc"``: ``1 +`` :class:`monai.losses.LocalNormalizedCrossCorrelationLoss` (``spatial_dims=3``, a
  rectangular window of ``kernel_size`` working-grid voxels; MONAI's loss is minus the mean over voxels of the
  squared local correlation coefficient, in ``[-1, 0]``), so in ``[0, 1]``, 0 for images equal up to a local
  affine map of intensities. For pairs of one contrast whose intensities differ by such a map (bias field, gain).
* ``"mi"``: ``log(num_bins) +`` :class:`monai.losses.GlobalMutualInformationLoss` (Gaussian Parzen windows,
  ``num_bins`` bins over [0, 1], MONAI's ``sigma_ratio`` 0.5; MONAI's loss is minus the mutual information in
  nats, which is at most ``log(num_bins)``), so ``>= 0``. For pairs of different contrasts (T1 against T2, MR against
  CT), whose intensities are related by any function.

The constant offsets change no gradient; they keep the loss positive, as the divergence guard
(:class:`~monai_contreg.optim.DivergenceGuard`, ratios of the loss to its start) expects.

The warp is the package's trilinear sampling (:func:`monai_contreg.spatial.warp.grid_sample_3d`, the DDF in
working-grid voxels converted by :func:`monai_contreg.spatial.conventions.ddf_to_sampling_grid`), and the gradient
is PyTorch's autograd: the compiled CPU kernels fuse warp + SSD for the MIND features only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._validation import check_same_spatial, check_tensor, choose
from ..errors import UserInputError
from ..modes import Similarity

__all__ = ["INTENSITY_SIMILARITIES", "intensity_similarity"]

#: The similarities computed on intensities (the others, ``"mind"``, on MIND-SSC features).
INTENSITY_SIMILARITIES = (Similarity.LNCC.value, Similarity.MI.value)


def intensity_similarity(
    name: str, *, lncc_kernel_size: int = 5, mi_bins: int = 23, mi_sampling: float = 0.25
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``(warped, fixed) -> scalar`` (lower is better) of the intensity similarity ``name``.

    Args:
        name: ``"lncc"`` or ``"mi"``.
        lncc_kernel_size: the LNCC window (odd, voxels of the grid the loss is evaluated on).
        mi_bins: MI histogram bins (intensities in [0, 1]).
        mi_sampling: fraction of the voxels MI is estimated on, ``(0, 1]``: every ``round(1 / mi_sampling)``-th voxel
            in memory order (a regular sampling, the same voxels every step; ANTs' ``antsRegistrationSyN.sh`` samples
            25 % for MI). MONAI's Parzen histogram costs ``voxels x bins`` per step: at 0.25 it is 4 times cheaper.

    Returns:
        A callable taking ``warped`` and ``fixed`` ``(B, 1, h, w, d)`` tensors and returning MONAI's loss
        (reduction ``"mean"``) plus the constant offset above, differentiable with respect to ``warped``.

    Raises:
        UserInputError: an unknown ``name`` (``"mind"`` is not an intensity similarity), a kernel size that is not
            a positive odd integer, fewer than 2 bins.

    Examples:
        >>> loss = intensity_similarity("lncc", lncc_kernel_size=3)
        >>> img = torch.rand(1, 1, 8, 8, 8)
        >>> round(float(loss(img, img)), 4)
        0.0
    """
    stride = 1
    key = str(choose("intensity_similarity", "similarity", name, INTENSITY_SIMILARITIES))
    if key == Similarity.LNCC.value:
        if isinstance(lncc_kernel_size, bool) or not isinstance(lncc_kernel_size, int) or lncc_kernel_size < 1 or lncc_kernel_size % 2 == 0:
            raise UserInputError(f"intensity_similarity: lncc_kernel_size must be a positive odd integer, got {lncc_kernel_size!r}.")
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        loss = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=lncc_kernel_size, kernel_type="rectangular")
        offset = 1.0
    else:
        if isinstance(mi_bins, bool) or not isinstance(mi_bins, int) or mi_bins < 2:
            raise UserInputError(f"intensity_similarity: mi_bins must be an integer >= 2, got {mi_bins!r}.")
        from monai.losses import GlobalMutualInformationLoss

        if isinstance(mi_sampling, bool) or not isinstance(mi_sampling, (int, float)) or not 0 < mi_sampling <= 1:
            raise UserInputError(f"intensity_similarity: mi_sampling must be a fraction in (0, 1], got {mi_sampling!r}.")
        loss = GlobalMutualInformationLoss(kernel_type="gaussian", num_bins=mi_bins)
        offset = math.log(mi_bins)
        stride = max(1, int(round(1.0 / float(mi_sampling))))

    def similarity(warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_tensor(f"{key} similarity", "warped", warped, 5)
        check_tensor(f"{key} similarity", "fixed", fixed, 5)
        check_same_spatial(f"{key} similarity", ("warped", "fixed"), warped, fixed)
        if stride > 1:  # MI of a regular sample of the voxels (MONAI flattens the spatial dimensions anyway)
            b, c = warped.shape[:2]
            warped = warped.reshape(b, c, -1)[..., stride // 2::stride].reshape(b, c, -1, 1, 1)
            fixed = fixed.reshape(b, c, -1)[..., stride // 2::stride].reshape(b, c, -1, 1, 1)
        return loss(warped, fixed) + offset

    return similarity
