"""Optimisation layer: the field module, the LR schedule, the ignite engine and its handlers."""

from .engine import RegistrationEvents, create_registration_engine
from .field import DisplacementField
from .handlers import (
    HistoryRecorder,
    KeypointTREMonitor,
    LossLogger,
    NaNGuard,
    PlateauEarlyStopping,
    RegistrationDivergedError,
)
from .schedule import PiecewiseLRScheduler, PiecewiseSchedule

__all__ = [
    "DisplacementField",
    "HistoryRecorder",
    "KeypointTREMonitor",
    "LossLogger",
    "NaNGuard",
    "PiecewiseLRScheduler",
    "PiecewiseSchedule",
    "PlateauEarlyStopping",
    "RegistrationDivergedError",
    "RegistrationEvents",
    "create_registration_engine",
]
