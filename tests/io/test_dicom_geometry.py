"""DICOM series whose slices are not a straight, uniform stack: gantry tilt, missing slices, unequal spacing, stray
orientations. Every series is written from a known geometry (``save_dicom_series``, or slice by slice with chosen
positions and orientations by ITK's GDCM writer) and read back; the truth is the geometry it was written with."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from monai_contreg.errors import UserInputError
from monai_contreg.io.dicom_geometry import SliceHeader, read_slice_headers, series_geometry
from monai_contreg.io.geometry_checks import GeometryWarning
from monai_contreg.io.images import load_image, save_dicom_series
from monai_contreg.spatial.conventions import itk_geometry_to_affine

itk = pytest.importorskip("itk")
map_coordinates = pytest.importorskip("scipy.ndimage").map_coordinates

UID = "1.2.826.0.1.3680043.8.498.2222.1"
SHAPE = (12, 10, 8)
GRAD = np.array([2.0, -3.0, 4.0])  # the linear test intensity's gradient, per RAS mm


def _linear(world: np.ndarray) -> np.ndarray:
    """Intensity linear in the RAS position (``(3, N)`` -> ``(N,)``): trilinear interpolation reproduces it."""
    return GRAD @ world + 1.0


def _points(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")).reshape(3, -1)
    return (affine[:3, :3] @ idx) + affine[:3, 3:]


def _tilted_affine(degrees: float, about: str, step: float = 2.0) -> np.ndarray:
    """Axial slices (0.8 x 0.7 mm pixels) whose positions advance ``step`` mm along a line ``degrees`` off the
    normal: a tilt about the left-right axis drifts along y (array axis 1), about anterior-posterior along x."""
    th = math.radians(degrees)
    aff = np.array([[-0.8, 0, 0, 4.0], [0, -0.7, 0, -3.0], [0, 0, step * math.cos(th), 2.0], [0, 0, 0, 1.0]])
    aff[1 if about == "x" else 0, 2] = -step * math.sin(th)
    return aff


def _write(folder, affine, values=None, shape=SHAPE):
    vals = _linear(_points(affine, shape)).reshape(shape) if values is None else values
    return save_dicom_series(folder, vals, affine, UID, rescale=(0.01, 0.0)), vals


def _write_slices(folder, values, positions, orientations, pixel=(0.8, 0.7)):
    """One DICOM file per slice ``values[:, :, k]`` (real-world values, rescale slope 0.01) at LPS ``positions[k]``
    with Image Orientation ``orientations[k]`` (6 cosines)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(values.shape[2]):
        sl = itk.image_from_array(np.ascontiguousarray(np.round(values[:, :, k].T / 0.01) * 0.01).astype(np.float32))
        sl.SetSpacing([float(pixel[0]), float(pixel[1])])
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{UID}.{k + 1}", "0008|0060": "CT",
            "0020|000d": f"{UID}.0", "0020|000e": UID, "0020|0011": "1", "0020|0013": str(k + 1),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientations[k]),
            "0028|0030": f"{pixel[1]:.6f}\\{pixel[0]:.6f}", "0028|1052": "0", "0028|1053": "0.01",
            "0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1",
        }
        tags["0020|0032"] = "\\".join(f"{v:.6f}" for v in positions[k])
        md = sl.GetMetaDataDictionary()
        for key, val in tags.items():
            md[key] = val
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        files.append(folder / f"{k + 1:04d}.dcm")
        itk.ImageFileWriter[type(sl)].New(Input=sl, FileName=str(files[-1]), ImageIO=io).Update()
    return files


def _lps_stack(affine, shape=SHAPE):
    """Per slice of a (possibly sheared) RAS affine: LPS position of its first pixel and its orientation."""
    flip = np.array([-1.0, -1.0, 1.0])
    pos = np.array([flip * (affine[:3, 3] + k * affine[:3, 2]) for k in range(shape[2])])
    r, c = flip * affine[:3, 0], flip * affine[:3, 1]
    orient = np.concatenate([r / np.linalg.norm(r), c / np.linalg.norm(c)])
    return pos, np.tile(orient, (shape[2], 1))


