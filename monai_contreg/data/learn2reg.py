"""Learn2Reg datasets: read a dataset description (``*_dataset.json``) and load its pairs with MONAI transforms.

A Learn2Reg dataset folder holds ``imagesTr/`` (and ``imagesTs/``), optional ``masksTr/``, ``labelsTr/``,
``keypointsTr/`` with files of the same name (keypoints as ``NAME.csv``), and one description such as
``NLST_dataset.json``. Its splits list pairs of image paths relative to the folder::

    "registration_val": [{"fixed": "./imagesTr/NLST_0101_0000.nii.gz",
                          "moving": "./imagesTr/NLST_0101_0001.nii.gz"}, ...]

File names are ``PREFIX_CASE_MODALITY.nii.gz`` (``NLST_0101_0000``: case ``0101``, ``_0000`` the fixed/inhale
scan, ``_0001`` the moving/exhale scan). A pair's field is ``disp_FFFF_MMMM.nii.gz`` with ``FFFF``/``MMMM`` the
fixed and moving case ids (the official evaluation's short name; used when both images share the modality
suffix or are ``_0000``/``_0001``), otherwise ``disp_FFFF_ffff_MMMM_mmmm.nii.gz``.

Examples:
    >>> ds = Learn2RegDataset("/data/NLST")                          # finds NLST_dataset.json
    >>> pairs = ds.pairs("val")                                     # alias of registration_val
    >>> pairs[0].disp_name
    'disp_0101_0101.nii.gz'
    >>> data = ds.load_pair(pairs[0])                               # MONAI LoadImaged + LoadKeypointsd
    >>> data["fixed"].shape, data["fixed_keypoints"].affine.shape
    (torch.Size([1, 224, 192, 224]), torch.Size([4, 4]))
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, LoadImaged, Transform

from .._validation import suggest
from ..errors import MissingFileError, UserInputError
from ..spatial.grid import Grid

__all__ = [
    "IMAGE_KEYS",
    "KEYPOINT_KEYS",
    "LABEL_KEYS",
    "MASK_KEYS",
    "SPLITS",
    "SPLIT_ALIASES",
    "Learn2RegDataset",
    "Learn2RegPair",
    "case_id",
    "field_file_shape",
    "find_dataset_json",
    "find_field",
    "image_affine",
    "image_grid",
    "locate_fields",
    "pair_loading_transforms",
]

#: The pair lists a Learn2Reg description may hold.
SPLITS = ("training_paired_images", "registration_val", "registration_test")
#: Short names accepted for :data:`SPLITS`.
SPLIT_ALIASES = {
    "train": "training_paired_images",
    "training": "training_paired_images",
    "val": "registration_val",
    "validation": "registration_val",
    "test": "registration_test",
}

IMAGE_KEYS = ("fixed", "moving")
MASK_KEYS = ("fixed_mask", "moving_mask")
LABEL_KEYS = ("fixed_label", "moving_label")
KEYPOINT_KEYS = ("fixed_keypoints", "moving_keypoints")

_NAME = re.compile(r"^(?P<prefix>.*)_(?P<case>[^_]+)_(?P<modality>[^_]+)$")
_IMAGE_EXTS = (".nii.gz", ".nii", ".mha", ".nrrd")


def _stem(path: str | Path) -> str:
    name = Path(path).name
    for ext in _IMAGE_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def case_id(path: str | Path) -> tuple[str, str]:
    """``(case, modality)`` of a Learn2Reg image name: ``"./imagesTr/NLST_0101_0001.nii.gz"`` -> ``("0101", "0001")``.

    Raises:
        ValueError: the name does not follow ``PREFIX_CASE_MODALITY.ext``.
    """
    m = _NAME.match(_stem(path))
    if not m:
        raise UserInputError(
            f"case_id: image name {Path(path).name!r} must follow the Learn2Reg pattern PREFIX_CASE_MODALITY.nii.gz "
            "(e.g. NLST_0101_0000.nii.gz)."
        )
    return m.group("case"), m.group("modality")


@dataclass(frozen=True)
class Learn2RegPair:
    """One fixed/moving pair of a Learn2Reg split with the files found for it.

    Attributes:
        fixed, moving: image paths.
        fixed_mask, moving_mask: ``masksTr``-style masks of the same name, or ``None``.
        fixed_label, moving_label: ``labelsTr``-style label maps of the same name, or ``None``.
        fixed_keypoints, moving_keypoints: ``keypointsTr``-style ``NAME.csv`` files, or ``None``.
        fixed_case, moving_case: case ids (``"0101"``).
        fixed_modality, moving_modality: modality/time-point suffixes (``"0000"``, ``"0001"``).
    """

    fixed: Path
    moving: Path
    fixed_mask: Path | None = None
    moving_mask: Path | None = None
    fixed_label: Path | None = None
    moving_label: Path | None = None
    fixed_keypoints: Path | None = None
    moving_keypoints: Path | None = None
    fixed_case: str = ""
    moving_case: str = ""
    fixed_modality: str = "0000"
    moving_modality: str = "0001"

    @property
    def short_names(self) -> bool:
        """Whether the official short field name ``disp_FFFF_MMMM`` applies (same modality, or 0000 -> 0001)."""
        return self.fixed_modality == self.moving_modality or (self.fixed_modality, self.moving_modality) == ("0000", "0001")

    @property
    def key(self) -> str:
        """Case key ``"FFFF_MMMM"`` (``"FFFF_ffff_MMMM_mmmm"`` when modalities differ otherwise)."""
        if self.short_names:
            return f"{self.fixed_case}_{self.moving_case}"
        return f"{self.fixed_case}_{self.fixed_modality}_{self.moving_case}_{self.moving_modality}"

    def field_name(self, fmt: str = ".nii.gz") -> str:
        """The field's file name in a submission: ``disp_{key}{fmt}`` (``fmt``: ``.nii.gz``, ``.nii`` or ``.npz``)."""
        fmt = fmt if fmt.startswith(".") else f".{fmt}"
        if fmt not in (".nii.gz", ".nii", ".npz"):
            raise UserInputError(f"Learn2RegPair.field_name: fmt must be '.nii.gz', '.nii' or '.npz', got {fmt!r}.")
        return f"disp_{self.key}{fmt}"

    @property
    def disp_name(self) -> str:
        """``disp_FFFF_MMMM.nii.gz``."""
        return self.field_name(".nii.gz")

    def as_dict(self) -> dict[str, str]:
        """The pair as a MONAI data dict of path strings (only the files that exist)."""
        out = {}
        for k in (*IMAGE_KEYS, *MASK_KEYS, *LABEL_KEYS, *KEYPOINT_KEYS):
            v = getattr(self, k)
            if v is not None:
                out[k] = str(v)
        return out


