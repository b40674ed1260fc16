"""Quality-assurance report of a Learn2Reg split: one PNG of slices per pair and a Markdown summary table.

Each pair's figure shows one slice (coronal by default: array axis 1, through the keypoints' median) of
the fixed, moving and warped moving images, the absolute differences before and after registration, a
fixed/warped checkerboard, the Jacobian determinant map (folding, ``det J <= 0``, outlined) and the keypoints
near the slice coloured by their TRE after registration. ``index.md`` tabulates the metrics of every pair
and links the figures.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.learn2reg import Learn2RegDataset, Learn2RegPair, locate_fields
from ..errors import UserInputError
from ..io.atomic import atomic_path
from ..io.fields import load_field
from ..spatial.conventions import spacing_from_affine
from ..spatial.jacobian import jacobian_determinant
from ..spatial.warp import warp_image
from .learn2reg import evaluate_learn2reg, fields_folder
from .metrics import keypoint_tre

__all__ = ["REPORT_COLUMNS", "make_report", "pair_figure", "write_report_index"]

logger = logging.getLogger(__name__)

#: Metrics shown in the summary table, with their headings.
REPORT_COLUMNS = {
    "TRE_kp_initial": "TRE before (mm)",
    "TRE_kp": "TRE after (mm)",
    "LogJacDetStd": "SDlogJ (L2R)",
    "SDlogJ": "SDlogJ (true)",
    "folding_percent": "folding %",
    "Dice": "Dice",
    "HD95": "HD95 (voxels, official)",
    "HD95_mm": "HD95 (mm)",
    "runtime": "runtime (s)",
}


def _slice(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(vol, index, axis=axis)


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    h, w = a.shape
    ii = (np.arange(h) * tiles // max(h, 1))[:, None]
    jj = (np.arange(w) * tiles // max(w, 1))[None, :]
    return np.where((ii + jj) % 2 == 0, a, b)


def pair_figure(
    path: str | Path,
    fixed: np.ndarray,
    moving: np.ndarray,
    ddf: torch.Tensor,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    fixed_keypoints: np.ndarray | None = None,
    moving_keypoints: np.ndarray | None = None,
    axis: int = 1,
    index: int | None = None,
    title: str = "",
    window: tuple[float, float] | None = None,
) -> Path:
    """Draw one pair's QA figure (2 x 4 panels) and save it as PNG, atomically.

    Args:
        path: the PNG file.
        fixed, moving: images ``(H, W, D)``.
        ddf: MONAI DDF ``(1, 3, H, W, D)`` (voxels, fixed -> moving).
        spacing: voxel size (mm), for the aspect ratio and the TRE.
        fixed_keypoints, moving_keypoints: optional ``(N, 3)`` voxel coordinates.
        axis: array axis normal to the slice (1: coronal for NLST).
        index: slice index (default: median keypoint coordinate, else the middle).
        title: figure title.
        window: display intensity range (default: 1st-99th percentile of the fixed image).

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    fixed = np.asarray(fixed, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    shape = fixed.shape
    if moving.shape != shape or tuple(ddf.shape[2:]) != shape:
        raise UserInputError(
            f"pair_figure: fixed {shape}, moving {moving.shape} and ddf {tuple(ddf.shape[2:])} must share one grid."
        )
    if axis not in (0, 1, 2):
        raise UserInputError(f"pair_figure: axis must be 0, 1 or 2, got {axis}.")
    ddf = ddf.detach().cpu().float()
    warped = warp_image(torch.from_numpy(moving)[None, None], ddf)[0, 0].numpy()
    det = jacobian_determinant(ddf.double())[0, 0].float().numpy()
    tre = None
    if fixed_keypoints is not None and moving_keypoints is not None:
        fk = np.asarray(fixed_keypoints, dtype=np.float64)
        tre = keypoint_tre(ddf.double(), torch.from_numpy(fk), torch.as_tensor(np.asarray(moving_keypoints, np.float64)), spacing).numpy()
    if index is None:
        index = int(round(float(np.median(fixed_keypoints[:, axis])))) if fixed_keypoints is not None else shape[axis] // 2
    index = int(min(max(index, 0), shape[axis] - 1))
    lo, hi = window or (float(np.percentile(fixed, 1)), float(np.percentile(fixed, 99)))
    if hi <= lo:
        hi = lo + 1.0
    sl = {name: _slice(v, axis, index).T for name, v in
          (("fixed", fixed), ("moving", moving), ("warped", warped), ("det", det))}
    rest = [a for a in range(3) if a != axis]
    aspect = float(spacing[rest[1]]) / float(spacing[rest[0]])
    fig = Figure(figsize=(16, 8.6), dpi=90)
    axes = fig.subplots(2, 4)
    gray = {"cmap": "gray", "vmin": lo, "vmax": hi, "origin": "lower", "aspect": aspect, "interpolation": "nearest"}
    panels = [
        ("fixed", sl["fixed"], gray),
        ("moving", sl["moving"], gray),
        ("warped moving", sl["warped"], gray),
        ("|fixed - moving|", np.abs(sl["fixed"] - sl["moving"]), {**gray, "cmap": "magma", "vmin": 0, "vmax": (hi - lo) / 2}),
        ("|fixed - warped|", np.abs(sl["fixed"] - sl["warped"]), {**gray, "cmap": "magma", "vmin": 0, "vmax": (hi - lo) / 2}),
        ("checkerboard fixed / warped", _checkerboard(sl["fixed"], sl["warped"]), gray),
    ]
    for ax, (name, img, kw) in zip(axes.flat, panels):
        im = ax.imshow(img, **kw)
        ax.set_title(name)
        if name.startswith("|"):
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax = axes.flat[6]
    im = ax.imshow(sl["det"], cmap="RdBu_r", vmin=0.0, vmax=2.0, origin="lower", aspect=aspect, interpolation="nearest")
    if (sl["det"] <= 0).any():
        ax.contour(sl["det"] <= 0, levels=[0.5], colors="yellow", linewidths=0.8)
    fold = float((det[2:-2, 2:-2, 2:-2] <= 0).mean() * 100) if min(shape) > 4 else float((det <= 0).mean() * 100)
    ax.set_title(f"det J (min {det.min():.2f}, max {det.max():.2f}, fold {fold:.3f}%)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax = axes.flat[7]
    ax.imshow(sl["fixed"], **gray)
    if tre is not None:
        near = np.abs(fk[:, axis] - index) <= 3
        if near.any():
            sc = ax.scatter(fk[near, rest[0]], fk[near, rest[1]], c=tre[near], cmap="viridis", s=10, vmin=0,
                            vmax=max(1.0, float(np.percentile(tre, 99))))
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label="TRE (mm)")
        ax.set_title(f"keypoint TRE (slice +-3: {int(near.sum())} pts; mean {tre.mean():.2f} mm)", fontsize=9)
    else:
        ax.set_title("keypoint TRE (no keypoints)")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    names = "xyz"
    fig.suptitle(f"{title}  slice {names[axis]}={index} (array axis {axis})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report_index(results: dict[str, Any], figures: dict[str, str], path: str | Path) -> Path:
    """Write the Markdown summary: one table row per pair (linking its figure), the aggregates, the figures.

    Args:
        results: :func:`~monai_contreg.evaluation.learn2reg.evaluate_learn2reg` output.
        figures: ``{case key: figure file name relative to the index}``.
        path: the Markdown file (written atomically).
    """
    cols = [c for c in REPORT_COLUMNS if c in results["aggregates"]]
    lines = [f"# QA report: {results['name']} {results['split']}", "",
             f"{len(results['cases'])} pairs; metrics as in `contreg evaluate` ({results.get('eval_version', '')}).", ""]
    lines.append("| pair | " + " | ".join(REPORT_COLUMNS[c] for c in cols) + " | figure |")
    lines.append("|---" * (len(cols) + 2) + "|")
    for case, res in results["cases"].items():
        fig = figures.get(case)
        link = f"[png]({fig})" if fig else ""
        lines.append(f"| {case} | " + " | ".join(_fmt(res.get(c, {}).get("mean")) for c in cols) + f" | {link} |")
    for stat in ("mean", "std", "30"):
        lines.append(f"| **{stat}** | " + " | ".join(_fmt(results["aggregates"][c][stat]) for c in cols) + " | |")
    lines.append("")
    for case, fig in figures.items():
        lines += [f"## {case}", "", f"![{case}]({fig})", ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return Path(path)


def make_report(
    dataset: str | Path | Learn2RegDataset,
    fields: str | Path,
    out_dir: str | Path,
    *,
    split: str = "val",
    results: dict[str, Any] | None = None,
    axis: int = 1,
) -> Path:
    """Write ``out_dir/FFFF_MMMM.png`` for every pair of a split and ``out_dir/index.md``.

    Args:
        dataset: the dataset (folder, description or :class:`Learn2RegDataset`).
        fields: folder of fields or submission zip.
        out_dir: report folder (created).
        split: split name or alias.
        results: precomputed :func:`evaluate_learn2reg` results (computed if ``None``).
        axis: array axis normal to the slices.

    Returns:
        The path of ``index.md``.
    """
    ds = dataset if isinstance(dataset, Learn2RegDataset) else Learn2RegDataset(dataset)
    if results is None:
        results = evaluate_learn2reg(ds, fields, split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = ds.pairs(split)
    figures: dict[str, str] = {}
    with fields_folder(fields) as folder:
        found = locate_fields(pairs, folder, None)
        for pair in pairs:
            figures[pair.key] = _pair_report(ds, pair, found[pair.key], out, axis).name
            logger.info("report figure for %s", pair.key)
    return write_report_index(results, figures, out / "index.md")


def _pair_report(ds: Learn2RegDataset, pair: Learn2RegPair, field: Path, out: Path, axis: int) -> Path:
    keys = ["fixed", "moving"] + [k for k in ("fixed_keypoints", "moving_keypoints") if getattr(pair, k) is not None]
    data = ds.load_pair(pair, keys=keys)
    ddf, _ = load_field(field)
    fk = data["fixed_keypoints"].as_tensor().numpy() if "fixed_keypoints" in data else None
    mk = data["moving_keypoints"].as_tensor().numpy() if "moving_keypoints" in data else None
    spacing = spacing_from_affine(data["moving"].affine)
    return pair_figure(
        out / f"{pair.key}.png", data["fixed"][0].as_tensor().numpy(), data["moving"][0].as_tensor().numpy(), ddf,
        spacing=spacing, fixed_keypoints=fk, moving_keypoints=mk, axis=axis, title=f"{ds.name} {pair.key}",
    )
