"""ITK export: ITK's TransformPoint / ResampleImageFilter agree with our field (LPS vs RAS, mm vs voxels)."""

import os

import numpy as np
import pytest
import torch

itk = pytest.importorskip("itk")

from monai_contreg.io.itk_transforms import (  # noqa: E402
    ddf_to_itk_transform,
    is_itk_transform_path,
    load_itk_transform,
    save_itk_transform,
)
from monai_contreg.spatial.conventions import points_voxel_to_world, ras_lps_flip  # noqa: E402
from monai_contreg.spatial.resample import map_points_world, warp_between_grids  # noqa: E402

SHAPE = (11, 9, 7)


def _oblique_affine():
    """Anisotropic spacing, a permuted and flipped, obliquely rotated direction matrix, an offset origin."""
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0.0]])
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ perm @ np.diag([0.7, 1.3, 2.1])
    aff[:3, 3] = [10.0, -20.0, 5.0]
    return aff


def _field():
    g = torch.Generator().manual_seed(1)
    return torch.randn((1, 3, *SHAPE), generator=g, dtype=torch.float64) * 1.5


def _points(n=40):
    g = torch.Generator().manual_seed(2)
    vox = torch.rand((n, 3), generator=g, dtype=torch.float64) * (torch.tensor(SHAPE, dtype=torch.float64) - 1)
    return points_voxel_to_world(vox, _oblique_affine())


def _itk_map(transform, points_ras):
    lps = ras_lps_flip(points_ras)
    out = np.array([list(transform.TransformPoint([float(v) for v in p])) for p in lps.numpy()])
    return ras_lps_flip(torch.from_numpy(out))


def _read_with_itk(path):
    if str(path).endswith(".h5"):
        (tx,) = itk.transformread(str(path))
        return tx
    field = itk.imread(str(path), pixel_type=itk.Vector[itk.F, 3])
    tx = itk.DisplacementFieldTransform[itk.F, 3].New()
    tx.SetDisplacementField(field)
    return tx


def test_in_memory_transform_maps_points_like_our_field():
    aff, ddf, pts = _oblique_affine(), _field(), _points()
    ours = map_points_world(pts, ddf, aff)
    theirs = _itk_map(ddf_to_itk_transform(ddf, aff), pts)
    assert float((ours - theirs).norm(dim=-1).max()) < 0.01
    assert float((ours - pts).norm(dim=-1).mean()) > 1.0  # the field really moves the points


@pytest.mark.parametrize("ext", [".h5", ".nii.gz", ".mha", ".nrrd"])
def test_exported_transform_read_by_itk_maps_points_within_0_01_mm(tmp_path, ext):
    aff, ddf, pts = _oblique_affine(), _field(), _points()
    path = save_itk_transform(tmp_path / f"tx{ext}", ddf, aff)
    assert path.is_file() and [f for f in os.listdir(tmp_path) if f.startswith(".")] == []
    ours = map_points_world(pts, ddf, aff)
    theirs = _itk_map(_read_with_itk(path), pts)
    assert float((ours - theirs).norm(dim=-1).max()) < 0.01


@pytest.mark.parametrize("ext", [".h5", ".nii.gz", ".mha"])
def test_round_trip_keeps_geometry_and_values(tmp_path, ext):
    aff, ddf = _oblique_affine(), _field()
    back, back_aff = load_itk_transform(save_itk_transform(tmp_path / f"tx{ext}", ddf, aff))
    assert back.shape == ddf.shape and back.dtype == torch.float32
    assert np.allclose(back_aff, aff, atol=1e-5)
    assert torch.allclose(back.double(), ddf, atol=1e-4)


def test_itk_resample_filter_with_exported_transform_equals_our_warp(tmp_path):
    f_aff = _oblique_affine()
    m_aff = np.diag([1.1, 0.9, 1.4, 1.0])
    m_aff[:3, 3] = [-8.0, -30.0, -12.0]
    g = torch.Generator().manual_seed(3)
    moving = torch.rand((1, 1, 16, 20, 14), generator=g, dtype=torch.float64)
    ddf = _field() * 0.5
    ours = warp_between_grids(moving, m_aff, ddf, f_aff)[0, 0]
    (tx,) = itk.transformread(str(save_itk_transform(tmp_path / "tx.h5", ddf, f_aff)))
    m_img = itk.image_from_array(np.ascontiguousarray(moving[0, 0].numpy().astype(np.float32).transpose(2, 1, 0)))
    from monai_contreg.spatial.conventions import affine_to_itk_geometry

    o, s, d = affine_to_itk_geometry(m_aff)
    m_img.SetOrigin(o.tolist())
    m_img.SetSpacing(s.tolist())
    m_img.SetDirection(itk.matrix_from_array(d))
    o, s, d = affine_to_itk_geometry(f_aff)
    out = itk.resample_image_filter(
        m_img, transform=tx, size=list(SHAPE), output_origin=o.tolist(), output_spacing=s.tolist(),
        output_direction=itk.matrix_from_array(d), default_pixel_value=-1.0,
    )
    theirs = torch.from_numpy(itk.array_from_image(out).transpose(2, 1, 0).astype(np.float64))
    inside = theirs >= 0  # ITK leaves points outside the moving image at the default value; we clamp
    assert inside.float().mean() > 0.5
    assert torch.allclose(ours[inside], theirs[inside], atol=1e-4)


def test_errors_name_function_and_path(tmp_path):
    ddf, aff = _field(), _oblique_affine()
    with pytest.raises(ValueError, match=r"save_itk_transform: path '.*tx.tfm' must end with one of \['.h5'"):
        save_itk_transform(tmp_path / "tx.tfm", ddf, aff)
    with pytest.raises(FileNotFoundError, match=r"load_itk_transform: transform file '.*none.h5' does not exist"):
        load_itk_transform(tmp_path / "none.h5")
    affine_tx = itk.AffineTransform[itk.D, 3].New()
    itk.transformwrite([affine_tx], str(tmp_path / "affine.h5"))
    with pytest.raises(ValueError, match=r"load_itk_transform: cannot read .*expected one DisplacementFieldTransform, found \['AffineTransform'\]"):
        load_itk_transform(tmp_path / "affine.h5")
    bad = ddf.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"save_itk_transform: ddf contains 1 NaN"):
        save_itk_transform(tmp_path / "nan.h5", bad, aff)
    assert not (tmp_path / "nan.h5").exists()
    assert is_itk_transform_path("a/b.H5") and not is_itk_transform_path("b.nii.gz")