def _point_error(img) -> tuple[float, np.ndarray]:
    """Largest |value - truth| / |gradient| (mm) over the voxels inside every slice's field of view."""
    a = np.asarray(img.affine)
    vals = img[0].numpy().reshape(-1)
    inside = vals > vals.min() + 1e-3  # the fill (the series' minimum) marks voxels no slice covers
    err = np.abs(vals - _linear(_points(a, img.shape[1:]))) / np.linalg.norm(GRAD)
    return float(err[inside].max()), inside


@pytest.mark.parametrize("about,axis_name", [("x", "left-right"), ("y", "anterior-posterior")])
@pytest.mark.parametrize("degrees", [5.0, 15.0])
def test_tilted_series_is_resampled_with_its_true_geometry(tmp_path, degrees, about, axis_name):
    aff = _tilted_affine(degrees, about)
    _write(tmp_path, aff)
    with pytest.warns(GeometryWarning, match=rf"gantry tilt of {degrees:.2f} degrees about the patient's {axis_name}"):
        img = load_image(tmp_path)
    a = np.asarray(img.affine)
    cols = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
    assert np.allclose(cols.T @ cols, np.eye(3), atol=1e-9)  # an orthogonal grid
    assert np.allclose(np.linalg.norm(a[:3, :3], axis=0), [0.8, 0.7, 2.0 * math.cos(math.radians(degrees))], atol=1e-6)
    # every written pixel lies on a slice plane of the grid: its slice index k, within 0.01 mm
    truth = _points(aff, SHAPE)
    idx = np.linalg.solve(a[:3, :3], truth - a[:3, 3:])
    k = np.broadcast_to(np.arange(SHAPE[2]), SHAPE).reshape(-1)
    assert np.abs(idx[2] - k).max() * a[2, 2] < 0.01
    # the grid covers the whole tilted stack: every written pixel is inside it
    assert idx.min() > -1e-6 and np.all(idx.max(axis=1) < np.array(img.shape[1:]) - 1 + 1e-6)
    # intensities linear in position: the resampled volume holds them at its voxels to 0.01 mm
    err, inside = _point_error(img)
    assert err < 0.01 and inside.mean() > 0.5
    drift = (SHAPE[2] - 1) * 2.0 * math.sin(math.radians(degrees))
    assert f"drift up to {drift:.2f} mm" in img.meta["dicom_geometry"]


def test_whole_pixel_tilt_is_copied_exactly(tmp_path):
    """Positions drifting exactly one pixel (0.7 mm) per slice: slice k is the grid's slice k shifted by k pixels."""
    aff = np.array([[-0.8, 0, 0, 4.0], [0, -0.7, -0.7, -3.0], [0, 0, 2.0, 2.0], [0, 0, 0, 1.0]])
    vals = np.random.default_rng(0).integers(-1000, 1000, SHAPE).astype(np.float32)
    save_dicom_series(tmp_path, vals, aff, UID)
    with pytest.warns(GeometryWarning, match=rf"{math.degrees(math.atan(0.35)):.2f} degrees"):
        img = load_image(tmp_path)
    assert img.shape == (1, 12, 10 + 7, 8)
    got = img[0].numpy()
    for k in range(8):
        assert np.array_equal(got[:, k:k + 10, k], vals[:, :, k])
        assert np.all(got[:, :k, k] == vals.min()) and np.all(got[:, k + 10:, k] == vals.min())
    assert np.allclose(np.asarray(img.affine) @ [0, 7, 7, 1], aff @ [0, 0, 7, 1], atol=1e-6)


def _blobs(shape, affine):
    """A smooth volume (Gaussian blobs, -1000..~500) on an orthogonal grid."""
    w = _points(affine, shape)
    centres = [(-6.0, 4.0, 20.0), (5.0, -6.0, 14.0), (0.0, 8.0, 26.0)]
    out = np.full(w.shape[1], -1000.0)
    for c in centres:
        out += 1500.0 * np.exp(-np.sum((w - np.array(c)[:, None]) ** 2, axis=0) / (2 * 4.0**2))
    return out.reshape(shape)


