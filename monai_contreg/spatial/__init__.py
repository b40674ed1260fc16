"""Numeric spatial core (torch only): conventions, warping, filters, Jacobians."""

from .conventions import *  # noqa: F401,F403
from .conventions import __all__ as _conv_all
from .filters import *  # noqa: F401,F403
from .filters import __all__ as _filt_all
from .grid import GRID_ATOL_MM, Grid
from .jacobian import *  # noqa: F401,F403
from .jacobian import __all__ as _jac_all
from .resample import *  # noqa: F401,F403
from .resample import __all__ as _res_all
from .warp import *  # noqa: F401,F403
from .warp import __all__ as _warp_all

__all__ = ["GRID_ATOL_MM", "Grid", *_conv_all, *_filt_all, *_jac_all, *_res_all, *_warp_all]
