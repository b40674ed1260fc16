"""monai_contreg: continuous instance-optimisation registration of large-displacement 3-D images.

Public API::

    from monai_contreg import register, RegistrationConfig, get_preset
    result = register("fixed.nii.gz", "moving.nii.gz", fixed_mask=..., moving_mask=..., config="io")
    result.save("disp.nii.gz")
"""

from .api import RegistrationResult, prepare_pair, register
from .methods.config import RegistrationConfig
from .methods.presets import PRESETS, get_preset, preset_names
from .optim.handlers import RegistrationDivergedError

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "RegistrationConfig",
    "RegistrationDivergedError",
    "RegistrationResult",
    "__version__",
    "get_preset",
    "prepare_pair",
    "preset_names",
    "register",
]