def test_tilted_scanner_series_reproduces_the_volume_it_was_sampled_from(tmp_path):
    """A scanner's tilted series (oblique orientation, table positions along z) sampled from a known volume: read and
    resampled back onto that volume's grid it reproduces the volume (interpolation error only); ITK's straight
    stacking of the same series misplaces it."""
    vol_aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    vol_aff[:3, 3] = [15.0, 15.0, 5.0]
    vol_shape = (31, 31, 31)
    vol = _blobs(vol_shape, vol_aff)
    th = math.radians(15.0)
    # rows along -x (RAS), columns along the tilted -y, slices 1 mm apart along z (the table): LPS IOP oblique
    ser = np.eye(4)
    ser[:3, 0] = [-1.0, 0, 0]
    ser[:3, 1] = [0, -math.cos(th), -math.sin(th)]
    ser[:3, 2] = [0, 0, 1.0]
    ser[:3, 3] = [11.0, 11.0, 10.0]
    ser_shape = (23, 23, 12)
    sampled = _blobs(ser_shape, ser)  # the volume's intensity function at the tilted slices' pixels
    save_dicom_series(tmp_path, sampled, ser, UID, rescale=(1.0, 0.0))
    with pytest.warns(GeometryWarning, match=r"gantry tilt of 15.00 degrees about the patient's left-right"):
        img = load_image(tmp_path)

    def back(affine, values):
        """The read volume sampled at the original grid's voxels (trilinear); NaN outside it."""
        i = np.linalg.solve(affine[:3, :3], _points(vol_aff, vol_shape) - affine[:3, 3:])
        out = map_coordinates(values, i, order=1, mode="constant", cval=np.nan)
        return out.reshape(vol_shape)

    got = img[0].numpy().astype(np.float64)
    ours = back(np.asarray(img.affine), got)
    # only where all eight neighbours lie inside the slices' field of view (the fill is the series' minimum)
    ours[back(np.asarray(img.affine), (got > sampled.min() + 1e-3).astype(np.float64)) < 1 - 1e-9] = np.nan
    ok = np.isfinite(ours)
    err = np.abs(ours - vol)[ok]
    print(f"reproduced: mean {err.mean():.2f} HU, max {err.max():.2f} HU over {ok.sum()} voxels")
    assert ok.sum() > 3000 and err.mean() < 5.0 and err.max() < 40.0  # HU, of a 1500 HU range
    straight = itk.imread(str(tmp_path), itk.F)
    s_aff = itk_geometry_to_affine(np.asarray(straight.GetOrigin()), np.asarray(straight.GetSpacing()),
                                   itk.array_from_matrix(straight.GetDirection()))
    theirs = back(s_aff, itk.array_from_image(straight).transpose(2, 1, 0).astype(np.float64))
    both = ok & np.isfinite(theirs)
    print(f"straight: mean {np.abs(theirs - vol)[both].mean():.2f} HU")
    assert np.abs(theirs - vol)[both].mean() > 5 * np.abs(ours - vol)[both].mean()


def test_regular_series_agrees_with_itk(tmp_path, recwarn):
    aff = _tilted_affine(0.0, "x")
    _, vals = _write(tmp_path, aff)
    img = load_image(tmp_path)
    assert not [w for w in recwarn if issubclass(w.category, GeometryWarning)]
    ref = itk.imread(str(tmp_path), itk.F)
    ref_aff = itk_geometry_to_affine(np.asarray(ref.GetOrigin()), np.asarray(ref.GetSpacing()),
                                     itk.array_from_matrix(ref.GetDirection()))
    assert np.abs(np.asarray(img.affine) - ref_aff).max() < 1e-3
    assert np.abs(np.asarray(img.affine) - aff).max() < 1e-3
    assert np.array_equal(img[0].numpy(), itk.array_from_image(ref).transpose(2, 1, 0))
    assert np.abs(img[0].numpy() - vals).max() <= 0.005 + 1e-6  # rescale 0.01


