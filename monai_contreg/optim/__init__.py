"""Optimisation layer: the field module, the LR schedule, the ignite engine and its handlers.

Submodules load on first use (PEP 562), so that a lower layer may import one of them (e.g. ``methods.config``)
without importing the rest of the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RegistrationEvents": "engine",
    "create_registration_engine": "engine",
    "DisplacementField": "field",
    "DivergenceGuard": "handlers",
    "HistoryRecorder": "handlers",
    "KeepInImage": "handlers",
    "check_divergence": "handlers",
    "KeypointTREMonitor": "handlers",
    "LossLogger": "handlers",
    "NaNGuard": "handlers",
    "PlateauEarlyStopping": "handlers",
    "RegistrationDivergedError": "handlers",
    "PiecewiseLRScheduler": "schedule",
    "PiecewiseSchedule": "schedule",
}

__all__ = [
    "DisplacementField",
    "DivergenceGuard",
    "HistoryRecorder",
    "KeepInImage",
    "KeypointTREMonitor",
    "LossLogger",
    "NaNGuard",
    "PiecewiseLRScheduler",
    "PiecewiseSchedule",
    "PlateauEarlyStopping",
    "RegistrationDivergedError",
    "RegistrationEvents",
    "check_divergence",
    "create_registration_engine",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
