"""Optimisation layer: the field module, the LR schedule, the ignite engine and its handlers."""

from .engine import RegistrationEvents, create_registration_engine
from .field import DisplacementField
from .handlers import (
    DivergenceGuard,
    HistoryRecorder,
    KeepInImage,
    KeypointTREMonitor,
    LossLogger,
    NaNGuard,
    PlateauEarlyStopping,
    RegistrationDivergedError,
    check_divergence,
)
from .schedule import PiecewiseLRScheduler, PiecewiseSchedule

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