def test_missing_slice_is_interpolated_and_named(tmp_path, caplog):
    aff = _tilted_affine(0.0, "x")
    files, _ = _write(tmp_path, aff)
    files[4].unlink()
    with caplog.at_level(logging.WARNING, logger="monai_contreg.io.images"), pytest.warns(GeometryWarning) as rec:
        img = load_image(tmp_path)
    msg = str(rec[0].message)
    assert "1 missing slice(s) between '001_0004.dcm' (instance 4) and '001_0006.dcm' (instance 6) (4 mm apart)" in msg
    assert "unequal slice spacing (typical 2 mm)" in msg and "gantry" not in msg and msg in caplog.text
    assert img.shape == (1, *SHAPE) and np.allclose(np.asarray(img.affine), aff, atol=1e-6)
    err, inside = _point_error(img)
    assert err < 0.01 and inside.mean() > 0.99


def test_unequal_spacing_with_tilt(tmp_path):
    """Slices 2 mm apart, then 3 mm, on a 5-degree tilt: resampled onto 2 mm, both unequal steps named."""
    aff = _tilted_affine(5.0, "x")
    th = math.radians(5.0)
    pos, orient = _lps_stack(aff)
    vals = np.empty(SHAPE)
    for k in range(SHAPE[2]):
        extra = max(0, k - 5) * 1.0  # slices 6 and 7 (0-based) 1 and 2 mm further along the tilted line
        shifted = aff.copy()
        shifted[:3, 3] += np.array([0, -extra * math.sin(th), extra * math.cos(th)])
        pos[k] = np.array([-1.0, -1.0, 1.0]) * (shifted[:3, 3] + k * shifted[:3, 2])
        vals[:, :, k] = _linear(_points(shifted, SHAPE)).reshape(SHAPE)[:, :, k]
    _write_slices(tmp_path, vals, pos, orient)
    with pytest.warns(GeometryWarning) as rec:
        img = load_image(tmp_path)
    msg = str(rec[0].message)
    assert "gantry tilt of 5.00 degrees" in msg
    assert "2.989 mm between '0006.dcm' (instance 6) and '0007.dcm' (instance 7)" in msg
    assert "2.989 mm between '0007.dcm' (instance 7) and '0008.dcm' (instance 8)" in msg
    assert img.shape[3] == 9  # (7 x 2 + 2) mm along the tilted line = 8 x 1.9924 mm along the normal
    err, _ = _point_error(img)
    assert err < 0.01


def test_wide_gap_is_refused_naming_the_slices(tmp_path):
    files, _ = _write(tmp_path, _tilted_affine(0.0, "x"))
    for k in (3, 4, 5):
        files[k].unlink()
    with pytest.raises(UserInputError, match=r"gaps wider than 3 typical slice spacings \(2 mm\): 8 mm between "
                                             r"'001_0003.dcm' \(instance 3\) and '001_0007.dcm' \(instance 7\)"):
        load_image(tmp_path)
    assert load_image(tmp_path, max_slice_gap=4.0).shape == (1, *SHAPE)


def test_stray_orientation_missing_position_and_duplicate_are_refused(tmp_path):
    aff = _tilted_affine(0.0, "x")
    vals = _linear(_points(aff, SHAPE)).reshape(SHAPE)
    pos, orient = _lps_stack(aff)
    turned = orient.copy()
    turned[3] = [0.999848, 0.017452, 0.0, -0.017452, 0.999848, 0.0]  # slice 4 turned by 1 degree
    _write_slices(tmp_path / "a", vals, pos, turned)
    with pytest.raises(UserInputError, match=r"do not share one orientation: '0004.dcm' \(instance 4\) differs "
                                             r"from the other 7 slices' .* turned by up to 1.00 degrees"):
        load_image(tmp_path / "a")
    # GDCM's writer always writes a position: a header without one is built directly
    heads = read_slice_headers(_write_slices(tmp_path / "b", vals, pos, orient))
    heads[2] = SliceHeader(heads[2].file, None, heads[2].orientation, heads[2].pixel_spacing, 3, heads[2].size)
    with pytest.raises(UserInputError, match=r"'0003.dcm' \(instance 3\) carry no Image Position"):
        series_geometry(heads)
    twice = pos.copy()
    twice[2] = twice[1]
    _write_slices(tmp_path / "c", vals, twice, orient)
    with pytest.raises(UserInputError, match=r"slices at one position \(1 pair\(s\)\): '0002.dcm' \(instance 2\) "
                                             r"and '0003.dcm' \(instance 3\)"):
        load_image(tmp_path / "c")


