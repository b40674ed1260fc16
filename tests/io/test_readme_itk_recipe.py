"""The ITK recipe of the geometry guide (docs/guides/geometry.md) for the displacement-image exports runs as written (itk 5.4 wheels) and gives what
`contreg warp` gives."""

import re
from pathlib import Path

import numpy as np
import torch

from monai_contreg.apply import apply_to_files
from monai_contreg.io.images import load_image, save_image
from monai_contreg.io.itk_transforms import save_itk_transform
from monai_contreg.spatial.filters import gaussian_filter

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "geometry.md"  # the page holding the recipe


def _recipe() -> str:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "DisplacementFieldTransform[itk.D, 3]" in b]
    return block


def test_readme_itk_recipe_matches_contreg_warp(tmp_path, monkeypatch):
    aff = np.diag([-1.5, 2.0, 1.2, 1.0])  # a flipped axis and anisotropic voxels
    aff[:3, 3] = [30.0, -20.0, 5.0]
    shape = (18, 16, 14)
    g = torch.Generator().manual_seed(0)
    moving = gaussian_filter(torch.rand((1, 1, *shape), generator=g, dtype=torch.float64), 1.5)[0, 0]
    moving = ((moving - moving.mean()) / moving.std() * 100.0).float()  # unit: about 100 per standard deviation
    ddf = 0.8 * gaussian_filter(torch.randn((1, 3, *shape), generator=g, dtype=torch.float64), 2.0).float()
    save_image(tmp_path / "fixed.nii.gz", torch.zeros(shape), aff)
    save_image(tmp_path / "moving.nii.gz", moving, aff)
    save_itk_transform(tmp_path / "fixed_to_moving.nii.gz", ddf, aff)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_recipe(), "docs/guides/geometry.md", "exec"), scope)  # noqa: S102 - the documented recipe itself
    import itk

    ours = apply_to_files(transform="fixed_to_moving.nii.gz", images=[("moving.nii.gz", "ours.nii.gz")])[0]
    theirs = itk.array_from_image(scope["warped"]).transpose(2, 1, 0)  # ITK [z, y, x] -> [x, y, z]
    mine = load_image(ours).as_tensor()[0].numpy()
    inside = (slice(2, -2),) * 3  # away from the border, where the padding policies differ
    assert theirs.shape == mine.shape == shape
    assert np.abs(theirs[inside] - mine[inside]).max() < 1e-2
    assert np.abs(mine[inside] - moving.numpy()[inside]).mean() > 1.0  # the field really moves the image
