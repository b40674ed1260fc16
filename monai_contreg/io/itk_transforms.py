"""Export and import of fields as ITK displacement field transforms (LPS millimetres).

ITK's :class:`itk.DisplacementFieldTransform` holds a vector image on the fixed grid whose value at a fixed
physical point ``X`` is the displacement ``T(X) - X`` to the corresponding moving physical point, in
millimetres of ITK's LPS frame; ``TransformPoint`` interpolates it linearly. This is the transform
``antsApplyTransforms``/``itk.resample_image_filter`` use to pull a moving image into the fixed frame.

What the export means. ``contreg warp`` maps fixed voxel ``x`` to moving voxel ``A_m^-1 L A_f (x + u(x))``
(``u`` the DDF in fixed voxels, ``A_f``/``A_m`` the package's readings of the fixed and moving images,
``L`` an optional linear fixed-world -> moving-world map, identity without an affine stage). ITK reads the same
files as ``B_f``/``B_m`` (:func:`~monai_contreg.io.geometry_checks.itk_reading`), which differ where the header
can be read two ways (a NIfTI whose sform and qform disagree, one with neither coded, a sheared sform with a
qform). The export is written so that ITK, reading the same files, maps every fixed voxel to the same moving voxel:

    T(X) = F B_m A_m^-1 L A_f (x + u(x)),  x = (F B_f)^-1 X,  F = diag(-1, -1, 1) (RAS -> LPS),

as a displacement field on ITK's fixed grid ``F B_f`` with ``d(x) = T(F B_f x) - F B_f x``. Everything but ``u``
is affine in ``x``, and trilinear interpolation reproduces an affine function exactly, so ITK's interpolated
field equals the composition everywhere between the nodes too (to float64, or float32 for the image files).
Where no transform can mean the same (ITK cannot read a file's header; an in-memory grid with non-orthogonal
axes that no ITK file can hold), the export is refused with a :class:`~monai_contreg.errors.UserInputError` that
says why and how to fix the header. Without readings (images given as arrays) ``B = A``.

Files:

* ``.h5`` / ``.hdf5``: an ITK transform file holding one ``DisplacementFieldTransform_double_3_3``
  (``itk.transformread`` returns it ready to use); with a linear map ``L`` (a later affine stage) a
  ``CompositeTransform`` of ``[AffineTransform (F B_m A_m^-1 L F^-1), DisplacementFieldTransform
  (F A_f (x + u) - F B_f x)]``, ITK's order (the field is applied first).
* ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``: the displacement field image itself (float32 3-vectors, LPS mm,
  ITK writes NIfTI as ``(X, Y, Z, 1, 3)`` with intent ``vector``), the form ANTs writes warps in, everything
  composed into it; load it with ``itk.imread(path, pixel_type=itk.Vector[itk.F, 3])`` and give it to
  ``DisplacementFieldTransform[itk.F, 3]``. Its geometry is read back after writing: a format that cannot hold
  ITK's fixed grid (NIfTI and a non-orthonormal direction matrix) is refused, naming the ones that can.

All writes are atomic. ITK is imported lazily (it is slow to import).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .._validation import check_ddf, check_finite
from ..errors import MissingFileError, UserInputError
from ..spatial.conventions import (
    affine_to_itk_geometry,
    ddf_world_to_voxel,
    itk_geometry_to_affine,
    ras_lps_flip,
    ras_lps_matrix,
)
from .geometry_checks import ItkReading, affine_shear
from .atomic import atomic_path

__all__ = [
    "ITK_AFFINE_FORMATS",
    "ITK_TRANSFORM_FORMATS",
    "ddf_to_itk_displacement",
    "ddf_to_itk_transform",
    "is_itk_transform_path",
    "itk_displacement_to_ddf",
    "itk_export_frames",
    "load_itk_transform",
    "save_itk_affine",
    "save_itk_transform",
]

logger = logging.getLogger(__name__)

_TRANSFORM_FILES = (".h5", ".hdf5")
_IMAGE_FILES = (".nii.gz", ".nii", ".nrrd", ".mha")
#: Extensions :func:`save_itk_transform` writes: ITK transform files, then displacement field images.
ITK_TRANSFORM_FORMATS = _TRANSFORM_FILES + _IMAGE_FILES
#: Extensions :func:`save_itk_affine` writes: ITK's text transform files and the binary ``.mat`` ANTs writes.
ITK_AFFINE_FORMATS = (".txt", ".tfm", ".mat", ".h5")

#: RAS <-> LPS on homogeneous coordinates (:func:`~monai_contreg.spatial.conventions.ras_lps_matrix`).
_FLIP4 = ras_lps_matrix()
#: Largest ``|cos|`` between the voxel axes of an in-memory grid (no file reading) that is still written for ITK.
_SHEAR_TOL = 1e-4
#: Largest distance (mm) between a corner voxel of the intended grid and of a written displacement image's grid.
_READBACK_MM = 1e-3
_FIX_HEADER = ("fix the header: one orthogonal voxel-to-world matrix A as both sform and qform, code 1 (nibabel: "
               "img.set_sform(A, code=1); img.set_qform(A, code=1)), or resample the image onto an orthogonal grid")


def _format(where: str, path: str | Path) -> str:
    name = str(path).lower()
    for ext in ITK_TRANSFORM_FORMATS:
        if name.endswith(ext):
            return ext
    raise UserInputError(f"{where}: path {str(path)!r} must end with one of {list(ITK_TRANSFORM_FORMATS)}.")


def is_itk_transform_path(path: str | Path) -> bool:
    """Whether ``path`` names an ITK transform file (``.h5``/``.hdf5``) rather than a field image."""
    return str(path).lower().endswith(_TRANSFORM_FILES)


def _as4(affine) -> np.ndarray:
    a = affine.detach().cpu().double().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine, np.float64)
    if a.shape not in ((4, 4), (1, 4, 4)):
        raise UserInputError(f"itk export: affine must be a 4x4 voxel-to-world matrix, got shape {a.shape}.")
    return a.reshape(4, 4)


def _itk_frame(where: str, name: str, affine: np.ndarray, reading: ItkReading | None) -> np.ndarray:
    """ITK's 4x4 RAS reading of the ``name`` image: from its file's reading, else (no file) the affine itself."""
    if reading is None:
        shear = affine_shear(affine)
        if shear > _SHEAR_TOL:
            raise UserInputError(
                f"{where}: the {name} grid's voxel axes are not orthogonal (largest |cos| between axes {shear:.4g}) "
                "and no file says how ITK reads it: ITK, ANTs and Slicer cannot hold such a grid, so no transform "
                f"means there what it means here; not written. Resample the {name} image onto an orthogonal grid, "
                "or register files whose header ITK reads."
            )
        return affine
    if reading.affine is None:
        raise UserInputError(
            f"{where}: ITK cannot read the {name} image {reading.path!r} ({reading.problem}), so ITK, ANTs and "
            f"Slicer cannot apply any transform to it; not written. To export, {_FIX_HEADER}."
        )
    return np.asarray(reading.affine, dtype=np.float64).reshape(4, 4)


def itk_export_frames(
    affine,
    *,
    moving_affine=None,
    fixed_itk: ItkReading | None = None,
    moving_itk: ItkReading | None = None,
    linear=None,
    where: str = "save_itk_transform",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The matrices of an ITK export (see the module docstring), checked.

    Args:
        affine: the package's fixed affine ``A_f`` (4x4 RAS, the field's grid).
        moving_affine: the package's moving affine ``A_m`` (default ``A_f``; used only with ``moving_itk``).
        fixed_itk, moving_itk: ITK's readings of the input files (:func:`~monai_contreg.io.geometry_checks.itk_reading`);
            ``None``: the image was no file, ITK's reading is taken to be the package's (an orthogonal grid).
        linear: optional 4x4 RAS map ``L`` from fixed world to moving world applied after the field.

    Returns:
        ``(B_f, M_moving, M_fixed)``: ITK's fixed grid (4x4 RAS), the map ``F B_m A_m^-1 L`` (package fixed world,
        RAS, after the field -> ITK's moving point, LPS) and ``F`` (the same without the moving side), float64.

    Raises:
        UserInputError: a file ITK cannot read, or an in-memory grid with non-orthogonal axes (one line each,
            saying why and how to fix it).
    """
    a_f = _as4(affine)
    a_m = a_f if moving_affine is None else _as4(moving_affine)
    b_f = _itk_frame(where, "fixed", a_f, fixed_itk)
    b_m = _itk_frame(where, "moving", a_m, moving_itk)
    lin = np.eye(4) if linear is None else _as4(linear)
    if not np.all(np.isfinite(lin)) or abs(np.linalg.det(lin[:3, :3])) < 1e-12:
        raise UserInputError(f"{where}: linear must be a finite, invertible 4x4 matrix (RAS mm), got {lin.tolist()}.")
    m_moving = _FLIP4 @ b_m @ np.linalg.inv(a_m) @ lin
    return b_f, m_moving, _FLIP4.copy()


