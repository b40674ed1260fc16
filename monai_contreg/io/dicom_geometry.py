"""The geometry of a DICOM series from its slices' own headers, checked slice by slice.

A DICOM series is a stack of 2-D images, each with its own Image Position (Patient) (0020,0032, the LPS position
of its first pixel, mm) and Image Orientation (Patient) (0020,0037, the LPS directions of its rows and columns).
Readers that stack the slices straight (ITK's ``ImageSeriesReader``, hence MONAI's ``ITKReader``) place slice
``k`` at ``origin + k * spacing * normal``, which is wrong when

* the gantry was tilted: the positions advance along a direction oblique to the slice normal, so each slice is
  shifted within its plane relative to the previous one (8.3 mm over 96 slices of 1 mm at 5 degrees);
* the spacing is unequal or slices are missing: the distance between neighbouring slices varies;
* the slices do not share one orientation (then there is no volume to stack at all).

:func:`read_slice_headers` reads the position, orientation and pixel spacing of every file (ITK's GDCM, header
only), and :func:`series_geometry` checks them:

* every slice must carry a position and an orientation, all orientations must agree within
  :data:`ORIENTATION_TOL` (largest difference of a direction cosine), rows and columns must be orthogonal, two
  slices must not share a position: otherwise :class:`~monai_contreg.errors.UserInputError` naming the slices;
* slices are ordered by their position along the normal ``rows x columns`` (DICOM's, right-handed);
* a grid is *regular* when every slice lies within :data:`POSITION_TOL_MM` of ``origin + k * spacing * normal``
  (no tilt, equal spacing): ITK's own reading is then right, and :func:`~monai_contreg.io.images.load_image`
  keeps it;
* otherwise the series is **resampled onto an orthogonal, uniform grid** (:func:`resample_series`), with a
  :class:`~monai_contreg.io.geometry_checks.GeometryWarning` that names the tilt in degrees, the axis it is about
  and the drift, and the slices around each unequal step or gap; a gap wider than ``max_gap`` typical spacings
  (default 3: two missing slices) is refused with a :class:`~monai_contreg.errors.UserInputError` naming the slices,
  since interpolating over it would invent anatomy.

Why resample rather than keep the exact (sheared) grid: ITK, ANTs and Slicer store orthonormal directions and
cannot represent a sheared grid (an exported field or image would be placed elsewhere, see
:mod:`monai_contreg.io.geometry_checks`), and the registration's regulariser and smoothing assume orthogonal voxel
axes. The target grid keeps the slices' row and column directions and pixel spacing, its third axis is the slice
normal with the median spacing along it, and it covers every slice's extent (the bounding box of the tilted stack,
aligned to the first slice's pixels). A voxel takes the linear interpolation, along the normal, between the two
neighbouring slice planes, each sampled bilinearly at the voxel's projection onto it; voxels outside every slice's
field of view take ``fill`` (default: the series' minimum, air or padding in a CT). This is exact for intensities
linear in position (tested), so the resampled series reproduces the volume it was sampled from to interpolation
accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..spatial.grid import Grid

__all__ = [
    "ORIENTATION_TOL", "POSITION_TOL_MM", "SeriesGeometry", "SliceHeader", "read_slice_headers", "resample_series",
    "series_geometry",
]

#: Largest difference of a direction cosine between two slices' orientations still taken as one orientation
#: (1e-4 rad moves a point 250 mm away by 0.025 mm).
ORIENTATION_TOL = 1e-4
#: Largest distance (mm) of a slice from the straight, uniform stack still read as that stack (DICOM positions
#: are often written with 2 decimals: 0.005 mm per coordinate).
POSITION_TOL_MM = 0.02
#: Widest gap between neighbouring slices, in typical slice spacings, interpolated over (3: two missing slices).
MAX_GAP = 3.0

_FLIP = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS


@dataclass(frozen=True)
class SliceHeader:
    """The geometry tags of one DICOM file.

    Attributes:
        file: the file.
        position: Image Position (Patient), LPS mm, shape (3,), or ``None`` if absent.
        orientation: Image Orientation (Patient): row then column direction cosines (LPS), shape (6,), or ``None``.
        pixel_spacing: (row spacing, column spacing) mm, i.e. between rows and between columns, or ``None``.
        instance: Instance Number (0020,0013), or ``None``.
        size: (rows, columns).
    """

    file: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    instance: int | None
    size: tuple[int, int]

    def name(self) -> str:
        """``'IMG0012.dcm' (instance 12)``: how messages name the slice."""
        inst = f" (instance {self.instance})" if self.instance is not None else ""
        return f"{Path(self.file).name!r}{inst}"


def _floats(text: str, n: int) -> tuple[float, ...] | None:
    try:
        vals = tuple(float(v) for v in str(text).strip().strip("\x00").replace(" ", "").split("\\") if v != "")
    except ValueError:
        return None
    return vals if len(vals) == n and all(math.isfinite(v) for v in vals) else None


def read_slice_headers(files: Sequence[str | Path]) -> list[SliceHeader]:
    """Position, orientation, pixel spacing, instance number and size of each file (ITK's GDCM, header only).

    Raises:
        UserInputError: a file whose header ITK cannot read (named).
    """
    import itk

    out = []
    for f in files:
        io = itk.GDCMImageIO.New()
        io.SetFileName(str(f))
        try:
            io.ReadImageInformation()
        except Exception as exc:
            raise UserInputError(f"load_image: cannot read the DICOM header of {str(f)!r}: {exc}") from exc

        def tag(key: str) -> str:
            ok, val = io.GetValueFromTag(key, "")
            return str(val) if ok else ""

        inst = _floats(tag("0020|0013"), 1)
        out.append(SliceHeader(
            file=str(f), position=_floats(tag("0020|0032"), 3), orientation=_floats(tag("0020|0037"), 6),
            pixel_spacing=_floats(tag("0028|0030"), 2), instance=int(inst[0]) if inst else None,
            size=(int(io.GetDimensions(1)), int(io.GetDimensions(0))),
        ))
    return out


@dataclass
class SeriesGeometry:
    """What :func:`series_geometry` found.

    Attributes:
        order: indices into the headers, slices sorted along the normal.
        affine: 4x4 RAS voxel-to-world matrix of the grid the volume is returned on (the series' own grid when
            ``regular``, else the orthogonal, uniform grid :func:`resample_series` fills).
        shape: that grid's shape ``(columns, rows, slices)`` (array axes ``[x, y, z]``, ITK's index order).
        regular: the slices form a straight, uniform stack (within :data:`POSITION_TOL_MM`).
        tilt_degrees: angle between the slices' advance and their normal (0 for a straight stack).
        tilt_axis: LPS unit vector the tilt turns about (``None`` without tilt).
        drift_mm: largest in-plane offset of a slice from the straight stack through the first slice.
        spacing: pixel spacing along array axes 0, 1 and the (median) slice spacing, mm.
        irregular_steps: messages naming the slices around each unequal step or gap.
        offsets: per sorted slice, its in-plane offset from the first slice in pixels (along array axes 0, 1).
        normal_positions: per sorted slice, its position along the normal relative to the first slice, mm.
        corner_offset: the target grid's first voxel, in pixels of the first slice (``<= 0``).
    """

    order: list[int]
    affine: np.ndarray
    shape: tuple[int, int, int]
    regular: bool
    tilt_degrees: float = 0.0
    tilt_axis: np.ndarray | None = None
    drift_mm: float = 0.0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    irregular_steps: list[str] = field(default_factory=list)
    offsets: np.ndarray | None = None
    normal_positions: np.ndarray | None = None
    corner_offset: tuple[int, int] = (0, 0)

    @property
    def grid(self) -> Grid:
        """:attr:`shape` and :attr:`affine` as one :class:`~monai_contreg.spatial.grid.Grid`."""
        return Grid(self.shape, self.affine)

    def describe(self, n_slices: int) -> str:
        """The warning text: the tilt (degrees, axis, drift) and the unequal steps, and what was done."""
        notes = []
        if self.tilt_degrees > 0 or self.drift_mm > POSITION_TOL_MM:
            axis = ""
            if self.tilt_axis is not None:
                names = ("left-right (x)", "anterior-posterior (y)", "head-foot (z)")
                axis = f" about the patient's {names[int(np.argmax(np.abs(self.tilt_axis)))]} axis"
            notes.append(
                f"a gantry tilt of {self.tilt_degrees:.2f} degrees{axis}: the slice positions drift up to "
                f"{self.drift_mm:.2f} mm within the slice plane over {n_slices} slices")
        if self.irregular_steps:
            shown = self.irregular_steps[:8]
            more = f"; and {len(self.irregular_steps) - 8} more" if len(self.irregular_steps) > 8 else ""
            notes.append(f"unequal slice spacing (typical {self.spacing[2]:.4g} mm): " + "; ".join(shown) + more)
        return ("; ".join(notes) + f". Stacking the slices straight would misplace them; resampled onto an orthogonal "
                f"grid of shape {self.shape}, spacing {tuple(round(s, 4) for s in self.spacing)} mm (linear "
                "interpolation between neighbouring slices).")


def _slice_names(headers: Sequence[SliceHeader], idx: Sequence[int]) -> str:
    shown = ", ".join(headers[i].name() for i in idx[:6])
    return shown + (f" and {len(idx) - 6} more" if len(idx) > 6 else "")


def series_geometry(headers: Sequence[SliceHeader], where: str = "load_image", max_gap: float = MAX_GAP) -> SeriesGeometry:
    """Check the slices' geometry and return the grid to read them on (see the module docstring).

    Args:
        headers: one per file (:func:`read_slice_headers`), any order.
        where: caller, for messages.
        max_gap: widest gap between neighbouring slices, in typical spacings, that is interpolated over.

    Raises:
        UserInputError: a slice without position/orientation, inconsistent or non-orthogonal orientations, two
            slices at one position, unequal pixel spacing or size between slices, or a gap wider than ``max_gap``
            (the message names the slices).
    """
    hs = list(headers)
    if not hs:
        raise UserInputError(f"{where}: the DICOM series has no slices.")
    missing = [i for i, h in enumerate(hs) if h.position is None or h.orientation is None]
    if missing:
        raise UserInputError(
            f"{where}: DICOM slice(s) {_slice_names(hs, missing)} carry no Image Position/Orientation (Patient) "
            "(0020,0032 / 0020,0037): the series' geometry is unknown; not read.")
    orients = np.array([h.orientation for h in hs], dtype=np.float64)
    # the orientation most slices share (a stray slice is the odd one out, not the rest)
    ref = orients[int(np.argmax([(np.abs(orients - o).max(axis=1) <= ORIENTATION_TOL).sum() for o in orients]))]
    odd = [i for i in range(len(hs)) if np.abs(orients[i] - ref).max() > ORIENTATION_TOL]
    if odd:
        def angle(u, v):
            cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
            return math.degrees(math.acos(min(1.0, max(-1.0, cos))))

        worst = max(max(angle(orients[i][:3], ref[:3]), angle(orients[i][3:], ref[3:])) for i in odd)
        raise UserInputError(
            f"{where}: the slices of the DICOM series do not share one orientation: {_slice_names(hs, odd)} "
            f"{'differs' if len(odd) == 1 else 'differ'} from the other {len(hs) - len(odd)} slices' Image "
            f"Orientation (Patient) {np.round(ref, 6).tolist()} (rows or columns turned by up to {worst:.2f} "
            "degrees): not one volume; remove the stray slices or export the series again.")
    r, c = ref[:3], ref[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(float(r @ c)) > 1e-3:
        raise UserInputError(
            f"{where}: the DICOM series' Image Orientation (Patient) {ref.tolist()} does not hold two orthogonal "
            "unit vectors (rows, columns): not a valid slice geometry.")
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    n = np.cross(r, c)
    n /= np.linalg.norm(n)
    spacings = {h.pixel_spacing for h in hs}
    sizes = {h.size for h in hs}
    if len(sizes) > 1 or len(spacings) > 1:
        raise UserInputError(
            f"{where}: the slices of the DICOM series differ in size {sorted(sizes)} or pixel spacing "
            f"{sorted(map(str, spacings))}: not one volume.")
    ps = hs[0].pixel_spacing or (1.0, 1.0)
    dx, dy = float(ps[1]), float(ps[0])  # along rows (array axis 0), along columns (array axis 1)
    pos = np.array([h.position for h in hs], dtype=np.float64)
    t_all = pos @ n
    order = sorted(range(len(hs)), key=lambda i: (t_all[i], hs[i].instance or 0, hs[i].file))
    p = pos[order]
    t = t_all[order] - t_all[order[0]]
    steps = np.diff(t)
    same = [k for k, s in enumerate(steps) if s <= POSITION_TOL_MM]
    if same:
        pairs = "; ".join(f"{hs[order[k]].name()} and {hs[order[k + 1]].name()}" for k in same[:6])
        raise UserInputError(
            f"{where}: DICOM slices at one position ({len(same)} pair(s)): {pairs}; two acquisitions (or copies) "
            "in one series: not one volume.")
    spacing_z = float(np.median(steps)) if len(steps) else 1.0
    # in-plane offset of each slice from the straight stack through the first slice
    lateral = (p - p[0]) - np.outer(t, n)
    a, b = lateral @ r, lateral @ c
    drift = float(np.hypot(a, b).max()) if len(p) > 1 else 0.0
    uniform = len(steps) == 0 or float(np.abs(steps - spacing_z).max()) <= POSITION_TOL_MM
    if uniform and len(steps):
        spacing_z = float(t[-1] / len(steps))
    straight = drift <= POSITION_TOL_MM
    aff_lps = np.eye(4)
    aff_lps[:3, 0], aff_lps[:3, 1], aff_lps[:3, 2] = r * dx, c * dy, n * spacing_z
    if straight and uniform:
        aff_lps[:3, 3] = p[0]
        aff = np.diag([*_FLIP, 1.0]) @ aff_lps
        return SeriesGeometry(order=order, affine=aff, shape=(hs[0].size[1], hs[0].size[0], len(hs)), regular=True,
                              spacing=(dx, dy, spacing_z), drift_mm=drift)
    # a straight line through the drift: the tilt (least squares through the first slice)
    tilt, axis = 0.0, None
    if not straight:
        g = (lateral.T @ t) / float(t @ t)
        tilt = math.degrees(math.atan(float(np.linalg.norm(g))))
        if np.linalg.norm(g) > 0:
            axis = np.cross(n, g / np.linalg.norm(g))
    irregular, too_wide = [], []
    if not uniform:
        for k, s in enumerate(steps):
            if abs(s - spacing_z) <= POSITION_TOL_MM:
                continue
            m = s / spacing_z
            between = f"between {hs[order[k]].name()} and {hs[order[k + 1]].name()}"
            if m >= 1.5 and abs(m - round(m)) < 0.1:
                irregular.append(f"{round(m) - 1} missing slice(s) {between} ({s:.4g} mm apart)")
            else:
                irregular.append(f"{s:.4g} mm {between}")
            if m > max_gap + 1e-6:
                too_wide.append(f"{s:.4g} mm {between}")
        if too_wide:
            raise UserInputError(
                f"{where}: the DICOM series has gaps wider than {max_gap:g} typical slice spacings "
                f"({spacing_z:.4g} mm): {'; '.join(too_wide[:6])}; interpolating over them would invent the anatomy "
                "in between: not read. Export the complete series.")
    ao, bo = a / dx, b / dy  # in-plane offsets in pixels of the first slice
    ao = np.where(np.abs(ao - np.round(ao)) < 1e-4, np.round(ao), ao)
    bo = np.where(np.abs(bo - np.round(bo)) < 1e-4, np.round(bo), bo)
    i0, j0 = int(math.floor(ao.min() + 1e-4)), int(math.floor(bo.min() + 1e-4))
    nx = int(math.ceil(ao.max() - 1e-4)) - i0 + hs[0].size[1]
    ny = int(math.ceil(bo.max() - 1e-4)) - j0 + hs[0].size[0]
    nz = int(math.floor(t[-1] / spacing_z + 1e-3)) + 1
    aff_lps[:3, 3] = p[0] + i0 * dx * r + j0 * dy * c
    aff = np.diag([*_FLIP, 1.0]) @ aff_lps
    return SeriesGeometry(
        order=order, affine=aff, shape=(nx, ny, nz), regular=False, tilt_degrees=tilt, tilt_axis=axis, drift_mm=drift,
        spacing=(dx, dy, spacing_z), irregular_steps=irregular, offsets=np.stack([ao, bo], axis=1),
        normal_positions=t, corner_offset=(i0, j0),
    )


def resample_series(slices: np.ndarray, geometry: SeriesGeometry, fill: float | None = None) -> np.ndarray:
    """The slices on ``geometry``'s orthogonal, uniform grid (see the module docstring).

    Args:
        slices: ``(columns, rows, K)`` array, slice ``k`` = the ``k``-th of ``geometry.order`` (sorted along the
            normal), array axes as ITK's index ``[x, y]``.
        geometry: a non-regular :class:`SeriesGeometry`.
        fill: value outside every slice's field of view (default: the minimum of ``slices``).

    Returns:
        ``geometry.shape`` float32 array.
    """
    from scipy.ndimage import affine_transform

    if geometry.regular or geometry.offsets is None or geometry.normal_positions is None:
        raise UserInputError("resample_series: the geometry is regular; the slices are the volume as they are.")
    vals = np.asarray(slices, dtype=np.float32)
    cval = float(vals.min()) if fill is None else float(fill)
    nx, ny, nz = geometry.shape
    t = geometry.normal_positions
    i0, j0 = geometry.corner_offset
    out = np.empty((nx, ny, nz), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}

    def shifted(k: int) -> np.ndarray:
        # slice k on the target's in-plane pixels: target (i, j) is slice k's pixel (i + i0 - a_k, j + j0 - b_k)
        if k not in cache:
            off = (i0 - geometry.offsets[k, 0], j0 - geometry.offsets[k, 1])
            if len(cache) > 2:  # the target slices advance through the source: two at a time are needed
                cache.clear()
            cache[k] = affine_transform(vals[:, :, k], np.eye(2), offset=off, output_shape=(nx, ny), order=1,
                                        mode="constant", cval=cval)
        return cache[k]

    for z in range(nz):
        tau = z * geometry.spacing[2]
        k = int(np.searchsorted(t, tau + 1e-6, side="right")) - 1
        k = min(max(k, 0), len(t) - 1)
        if k == len(t) - 1 or abs(tau - t[k]) <= 1e-6:
            out[:, :, z] = shifted(k)
            continue
        w = float((tau - t[k]) / (t[k + 1] - t[k]))
        out[:, :, z] = (1.0 - w) * shifted(k) + w * shifted(k + 1)
    return out
