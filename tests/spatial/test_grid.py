"""The Grid value type: spacing, voxel <-> world, the one same-grid tolerance, the working-grid constructor."""

import dataclasses

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_contreg.errors import UserInputError
from monai_contreg.spatial.grid import GRID_ATOL_MM, Grid
from monai_contreg.spatial.resample import working_grid


def _oblique():
    a = np.zeros((4, 4))
    a[3, 3] = 1.0
    a[2, 0], a[0, 1], a[1, 2] = -2.5, 1.6, 2.0  # permuted, one axis reversed, anisotropic
    a[:3, 3] = [-10.0, 4.0, 62.0]
    return a


def test_spacing_direction_origin():
    g = Grid((10, 20, 30), _oblique())
    assert g.spacing == (2.5, 1.6, 2.0)
    assert np.allclose(g.direction @ np.diag(g.spacing), g.affine[:3, :3])
    assert np.allclose(g.origin, [-10.0, 4.0, 62.0]) and g.numel == 6000


def test_voxel_world_round_trip_and_known_point():
    g = Grid((10, 20, 30), _oblique())
    v = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    w = g.voxel_to_world(v)
    # voxel (1, 2, 3): x = 1.6 * 2 - 10, y = 2.0 * 3 + 4, z = -2.5 * 1 + 62
    assert torch.allclose(w[1], torch.tensor([-6.8, 10.0, 59.5], dtype=torch.float64))
    assert torch.allclose(g.world_to_voxel(w), v)


def test_equality_uses_the_one_tolerance_and_is_frozen():
    a = _oblique()
    g = Grid((10, 20, 30), a)
    b = a.copy()
    b[0, 3] += 0.5 * GRID_ATOL_MM
    assert g == Grid((10, 20, 30), torch.as_tensor(b)) and hash(g) == hash(Grid((10, 20, 30), b))
    b[0, 3] += 2 * GRID_ATOL_MM
    assert g != Grid((10, 20, 30), b)
    assert g != Grid((10, 20, 31), a)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.shape = (1, 2, 3)
    with pytest.raises(ValueError):
        g.affine[0, 0] = 3.0  # read-only
    a[0, 3] = 99.0  # the grid holds its own copy
    assert g.origin[0] == -10.0


def test_working_grid_keeps_orientation_and_centre():
    a = np.diag([0.98, 0.98, 2.5, 1.0])
    g = Grid((343, 294, 134), a).working(1.5)
    assert g.shape == (224, 192, 223) and np.allclose(g.spacing, 1.5)
    centre = lambda grid: grid.voxel_to_world([(np.asarray(grid.shape) - 1) / 2])[0]  # noqa: E731
    assert torch.allclose(centre(g), centre(Grid((343, 294, 134), a)))
    own = Grid((10, 20, 30), _oblique())
    assert own.working(own.spacing) == own
    aff, shape = working_grid(_oblique(), (10, 20, 30), 2.0)  # the function form is the same formula
    assert Grid(shape, aff) == own.working(2.0)


def test_of_metatensor_and_from_spacing():
    t = MetaTensor(torch.zeros(1, 4, 5, 6), affine=torch.as_tensor(np.diag([2.0, 3.0, 4.0, 1.0])))
    assert Grid.of(t) == Grid.from_spacing((4, 5, 6), (2.0, 3.0, 4.0))
    assert Grid.of(t[None]).shape == (4, 5, 6)


@pytest.mark.parametrize("shape, affine, match", [
    ((4, 4), np.eye(4), "shape must be three positive integers"),
    ((4, 4, 0), np.eye(4), "shape must be three positive integers"),
    ((4, 4, 4), np.eye(3), "affine must be a finite, invertible 4x4"),
    ((4, 4, 4), np.diag([1.0, 0.0, 1.0, 1.0]), "affine must be a finite, invertible 4x4"),
])
def test_bad_grids_name_the_argument(shape, affine, match):
    with pytest.raises(UserInputError, match=match):
        Grid(shape, affine)
    with pytest.raises(UserInputError, match="spacing must be a positive number or three"):
        Grid((4, 4, 4), np.eye(4)).working(-1.0)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_preflight_header_gives_the_files_grid(tmp_path, suffix):
    """read_header (no voxels read) gives the same Grid as the loaded image, NIfTI (nibabel) and NRRD (ITK, LPS)."""
    from monai_contreg.io.images import load_image, save_image
    from monai_contreg.preflight import read_header

    a = _oblique()
    path = save_image(tmp_path / f"img{suffix}", torch.rand(10, 20, 30), a) or tmp_path / f"img{suffix}"
    header = read_header("test", "image", path)
    assert header.grid == Grid((10, 20, 30), a) == Grid.of(load_image(path))
