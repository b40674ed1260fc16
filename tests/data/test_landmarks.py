"""DIR-Lab style landmarks: 1-based voxel indices + stated spacing -> world millimetres."""

import numpy as np
import pytest
import torch

from monai_contreg.data.landmarks import (
    landmark_tre,
    landmarks_to_world,
    load_dirlab_landmarks,
    load_landmarks_voxel,
    save_landmarks_voxel,
)


def _write(tmp_path, text, name="case1_300_T00_xyz.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_dirlab_file_to_world_with_stated_spacing(tmp_path):
    p = _write(tmp_path, "1\t1\t1\n101\t60\t31\n  50 51 52  \n\n")
    world = load_dirlab_landmarks(p, spacing=(0.97, 0.97, 2.5))
    assert world.dtype == torch.float64 and world.shape == (3, 3)
    assert torch.allclose(world[0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(world[1], torch.tensor([100 * 0.97, 59 * 0.97, 30 * 2.5], dtype=torch.float64))


def test_dirlab_file_to_world_with_affine(tmp_path):
    p = _write(tmp_path, "2 3 4\n")
    aff = np.array([[-0.97, 0, 0, 120.0], [0, -0.97, 0, 100.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])
    world = load_dirlab_landmarks(p, spacing=(0.97, 0.97, 2.5), affine=aff)
    assert torch.allclose(world, torch.tensor([[120 - 0.97, 100 - 2 * 0.97, -50 + 3 * 2.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"landmarks_to_world: spacing \[1.0, 1.0, 1.0\] disagrees with the affine's spacing \[0.97, 0.97, 2.5\]"):
        load_dirlab_landmarks(p, spacing=(1.0, 1.0, 1.0), affine=aff)


def test_zero_based_comma_files_and_flips(tmp_path):
    p = _write(tmp_path, "0,0,0\n9.5,1,2 # comment\n", "pts.csv")
    vox = load_landmarks_voxel(p, one_based=False)
    assert vox.tolist() == [[0, 0, 0], [9.5, 1, 2]]
    flipped = load_landmarks_voxel(p, one_based=False, flip_axes=(1,), shape=(10, 20, 30))
    assert flipped[:, 1].tolist() == [19.0, 18.0]
    with pytest.raises(ValueError, match=r"load_landmarks_voxel: flip_axes=\[1\] needs the image shape"):
        load_landmarks_voxel(p, flip_axes=(1,))


def test_round_trip_and_tre(tmp_path):
    vox = torch.tensor([[0.0, 1.0, 2.0], [10.0, 20.0, 30.0]], dtype=torch.float64)
    p = save_landmarks_voxel(tmp_path / "lm.txt", vox)
    assert p.read_text().splitlines()[0].split("\t") == ["1.000", "2.000", "3.000"]
    assert torch.allclose(load_landmarks_voxel(p), vox)
    a = landmarks_to_world(vox, spacing=(1.0, 2.0, 3.0))
    assert landmark_tre(a, a + torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)).tolist() == [5.0, 5.0]


def test_errors_name_function_path_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_landmarks_voxel: landmark file '.*none.txt' does not exist"):
        load_landmarks_voxel(tmp_path / "none.txt")
    with pytest.raises(ValueError, match=r"line 2: expected 3 numbers, got 2"):
        load_landmarks_voxel(_write(tmp_path, "1 2 3\n4 5\n"))
    with pytest.raises(ValueError, match=r"line 1: expected 3 numbers, got 'a b c'"):
        load_landmarks_voxel(_write(tmp_path, "a b c\n"))
    with pytest.raises(ValueError, match=r"holds no landmark"):
        load_landmarks_voxel(_write(tmp_path, "\n# nothing\n"))
    with pytest.raises(ValueError, match=r"landmarks_to_world: give the image's spacing"):
        landmarks_to_world(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"landmark_tre: moved_mm and target_mm must both be \(N, 3\)"):
        landmark_tre(torch.zeros(2, 3), torch.zeros(3, 3))
