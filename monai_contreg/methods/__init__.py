"""Registration methods (the paper's instance optimisation), their configuration and presets."""

from .config import EngineConfig, FeatureConfig, FieldConfig, OptimConfig, PreprocessConfig, RegistrationConfig
from .io import MethodOutput, compute_features, instance_optimisation
from .presets import PRESETS, get_preset, preset_names
from .run import METHODS, run_method

__all__ = [
    "METHODS",
    "PRESETS",
    "EngineConfig",
    "FeatureConfig",
    "FieldConfig",
    "MethodOutput",
    "OptimConfig",
    "PreprocessConfig",
    "RegistrationConfig",
    "compute_features",
    "get_preset",
    "instance_optimisation",
    "preset_names",
    "run_method",
]