def _displacement(ddf: torch.Tensor, a_f: np.ndarray, b_f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``d(x) = m A_f (x + u(x)) - F B_f x`` in ITK's buffer order ``(D, W, H, 3)``, float64 LPS mm."""
    u = ddf.detach().cpu().to(torch.float64)[0]  # (3, H, W, D)
    ma = m @ a_f
    g = ma - _FLIP4 @ b_f  # the affine part, zero when ITK reads the images as the package does
    lin = torch.from_numpy(np.ascontiguousarray(ma[:3, :3]))
    out = torch.einsum("ij,j...->i...", lin, u)
    shape = u.shape[1:]
    for k in range(3):
        if np.any(np.abs(g[:3, k]) > 0):
            ramp = torch.arange(shape[k], dtype=torch.float64).view([-1 if i == k else 1 for i in range(3)])
            out += torch.from_numpy(np.ascontiguousarray(g[:3, k])).view(3, 1, 1, 1) * ramp
    out += torch.from_numpy(np.ascontiguousarray(g[:3, 3])).view(3, 1, 1, 1)
    return np.ascontiguousarray(out.permute(3, 2, 1, 0).numpy())


def _field_image(arr: np.ndarray, b_f: np.ndarray, precision: str):
    import itk

    ctype = itk.F if precision == "float" else itk.D
    img = itk.Image[itk.Vector[ctype, 3], 3].New()
    region = itk.ImageRegion[3]()
    region.SetSize([int(s) for s in arr.shape[2::-1]])
    img.SetRegions(region)
    img.Allocate()
    itk.array_view_from_image(img)[...] = arr.astype(np.float32 if precision == "float" else np.float64)
    origin, spacing, direction = affine_to_itk_geometry(b_f, orthogonal=False)  # ITK's own reading, kept as read
    img.SetOrigin([float(v) for v in origin])
    img.SetSpacing([float(v) for v in spacing])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    return img


def _check_ddf(where: str, ddf: torch.Tensor) -> None:
    check_ddf(where, "ddf", ddf)
    if ddf.shape[0] != 1:
        raise UserInputError(f"{where}: ddf must hold one field (batch 1), got shape {tuple(ddf.shape)}.")
    check_finite(where, "ddf", ddf)


def ddf_to_itk_displacement(
    ddf: torch.Tensor, affine, precision: str = "float", *, moving_affine=None, fixed_itk: ItkReading | None = None,
    moving_itk: ItkReading | None = None, linear=None,
):
    """A MONAI DDF on the fixed grid -> ITK displacement field image (LPS mm, on ITK's fixed grid).

    Args:
        ddf: DDF ``(1, 3, H, W, D)`` in voxels of the fixed grid, fixed -> moving.
        affine: the fixed grid's 4x4 RAS voxel-to-world matrix (the package's reading ``A_f``).
        precision: ``"float"`` (``itk.Image[itk.Vector[itk.F, 3], 3]``, writable as an image) or ``"double"``
            (``itk.Image[itk.Vector[itk.D, 3], 3]``, what ``DisplacementFieldTransform[itk.D, 3]`` takes).
        moving_affine, fixed_itk, moving_itk, linear: see :func:`itk_export_frames`; with none of them the
            field is ``A_f[:3, :3] @ u`` flipped to LPS on the grid ``affine``.

    Returns:
        The ITK image; its index ``[x, y, z]`` is our voxel ``(x, y, z)``; its geometry is ITK's fixed grid.

    Raises:
        UserInputError: a bad ``ddf`` or ``precision``, or an export refused by :func:`itk_export_frames`.
    """
    where = "ddf_to_itk_displacement"
    _check_ddf(where, ddf)
    if precision not in ("float", "double"):
        raise UserInputError(f"{where}: precision must be 'float' or 'double', got {precision!r}.")
    b_f, m, _ = itk_export_frames(affine, moving_affine=moving_affine, fixed_itk=fixed_itk, moving_itk=moving_itk,
                                  linear=linear, where=where)
    return _field_image(_displacement(ddf, _as4(affine), b_f, m), b_f, precision)


def ddf_to_itk_transform(ddf: torch.Tensor, affine, **frames):
    """A MONAI DDF on the fixed grid -> ITK transform (fixed -> moving points), everything composed into one field.

    ``transform.TransformPoint(X)`` for a fixed LPS point ``X`` (mm, ITK's reading of the fixed image) returns the
    corresponding moving LPS point (ITK's reading of the moving image). ``frames``: ``moving_affine``,
    ``fixed_itk``, ``moving_itk``, ``linear`` of :func:`itk_export_frames`.

    Returns:
        ``itk.DisplacementFieldTransform[itk.D, 3]``.
    """
    import itk

    field = ddf_to_itk_displacement(ddf, affine, precision="double", **frames)
    tx = itk.DisplacementFieldTransform[itk.D, 3].New()
    tx.SetDisplacementField(field)
    return tx


def _composite(ddf: torch.Tensor, affine, *, moving_affine, fixed_itk, moving_itk, linear):
    """``CompositeTransform [Affine(F B_m A_m^-1 L F^-1), Field(F A_f (x + u) - F B_f x)]`` (field applied first)."""
    import itk

    where = "save_itk_transform"
    b_f, m_moving, m_fixed = itk_export_frames(affine, moving_affine=moving_affine, fixed_itk=fixed_itk,
                                               moving_itk=moving_itk, linear=linear, where=where)
    field = itk.DisplacementFieldTransform[itk.D, 3].New()
    field.SetDisplacementField(_field_image(_displacement(ddf, _as4(affine), b_f, m_fixed), b_f, "double"))
    q = m_moving @ np.linalg.inv(_FLIP4)  # LPS point after the field -> ITK's moving LPS point
    aff = itk.AffineTransform[itk.D, 3].New()
    aff.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(q[:3, :3])))
    aff.SetTranslation([float(v) for v in q[:3, 3]])
    comp = itk.CompositeTransform[itk.D, 3].New()
    comp.AddTransform(aff)  # ITK applies the transform added last first
    comp.AddTransform(field)
    return comp


