"""Evaluate Learn2Reg displacement fields of a dataset split, as the official Learn2Reg script does, and more.

Per pair (``"FFFF_MMMM"``), each metric is ``{"mean": value, "detailed": value or per-item list}``:

* ``TRE_kp``: keypoint TRE (mm), ``|(p_f + u(p_f) - p_m) * spacing|`` with ``u`` sampled trilinearly
  (:func:`~monai_contreg.evaluation.metrics.keypoint_tre`); ``detailed`` lists every keypoint.
* ``TRE_kp_official``: the same with ``u`` sampled as the official script does (``scipy`` ``map_coordinates``,
  default cubic spline, zero outside); ``TRE_kp_initial``: the zero field's TRE.
  TRE uses the moving image's spacing (as the official script; NLST images share one spacing).
* ``LogJacDetStd``: the official SDlogJ, std of ``log(clip(det J + 3, 1e-9, 1e9))``, central differences,
  2-voxel border cropped, over the fixed mask when there is one (the official ``masked_evaluation``).
  When the fixed mask is empty inside that border the statistics cover the whole grid, and the results say so
  (``settings["masked_evaluation"]`` is then false and ``settings["unmasked_cases"]`` lists the pairs).
* ``SDlogJ``: the true std of ``log det J`` over the same voxels; ``folding_percent``: % of ``det J <= 0`` over the
  whole cropped grid and ``folding_voxels`` their count.
* ``num_foldings``: the official script's figure: voxels with ``clip(det J + 3, 1e-9, 1e9) <= 0`` (tested after its
  clip, so 0 for every field; kept under the official key with the official meaning; see ``folding_voxels``).
* ``Dice`` / ``Dice_initial``: on label maps (``labelsTr``) when present, else on the masks; the moving map is
  warped with nearest-neighbour interpolation, background outside the image; per-label values in ``detailed``
  (``nan`` where a label is absent from the fixed or moving map, as the official script).
* ``HD95``: the official definition (DeepMind ``surface_distance``: area-weighted surfels, unit spacing, so in
  voxels; :func:`~monai_contreg.evaluation.metrics.hd95_learn2reg`); ``HD95_mm``: this package's voxel-surface
  figure in millimetres (:func:`~monai_contreg.evaluation.metrics.hd95`).
* ``runtime``: seconds, when the run logged it (``runtimes.json`` beside the fields).
* ``keypoints_excluded`` (only with ``exclude_outside_keypoints``): how many keypoint pairs were left out of the
  TRE because the fixed point lies outside the fixed image or the moving point outside the moving image
  (:func:`~monai_contreg.data.keypoints.keypoints_outside`); ``detailed`` lists their rows (1-based).

Keypoints outside their image are an error (:class:`~monai_contreg.errors.UserInputError` naming the keypoint
file and the count): the field is not defined there, and a TRE over them scores an extrapolation (an exact field
scored 0.48 mm on such points). ``exclude_outside_keypoints=True`` (``contreg evaluate --exclude-outside-keypoints``)
leaves those pairs out with a warning instead.

``aggregates[metric]`` holds ``mean``, ``std`` (population), ``30``, ``median``, ``min``, ``max`` and ``n`` over the
pairs' means (NaN-aware). ``30`` is the official robustness figure: the 70th percentile for TRE and LogJacDetStd
(the worst 30 % of pairs) and the 30th for Dice and HD95, as the official script stores it; this package's own
metrics follow their direction (30th for ``Dice_initial``, 70th for the others: higher is worse).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.keypoints import describe_outside, keypoints_outside
from ..data.learn2reg import Learn2RegDataset, Learn2RegPair, image_affine, locate_fields
from ..errors import MissingFileError, UserInputError
from ..io.atomic import atomic_path
from ..io.fields import load_field
from ..spatial.conventions import spacing_from_affine
from ..spatial.jacobian import jacobian_determinant
from ..spatial.warp import warp_labels
from .metrics import determinant_statistics, dice, hd95, hd95_learn2reg, keypoint_tre

__all__ = [
    "EVAL_VERSION",
    "RUNTIMES_FILE",
    "aggregate",
    "evaluate_field",
    "evaluate_learn2reg",
    "evaluation_summary",
    "evaluation_table",
    "fields_folder",
    "keypoint_tre_official",
    "load_runtimes",
    "write_evaluation_csv",
    "write_evaluation_json",
]

logger = logging.getLogger(__name__)

EVAL_VERSION = "monai_contreg-learn2reg-1"
#: Name of the run log written by :mod:`monai_contreg.workflow` beside the fields.
RUNTIMES_FILE = "runtimes.json"


def keypoint_tre_official(
    ddf: torch.Tensor, fixed_points: np.ndarray, moving_points: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """Per-keypoint TRE (mm) as the official Learn2Reg script samples ``u``: ``scipy.ndimage.map_coordinates``
    with its defaults (cubic spline, zero outside the grid).

    Args:
        ddf: MONAI DDF ``(1, 3, H, W, D)``.
        fixed_points, moving_points: ``(N, 3)`` voxel coordinates.
        spacing: voxel size (mm).
    """
    from scipy.ndimage import map_coordinates

    arr = ddf[0].detach().cpu().double().numpy()
    fp = np.asarray(fixed_points, dtype=np.float64)
    mp = np.asarray(moving_points, dtype=np.float64)
    u = np.stack([map_coordinates(arr[c], fp.T) for c in range(3)], axis=1)
    return np.linalg.norm((fp + u - mp) * np.asarray(spacing, dtype=np.float64), axis=1)


def _metric(mean: float, detailed: Any = None) -> dict[str, Any]:
    return {"mean": float(mean), "detailed": float(mean) if detailed is None else detailed}


def _round(values, nd: int = 5) -> list[float]:
    return [round(float(v), nd) if math.isfinite(float(v)) else float(v) for v in values]


def evaluate_field(
    ddf: torch.Tensor,
    data: dict[str, Any],
    *,
    fixed_spacing: Sequence[float],
    moving_spacing: Sequence[float],
    masked: bool = True,
    official_tre: bool = True,
    report: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every metric of one pair (see the module docstring).

    Args:
        ddf: MONAI DDF ``(1, 3, H, W, D)`` (voxels, fixed -> moving).
        data: loaded pair dict (:meth:`Learn2RegDataset.load_pair`): any of ``fixed_mask``, ``moving_mask``,
            ``fixed_label``, ``moving_label`` ``(1, H, W, D)``, ``fixed_keypoints``, ``moving_keypoints`` ``(N, 3)``.
        fixed_spacing, moving_spacing: voxel sizes (mm).
        masked: restrict the SDlogJ statistics to the fixed mask when present.
        official_tre: also compute ``TRE_kp_official`` (needs scipy).
        report: if given, receives ``"masked"``: whether the Jacobian statistics were taken over the fixed mask.

    Returns:
        ``{metric: {"mean": float, "detailed": float | list}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    ddf = ddf.detach().cpu().float()
    shape = tuple(ddf.shape[2:])
    for k in ("fixed_mask", "moving_mask", "fixed_label", "moving_label"):
        if k in data and tuple(data[k].shape[-3:]) != shape:
            raise UserInputError(f"evaluate_field: {k} shape {tuple(data[k].shape[-3:])} must equal the field's {shape}.")
    if "fixed_keypoints" in data and "moving_keypoints" in data:
        fk = torch.as_tensor(data["fixed_keypoints"]).as_subclass(torch.Tensor).double()
        mk = torch.as_tensor(data["moving_keypoints"]).as_subclass(torch.Tensor).double()
        tre = keypoint_tre(ddf.double(), fk, mk, moving_spacing).numpy()
        out["TRE_kp"] = _metric(tre.mean(), _round(tre))
        tre0 = keypoint_tre(torch.zeros_like(ddf).double(), fk, mk, moving_spacing).numpy()
        out["TRE_kp_initial"] = _metric(tre0.mean(), _round(tre0))
        if official_tre:
            treo = keypoint_tre_official(ddf, fk.numpy(), mk.numpy(), moving_spacing)
            out["TRE_kp_official"] = _metric(treo.mean(), _round(treo))
    det = jacobian_determinant(ddf.double())[0, 0]
    region = data["fixed_mask"][0] if masked and "fixed_mask" in data else None
    if region is not None and not bool((torch.as_tensor(region)[2:-2, 2:-2, 2:-2] > 0).any()):
        logger.warning("evaluate_field: fixed mask empty inside the 2-voxel border; SDlogJ over the whole grid.")
        region = None
    if report is not None:
        report["masked"] = region is not None
    inside = determinant_statistics(det, region, 2, where="evaluate_field")
    whole = determinant_statistics(det, None, 2, where="evaluate_field") if region is not None else inside
    n_interior = max(1, math.prod(s - 4 for s in shape))
    out["LogJacDetStd"] = _metric(inside["sdlogj_official"])
    out["SDlogJ"] = _metric(inside["sdlogj"])
    out["folding_percent"] = _metric(whole["folding_percent"])
    out["folding_voxels"] = _metric(round(whole["folding_percent"] / 100 * n_interior))
    interior = det[2:-2, 2:-2, 2:-2]
    out["num_foldings"] = _metric(float(((interior + 3).clamp(1e-9, 1e9) <= 0).sum()))
    del det
    fixed_seg = data.get("fixed_label", data.get("fixed_mask"))
    moving_seg = data.get("moving_label", data.get("moving_mask"))
    if fixed_seg is not None and moving_seg is not None:
        f = torch.as_tensor(fixed_seg).as_subclass(torch.Tensor)[0].round().long()
        m = torch.as_tensor(moving_seg).as_subclass(torch.Tensor)[0].round().long()
        warped = warp_labels(m[None, None], ddf)[0, 0]
        labels = sorted(({int(v) for v in torch.unique(f)} | {int(v) for v in torch.unique(m)}) - {0})
        d_after, d_before, h, h_mm = [], [], [], []
        for lab in labels:
            if not bool((f == lab).any()) or not bool((m == lab).any()):
                for v in (d_after, d_before, h, h_mm):
                    v.append(float("nan"))
                continue
            d_after.append(dice(f == lab, warped == lab, [1])[1])
            d_before.append(dice(f == lab, m == lab, [1])[1])
            h.append(hd95_learn2reg(f == lab, warped == lab))
            h_mm.append(hd95(f == lab, warped == lab, fixed_spacing))
        if labels:
            out["Dice"] = _metric(_nanmean(d_after), _round(d_after))
            out["Dice_initial"] = _metric(_nanmean(d_before), _round(d_before))
            out["HD95"] = _metric(_nanmean(h), _round(h))
            out["HD95_mm"] = _metric(_nanmean(h_mm), _round(h_mm))
    return out


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


#: Quantile stored under ``"30"``: the official script's 0.3 for Dice and HD95 (and this package's Dice_initial);
#: 0.7 (the worst 30 % of pairs) for TRE, LogJacDetStd and every other metric (higher is worse).
QUANTILE_30 = {"Dice": 0.3, "HD95": 0.3, "Dice_initial": 0.3}


def aggregate(cases: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Statistics over pairs of each metric's per-pair ``mean``: mean, std (population), ``30`` (the official
    robustness figure: quantile :data:`QUANTILE_30` of the metric, default 0.7), median, min, max and the
    number ``n`` of pairs with a finite value."""
    metrics: list[str] = []
    for c in cases.values():
        metrics.extend(m for m in c if m not in metrics)
    out = {}
    for m in metrics:
        vals = np.asarray([c[m]["mean"] for c in cases.values() if m in c], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            out[m] = {"mean": float("nan"), "std": float("nan"), "30": float("nan"), "median": float("nan"),
                      "min": float("nan"), "max": float("nan"), "n": 0}
            continue
        out[m] = {
            "mean": float(vals.mean()),
            "std": float(vals.std()),
            "30": float(np.quantile(vals, QUANTILE_30.get(m, 0.7))),
            "median": float(np.median(vals)),
            "min": float(vals.min()),
            "max": float(vals.max()),
            "n": int(vals.size),
        }
    return out


def load_runtimes(path: str | Path | None) -> dict[str, float]:
    """Per-pair seconds from a run log (``{"cases": {"FFFF_MMMM": {"seconds": s, ...}}}``); ``{}`` if absent."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        log = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"load_runtimes: cannot read run log {str(p)!r}: {exc}") from exc
    cases = log.get("cases", {}) if isinstance(log, dict) else {}
    return {k: float(v["seconds"]) for k, v in cases.items() if isinstance(v, dict) and v.get("seconds") is not None}


def load_run_quality(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Per-pair landmark-free estimates from a run log (``{"cases": {KEY: {"quality": {...}}}}``); ``{}`` if absent."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        log = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    cases = log.get("cases", {}) if isinstance(log, dict) else {}
    return {k: v["quality"] for k, v in cases.items() if isinstance(v, dict) and isinstance(v.get("quality"), dict)}


@contextlib.contextmanager
def fields_folder(path: str | Path) -> Iterator[Path]:
    """Yield a folder holding the fields: ``path`` itself, or a temporary extraction of a submission zip.

    Raises:
        FileNotFoundError: ``path`` does not exist; ValueError: a zip that cannot be read.
    """
    p = Path(path)
    if p.is_dir():
        yield p
        return
    if not p.is_file():
        raise MissingFileError(f"fields_folder: fields folder or zip {str(p)!r} does not exist.")
    if not zipfile.is_zipfile(p):
        raise UserInputError(f"fields_folder: {str(p)!r} is neither a folder nor a zip archive.")
    with tempfile.TemporaryDirectory(prefix="contreg_eval_") as tmp:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                name = Path(info.filename).name  # flatten; ignore folders and odd paths
                if info.is_dir() or not name or name.startswith("."):
                    continue
                with zf.open(info) as src, open(Path(tmp) / name, "wb") as dst:
                    dst.write(src.read())
        yield Path(tmp)


def evaluate_learn2reg(
    dataset: str | Path | Learn2RegDataset,
    fields: str | Path,
    split: str = "val",
    *,
    runtimes: str | Path | dict[str, float] | None = "auto",
    masked: bool = True,
    official_tre: bool = True,
    check_shape: bool = True,
    on_case: Callable[[str, dict[str, Any]], None] | None = None,
    exclude_outside_keypoints: bool = False,
) -> dict[str, Any]:
    """Evaluate the fields of every pair of a split.

    Args:
        dataset: a :class:`Learn2RegDataset` or its folder / description file.
        fields: folder with ``disp_FFFF_MMMM.{nii.gz,nii,npz}``, or a submission zip.
        split: split name or alias (``val``).
        runtimes: ``"auto"`` (``runtimes.json`` in the fields folder, if any), a run-log path, a
            ``{case: seconds}`` dict, or ``None``.
        masked: SDlogJ over the fixed mask when present (the official NLST setting).
        official_tre: also report ``TRE_kp_official``.
        check_shape: check every field against the dataset's ``tensorImageShape`` before evaluating.
        on_case: called with ``(case key, case results)`` after each pair (progress reporting).
        exclude_outside_keypoints: leave keypoint pairs whose fixed point lies outside the fixed image or whose
            moving point lies outside the moving image out of the TRE, with a warning, and report their count per
            pair (``keypoints_excluded``); ``False``: such keypoints are an error.

    Returns:
        ``{"name", "split", "eval_version", "settings", "aggregates", "cases"}`` (JSON-serialisable).

    Raises:
        FileNotFoundError: missing dataset, description or fields (all missing fields listed);
        ValueError: unknown split, fields of the wrong shape.
        UserInputError: keypoints outside their image (without ``exclude_outside_keypoints``; the message
            names the file and the count) or, with it, none left.
    """
    ds = dataset if isinstance(dataset, Learn2RegDataset) else Learn2RegDataset(dataset)
    pairs = ds.pairs(split)
    key = ds.resolve_split(split)
    if not pairs:
        raise UserInputError(f"evaluate_learn2reg: split {key!r} of {ds.json_path.name} lists no pairs.")
    cases: dict[str, dict[str, Any]] = {}
    unmasked: list[str] = []
    with fields_folder(fields) as folder:
        found = locate_fields(pairs, folder, ds.expected_shape if check_shape else None)
        if isinstance(runtimes, dict):
            times = {k: float(v) for k, v in runtimes.items()}
        elif runtimes == "auto":
            times = load_runtimes(folder / RUNTIMES_FILE)
        else:
            times = load_runtimes(runtimes)
        quality = load_run_quality(folder / RUNTIMES_FILE if runtimes == "auto" else runtimes if isinstance(runtimes, (str, Path)) else None)
        for pair in pairs:
            t0 = time.perf_counter()
            seen: dict[str, Any] = {}
            try:
                cases[pair.key] = _evaluate_pair(ds, pair, found[pair.key], masked, official_tre, seen,
                                                 exclude_outside_keypoints)
            except UserInputError as exc:  # name the pair and where its field came from
                raise UserInputError(
                    f"evaluate_learn2reg: pair {pair.key} (field {found[pair.key].name} in {str(fields)!r}): {exc}"
                ) from exc
            if not seen.get("masked", False):
                unmasked.append(pair.key)
            if pair.key in times:
                cases[pair.key]["runtime"] = _metric(times[pair.key])
            q = quality.get(pair.key)
            if q is not None and q.get("estimated_error_mm") is not None:  # the run's landmark-free estimate
                cases[pair.key]["quality_estimated_error_mm"] = _metric(float(q["estimated_error_mm"]))
            logger.info("evaluated %s in %.1fs", pair.key, time.perf_counter() - t0)
            if on_case is not None:
                on_case(pair.key, cases[pair.key])
    out = {
        "name": ds.name,
        "split": key,
        "eval_version": EVAL_VERSION,
        "settings": {"masked_evaluation": bool(masked) and not unmasked, "unmasked_cases": unmasked if masked else [],
                     "tre_interpolation": "linear",
                     "tre_official_interpolation": "cubic spline (scipy map_coordinates)" if official_tre else None,
                     "jacobian_border": 2, "hd95_units": "voxels (official surface_distance)", "hd95_mm_units": "mm",
                     "label_padding": "zeros", "exclude_outside_keypoints": bool(exclude_outside_keypoints)},
        "aggregates": aggregate(cases),
        "cases": cases,
    }
    if quality:  # the run log's estimates, verdicts and signals (contreg run computes them after each pair)
        out["quality"] = {k: v for k, v in quality.items() if k in cases}
    return out


def _evaluate_pair(
    ds: Learn2RegDataset, pair: Learn2RegPair, field: Path, masked: bool, official_tre: bool, report: dict | None = None,
    exclude_outside: bool = False,
) -> dict:
    ddf, _ = load_field(field)
    bad = int((~torch.isfinite(ddf)).sum())
    if bad:
        raise UserInputError(f"the field holds {bad} NaN or infinite value(s) of {ddf.numel()}; it cannot be scored.")
    want = [k for k in ("fixed_mask", "moving_mask", "fixed_label", "moving_label", "fixed_keypoints", "moving_keypoints")
            if getattr(pair, k) is not None]
    data = ds.load_pair(pair, keys=want) if want else {}
    if "fixed_keypoints" in data and "moving_keypoints" in data:
        nf, nm = len(data["fixed_keypoints"]), len(data["moving_keypoints"])
        if nf != nm:
            raise UserInputError(
                f"fixed keypoints {str(pair.fixed_keypoints)!r} have {nf} rows, moving keypoints "
                f"{str(pair.moving_keypoints)!r} have {nm}; they must pair up row by row."
            )
    fixed_shape = _image_shape(pair.fixed)
    if tuple(ddf.shape[2:]) != fixed_shape:
        raise UserInputError(
            f"evaluate_learn2reg: field {field.name} has grid {tuple(ddf.shape[2:])}, the fixed image {pair.fixed.name} "
            f"has {fixed_shape}."
        )
    excluded = None
    if "fixed_keypoints" in data and "moving_keypoints" in data:
        excluded = _outside_keypoints(pair, data, fixed_shape, _image_shape(pair.moving), exclude_outside)
    out = evaluate_field(
        ddf, data, fixed_spacing=spacing_from_affine(image_affine(pair.fixed)),
        moving_spacing=spacing_from_affine(image_affine(pair.moving)), masked=masked, official_tre=official_tre,
        report=report,
    )
    if exclude_outside and excluded is not None:
        out["keypoints_excluded"] = _metric(float(len(excluded)), [int(r) + 1 for r in excluded])
    return out


def _outside_keypoints(pair: Learn2RegPair, data: dict, fixed_shape, moving_shape, exclude: bool) -> np.ndarray:
    """Check both keypoint files against their images; drop the outside pairs from ``data`` (``exclude``) or raise.

    Returns the 0-based rows left out.
    """
    fk, mk = data["fixed_keypoints"], data["moving_keypoints"]
    f_out, m_out = keypoints_outside(fk, fixed_shape), keypoints_outside(mk, moving_shape)
    notes = [f"{which} keypoints {str(path)!r}: {describe_outside(pts, out, shape)}"
             for which, path, pts, out, shape in (("fixed", pair.fixed_keypoints, fk, f_out, fixed_shape),
                                                  ("moving", pair.moving_keypoints, mk, m_out, moving_shape))
             if out.any()]
    drop = f_out | m_out
    if not notes:
        return np.flatnonzero(drop)
    if not exclude:
        raise UserInputError(
            "; ".join(notes) + ". The field is not defined there (a TRE would score its extrapolation): fix the "
            "keypoint files (voxel coordinates of their own image, array-axis order) or pass "
            "--exclude-outside-keypoints (exclude_outside_keypoints=True) to leave those pairs out.")
    if drop.all():
        raise UserInputError("; ".join(notes) + ": no keypoint pair is left to score.")
    logger.warning("evaluate_learn2reg: pair %s: %s; %d of %d keypoint pairs left out of the TRE "
                   "(--exclude-outside-keypoints).", pair.key, "; ".join(notes), int(drop.sum()), len(drop))
    keep = torch.as_tensor(~drop)
    for k in ("fixed_keypoints", "moving_keypoints"):
        data[k] = data[k][keep]
    return np.flatnonzero(drop)


def _image_shape(path: Path) -> tuple[int, ...]:
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return tuple(int(s) for s in nib.load(str(path)).shape[:3])
    from monai.transforms import LoadImage

    return tuple(int(s) for s in LoadImage(image_only=True)(str(path)).shape[:3])


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_evaluation_json(results: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`evaluate_learn2reg` results as JSON (NaN/inf as ``null``), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(results), indent=2))
    return Path(path)


def evaluation_table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)``: one row per pair (each metric's per-pair mean), then rows ``mean``, ``std``, ``30``."""
    metrics = list(results["aggregates"])
    header = ["case", *metrics]
    rows: list[list[Any]] = [[case, *(c.get(m, {}).get("mean", float("nan")) for m in metrics)]
                             for case, c in results["cases"].items()]
    for stat in ("mean", "std", "30"):
        rows.append([stat, *(results["aggregates"][m][stat] for m in metrics)])
    return header, rows


#: Metrics of :func:`evaluation_summary`: (key, label, format, unit).
_SUMMARY_METRICS = (
    ("TRE_kp", "TRE_kp", ".3f", " mm"),
    ("LogJacDetStd", "LogJacDetStd", ".4f", ""),
    ("SDlogJ", "SDlogJ", ".4f", ""),
    ("folding_percent", "folding", ".4f", "%"),
    ("Dice", "Dice", ".4f", ""),
    ("HD95", "HD95", ".3f", " vox"),
    ("runtime", "runtime", ".1f", " s"),
)


def evaluation_summary(results: dict[str, Any]) -> str:
    """One line of :func:`evaluate_learn2reg` results: the number of pairs and the mean over pairs of the
    main metrics present (``TRE_kp`` with its initial value, ``LogJacDetStd``, ``SDlogJ``, folding, ``Dice``,
    ``HD95`` (official, voxels), ``runtime``)."""
    agg = results["aggregates"]
    parts = []
    for key, label, fmt, unit in _SUMMARY_METRICS:
        if key not in agg or not agg[key]["n"]:
            continue
        text = f"{label} {agg[key]['mean']:{fmt}}{unit}"
        if key == "TRE_kp" and agg.get("TRE_kp_initial", {}).get("n"):
            text += f" (initial {agg['TRE_kp_initial']['mean']:{fmt}}{unit})"
        parts.append(text)
    head = f"{results['name']} {results['split']}: {len(results['cases'])} pairs"
    return f"{head}, mean {', '.join(parts)}" if parts else head


def write_evaluation_csv(results: dict[str, Any], path: str | Path) -> Path:
    """Write the per-pair table of :func:`evaluation_table` as CSV, atomically."""
    header, rows = evaluation_table(results)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([r[0], *(f"{v:.6g}" if isinstance(v, float) else v for v in r[1:])])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return Path(path)
