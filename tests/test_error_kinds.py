"""One error type per kind from every layer: argument validation in the lower layers raises UserInputError (an
argument of the wrong type: InputTypeError, also a TypeError), which the CLI prints as one line with exit 2."""

import io

import numpy as np
import pytest
import torch

from monai_contreg.errors import EXIT_USER_ERROR, InputTypeError, UserInputError, cli_error
from monai_contreg.features.mind import mind_ssc
from monai_contreg.losses.regularization import diffusion
from monai_contreg.optim.field import DisplacementField
from monai_contreg.optim.handlers import DivergenceGuard, KeypointTREMonitor, PlateauEarlyStopping
from monai_contreg.spatial.filters import box_filter, gaussian_filter
from monai_contreg.spatial.jacobian import jacobian_determinant
from monai_contreg.spatial.resample import working_grid
from monai_contreg.spatial.warp import warp_image

CASES = [
    (lambda: box_filter(torch.zeros(1, 1, 4, 4, 4), kernel_size=2), "box_filter: kernel_size must be a positive odd"),
    (lambda: gaussian_filter(torch.zeros(1, 1, 4, 4, 4), sigma=-1.0), "gaussian_filter: sigma must be"),
    (lambda: DisplacementField((4, 4, 4), smoothing_passes=-1), "DisplacementField: smoothing_passes must be >= 0"),
    (lambda: DivergenceGuard(every=0), "DivergenceGuard: every must be >= 1"),
    (lambda: PlateauEarlyStopping(0), "PlateauEarlyStopping: patience must be >= 1"),
    (lambda: KeypointTREMonitor(torch.zeros(2, 3), torch.zeros(2, 3), (4, 4, 4), every=0), "every must be >= 1"),
    (lambda: jacobian_determinant(torch.zeros(1, 3, 1, 4, 4)), "jacobian_determinant: every spatial size must be >= 2"),
    (lambda: working_grid(np.eye(4), (4, 4, 4), 0.0), "working_grid: spacing must be a positive number or three"),
    (lambda: diffusion(torch.zeros(1, 3, 4, 4, 4), reduction="max"), "diffusion: unknown reduction"),
    (lambda: warp_image(torch.zeros(2, 1, 4, 4, 4), torch.zeros(3, 3, 4, 4, 4)), "ddf batch size 3 must be 1"),
]


@pytest.mark.parametrize("call, match", CASES)
def test_lower_layers_raise_user_input_errors(call, match):
    """Before: bare ValueError, which the CLI printed as an internal error with a traceback."""
    with pytest.raises(UserInputError, match=match) as info:
        call()
    stream = io.StringIO()
    assert cli_error("register", info.value, stream=stream) == EXIT_USER_ERROR
    assert "Traceback" not in stream.getvalue()


def test_wrong_argument_types_are_input_type_errors():
    with pytest.raises(InputTypeError, match="mind_ssc: image must be floating point") as info:
        mind_ssc(torch.zeros(1, 1, 8, 8, 8, dtype=torch.int64))
    assert isinstance(info.value, TypeError) and isinstance(info.value, UserInputError)


def test_kernels_raise_the_projects_error_types():
    """Before: kernels/ops.py raised a bare ValueError (kernels could not import errors under the layers contract;
    errors is now the bottom layer, below kernels and modes)."""
    from monai_contreg.kernels.ops import compiled_box_smooth

    x = torch.zeros(1, 3, 4, 5, 6).transpose(2, 4)  # not contiguous: refused before the extension is built
    with pytest.raises(UserInputError, match="compiled_box_smooth: inplace needs a contiguous tensor") as info:
        compiled_box_smooth(x, 3, 1, inplace=True)
    assert cli_error("register", info.value, stream=io.StringIO()) == EXIT_USER_ERROR


def test_config_of_the_wrong_type_and_an_empty_report_are_user_errors(tmp_path):
    """Before: resolve_config raised a bare TypeError and write_html_report a bare ValueError."""
    from monai_contreg.evaluation.html_report import write_html_report
    from monai_contreg.methods.presets import resolve_config

    with pytest.raises(InputTypeError, match="run_split: config must be a RegistrationConfig"):
        resolve_config("run_split", 3.0)
    with pytest.raises(UserInputError, match="write_html_report: no pairs to report"):
        write_html_report(tmp_path / "r.html", [])


def test_errors_is_the_bottom_layer_of_the_contract():
    """errors imports nothing of the package, so every layer (kernels and modes included) may raise its types."""
    import ast
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    layers = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    assert layers[-1] == "errors" and "kernels | modes" in layers
    tree = ast.parse((root / "monai_contreg" / "errors.py").read_text())
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("monai_contreg"))]
    assert relative == []