def pair_loading_transforms(keys: Sequence[str]) -> Compose:
    """MONAI pipeline loading a pair dict: images/masks/labels with ``LoadImaged`` (channel first, float32
    images), then keypoints with :class:`monai_contreg.data.keypoints.LoadKeypointsd`, carrying their image's affine.

    Args:
        keys: the keys present in the data dict (any of ``fixed``, ``moving``, ``*_mask``, ``*_label``,
            ``*_keypoints``).
    """
    volumes = [k for k in (*IMAGE_KEYS, *MASK_KEYS, *LABEL_KEYS) if k in keys]
    images = [k for k in IMAGE_KEYS if k in keys]
    kps = [k for k in KEYPOINT_KEYS if k in keys]
    chain: list[Transform] = []
    if volumes:
        chain.append(LoadImaged(volumes, image_only=True, ensure_channel_first=True))
    if images:
        chain.append(EnsureTyped(images, data_type="tensor", dtype=torch.float32, track_meta=True))
    if kps:
        from .keypoints import LoadKeypointsd

        refs = [k.replace("_keypoints", "") if k.replace("_keypoints", "") in keys else None for k in kps]
        chain.append(LoadKeypointsd(kps, ref_keys=refs))
    return Compose(chain)


def find_dataset_json(path: str | Path) -> Path:
    """The dataset description: ``path`` itself if it is a file, else the one ``*_dataset.json`` inside ``path``.

    Raises:
        FileNotFoundError: no such folder, or no ``*_dataset.json`` in it.
        ValueError: several descriptions in the folder (pass the file itself).
    """
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise MissingFileError(f"find_dataset_json: dataset path {str(p)!r} does not exist.")
    found = sorted(p.glob("*_dataset.json")) or sorted(p.glob("dataset.json"))
    if not found:
        raise MissingFileError(
            f"find_dataset_json: no Learn2Reg description (*_dataset.json, e.g. NLST_dataset.json) in {str(p)!r}."
        )
    if len(found) > 1:
        raise UserInputError(
            f"find_dataset_json: several descriptions in {str(p)!r}: {[f.name for f in found]}; pass the json file itself."
        )
    return found[0]


