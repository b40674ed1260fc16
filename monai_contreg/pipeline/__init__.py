"""MONAI pipeline integration: dictionary transforms that register/apply fields, refinement of predictions."""

from .refine import RefineHandler, refine
from .transforms import (
    ApplyDDFD,
    ApplyDDFd,
    ApplyDDFDict,
    LoadKeypointsD,
    LoadKeypointsd,
    LoadKeypointsDict,
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