def _check_read_back(where: str, path: Path, shown: str, b_f: np.ndarray, shape) -> None:
    """Refuse a written displacement image whose grid (as ITK reads it back) lies elsewhere than ITK's fixed grid."""
    import itk

    reader = itk.ImageFileReader[itk.Image[itk.Vector[itk.F, 3], 3]].New(FileName=str(path))
    reader.UpdateOutputInformation()
    out = reader.GetOutput()
    back = itk_geometry_to_affine(np.asarray(out.GetOrigin()), np.asarray(out.GetSpacing()),
                                  itk.array_from_matrix(out.GetDirection()))
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    off = float(np.linalg.norm(corners @ (back - b_f).T, axis=-1).max())
    if off > _READBACK_MM:
        raise UserInputError(
            f"{where}: a displacement image {shown!r} would not hold ITK's fixed grid {np.round(b_f, 5).tolist()} "
            f"(ITK reads the written file as {np.round(back, 5).tolist()}, up to {off:.3g} mm away: the format cannot "
            f"hold its non-orthonormal direction matrix, |cos| {affine_shear(b_f):.2g}); not written. Write .h5, .nrrd "
            "or .mha instead."
        )


def save_itk_transform(
    path: str | Path, ddf: torch.Tensor, affine, *, moving_affine=None, fixed_itk: ItkReading | None = None,
    moving_itk: ItkReading | None = None, linear=None,
) -> Path:
    """Write a DDF as an ITK displacement field transform (``.h5``) or displacement image, atomically.

    The file maps ITK's reading of the fixed image to ITK's reading of the moving image as ``contreg warp`` maps
    the package's readings (module docstring): pass the readings of the input files (``fixed_itk``,
    ``moving_itk``, :func:`~monai_contreg.io.geometry_checks.itk_reading`) and the moving affine; without them
    the images are taken to be read alike by both (in-memory grids).

    Args:
        path: ``*.h5``/``*.hdf5`` (ITK transform file) or ``*.nii.gz``, ``*.nii``, ``*.nrrd``, ``*.mha``
            (displacement field image, float32 LPS mm).
        ddf: DDF ``(1, 3, H, W, D)`` in voxels of the fixed grid, fixed -> moving.
        affine: the fixed grid's 4x4 RAS voxel-to-world matrix (the package's reading).
        moving_affine: the moving image's 4x4 RAS matrix (the package's reading; default ``affine``).
        fixed_itk, moving_itk: ITK's readings of the fixed and moving files, or ``None`` (no file).
        linear: optional 4x4 RAS fixed-world -> moving-world map applied after the field (an affine stage):
            ``.h5`` gets a ``CompositeTransform`` (affine + field), the image forms the composition baked in.

    Returns:
        The written path.

    Raises:
        UserInputError: a bad path or ``ddf``; an export no ITK file can make mean what ``contreg warp`` does
            (a header ITK cannot read, a sheared in-memory grid, a NIfTI image that cannot hold a non-orthonormal
            fixed grid): one line saying why and how to fix it; nothing is written.
    """
    import itk

    where = "save_itk_transform"
    fmt = _format(where, path)
    _check_ddf(where, ddf)
    frames = dict(moving_affine=moving_affine, fixed_itk=fixed_itk, moving_itk=moving_itk, linear=linear)
    b_f, m_moving, _ = itk_export_frames(affine, where=where, **frames)
    a_f = _as4(affine)
    moved = float(np.abs(m_moving @ a_f - _FLIP4 @ b_f).max())
    if moved > 1e-6 and linear is None:
        logger.info("%s: ITK reads the inputs differently than this package (affine difference up to %.3g); "
                    "composed into %s", where, moved, path)
    with atomic_path(path) as tmp:
        if fmt in _TRANSFORM_FILES:
            tx = _composite(ddf, affine, **frames) if linear is not None else ddf_to_itk_transform(ddf, affine, **frames)
            itk.transformwrite([tx], str(tmp), compression=True)
        else:
            itk.imwrite(ddf_to_itk_displacement(ddf, affine, precision="float", **frames), str(tmp), compression=True)
            _check_read_back(where, tmp, str(path), b_f, tuple(int(v) for v in ddf.shape[2:]))
    return Path(path)


