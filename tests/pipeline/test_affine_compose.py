"""Issue 19: ``RegisterPaird`` with an affine-only stage list is one pre-registration transform inside a MONAI
``Compose``; the guide's example (docs/guides/affine.md) runs and recovers its 16 mm shift."""

from pathlib import Path

import numpy as np
import pytest
import torch

from monai_contreg.errors import UserInputError
from monai_contreg.pipeline.transforms import RegisterPaird

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "affine.md"


def test_guide_example_runs_and_recovers_the_shift(capsys):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        block = GUIDE.read_text().split("```python\n", 1)[1].split("```", 1)[0]
        scope: dict = {}
        exec(compile(block, str(GUIDE), "exec"), scope)
    finally:
        torch.set_num_threads(n)
    out = scope["out"]
    a = out["ddf_affine"].numpy()
    assert np.allclose(a[:3, 3], [16.0, 0.0, 0.0], atol=1.0)
    assert np.allclose(a[:3, :3], np.eye(3), atol=0.03)
    # the total field is the affine alone: 8 voxels along the first axis; the warped moving blob lies on the fixed
    ddf = out["ddf"].as_tensor()
    assert torch.allclose(ddf[0, 8:24, 8:24, 8:24], torch.full((16, 16, 16), 8.0), atol=0.5)
    fixed, warped = scope["data"]["fixed"].as_tensor(), out["moving"].as_tensor()
    assert (warped - fixed).abs().mean() < 0.1 * (warped - scope["data"]["moving"].as_tensor()).abs().mean()


def test_bad_stage_list_refused_at_construction():
    with pytest.raises(UserInputError, match="kind"):
        RegisterPaird(stages=[{"kind": "affline"}])
