"""Reading and writing images with their geometry (origin, spacing, direction) in MONAI's RAS convention.

Reading goes through MONAI's :class:`~monai.transforms.LoadImage`: NIfTI (``.nii``, ``.nii.gz``) with nibabel
(array indexed exactly as ``nibabel.load(path).dataobj``, affine = ``nibabel``'s), everything else ITK reads
(a DICOM series folder, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ...) with MONAI's ``ITKReader``, which
returns the array in ``[x, y, z]`` index order (ITK's index, nibabel's too) and converts ITK's LPS geometry
into a RAS affine. Either way the result is a ``(1, H, W, D)`` MetaTensor whose ``affine`` maps voxel indices
to RAS millimetres, the frame every function of :mod:`monai_contreg.spatial.conventions` expects.

A DICOM folder may hold several series (a CT and a localiser, as clinical exports often do):
:func:`list_dicom_series` lists them (one entry per series and geometry, as ITK's ``GDCMSeriesFileNames``
groups the files), and :func:`load_image` reads the one with the most slices unless ``series`` names another
(its Series Instance UID), logging which one it read. The series' geometry comes from every slice's own Image
Position/Orientation (Patient) (:mod:`monai_contreg.io.dicom_geometry`): a straight, uniform stack is read as ITK
reads it (checked to agree); a gantry tilt, unequal spacing or missing slices are resampled onto an orthogonal,
uniform grid with a warning naming the tilt in degrees and the slices, never stacked straight in silence.

Writing: :func:`save_image` writes NIfTI with nibabel and ``.nrrd``/``.mha`` with ITK (RAS -> LPS), atomically.

The geometry is one :class:`~monai_contreg.spatial.grid.Grid` value: a loaded image's grid is ``Grid.of(image)``
(checked when the image is read: a singular or non-finite affine is refused there, naming the file), and the
writers take a ``Grid`` or a 4x4 matrix for ``affine`` (a grid must have the image's shape).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import ITKReader, MetaTensor, NibabelReader
from monai.transforms import LoadImage

from .._validation import check_suffix, choose
from ..errors import MissingFileError, UserInputError, describe_read_error
from ..spatial.conventions import affine_to_itk_geometry
from ..spatial.grid import GRID_ATOL_MM, Grid
from .atomic import atomic_path
from .dicom_geometry import MAX_GAP, read_slice_headers, resample_series, series_geometry
from .geometry_checks import GeometryWarning

__all__ = [
    "IMAGE_WRITE_FORMATS", "DicomSeries", "check_series_used", "image_reader_name", "list_dicom_series", "load_image",
    "save_dicom_series", "save_image",
]

logger = logging.getLogger(__name__)

_NIFTI = (".nii", ".nii.gz")
#: Extensions :func:`save_image` writes (single-file formats only, so that writes can be atomic).
IMAGE_WRITE_FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")
_READERS = ("auto", "nibabel", "itk")


def image_reader_name(path: str | Path, reader: str = "auto") -> str:
    """The reader :func:`load_image` uses for ``path``: ``"nibabel"`` for NIfTI files, else ``"itk"``."""
    reader = choose("load_image", "reader", reader, _READERS)
    if reader != "auto":
        return reader
    name = str(path).lower()
    return "nibabel" if name.endswith(_NIFTI) and not Path(path).is_dir() else "itk"


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series (of one geometry) in a folder, as :func:`list_dicom_series` reports it.

    Attributes:
        identifier: ITK's series identifier (the Series Instance UID followed by geometry details).
        uid: the Series Instance UID (tag 0020|000e).
        slices: number of files (slices) in the series.
        description: Series Description (0008|103e), ``""`` if absent.
        modality: Modality (0008|0060), ``""`` if absent.
    """

    identifier: str
    uid: str
    slices: int
    description: str
    modality: str

    def __str__(self) -> str:
        what = " ".join(v for v in (self.modality, repr(self.description) if self.description else "") if v)
        return f"{self.uid} ({what + ', ' if what else ''}{self.slices} slices)"


