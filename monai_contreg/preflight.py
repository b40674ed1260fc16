"""Pre-flight checks: everything that can be found wrong before a registration starts is found here, first.

Every ``contreg`` command that reads images or writes files runs these checks before any work, so that a bad
input, a broken header or an output that cannot be written fails in a second with one line naming the file and
the option, not after the registration with a traceback:

* inputs: the file exists, can be opened, its header is readable (:func:`read_header`; a text file named
  ``.nii.gz`` or a file that is not an image is named as such, see :func:`~monai_contreg.errors.describe_read_error`),
  it holds a 3-D volume, and its geometry is usable (:func:`check_geometry`: a finite, non-singular
  voxel-to-world matrix; at least :data:`MIN_SIZE` voxels along every axis, as the Jacobian statistics and the
  working grid need);
* grids: fixed, moving and masks share one grid where the command needs it (:func:`check_pair`);
* outputs: the path is not an existing folder, its folder is a folder, a file can be created there (a real probe:
  read-only mounts and permissions are caught whoever runs it) and the file system has room for the expected
  size (:func:`check_output_file`, :func:`check_output_dir`);
* memory: :func:`check_pair` takes a ``memory_check`` callable (``memory_check(fixed_shape, moving_shape)``,
  raising :class:`~monai_contreg.errors.UserInputError`) where an estimate of the registration's memory plugs in.

Data-level checks that need the voxels run where the voxels are loaded: :func:`check_informative` refuses an image
with no structure (constant, or constant inside its mask); :func:`monai_contreg.api.prepare_pair` calls it.

Every check raises :class:`~monai_contreg.errors.UserInputError` (or :class:`~monai_contreg.errors.MissingFileError`)
with a message that starts with ``where`` (the function or command) and names the argument or option.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import MissingFileError, UserInputError, describe_read_error
from .options import parse_spacing
from .spatial.conventions import itk_geometry_to_affine
from .spatial.grid import Grid

__all__ = [
    "MIN_SIZE",
    "ImageHeader",
    "MemoryCheck",
    "check_geometry",
    "check_informative",
    "check_input_file",
    "check_output_dir",
    "check_output_file",
    "check_pair",
    "check_run",
    "field_bytes",
    "parse_spacing",
    "read_header",
]

#: Fewest voxels along any axis of an image that can be registered and scored: the Jacobian statistics crop a
#: 2-voxel border on every side and need one voxel left (a 48 x 48 x 3 slab leaves none).
MIN_SIZE = 5
#: Free space kept beyond the expected size of the outputs (bytes): the file system's own use, a log, a temporary.
DISK_SLACK = 1 << 20
#: Relative tolerance under which an image's intensity range counts as no range at all.
CONSTANT_RTOL = 1e-6

#: A memory check: called as ``memory_check(fixed_shape, moving_shape)`` (3-tuples of voxels); raises
#: :class:`~monai_contreg.errors.UserInputError` when the registration will not fit.
MemoryCheck = Callable[[tuple[int, int, int], tuple[int, int, int]], None]

_NIFTI = (".nii", ".nii.gz")
#: Extensions of single-file images: a folder with such a name is a mistake, not a DICOM series.
_FILE_EXTS = (".nii", ".nii.gz", ".gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz", ".npy")


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without its voxels.

    Attributes:
        path: the file (``None`` for an array).
        shape: the array shape as stored (3 or more entries; spatial first).
        linear: the 3x3 voxel-to-world linear part (direction times spacing, mm per voxel), or ``None`` when the
            header gives none (a DICOM folder, checked when loaded).
        origin: world position (mm) of voxel ``(0, 0, 0)``, or ``None`` when not read.
        frame: the world frame of ``linear`` and ``origin``: ``"RAS"`` (NIfTI, nibabel) or ``"LPS"`` (ITK).
        affine: the full 4x4 voxel-to-world matrix (RAS mm) when known, else ``None``.
    """

    path: Path | None
    shape: tuple[int, ...]
    linear: np.ndarray | None
    origin: np.ndarray | None = None
    frame: str = "RAS"
    affine: np.ndarray | None = None

    def ras(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(linear, origin)`` in RAS, or ``None`` when the header gives no geometry or no origin."""
        if self.linear is None or self.origin is None:
            return None
        flip = np.diag([-1.0, -1.0, 1.0]) if self.frame == "LPS" else np.eye(3)
        return flip @ self.linear, flip @ self.origin

    @property
    def grid(self) -> Grid | None:
        """The image's :class:`~monai_contreg.spatial.grid.Grid` (its first three sizes and :attr:`affine`), or
        ``None`` when the header gives no affine or no 3-D shape (a DICOM folder: its grid is known once loaded)."""
        if self.affine is None or len(self.shape) < 3:
            return None
        return Grid(self.spatial_shape, self.affine)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """The first three sizes (voxels)."""
        return tuple(int(s) for s in self.shape[:3])  # type: ignore[return-value]


def check_input_file(where: str, name: str, path: str | Path) -> Path:
    """Check that ``path`` exists and can be opened for reading (a folder: can be listed).

    Raises:
        MissingFileError: it does not exist. UserInputError: it cannot be read (permissions).
    """
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{where}: {name} {str(p)!r} does not exist.")
    try:
        if p.is_dir():
            next(iter(os.scandir(p)), None)
        else:
            with open(p, "rb") as fh:
                fh.read(1)
    except OSError as exc:
        raise UserInputError(f"{where}: {name} {str(p)!r} cannot be read: {exc.strerror or exc}.") from exc
    return p


def read_header(where: str, name: str, path: str | Path) -> ImageHeader:
    """Read an image's header (shape and geometry) without its voxels.

    NIfTI files with nibabel, other single files with ITK's ImageIO; a folder (a DICOM series) is only checked to
    be readable (its geometry is checked when the series is loaded).

    Raises:
        MissingFileError / UserInputError: naming ``where``, ``name`` and what is wrong with the file.
    """
    p = check_input_file(where, f"{name} file", path)
    if p.is_dir():
        if p.name.lower().endswith(_FILE_EXTS):
            raise UserInputError(f"{where}: {name} file {str(p)!r} is a folder, not an image file.")
        return ImageHeader(p, (), None)
    try:
        if p.name.lower().endswith(_NIFTI):
            import nibabel as nib

            img = nib.load(str(p))
            shape = tuple(int(s) for s in img.shape)
            affine = np.asarray(img.affine, dtype=np.float64)
            linear = affine[:3, :3]
            origin, frame = affine[:3, 3].copy(), "RAS"
        else:
            shape, linear, origin, affine = _itk_header(p)
            frame = "LPS"
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"{where}: cannot read {name} file {str(p)!r}: {describe_read_error(exc, p)}.") from exc
    return ImageHeader(p, shape, linear, origin, frame, affine)


def _itk_header(p: Path) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray | None]:
    import itk

    io = itk.ImageIOFactory.CreateImageIO(str(p), itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise RuntimeError(f"Could not create IO object for reading file {p}")
    io.SetFileName(str(p))
    io.ReadImageInformation()
    n = io.GetNumberOfDimensions()
    shape = tuple(int(io.GetDimensions(i)) for i in range(n))
    k = min(n, 3)
    linear = np.eye(3)
    for j in range(k):
        direction = np.asarray(io.GetDirection(j), dtype=np.float64)[:k]
        linear[:k, j] = direction * float(io.GetSpacing(j))
    origin = np.zeros(3)
    origin[:k] = [float(io.GetOrigin(j)) for j in range(k)]
    affine = None
    if k == 3:  # ITK's LPS origin/spacing/direction -> RAS affine (the linear part above stays ITK's, for its checks)
        spacing = [float(io.GetSpacing(j)) for j in range(3)]
        direction = np.stack([np.asarray(io.GetDirection(j), dtype=np.float64)[:3] for j in range(3)], axis=1)
        if np.all(np.isfinite(direction)) and min(spacing) > 0:
            affine = itk_geometry_to_affine([float(io.GetOrigin(j)) for j in range(3)], spacing, direction)
    return shape, linear, origin, affine


def check_geometry(where: str, name: str, header: ImageHeader, min_size: int = MIN_SIZE) -> ImageHeader:
    """Check that an image is a 3-D volume with a usable geometry.

    * 3 spatial dimensions (trailing sizes beyond the third must be 1);
    * at least ``min_size`` voxels along each axis (a slab such as ``48 x 48 x 3`` is refused);
    * a finite, non-singular voxel-to-world matrix (no zero spacing, no collapsed direction).

    Raises:
        UserInputError: naming ``where``, ``name``, the file and what is wrong.
    """
    if header.linear is None:  # a DICOM folder: checked when loaded
        return header
    label = name if header.path is None else f"{name} file {str(header.path)!r}"
    shape = header.shape
    if len(shape) < 3 or any(int(s) != 1 for s in shape[3:]):
        raise UserInputError(f"{where}: {label} must hold one 3-D volume, its header gives shape {shape}.")
    small = [int(s) for s in shape[:3] if int(s) < min_size]
    if small:
        raise UserInputError(
            f"{where}: {label} has shape {tuple(int(s) for s in shape[:3])}: too thin to register (every axis needs "
            f">= {min_size} voxels for the working grid and the Jacobian statistics); resample it or use a thicker slab."
        )
    lin = header.linear
    if not np.isfinite(lin).all():
        raise UserInputError(f"{where}: {label} has a non-finite voxel-to-world matrix {lin.round(4).tolist()} in its header.")
    sv = np.linalg.svd(lin, compute_uv=False)
    if sv.max() <= 0 or sv.min() <= 1e-6 * sv.max():
        spacing = np.linalg.norm(lin, axis=0)
        raise UserInputError(
            f"{where}: {label} has a singular voxel-to-world matrix (spacing {spacing.round(4).tolist()} mm, "
            f"matrix {lin.round(4).tolist()}): its header's geometry is broken (zero spacing or collapsed axes); "
            f"fix the header (NIfTI: pixdim/sform/qform)."
        )
    return header


def check_pair(
    where: str,
    images: Mapping[str, str | Path | None],
    *,
    same_grid: bool = True,
    masks_of: Mapping[str, str] | None = None,
    min_size: int = MIN_SIZE,
    memory_check: MemoryCheck | None = None,
) -> dict[str, ImageHeader]:
    """Pre-flight of a registration's inputs: every file readable, every geometry sane, the grids consistent.

    Args:
        where: the command or function, first word of every message (``"contreg register"``).
        images: ``{"fixed": path, "moving": path, "fixed_mask": path or None, ...}``; ``None`` entries are skipped.
            The names are used in the messages (use the option names a user typed, e.g. ``"--fixed-mask"``).
        same_grid: all inputs must have one shape (``register``); else each mask must match its image
            (``register-native``), as given by ``masks_of``.
        masks_of: ``{mask name: image name}`` (default: ``{"X_mask": "X"}`` for the names present).
        min_size: fewest voxels along any axis.
        memory_check: called as ``memory_check(fixed_shape, moving_shape)`` after the geometry checks (the hook of
            the memory estimate); it raises :class:`~monai_contreg.errors.UserInputError` when the run cannot fit.

    Returns:
        ``{name: ImageHeader}`` of the files checked.
    """
    headers = {k: check_geometry(where, k, read_header(where, k, v), min_size) for k, v in images.items() if v is not None}
    shapes = {k: h.spatial_shape for k, h in headers.items() if h.linear is not None}
    if same_grid:
        if len(set(shapes.values())) > 1:
            desc = ", ".join(f"{k} {s}" for k, s in shapes.items())
            raise UserInputError(f"{where}: all inputs must share one grid; got {desc}.")
    else:
        pairs = masks_of or {k: k[: -len("_mask")] for k in headers if k.endswith("_mask")}
        for mask, image in pairs.items():
            if mask in shapes and image in shapes and shapes[mask] != shapes[image]:
                raise UserInputError(f"{where}: {mask} has grid {shapes[mask]}, its image {image} has {shapes[image]}; they must match.")
    if memory_check is not None:
        names = list(headers)
        fixed = shapes.get(names[0]) if names else None
        moving = shapes.get(names[1]) if len(names) > 1 else fixed
        if fixed is not None and moving is not None:
            memory_check(fixed, moving)
    return headers


def field_bytes(shape: Iterable[int], fmt: str = ".nii.gz") -> int:
    """Uncompressed size (bytes) of a Learn2Reg field of grid ``shape``: 3 components, float32 (``.npz``: float16).

    An upper bound of what :func:`~monai_contreg.io.fields.save_field` writes (compression only makes it smaller).
    """
    n = math.prod(int(s) for s in shape) * 3
    return n * (2 if str(fmt).endswith(".npz") else 4) + 352


def _existing_ancestor(p: Path) -> Path:
    q = p
    while not q.exists():
        if q.parent == q:
            break
        q = q.parent
    return q


def _probe_folder(where: str, option: str, target: Path, folder: Path, expected_bytes: int) -> None:
    if not folder.is_dir():
        raise UserInputError(f"{where}: {option} {str(target)!r}: {str(folder)!r} is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".contreg-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserInputError(
            f"{where}: {option} {str(target)!r}: cannot write into {str(folder)!r} ({exc.strerror or exc}); "
            f"choose a writable folder."
        ) from exc
    if expected_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < expected_bytes + DISK_SLACK:
            raise UserInputError(
                f"{where}: {option} {str(target)!r}: not enough free disk space in {str(folder)!r}: "
                f"{free / 1e6:.1f} MB free, the output needs about {(expected_bytes + DISK_SLACK) / 1e6:.1f} MB."
            )


def check_output_file(where: str, option: str, path: str | Path, expected_bytes: int = 0) -> Path:
    """Check that a file can be written at ``path`` before the work that produces it.

    ``path`` must not be an existing folder; the nearest existing folder on its path (it is created by the write)
    must accept a new file (a probe file is created and deleted) and have ``expected_bytes`` (plus
    :data:`DISK_SLACK`) free.

    Raises:
        UserInputError: naming ``where``, ``option``, the path and the problem.
    """
    p = Path(path)
    if p.is_dir():
        raise UserInputError(f"{where}: {option} {str(p)!r} is an existing folder; give a file name inside it.")
    parent = _existing_ancestor(p.parent if str(p.parent) else Path("."))
    _probe_folder(where, option, p, parent, expected_bytes)
    return p


def check_output_dir(where: str, option: str, path: str | Path, expected_bytes: int = 0) -> Path:
    """Check that ``path`` is (or can be created as) a folder that accepts new files and has room for them.

    Raises:
        UserInputError: naming ``where``, ``option``, the path and the problem (a file in the way, a read-only
            or full file system, no permission).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserInputError(f"{where}: {option} {str(p)!r} is a file; give a folder.")
    _probe_folder(where, option, p, _existing_ancestor(p), expected_bytes)
    return p


def check_informative(
    where: str, name: str, image: torch.Tensor, mask: torch.Tensor | None = None, *, after: str = ""
) -> None:
    """Refuse an image with no structure: constant everywhere, or constant inside ``mask``.

    A constant image gives the similarity nothing to align (any field scores the same), so a registration
    would return an arbitrary field; it is refused instead.

    Args:
        where: function name for the message.
        name: the argument (``"fixed"``).
        image: the voxels (any shape).
        mask: optional region of the same number of voxels; ``> 0`` is inside.
        after: words added to the message to say at which stage (``"after the intensity window"``).

    Raises:
        UserInputError: naming ``where`` and ``name``.
    """
    x = torch.as_tensor(image).detach().reshape(-1)
    inside = ""
    if mask is not None:
        m = torch.as_tensor(mask).detach().reshape(-1) > 0
        if m.numel() == x.numel() and bool(m.any()):
            x = x[m.to(x.device)]
            inside = " inside its mask"
    x = x[torch.isfinite(x)] if x.is_floating_point() else x
    if x.numel() == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= CONSTANT_RTOL * max(1.0, abs(lo), abs(hi)):
        raise UserInputError(
            f"{where}: {name} image is constant{inside} (every voxel {lo:g}{after}): it has no structure to register; "
            f"check the file{' and the mask' if inside else ''}."
        )


def check_run(where: str, dataset, split: str, out_dir: str | Path, fmt: str = ".nii.gz", *, overwrite: bool = False,
              min_size: int = MIN_SIZE, memory_check: MemoryCheck | None = None):
    """Pre-flight of a Learn2Reg run: the dataset and split, every pair's input headers, the output folder.

    Every pair is checked (headers only, :func:`check_pair`) and all pairs with a problem are listed in one error;
    the output folder must accept files and hold the fields still to write (:func:`field_bytes` each).

    Returns:
        ``(dataset, pairs)``: the :class:`~monai_contreg.data.learn2reg.Learn2RegDataset` and its pairs.

    Raises:
        MissingFileError / UserInputError: a missing dataset or file, an unknown split, unusable inputs (each bad
            pair named), an output folder that cannot take the fields.
    """
    from .data.learn2reg import Learn2RegDataset, find_field

    ds = dataset if isinstance(dataset, Learn2RegDataset) else Learn2RegDataset(dataset)
    pairs = ds.pairs(split)
    problems: list[str] = []
    need = 0
    out = Path(out_dir)
    for pair in pairs:
        images = {"fixed": pair.fixed, "moving": pair.moving, "fixed_mask": pair.fixed_mask, "moving_mask": pair.moving_mask}
        try:
            headers = check_pair(f"pair {pair.key}", images, min_size=min_size, memory_check=memory_check)
        except UserInputError as exc:
            problems.append(str(exc))
            continue
        if overwrite or not out.is_dir() or find_field(pair, out) is None:
            need += field_bytes(headers["fixed"].spatial_shape, fmt)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UserInputError(f"{where}: {len(problems)} of {len(pairs)} pairs have unusable inputs: {shown}")
    check_output_dir(where, "-o/--output", out, need)
    return ds, pairs
