"""Image reading keeps geometry: NIfTI indexed as nibabel, ITK formats converted LPS -> RAS."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_contreg.io.images import image_reader_name, load_image, save_image


def _oblique_affine():
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0.0]])
    aff = np.eye(4)
    aff[:3, :3] = perm @ np.diag([0.7, 1.3, 2.1])
    aff[:3, 3] = [10.0, -20.0, 5.0]
    return aff


def _volume():
    return np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)


@pytest.mark.parametrize("reader", ["auto", "nibabel", "itk"])
def test_nifti_indexing_and_affine_equal_nibabels(tmp_path, reader):
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), _oblique_affine()), str(path))
    ref = nib.load(str(path))
    img = load_image(path, reader=reader)
    assert img.shape == (1, 4, 5, 6) and img.dtype == torch.float32
    assert np.array_equal(img[0].numpy(), np.asarray(ref.dataobj))
    assert np.allclose(np.asarray(img.affine), ref.affine, atol=1e-5)


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".nii"])
def test_save_then_load_keeps_geometry(tmp_path, ext):
    aff = _oblique_affine()
    path = save_image(tmp_path / f"img{ext}", _volume(), aff)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []
    img = load_image(path)
    assert image_reader_name(path) == ("nibabel" if ext == ".nii" else "itk")
    assert np.array_equal(img[0].numpy(), _volume())
    assert np.allclose(np.asarray(img.affine), aff, atol=1e-5)


def test_itk_written_mha_reads_as_ras(tmp_path):
    itk = pytest.importorskip("itk")
    img = itk.image_from_array(np.ascontiguousarray(_volume().transpose(2, 1, 0)))
    img.SetOrigin([1.0, 2.0, 3.0])
    img.SetSpacing([0.5, 0.6, 0.7])
    itk.imwrite(img, str(tmp_path / "x.mha"))
    loaded = load_image(tmp_path / "x.mha")
    assert np.array_equal(loaded[0].numpy(), _volume())
    assert np.allclose(np.asarray(loaded.affine), np.array([[-0.5, 0, 0, -1.0], [0, -0.6, 0, -2.0], [0, 0, 0.7, 3.0], [0, 0, 0, 1]]))


def test_dicom_series_folder(tmp_path):
    """A DICOM series written slice by slice (LPS positions) reads as one volume with a RAS affine."""
    itk = pytest.importorskip("itk")
    vol = (np.arange(3 * 4 * 5).reshape(5, 4, 3) * 10).astype(np.int16)  # ITK (z, y, x) buffer
    folder = tmp_path / "series"
    folder.mkdir()
    uid = "1.2.826.0.1.3680043.2.1125.1.123456789"
    for k in range(vol.shape[0]):
        slice_img = itk.image_from_array(np.ascontiguousarray(vol[k]))
        slice_img.SetSpacing([0.8, 0.8])
        tags = itk.MetaDataDictionary()
        for key, val in {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 10}", "0008|0060": "CT",
            "0020|000d": f"{uid}.1", "0020|000e": uid, "0020|0013": str(k + 1),
            "0020|0032": f"-10\\20\\{30 + 2.5 * k}", "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.8\\0.8", "0018|0050": "2.5",
        }.items():
            tags[key] = val
        slice_img.SetMetaDataDictionary(tags)
        dicom_io = itk.GDCMImageIO.New()
        dicom_io.KeepOriginalUIDOn()
        itk.ImageFileWriter[itk.Image[itk.SS, 2]].New(
            Input=slice_img, FileName=str(folder / f"s{k:03d}.dcm"), ImageIO=dicom_io
        ).Update()
    loaded = load_image(folder)
    assert loaded.shape == (1, 3, 4, 5)
    assert np.array_equal(loaded[0].numpy(), vol.transpose(2, 1, 0).astype(np.float32))
    # LPS origin (-10, 20, 30), identity direction -> RAS affine diag(-0.8, -0.8, 2.5) at (10, -20, 30)
    expected = np.array([[-0.8, 0, 0, 10.0], [0, -0.8, 0, -20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    assert np.allclose(np.asarray(loaded.affine), expected, atol=1e-4)


def test_errors_name_function_and_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_image: image '.*none.nii.gz' does not exist"):
        load_image(tmp_path / "none.nii.gz")
    (tmp_path / "junk.nrrd").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"load_image: cannot read image '.*junk.nrrd' with the itk reader"):
        load_image(tmp_path / "junk.nrrd")
    with pytest.raises(ValueError, match=r"load_image: unknown reader 'itkk'.*Did you mean 'itk'"):
        load_image(tmp_path / "junk.nrrd", reader="itkk")
    with pytest.raises(ValueError, match=r"save_image: output path '.*x.png' must end with one of"):
        save_image(tmp_path / "x.png", _volume())
    with pytest.raises(ValueError, match=r"save_image: image must have shape \(H, W, D\)"):
        save_image(tmp_path / "x.nii.gz", np.zeros((2, 3)))
