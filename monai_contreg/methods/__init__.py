"""Registration methods (the paper's instance optimisation, ConvexAdam's coupled convex stage), configuration, presets."""

from .config import ConvexConfig, EngineConfig, FeatureConfig, FieldConfig, OptimConfig, PreprocessConfig, RegistrationConfig
from .convex import CoupledConvex, coupled_convex
from .io import MethodOutput, compute_features, instance_optimisation
from .presets import PRESETS, get_preset, preset_names
from .run import METHODS, run_method

__all__ = [
    "METHODS",
    "PRESETS",
    "ConvexConfig",
    "CoupledConvex",
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