def itk_displacement_to_ddf(field, after=None) -> tuple[torch.Tensor, np.ndarray]:
    """ITK displacement field image (LPS mm) -> (MONAI DDF ``(1, 3, H, W, D)`` float32 voxels, 4x4 RAS affine).

    Args:
        field: ``itk.Image`` of 3-vectors (LPS mm) on the fixed grid.
        after: optional 4x4 LPS matrix ``Q`` applied after the field (a composite transform's linear part):
            the result is the field of ``X -> Q (X + d(X))``, exact at the nodes.
    """
    import itk

    arr = np.asarray(itk.array_view_from_image(field), dtype=np.float64)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise UserInputError(f"itk_displacement_to_ddf: expected a 3-D image of 3-vectors, got an array of shape {arr.shape}.")
    affine = itk_geometry_to_affine(
        np.asarray(field.GetOrigin()), np.asarray(field.GetSpacing()), itk.array_from_matrix(field.GetDirection())
    )
    lps = torch.from_numpy(np.ascontiguousarray(arr.transpose(3, 2, 1, 0)))[None]  # (1, 3, H, W, D), LPS mm
    if after is not None:
        q = np.asarray(after, dtype=np.float64)
        grid = _FLIP4 @ affine  # LPS voxel-to-world of the nodes: P(x) = grid[:3, :3] x + grid[:3, 3]
        g = (q[:3, :3] - np.eye(3)) @ grid[:3, :4]
        g[:, 3] += q[:3, 3]
        out = torch.einsum("ij,bj...->bi...", torch.from_numpy(np.ascontiguousarray(q[:3, :3])), lps)
        for k in range(3):
            ramp = torch.arange(lps.shape[2 + k], dtype=torch.float64).view([-1 if i == k else 1 for i in range(3)])
            out += torch.from_numpy(np.ascontiguousarray(g[:, k])).view(1, 3, 1, 1, 1) * ramp
        lps = out + torch.from_numpy(np.ascontiguousarray(g[:, 3])).view(1, 3, 1, 1, 1)
    ddf = ddf_world_to_voxel(ras_lps_flip(lps, dim=1), affine)
    return ddf.to(torch.float32).contiguous(), affine