def test_series_geometry_orders_by_position_not_file_order(tmp_path):
    files, _ = _write(tmp_path, _tilted_affine(0.0, "x"))
    heads = read_slice_headers(files[::-1])
    geom = series_geometry(heads)
    assert geom.regular and [heads[i].instance for i in geom.order] == list(range(1, 9))


@pytest.mark.slow
def test_register_native_tilted_series_to_its_own_volume_finds_no_motion(tmp_path):
    """End to end (CLI): a 15-degree tilted series registered to the volume it was sampled from (truth: no motion).
    Stacked straight (ITK's reading), its slices are misplaced by 0 to 5.7 mm and the field's mean is 3.0 mm; read
    with their geometry it is 0.52 mm on this small 1.5 mm grid (20 steps at lr 1; MIND at the field of view's
    edges, interpolation): at least 3 times smaller is asserted."""
    import nibabel as nib

    from monai_contreg.cli import main

    vol_aff = np.diag([-1.5, -1.5, 1.5, 1.0])
    vol_aff[:3, 3] = [22.5, 22.5, -4.5]
    vol_shape = (32, 32, 32)
    nib.save(nib.Nifti1Image(_blobs(vol_shape, vol_aff).astype(np.float32), vol_aff), str(tmp_path / "vol.nii.gz"))
    th = math.radians(15.0)
    ser = np.eye(4)
    ser[:3, 0] = [-1.5, 0, 0]
    ser[:3, 1] = [0, -1.5 * math.cos(th), -1.5 * math.sin(th)]
    ser[:3, 2] = [0, 0, 1.5]
    ser[:3, 3] = [16.5, 16.5, 8.0]
    ser_shape = (22, 22, 16)
    save_dicom_series(tmp_path / "ct", _blobs(ser_shape, ser), ser, UID, rescale=(1.0, 0.0))
    steps = ["--set", "optim.schedule.total_steps=20", "--set", "optim.schedule.constant_steps=20",
             "--set", "optim.schedule.cosine_end=20"]

    def field_mm(fixed):
        out = tmp_path / "disp.nii.gz"
        rc = main(["register-native", str(fixed), str(tmp_path / "vol.nii.gz"), "-o", str(out), "--preset", "io-lr1",
                   "--threads", "1", "--no-auto-mask", "--quiet", *steps])
        assert rc == 0
        u = np.asarray(nib.load(str(out)).dataobj, dtype=np.float64)
        return np.linalg.norm(u * 1.5, axis=-1)

    with pytest.warns(GeometryWarning, match="gantry tilt of 15.00 degrees"):
        ours = field_mm(tmp_path / "ct")
    # the same slices stacked straight (ITK's reading, the package's before this check), as a NIfTI
    straight = itk.imread(str(tmp_path / "ct"), itk.F)
    s_aff = itk_geometry_to_affine(np.asarray(straight.GetOrigin()), np.asarray(straight.GetSpacing()),
                                   itk.array_from_matrix(straight.GetDirection()))
    nib.save(nib.Nifti1Image(itk.array_from_image(straight).transpose(2, 1, 0), s_aff), str(tmp_path / "straight.nii.gz"))
    theirs = field_mm(tmp_path / "straight.nii.gz")
    print(f"field mean: {ours.mean():.3f} mm read with the geometry, {theirs.mean():.3f} mm stacked straight")
    assert ours.shape == (22, 26, 16) and ours.mean() < theirs.mean() / 3
