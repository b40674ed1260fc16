"""monai_contreg: continuous instance-optimisation registration of large-displacement 3-D images.

Public API::

    from monai_contreg import register, RegistrationConfig, get_preset
    result = register("fixed.nii.gz", "moving.nii.gz", fixed_mask=..., moving_mask=..., config="io")
    result.save("disp.nii.gz")

The public names load on first use (PEP 562): ``import monai_contreg`` itself imports neither torch nor MONAI,
so that the command line answers ``--help`` and argument errors at once.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> submodule that defines it (imported on first access).
_EXPORTS = {
    "PRESETS": "methods.presets",
    "RegistrationConfig": "methods.config",
    "RegistrationDivergedError": "optim.handlers",
    "RegistrationResult": "api",
    "get_preset": "methods.presets",
    "prepare_pair": "api",
    "preset_names": "methods.presets",
    "register": "api",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