def _check_vector_image(p: Path) -> None:
    """Refuse an image file that is not a displacement image (3 components per voxel): ITK would read a scalar
    image (a CT given as ``--transform``) into vectors without a word."""
    import itk

    io = itk.ImageIOFactory.CreateImageIO(str(p), itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        return  # the read below reports it
    io.SetFileName(str(p))
    try:
        io.ReadImageInformation()
    except Exception:  # the read below reports it
        return
    n = int(io.GetNumberOfComponents())
    if n != 3:
        raise UserInputError(
            f"load_itk_transform: {str(p)!r} holds {n} component(s) per voxel, not a displacement field image "
            "(3 components per voxel, LPS millimetres): give an image as --image, a displacement as --transform."
        )


def _linear_matrix(tx) -> np.ndarray:
    import itk

    m = np.eye(4)
    m[:3, :3] = itk.array_from_matrix(tx.GetMatrix())
    m[:3, 3] = np.asarray(list(tx.GetOffset()), dtype=np.float64)
    return m


def _field_of(transforms) -> tuple[object, np.ndarray | None]:
    """The displacement field image and the linear part after it, from what ``itk.transformread`` returned."""
    names = [t.GetNameOfClass() for t in transforms]
    if len(transforms) == 1 and names[0] == "DisplacementFieldTransform":
        return transforms[0].GetDisplacementField(), None
    if len(transforms) == 1 and names[0] == "CompositeTransform":
        comp = transforms[0]
        import itk

        parts = [itk.down_cast(comp.GetNthTransform(i)) for i in range(comp.GetNumberOfTransforms())]
        kinds = [t.GetNameOfClass() for t in parts]
        # ITK applies the last one first: a field, then any linear transforms (an affine stage's export)
        if kinds and kinds[-1] == "DisplacementFieldTransform" and "DisplacementFieldTransform" not in kinds[:-1]:
            try:
                q = np.eye(4)
                for t in parts[:-1]:
                    q = q @ _linear_matrix(t)
            except Exception as exc:  # noqa: BLE001 - a non-linear part
                raise UserInputError(f"expected linear transforms before one DisplacementFieldTransform, found {kinds}") from exc
            return parts[-1].GetDisplacementField(), q
        raise UserInputError(f"expected a CompositeTransform of linear transforms and one DisplacementFieldTransform "
                             f"(applied first), found {kinds}")
    raise UserInputError(f"expected one DisplacementFieldTransform, found {names} (or a CompositeTransform of linear "
                         "transforms after one)")


def load_itk_transform(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """Read a displacement field transform (``.h5``) or displacement image -> (DDF voxels, fixed affine).

    An ``.h5`` may also hold a ``CompositeTransform`` of linear transforms after one displacement field (what
    :func:`save_itk_transform` writes with ``linear``): it is baked into one field on the field's grid. The field
    and its grid are ITK's: the grid is ITK's reading of the fixed image and the values end at points of ITK's
    reading of the moving image (``contreg warp --transform`` reads the images as ITK does).

    Returns:
        ``(ddf, affine)``: MONAI DDF ``(1, 3, H, W, D)`` float32 in voxels of the field's grid (fixed -> moving)
        and that grid's 4x4 RAS voxel-to-world matrix (float64).

    Raises:
        FileNotFoundError, ValueError: naming the path: missing file, unreadable file, a transform file that
            does not hold exactly one displacement field transform.
    """
    import itk

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"load_itk_transform: transform file {str(p)!r} does not exist.")
    fmt = _format("load_itk_transform", p)
    if fmt in (".nii", ".nii.gz"):
        import nibabel as nib

        try:
            shape = nib.load(str(p)).shape
        except Exception as exc:
            raise UserInputError(f"load_itk_transform: cannot read displacement field image {str(p)!r}: {exc}") from exc
        if len(shape) == 4 and shape[3] == 3:
            raise UserInputError(
                f"load_itk_transform: {str(p)!r} has shape {shape}, the layout of a Learn2Reg field (H, W, D, 3) in "
                "voxels of the fixed grid, not an ITK displacement field image (X, Y, Z, 1, 3) in LPS millimetres; "
                "read it with monai_contreg.io.fields.load_field (contreg warp --field)."
            )
    if fmt not in _TRANSFORM_FILES:
        _check_vector_image(p)
    try:
        if fmt in _TRANSFORM_FILES:
            field, after = _field_of(itk.transformread(str(p)))
        else:
            field, after = itk.imread(str(p), pixel_type=itk.Vector[itk.F, 3]), None
    except Exception as exc:
        raise UserInputError(f"load_itk_transform: cannot read displacement field transform {str(p)!r}: {exc}") from exc
    return itk_displacement_to_ddf(field, after)


def itk_affine_matrix(linear, affine, *, moving_affine=None, fixed_itk: ItkReading | None = None,
                      moving_itk: ItkReading | None = None) -> np.ndarray:
    """The 4x4 LPS matrix ITK applies for an affine stage alone: ITK's fixed point -> ITK's moving point.

    ``Q = F B_m A_m^-1 L A_f (F B_f)^-1`` (module docstring, without a field): a fixed point maps where
    ``contreg warp`` of an affine-only registration maps it (``L`` the stage's world map, RAS mm). Linear in the
    point, so it holds for any difference between ITK's and the package's readings of the headers.

    Raises:
        UserInputError: as :func:`itk_export_frames`.
    """
    b_f, m_moving, _ = itk_export_frames(affine, moving_affine=moving_affine, fixed_itk=fixed_itk,
                                         moving_itk=moving_itk, linear=linear, where="save_itk_affine")
    return m_moving @ _as4(affine) @ np.linalg.inv(_FLIP4 @ b_f)


def save_itk_affine(path: str | Path, linear, affine, *, moving_affine=None, fixed_itk: ItkReading | None = None,
                    moving_itk: ItkReading | None = None) -> Path:
    """Write an affine stage's map alone as an ITK ``AffineTransform_double_3_3`` (``.txt``/``.tfm``/``.mat``/``.h5``).

    ``itk.transformread`` (and ANTs' ``antsApplyTransforms``/``ants.read_transform``, which read ``.mat`` and
    ``.txt``) give a transform mapping a fixed LPS point to the moving LPS point (:func:`itk_affine_matrix`).

    Args:
        path: the file; its extension one of :data:`ITK_AFFINE_FORMATS`.
        linear: the stage's world map ``A`` (4x4, fixed world RAS mm -> moving world RAS mm).
        affine, moving_affine: the fixed and moving grids' 4x4 RAS matrices (the package's readings).
        fixed_itk, moving_itk: ITK's readings of the input files (``None``: no file).

    Returns:
        The written path.

    Raises:
        UserInputError: another extension; a matrix that is not finite and invertible; an export refused by
            :func:`itk_export_frames`.
    """
    import itk

    where = "save_itk_affine"
    if not str(path).lower().endswith(ITK_AFFINE_FORMATS):
        raise UserInputError(f"{where}: path {str(path)!r} must end with one of {list(ITK_AFFINE_FORMATS)}.")
    q = itk_affine_matrix(linear, affine, moving_affine=moving_affine, fixed_itk=fixed_itk, moving_itk=moving_itk)
    tx = itk.AffineTransform[itk.D, 3].New()
    tx.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(q[:3, :3])))
    tx.SetTranslation([float(v) for v in q[:3, 3]])
    with atomic_path(path) as tmp:  # the temporary keeps the extension: ITK picks the writer by it
        itk.transformwrite([tx], str(tmp))
    return Path(path)
