"""Data layer: MONAI preprocessing transforms, keypoint files, the built-in demo pair."""

from .demo import DemoPair, make_demo_pair
from .keypoints import load_keypoints, save_keypoints
from .transforms import (
    ApplyMask,
    ApplyMaskD,
    ApplyMaskd,
    ApplyMaskDict,
    loading_transforms,
    normalisation_transforms,
    preprocessing_transforms,
)

__all__ = [
    "ApplyMask",
    "ApplyMaskD",
    "ApplyMaskDict",
    "ApplyMaskd",
    "DemoPair",
    "load_keypoints",
    "loading_transforms",
    "normalisation_transforms",
    "make_demo_pair",
    "preprocessing_transforms",
    "save_keypoints",
]
