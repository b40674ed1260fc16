"""The interpolation and padding modes of every resampling in the package, and the one label-map policy.

A leaf module (imports nothing from the package): configuration (:mod:`monai_contreg.methods.config`) and
the lowest layers (:mod:`monai_contreg.spatial`) both read it.

* :class:`PaddingMode` is MONAI's :class:`monai.utils.GridSamplePadMode` (``"zeros"``, ``"border"``,
  ``"reflection"``): what ``grid_sample`` returns for positions outside the source image.
* :class:`InterpolationMode`: ``"bilinear"`` (trilinear in 3-D; images, fields) or ``"nearest"`` (labels).
* :data:`LABEL_PADDING` = ``"zeros"``: a label map sampled outside its image is background, on every path
  (``RegistrationResult.warp(labels=True)``, ``ApplyDDFd`` label keys, the masks of ``register`` on two
  grids, the Dice/HD95 of ``contreg evaluate``, ``contreg warp --labels``), as ITK's resampler (default
  value 0) and the official Learn2Reg script (``map_coordinates(order=0)``, ``cval=0``) do.
* :data:`IMAGE_PADDING` = ``"border"``: intensity images are extended by their edge value (the method's
  choice for the warped moving image and features, METHOD §3).
"""

from __future__ import annotations

from monai.utils import GridSamplePadMode, StrEnum

__all__ = ["IMAGE_PADDING", "LABEL_PADDING", "FeatureStorage", "InterpolationMode", "Modality", "PaddingMode", "Similarity"]

#: ``grid_sample`` padding: ``ZEROS``, ``BORDER``, ``REFLECTION`` (MONAI's enum; members are ``str``).
PaddingMode = GridSamplePadMode


class InterpolationMode(StrEnum):
    """Interpolation of a resampling: ``BILINEAR`` (trilinear in 3-D) or ``NEAREST`` (label maps)."""

    BILINEAR = "bilinear"
    NEAREST = "nearest"


class FeatureStorage(StrEnum):
    """How the warped-SSD loss stores the moving features (see :class:`~monai_contreg.losses.WarpedSSD`)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


class Similarity(StrEnum):
    """The similarity a dense stage optimises (:attr:`~monai_contreg.methods.config.DenseStage.similarity`).

    ``MIND``: SSD of MIND-SSC features (the paper's; compiled CPU kernels); ``LNCC``: MONAI's
    ``LocalNormalizedCrossCorrelationLoss`` and ``MI``: MONAI's ``GlobalMutualInformationLoss`` on the warped
    intensities (:mod:`monai_contreg.losses.intensity`).
    """

    MIND = "mind"
    LNCC = "lncc"
    MI = "mi"


class Modality(StrEnum):
    """How an image's intensities are read (:attr:`~monai_contreg.methods.config.PreprocessConfig.modality`):
    ``AUTO`` (decided from the values, :mod:`monai_contreg.data.modality`), ``CT`` (Hounsfield units) or ``MR``."""

    AUTO = "auto"
    CT = "ct"
    MR = "mr"


#: Padding of label maps and masks on every path (background outside the image, as ITK).
LABEL_PADDING = PaddingMode.ZEROS
#: Default padding of intensity images and feature maps.
IMAGE_PADDING = PaddingMode.BORDER
