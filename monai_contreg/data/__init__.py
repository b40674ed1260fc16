"""Data layer: MONAI preprocessing transforms, keypoint files, Learn2Reg datasets, the built-in demo pair."""

from .demo import DemoPair, make_demo_pair
from .keypoints import LoadKeypointsD, LoadKeypointsd, LoadKeypointsDict, load_keypoints, save_keypoints
from .learn2reg import Learn2RegDataset, Learn2RegPair, find_dataset_json, locate_fields
from .landmarks import (
    landmark_tre,
    landmarks_to_world,
    load_dirlab_landmarks,
    load_landmarks_voxel,
    save_landmarks_voxel,
)
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
    "Learn2RegDataset",
    "Learn2RegPair",
    "find_dataset_json",
    "locate_fields",
    "landmark_tre",
    "landmarks_to_world",
    "load_dirlab_landmarks",
    "load_landmarks_voxel",
    "save_landmarks_voxel",
    "LoadKeypointsD",
    "LoadKeypointsDict",
    "LoadKeypointsd",
    "load_keypoints",
    "loading_transforms",
    "normalisation_transforms",
    "make_demo_pair",
    "preprocessing_transforms",
    "save_keypoints",
]