class Learn2RegDataset:
    """A Learn2Reg dataset folder and its description.

    Args:
        path: the dataset folder (holding one ``*_dataset.json``) or the description file itself.

    Attributes:
        root: the dataset folder (paths in the description are relative to it).
        json_path: the description file.
        description: the parsed description.
        name: the dataset name (``"NLST"``).

    Raises:
        FileNotFoundError: missing folder or description.
        ValueError: the description is not valid JSON or not an object.
    """

    def __init__(self, path: str | Path) -> None:
        self.json_path = find_dataset_json(path)
        self.root = self.json_path.parent
        try:
            desc = json.loads(self.json_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserInputError(f"Learn2RegDataset: cannot read dataset description {str(self.json_path)!r}: {exc}") from exc
        if not isinstance(desc, dict):
            raise UserInputError(
                f"Learn2RegDataset: dataset description {str(self.json_path)!r} must hold a JSON object, got {type(desc).__name__}."
            )
        self.description: dict[str, Any] = desc
        self._listed_cache = self._listed()
        self.name = str(desc.get("name") or self.json_path.name.replace("_dataset.json", ""))

    def __repr__(self) -> str:
        return f"Learn2RegDataset(name={self.name!r}, root={str(self.root)!r})"

    @property
    def expected_shape(self) -> tuple[int, int, int] | None:
        """The image shape the description declares (``tensorImageShape["0"]``), or ``None``."""
        shapes = self.description.get("tensorImageShape")
        if isinstance(shapes, dict) and shapes:
            first = shapes.get("0", next(iter(shapes.values())))
            return tuple(int(s) for s in first)[:3]  # type: ignore[return-value]
        return None

    @property
    def splits(self) -> list[str]:
        """The pair lists present in the description (non-empty or not)."""
        return [s for s in SPLITS if isinstance(self.description.get(s), list)]

    def resolve_split(self, split: str) -> str:
        """Map a split name or alias (``"val"``) to its key in the description (``"registration_val"``).

        Raises:
            ValueError: unknown split, naming the valid ones and the nearest.
        """
        key = SPLIT_ALIASES.get(split, split)
        if key in SPLITS:
            if key not in self.description:
                raise UserInputError(
                    f"Learn2RegDataset.pairs: split {split!r} ({key}) is not in {self.json_path.name}; "
                    f"it lists {self.splits}."
                )
            return key
        names = [*SPLITS, *SPLIT_ALIASES]
        raise UserInputError(
            f"Learn2RegDataset.pairs: unknown split {split!r}; expected one of {names}.{suggest(split, names)}"
        )

    def _path(self, rel: str) -> Path:
        return (self.root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)

    def _listed(self) -> dict[Path, dict[str, Path]]:
        # per-image entries of "training"/"test" ({"image", "mask", "keypoints", "label"}), when the description has them
        out: dict[Path, dict[str, Path]] = {}
        for section in ("training", "test"):
            for e in self.description.get(section) or []:
                if isinstance(e, dict) and isinstance(e.get("image"), str):
                    out[self._path(e["image"])] = {
                        k: self._path(e[k]) for k in ("mask", "keypoints", "label") if isinstance(e.get(k), str)
                    }
        return out

    def _sibling(self, image: Path, folder: str, ext: str | None = None) -> Path | None:
        # an explicit entry of the description wins; else imagesTr/NAME.nii.gz -> masksTr/NAME.nii.gz (Ts alike)
        listed = self._listed_cache.get(image, {}).get({"masks": "mask", "labels": "label"}.get(folder, folder))
        if listed is not None and listed.is_file():
            return listed
        parent = image.parent.name
        if not parent.startswith("images"):
            return None
        name = image.name if ext is None else _stem(image) + ext
        cand = image.parent.parent / (folder + parent[len("images"):]) / name
        return cand if cand.is_file() else None

    def pairs(self, split: str = "registration_val", check_files: bool = True) -> list[Learn2RegPair]:
        """The pairs of ``split`` with their masks, labels and keypoints: those named by the description's
        per-image ``training``/``test`` entries (``{"image", "mask", "keypoints", "label"}``) when present,
        else found by the Learn2Reg layout (``masksTr/NAME.nii.gz``, ``keypointsTr/NAME.csv``, ...).

        Args:
            split: ``training_paired_images``, ``registration_val``, ``registration_test`` or an alias
                (``train``, ``val``, ``test``).
            check_files: raise if an image listed in the split does not exist.

        Raises:
            ValueError: unknown split or malformed entries; FileNotFoundError: missing images.
        """
        key = self.resolve_split(split)
        entries = self.description.get(key) or []
        out = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or "fixed" not in e or "moving" not in e:
                raise UserInputError(
                    f"Learn2RegDataset.pairs: entry {i} of {key!r} in {self.json_path.name} must have 'fixed' and "
                    f"'moving' paths, got {e!r}."
                )
            fixed, moving = self._path(e["fixed"]), self._path(e["moving"])
            if check_files:
                for role, p in (("fixed", fixed), ("moving", moving)):
                    if not p.is_file():
                        raise MissingFileError(
                            f"Learn2RegDataset.pairs: {role} image {str(p)!r} of {key!r} entry {i} "
                            f"(listed in {self.json_path.name}) does not exist."
                        )
            fc, fm = case_id(fixed)
            mc, mm = case_id(moving)
            out.append(
                Learn2RegPair(
                    fixed=fixed,
                    moving=moving,
                    fixed_mask=self._sibling(fixed, "masks"),
                    moving_mask=self._sibling(moving, "masks"),
                    fixed_label=self._sibling(fixed, "labels"),
                    moving_label=self._sibling(moving, "labels"),
                    fixed_keypoints=self._sibling(fixed, "keypoints", ".csv"),
                    moving_keypoints=self._sibling(moving, "keypoints", ".csv"),
                    fixed_case=fc,
                    moving_case=mc,
                    fixed_modality=fm,
                    moving_modality=mm,
                )
            )
        return out

    def load_pair(self, pair: Learn2RegPair, keys: Sequence[str] | None = None) -> dict[str, Any]:
        """Load a pair with MONAI transforms (:func:`pair_loading_transforms`).

        Args:
            pair: a pair of this dataset.
            keys: the keys to load (default: every file the pair has).

        Returns:
            ``{"fixed", "moving": (1, H, W, D) float32 MetaTensors, "*_mask"/"*_label": (1, H, W, D)
            MetaTensors, "*_keypoints": (N, 3) float64 MetaTensors carrying their image's affine}``.
        """
        d = pair.as_dict()
        if keys is not None:
            unknown = [k for k in keys if k not in (*IMAGE_KEYS, *MASK_KEYS, *LABEL_KEYS, *KEYPOINT_KEYS)]
            if unknown:
                names = [*IMAGE_KEYS, *MASK_KEYS, *LABEL_KEYS, *KEYPOINT_KEYS]
                raise UserInputError(
                    f"Learn2RegDataset.load_pair: unknown keys {unknown}; expected some of {names}."
                    f"{suggest(unknown[0], names)}"
                )
            missing = [k for k in keys if k not in d]
            if missing:
                raise MissingFileError(
                    f"Learn2RegDataset.load_pair: pair {pair.key} has no file for {missing} "
                    f"(looked beside {str(pair.fixed.parent)!r} in the Learn2Reg layout)."
                )
            d = {k: d[k] for k in keys}
        out = pair_loading_transforms(list(d))(d)
        for k in KEYPOINT_KEYS:
            img = k.replace("_keypoints", "")
            if k in out and img not in out:  # image not loaded: take its affine from the header
                out[k].affine = image_grid(getattr(pair, img)).affine_tensor()
        return out


def image_grid(path: str | Path) -> Grid:
    """The :class:`~monai_contreg.spatial.grid.Grid` of an image file: read from its header only (NIfTI) or via
    ``LoadImage``.

    Raises:
        MissingFileError: no such file.
        UserInputError: an affine that is not a finite invertible 4x4.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"image_grid: image file {str(p)!r} does not exist.")
    if p.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(p))
        return Grid.for_array(f"image_grid({str(p)!r})", img.shape[:3], img.affine)
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True)(str(p))
    return Grid.for_array(f"image_grid({str(p)!r})", img.shape[-3:], img.affine)


def image_affine(path: str | Path) -> np.ndarray:
    """The 4x4 voxel-to-world matrix of an image file (:func:`image_grid`'s affine, a writeable copy)."""
    return np.array(image_grid(path).affine)


_FIELD_EXTS = (".nii.gz", ".nii", ".npz")


def find_field(pair: Learn2RegPair, folder: str | Path) -> Path | None:
    """The field file of ``pair`` in ``folder`` (``disp_{key}`` + ``.nii.gz``/``.nii``/``.npz``), or ``None``.

    Also accepts the long name ``disp_FFFF_ffff_MMMM_mmmm`` that the official evaluation allows.
    """
    base = Path(folder)
    long_key = f"{pair.fixed_case}_{pair.fixed_modality}_{pair.moving_case}_{pair.moving_modality}"
    for key in dict.fromkeys((pair.key, long_key)):
        for ext in _FIELD_EXTS:
            cand = base / f"disp_{key}{ext}"
            if cand.is_file():
                return cand
    return None


def field_file_shape(path: str | Path) -> tuple[int, ...]:
    """The array shape stored in a field file (NIfTI: from the header only; ``.npz``: the single array)."""
    p = Path(path)
    try:
        if p.name.endswith(".npz"):
            with np.load(p) as z:
                if len(z.files) != 1:
                    raise UserInputError(f"expected one array, found {z.files}")
                return tuple(int(s) for s in z[z.files[0]].shape)
        import nibabel as nib

        return tuple(int(s) for s in nib.load(str(p)).shape)
    except Exception as exc:
        raise UserInputError(f"field_file_shape: cannot read field file {str(p)!r}: {exc}") from exc


def locate_fields(
    pairs: Sequence[Learn2RegPair], folder: str | Path, expected_shape: Sequence[int] | None = None
) -> dict[str, Path]:
    """Find the field of every pair in ``folder`` and check its shape, before any work is done on them.

    Args:
        pairs: the pairs of a split.
        folder: where the ``disp_*`` files are.
        expected_shape: ``(H, W, D)`` every field must have (as ``(H, W, D, 3)``); ``None`` skips the check.

    Returns:
        ``{pair.key: path}``.

    Raises:
        FileNotFoundError: listing every missing field; ValueError: listing every field of the wrong shape.
    """
    found: dict[str, Path] = {}
    missing = []
    for pair in pairs:
        p = find_field(pair, folder)
        if p is None:
            missing.append(pair.disp_name)
        else:
            found[pair.key] = p
    if missing:
        raise MissingFileError(
            f"locate_fields: {len(missing)} of {len(pairs)} field(s) missing in {str(folder)!r}: {missing}."
        )
    if expected_shape is not None:
        want = (*(int(s) for s in expected_shape), 3)
        bad = {}
        for key, p in found.items():
            shape = field_file_shape(p)
            if shape != want:
                bad[p.name] = shape
        if bad:
            raise UserInputError(
                f"locate_fields: field shape must be {want} (the dataset's tensorImageShape + 3 channels); "
                f"wrong: {bad}."
            )
    return found
