"""`contreg warp` / apply_to_files: images, label maps and point sets through a field or an ITK transform."""

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_contreg.apply import apply_to_files, load_displacement
from monai_contreg.cli import main
from monai_contreg.data.demo import make_demo_pair
from monai_contreg.data.keypoints import load_keypoints, save_keypoints
from monai_contreg.io.fields import save_field
from monai_contreg.io.images import load_image, save_image
from monai_contreg.io.itk_transforms import save_itk_transform
from monai_contreg.spatial.conventions import points_voxel_to_world, points_world_to_voxel, ras_lps_flip
from monai_contreg.spatial.filters import gaussian_filter
from monai_contreg.spatial.resample import mapped_coordinates
from monai_contreg.spatial.warp import warp_points

SHAPE = (12, 10, 9)


def _fixed_affine():
    perm = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = perm @ np.diag([1.2, 1.5, 2.0])
    aff[:3, 3] = [-5.0, 8.0, -3.0]
    return aff


def _moving_affine():
    aff = np.diag([0.9, 1.1, 1.3, 1.0])
    aff[:3, 3] = [-25.0, -22.0, -20.0]
    return aff


@pytest.fixture
def setup(tmp_path):
    g = torch.Generator().manual_seed(0)
    ddf = gaussian_filter(torch.randn((1, 3, *SHAPE), generator=g), 1.5) * 4
    f_aff, m_aff = _fixed_affine(), _moving_affine()
    save_field(tmp_path / "disp.nii.gz", ddf, f_aff)
    save_field(tmp_path / "disp.npz", ddf, f_aff, dtype="float32")
    save_itk_transform(tmp_path / "tx.h5", ddf, f_aff)
    save_image(tmp_path / "fixed.nii.gz", np.zeros(SHAPE, np.float32), f_aff)
    m_shape = (45, 40, 32)
    w = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    moving = mapped_coordinates(torch.as_tensor(m_aff), m_shape, dtype=torch.float64) @ w  # f(X) = w.X
    save_image(tmp_path / "moving.nrrd", moving.numpy().astype(np.float32), m_aff)
    labels = (torch.arange(45).view(45, 1, 1) // 9).expand(m_shape).numpy().astype(np.int16)
    save_image(tmp_path / "labels.nii.gz", labels, m_aff)
    pts = torch.tensor([[1.0, 2.0, 3.0], [5.5, 4.25, 6.0], [10.0, 8.0, 7.0]], dtype=torch.float64)
    save_keypoints(tmp_path / "pts_vox.csv", pts)
    save_keypoints(tmp_path / "pts_ras.csv", points_voxel_to_world(pts, f_aff))
    save_keypoints(tmp_path / "pts_lps.csv", ras_lps_flip(points_voxel_to_world(pts, f_aff)))
    return dict(ddf=ddf, f_aff=f_aff, m_aff=m_aff, w=w, pts=pts)


@pytest.mark.parametrize("source", [["--field", "disp.nii.gz"], ["--transform", "tx.h5"]])
def test_warp_command_images_labels_points(tmp_path, setup, source, capsys):
    args = ["warp", source[0], str(tmp_path / source[1]),
            "--image", str(tmp_path / "moving.nrrd"), str(tmp_path / "warped.mha"),
            "--labels", str(tmp_path / "labels.nii.gz"), str(tmp_path / "labels_w.nii.gz"),
            "--points", str(tmp_path / "pts_vox.csv"), str(tmp_path / "out_vox.csv")]
    assert main(args) == 0
    assert capsys.readouterr().out.count("wrote ") == 3
    # image: out(x) = f(A_f (x + u(x))) exactly for a linear f
    ddf = setup["ddf"].double()
    world = mapped_coordinates(torch.as_tensor(setup["f_aff"]), SHAPE, dtype=torch.float64)
    moved = world + torch.einsum("ij,bj...->b...i", torch.as_tensor(setup["f_aff"][:3, :3]), ddf)[0]
    warped = load_image(tmp_path / "warped.mha")
    assert np.allclose(np.asarray(warped.affine), setup["f_aff"], atol=1e-5)
    assert torch.allclose(warped[0].double(), moved @ setup["w"], atol=1e-3)
    # labels: nearest, integers, label = moving voxel index along axis 0 // 9
    lab = nib.load(str(tmp_path / "labels_w.nii.gz"))
    assert np.issubdtype(lab.get_data_dtype(), np.integer)
    idx0 = points_world_to_voxel(moved.reshape(-1, 3), setup["m_aff"])[:, 0].round().clamp(0, 44)
    assert np.array_equal(np.asarray(lab.dataobj).reshape(-1), (idx0 // 9).numpy().astype(np.int16))
    # points, voxel space, no moving reference: Learn2Reg's p + u(p)
    out = load_keypoints(tmp_path / "out_vox.csv")
    assert torch.allclose(out, warp_points(setup["pts"], ddf), atol=1e-4)


def test_world_points_ras_and_lps_and_moving_voxels(tmp_path, setup):
    common = dict(field=tmp_path / "disp.nii.gz")
    apply_to_files(points=[(tmp_path / "pts_ras.csv", tmp_path / "o_ras.csv")], points_space="world", **common)
    apply_to_files(points=[(tmp_path / "pts_lps.csv", tmp_path / "o_lps.csv")], points_space="world", lps=True, **common)
    apply_to_files(points=[(tmp_path / "pts_vox.csv", tmp_path / "o_mv.csv")], moving_reference=tmp_path / "moving.nrrd", **common)
    expected_vox = warp_points(setup["pts"], setup["ddf"].double())
    expected_ras = points_voxel_to_world(expected_vox, setup["f_aff"])
    assert torch.allclose(load_keypoints(tmp_path / "o_ras.csv"), expected_ras, atol=1e-4)
    assert torch.allclose(load_keypoints(tmp_path / "o_lps.csv"), ras_lps_flip(expected_ras), atol=1e-4)
    assert torch.allclose(load_keypoints(tmp_path / "o_mv.csv"), points_world_to_voxel(expected_ras, setup["m_aff"]), atol=1e-4)


def test_npz_field_needs_a_reference(tmp_path, setup):
    with pytest.raises(ValueError, match=r"load_displacement: field '.*disp.npz' \(.npz\) carries no geometry; pass reference"):
        load_displacement(field=tmp_path / "disp.npz")
    ddf, aff = load_displacement(field=tmp_path / "disp.npz", reference=tmp_path / "fixed.nii.gz")
    assert np.allclose(aff, setup["f_aff"]) and torch.allclose(ddf, setup["ddf"])
    with pytest.raises(ValueError, match=r"load_displacement: reference '.*moving.nrrd' has shape \(45, 40, 32\), the field \(12, 10, 9\)"):
        load_displacement(field=tmp_path / "disp.nii.gz", reference=tmp_path / "moving.nrrd")


def test_itk_displacement_image_given_as_field_is_refused(tmp_path, setup):
    save_itk_transform(tmp_path / "tx.nii.gz", setup["ddf"], setup["f_aff"])
    with pytest.raises(ValueError, match=r"load_field: '.*tx.nii.gz' has shape \(12, 10, 9, 1, 3\), the layout of an ITK"):
        load_displacement(field=tmp_path / "tx.nii.gz")
    ddf, aff = load_displacement(transform=tmp_path / "tx.nii.gz")
    assert np.allclose(aff, setup["f_aff"], atol=1e-5) and torch.allclose(ddf, setup["ddf"], atol=1e-4)


def test_warp_command_errors(tmp_path, setup, capsys):
    assert main(["warp", "--field", str(tmp_path / "disp.nii.gz")]) == 2
    assert "apply_to_files: nothing to warp" in capsys.readouterr().err
    rc = main(["warp", "--field", str(tmp_path / "disp.nii.gz"), "--points", str(tmp_path / "pts_vox.csv"),
               str(tmp_path / "o.csv"), "--points-space", "wrld"])
    assert rc == 2 and "Did you mean 'world'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["warp", "--field", "a.nii.gz", "--transform", "b.h5"])


def test_register_native_command(tmp_path, capsys):
    pair = make_demo_pair(shape=(32, 32, 32), n_keypoints=10)
    save_image(tmp_path / "fixed.nrrd", pair.fixed.astype(np.float32), pair.affine)
    save_image(tmp_path / "moving.mha", pair.moving.astype(np.float32), pair.affine)
    rc = main(["register-native", str(tmp_path / "fixed.nrrd"), str(tmp_path / "moving.mha"), "-o", str(tmp_path / "disp.nii.gz"),
               "--itk", str(tmp_path / "tx.h5"), "--working-spacing", "2",
               "--set", "optim.schedule.total_steps=5", "--set", "optim.schedule.constant_steps=5", "--set", "optim.schedule.cosine_end=5",
               "--set", "optim.schedule.peak_lr=1"])
    assert rc == 0, capsys.readouterr().err
    assert "working grid (32, 32, 32)" in capsys.readouterr().out
    assert (tmp_path / "disp.nii.gz").is_file() and (tmp_path / "tx.h5").is_file()
    assert main(["register-native", "a", "b", "--itk", str(tmp_path / "tx.tfm")]) == 2
    assert "must end with one of" in capsys.readouterr().err
