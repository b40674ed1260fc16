"""Registration methods (the paper's instance optimisation, ConvexAdam's coupled convex stage), configuration (a list of
stages), presets.

Submodules load on first use (PEP 562), so that a lower layer may import one of them (e.g. ``methods.config``)
without importing the rest of the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConvexConfig": "config",
    "ConvexStage": "config",
    "DenseStage": "config",
    "STAGE_KINDS": "config",
    "EngineConfig": "config",
    "FeatureConfig": "config",
    "FieldConfig": "config",
    "OptimConfig": "config",
    "PreprocessConfig": "config",
    "RegistrationConfig": "config",
    "CoupledConvex": "convex",
    "coupled_convex": "convex",
    "MethodOutput": "io",
    "compute_features": "io",
    "instance_optimisation": "io",
    "PRESETS": "presets",
    "get_preset": "presets",
    "preset_names": "presets",
    "METHODS": "run",
    "run_method": "run",
}

__all__ = [
    "METHODS",
    "PRESETS",
    "STAGE_KINDS",
    "ConvexConfig",
    "ConvexStage",
    "CoupledConvex",
    "DenseStage",
    "EngineConfig",
    "FeatureConfig",
    "FieldConfig",
    "MethodOutput",
    "OptimConfig",
    "PreprocessConfig",
    "RegistrationConfig",
    "compute_features",
    "coupled_convex",
    "get_preset",
    "instance_optimisation",
    "preset_names",
    "run_method",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