def _series_names(folder: Path):
    import itk

    gen = itk.GDCMSeriesFileNames.New()
    # the same grouping as MONAI's ITKReader, so that an identifier listed here is one it reads
    gen.SetUseSeriesDetails(True)
    gen.AddSeriesRestriction("0008|0021")
    gen.SetDirectory(str(folder))
    return gen


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The DICOM series in ``folder`` (not recursive), one entry per series and geometry, in ITK's order.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        UserInputError: ``folder`` is not a folder.
    """
    import itk

    p = Path(folder)
    if not p.exists():
        raise MissingFileError(f"list_dicom_series: folder {str(p)!r} does not exist.")
    if not p.is_dir():
        raise UserInputError(f"list_dicom_series: {str(p)!r} is not a folder.")
    gen = _series_names(p)
    out = []
    for ident in gen.GetSeriesUIDs():
        files = list(gen.GetFileNames(ident))
        tags = {"0020|000e": "", "0008|103e": "", "0008|0060": ""}
        try:
            io = itk.GDCMImageIO.New()
            io.SetFileName(files[0])
            io.ReadImageInformation()
            tags = {t: str(io.GetValueFromTag(t, "")[1]).strip().strip("\x00").strip() for t in tags}
        except Exception:  # unreadable header: keep the identifier
            pass
        out.append(DicomSeries(identifier=str(ident), uid=tags["0020|000e"] or str(ident), slices=len(files),
                               description=tags["0008|103e"], modality=tags["0008|0060"]))
    return out


def _choose_series(folder: Path, series: str | Sequence[str] | None, strict: bool) -> tuple[DicomSeries, list[DicomSeries]]:
    found = list_dicom_series(folder)
    if not found:
        raise UserInputError(
            f"load_image: folder {str(folder)!r} holds no DICOM series ITK (GDCM) can read; give a folder of DICOM "
            "files or an image file (NIfTI, NRRD, MetaImage)."
        )
    wanted = [series] if isinstance(series, str) else list(series or [])
    for uid in wanted:
        match = [s for s in found if uid in (s.uid, s.identifier)]
        if match:
            return max(match, key=lambda s: s.slices), found
    if wanted and strict:
        raise UserInputError(
            f"load_image: series {wanted if len(wanted) > 1 else wanted[0]!r} is not in folder {str(folder)!r}; "
            f"it holds: {'; '.join(map(str, found))}."
        )
    # the stated rule: the series (of one geometry) with the most slices; ties: ITK's first
    return max(found, key=lambda s: s.slices), found


def check_series_used(where: str, series: str | Sequence[str] | None, images) -> None:
    """Raise :class:`UserInputError` when ``series`` was given but no DICOM folder among ``images`` held it.

    ``images`` are what :func:`load_image` returned (with ``strict_series=False``) for the inputs of one call.
    """
    if not series:
        return
    wanted = [series] if isinstance(series, str) else list(series)
    read = {img.meta.get("dicom_series") for img in images if hasattr(img, "meta")}
    missing = [u for u in wanted if u not in read and not any(r and u.startswith(r) for r in read)]
    if len(missing) == len(wanted):
        raise UserInputError(
            f"{where}: series {missing if len(missing) > 1 else missing[0]!r} is not in any DICOM folder given "
            "(see the listed series in the log, or contreg -v ...)."
        )


def load_image(
    path: str | Path,
    reader: str = "auto",
    dtype: torch.dtype | None = torch.float32,
    series: str | Sequence[str] | None = None,
    strict_series: bool = True,
    max_slice_gap: float = MAX_GAP,
) -> MetaTensor:
    """Read an image file or DICOM series folder, keeping its geometry.

    Args:
        path: a file ITK or nibabel reads, or a folder of DICOM files.
        reader: ``"auto"`` (nibabel for NIfTI, ITK otherwise), ``"nibabel"`` or ``"itk"``.
        dtype: torch dtype of the array (``None``: keep the file's, as far as torch has it).
        series: for a DICOM folder, the Series Instance UID (or ITK identifier, see :func:`list_dicom_series`)
            to read, or several candidates (the first present is read). ``None``: the series with the most
            slices of one geometry (a CT rather than its localiser). Which one was read is logged (WARNING when
            the folder holds several) and stored in ``.meta["dicom_series"]``.
        strict_series: with ``series`` given and none of it in the folder, raise (``True``) or fall back to the
            rule above (``False``).
        max_slice_gap: DICOM: the widest gap between neighbouring slices, in typical slice spacings, that is
            interpolated over (wider gaps are refused).

    A DICOM series' geometry is taken from every slice's Image Position/Orientation (Patient)
    (:mod:`monai_contreg.io.dicom_geometry`): a straight, uniform stack is read as ITK reads it; a gantry tilt,
    unequal spacing or missing slices are resampled onto an orthogonal, uniform grid with a
    :class:`~monai_contreg.io.geometry_checks.GeometryWarning` naming the tilt (degrees) and the slices
    (``.meta["dicom_geometry"]`` then holds the text); slices of different orientations are refused.

    Returns:
        A ``(1, H, W, D)`` MetaTensor; ``.affine`` is the ``(4, 4)`` float64 voxel-to-world matrix in RAS mm
        (its :class:`~monai_contreg.spatial.grid.Grid`: ``Grid.of(image)``), ``.meta["filename_or_obj"]`` the path. Array axes are ITK's ``[x, y, z]`` index axes (for NIfTI:
        nibabel's ``i, j, k``). DICOM intensities have the rescale slope/intercept applied (HU for CT).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UserInputError: a folder with no readable DICOM series, or ``series`` not in it (``strict_series``); an
            affine that is not a finite invertible matrix (no grid); a
            DICOM series whose slices lack a position/orientation, differ in orientation, share a position or leave
            a gap wider than ``max_slice_gap`` (the message names the slices).
        ValueError: the file cannot be read or does not hold one 3-D volume.
    """
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"load_image: image {str(p)!r} does not exist.")
    which = image_reader_name(p, reader)
    chosen = geometry = None
    if p.is_dir():
        chosen, found = _choose_series(p, series, strict_series)
        if len(found) > 1:
            logger.warning(
                "load_image: folder %s holds %d DICOM series: %s; reading %s (%s); choose another with series=UID "
                "(CLI: --series UID).", p, len(found), "; ".join(map(str, found)), chosen,
                "as asked" if series else "the most slices of one geometry",
            )
        else:
            logger.info("load_image: folder %s: reading DICOM series %s", p, chosen)
        files = [str(f) for f in _series_names(p).GetFileNames(chosen.identifier)]
        headers = read_slice_headers(files)
        geometry = series_geometry(headers, "load_image", max_slice_gap)
        if not geometry.regular:
            img = _read_resampled(p, headers, geometry, dtype)
            img.meta["dicom_series"] = chosen.uid
            return img
        backend = ITKReader(series_name=chosen.identifier)
    else:
        backend = NibabelReader() if which == "nibabel" else ITKReader()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*contains more than one DICOM series.*")
            img = LoadImage(reader=backend, image_only=True, ensure_channel_first=True)(str(p))
    except Exception as exc:
        raise UserInputError(
            f"load_image: cannot read image {str(p)!r} with the {which} reader: {describe_read_error(exc, p)}"
        ) from exc
    if img.ndim != 4 or img.shape[0] != 1:
        raise UserInputError(f"load_image: image {str(p)!r} must hold one 3-D volume, got shape {tuple(img.shape)} (channel first).")
    if dtype is not None:
        img = img.to(dtype)
    img.affine = _grid_of(p, img).affine_tensor()
    if chosen is not None:
        img.meta["dicom_series"] = chosen.uid
        _check_itk_agrees(p, img, geometry)
    return img


def _grid_of(path: Path, img: MetaTensor) -> Grid:
    """The loaded image's grid (shape and float64 affine), or a UserInputError naming the file."""
    try:
        return Grid.of(img)
    except UserInputError as exc:
        raise UserInputError(f"load_image: image {str(path)!r} has no usable geometry: {str(exc).split(': ', 1)[-1]}") from None


def _check_itk_agrees(folder: Path, img: MetaTensor, geometry) -> None:
    """A regular series: ITK's stacked grid must be the slices' own (same shape, corners within
    :data:`~monai_contreg.spatial.grid.GRID_ATOL_MM`)."""
    itk_grid, slices_grid = Grid.of(img), geometry.grid
    err = float("inf")
    if itk_grid.shape == slices_grid.shape:
        corners = [[i, j, k] for i in (0, itk_grid.shape[0] - 1) for j in (0, itk_grid.shape[1] - 1)
                   for k in (0, itk_grid.shape[2] - 1)]
        err = float((itk_grid.voxel_to_world(corners) - slices_grid.voxel_to_world(corners)).abs().max())
    if err > GRID_ATOL_MM:
        raise UserInputError(
            f"load_image: ITK reads the DICOM series in {str(folder)!r} on {itk_grid.describe()}, but its slices' "
            f"positions give {slices_grid.describe()} (corners {err:.3g} mm apart): not read.")


def _read_resampled(folder: Path, headers, geometry, dtype) -> MetaTensor:
    """Read the slices one by one (rescale applied by ITK) and resample them onto ``geometry``'s grid."""
    import itk

    slices = []
    for i in geometry.order:
        arr = np.asarray(itk.array_from_image(itk.imread(headers[i].file, itk.F)), dtype=np.float32)
        slices.append(arr.reshape(arr.shape[-2:]).T)  # ITK's (y, x) view -> [x, y]
    note = geometry.describe(len(headers))
    msg = f"load_image: DICOM series in {str(folder)!r}: {note}"
    logger.warning(msg)
    warnings.warn(msg, GeometryWarning, stacklevel=3)
    vol = resample_series(np.stack(slices, axis=2), geometry)
    t = torch.from_numpy(vol)[None]
    grid = Grid.for_array("load_image", vol.shape, geometry.grid)
    return MetaTensor(t.to(dtype) if dtype is not None else t, affine=grid.affine_tensor(),
                      meta={"filename_or_obj": str(folder), "dicom_geometry": note})


def _format(path: str | Path) -> str:
    return check_suffix("save_image", "output path", path, IMAGE_WRITE_FORMATS)


def save_image(
    path: str | Path, image: torch.Tensor | np.ndarray, affine: Grid | np.ndarray | torch.Tensor | None = None, dtype=None
) -> Path:
    """Write a 3-D image with its geometry, atomically.

    Args:
        path: ``*.nii.gz``, ``*.nii`` (nibabel) or ``*.nrrd``, ``*.mha`` (ITK, geometry converted to LPS).
        image: ``(H, W, D)`` or ``(1, H, W, D)`` array (a MetaTensor's affine is used when ``affine`` is None).
        affine: the image's :class:`~monai_contreg.spatial.grid.Grid` (of the image's shape) or its 4x4 RAS
            voxel-to-world matrix; default the MetaTensor's, else the identity.
        dtype: numpy dtype to store (default: the array's).

    Returns:
        The written path.

    Raises:
        UserInputError: not a 3-D image; a grid of another shape, an affine that is not a finite invertible 4x4
            (nothing written); an unknown extension.
    """
    fmt = _format(path)
    if affine is None and isinstance(image, MetaTensor):
        affine = image.affine
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise UserInputError(f"save_image: image must have shape (H, W, D) or (1, H, W, D), got {arr.shape}.")
    if dtype is not None:
        arr = arr.astype(dtype)
    aff = np.array(Grid.for_array("save_image", arr.shape, affine).affine)
    with atomic_path(path) as tmp:
        if fmt in _NIFTI:
            nib.save(nib.Nifti1Image(arr, aff), str(tmp))
        else:
            import itk

            origin, spacing, direction = affine_to_itk_geometry(aff)
            img = itk.image_from_array(np.ascontiguousarray(arr.transpose(2, 1, 0)))
            img.SetOrigin([float(v) for v in origin])
            img.SetSpacing([float(v) for v in spacing])
            img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
            itk.imwrite(img, str(tmp), compression=True)
    return Path(path)


def save_dicom_series(
    folder: str | Path,
    image: torch.Tensor | np.ndarray,
    affine: Grid | np.ndarray | torch.Tensor,
    series_uid: str,
    *,
    description: str = "",
    series_number: int = 1,
    rescale: tuple[float, float] = (1.0, 0.0),
    study_uid: str | None = None,
) -> list[Path]:
    """Write a 3-D CT volume as a DICOM series, one file per slice along array axis 2 (as scanners export).

    Args:
        folder: output folder (created; existing files are kept, so several series can share it).
        image: ``(H, W, D)`` or ``(1, H, W, D)`` intensities in real-world units (HU); stored as int16 pixels
            ``round((value - intercept) / slope)``, which must fit int16.
        affine: the image's :class:`~monai_contreg.spatial.grid.Grid` or its 4x4 RAS voxel-to-world matrix (written
            as LPS Image Position/Orientation Patient, Pixel Spacing);
            its axes must be right-handed (slice ``k + 1`` along the normal of rows x columns), as in DICOM. Axis 2
            may be oblique to the slices (a gantry tilt): slice ``k`` is written at ``affine @ (0, 0, k, 1)``
            exactly, its slice thickness the step along the normal.
        series_uid: Series Instance UID (0020|000e); SOP instance UIDs are ``series_uid.k``.
        description: Series Description (0008|103e).
        series_number: Series Number (0020|0011).
        rescale: ``(slope, intercept)`` written to (0028|1053, 0028|1052).
        study_uid: Study Instance UID (default: ``series_uid + ".0"``).

    Returns:
        The written file paths, slice order.

    Raises:
        UserInputError: not a 3-D image, a grid of another shape, an affine that is not a finite invertible 4x4, a
            left-handed affine, axes 0 and 1 not orthogonal, or values that do not fit int16 after the rescale.
    """
    import itk

    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise UserInputError(f"save_dicom_series: image must have shape (H, W, D) or (1, H, W, D), got {arr.shape}.")
    slope, intercept = (float(v) for v in rescale)
    stored = np.round((arr.astype(np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise UserInputError(f"save_dicom_series: values {arr.min()}..{arr.max()} do not fit int16 with rescale {rescale}.")
    aff = np.array(Grid.for_array("save_dicom_series", arr.shape, affine).affine)
    lps = np.diag([-1.0, -1.0, 1.0]) @ aff[:3]  # RAS -> LPS: rows 0, 1 negated
    origin, step = lps[:, 3], lps[:, 2]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    if np.any(spacing[:2] <= 0) or spacing[2] <= 0:
        raise UserInputError(f"save_dicom_series: the affine has a zero-length axis, spacing {spacing.tolist()}.")
    row, col = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    if abs(float(row @ col)) > 1e-6:
        raise UserInputError("save_dicom_series: the affine's axes 0 and 1 (the slices' rows and columns) are not "
                             "orthogonal; a DICOM slice's pixels are square-cornered.")
    normal = np.cross(row, col)
    if float(step @ normal) <= 0:
        raise UserInputError(
            "save_dicom_series: the affine's axes are left-handed; DICOM slices stack along the normal of their "
            "rows and columns (right-handed): flip array axis 2 and its affine column first."
        )
    direction = np.stack([row, col, normal], axis=1)
    thickness = float(step @ normal)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    study = study_uid or f"{series_uid}.0"
    orient = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    # ITK writes (value - intercept) / slope: hand it the real-world values of the rounded stored pixels
    values = (stored * slope + intercept).astype(np.int16 if slope == 1.0 and intercept == int(intercept) else np.float32)
    paths = []
    for k in range(arr.shape[2]):
        sl = itk.image_from_array(np.ascontiguousarray(values[:, :, k].T))
        sl.SetSpacing([float(spacing[0]), float(spacing[1])])
        pos = origin + k * step
        md = sl.GetMetaDataDictionary()
        for key, val in {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{k + 1}", "0008|0060": "CT",
            "0008|103e": description, "0020|000d": study, "0020|000e": series_uid, "0020|0011": str(series_number),
            "0020|0013": str(k + 1), "0020|0052": f"{study}.1",
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos), "0020|0037": orient,
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}", "0018|0050": f"{thickness:.6f}",
            "0028|1052": f"{intercept:g}", "0028|1053": f"{slope:g}",
            "0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1",  # signed 16-bit stored
        }.items():
            md[key] = val
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        path = out / f"{series_number:03d}_{k + 1:04d}.dcm"
        itk.ImageFileWriter[type(sl)].New(Input=sl, FileName=str(path), ImageIO=io).Update()
        paths.append(path)
    return paths
