"""MONAI pipeline integration: dictionary transforms that register/apply fields, refinement of predictions."""

from ..data.keypoints import LoadKeypointsD, LoadKeypointsd, LoadKeypointsDict
from .refine import RefineHandler, refine
from .transforms import (
    ApplyDDFD,
    ApplyDDFd,
    ApplyDDFDict,
    RegisterPairD,
    RegisterPaird,
    RegisterPairDict,
)

__all__ = [
    "ApplyDDFD",
    "ApplyDDFDict",
    "ApplyDDFd",
    "LoadKeypointsD",
    "LoadKeypointsDict",
    "LoadKeypointsd",
    "RefineHandler",
    "RegisterPairD",
    "RegisterPairDict",
    "RegisterPaird",
    "refine",
]
