"""`contreg evaluate` against the official Learn2Reg evaluation script, on the same fields.

The official code is NOT part of this repository: fetch it yourself (MDL-UzL/L2R, ``evaluation/evaluation.py`` and
``evaluation/utils.py``) into a folder and install DeepMind's ``surface-distance`` (PyPI ``surface-distance``) where
Python finds it (e.g. ``pip install --target /tmp/sd surface-distance`` and ``PYTHONPATH=/tmp/sd``). The official
``utils.py`` imports ``evalutils`` only for an exception class; a stand-in is put in place when it is missing.

    python benchmarks/learn2reg_parity.py DATASET FIELDS --official /tmp/l2r [--split val] [--json out.json]

DATASET: a Learn2Reg folder (``*_dataset.json``); FIELDS: fields of every pair of the split (``contreg run``).
Label maps: ``labelsTr`` when the dataset has them, else the masks (the official script reads
``images -> labels``; a temporary copy of the ground-truth layout links the masks there, as ``contreg evaluate``
does without labels). Prints, per pair and for the aggregates (mean, std, "30"), the official value, ours under the
same key and the largest absolute difference; exit code 1 when any exceeds ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np


def _official_module(folder: Path):
    if "evalutils" not in sys.modules:
        try:
            import evalutils  # noqa: F401
        except ImportError:
            ev = types.ModuleType("evalutils")
            ex = types.ModuleType("evalutils.exceptions")

            class ValidationError(Exception):
                pass

            ex.ValidationError = ValidationError
            ev.exceptions = ex
            sys.modules["evalutils"], sys.modules["evalutils.exceptions"] = ev, ex
    sys.path.insert(0, str(folder))
    import evaluation  # the official evaluation.py

    return evaluation


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("fields", type=Path)
    ap.add_argument("--official", type=Path, required=True, help="folder holding the official evaluation.py and utils.py")
    ap.add_argument("--split", default="val")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--json", type=Path, help="write the comparison here")
    args = ap.parse_args(argv)

    from monai_contreg.data.learn2reg import Learn2RegDataset
    from monai_contreg.evaluation.learn2reg import evaluate_learn2reg

    ds = Learn2RegDataset(args.dataset)
    pairs = ds.pairs(args.split)
    ours = evaluate_learn2reg(ds, args.fields, args.split, runtimes=None)
    has_labels = (ds.root / "labelsTr").is_dir()
    with tempfile.TemporaryDirectory(prefix="l2r_parity_") as tmp:
        gt = Path(tmp) / "gt"
        gt.mkdir()
        for sub in ("imagesTr", "keypointsTr", "masksTr"):
            (gt / sub).symlink_to((ds.root / sub).resolve())
        (gt / "labelsTr").symlink_to((ds.root / ("labelsTr" if has_labels else "masksTr")).resolve())
        labels = sorted({int(v) for p in pairs for v in np.unique(_read(p.fixed_label or p.fixed_mask))} - {0})
        config = {
            "task_name": ds.name, "expected_shape": [*ds.expected_shape, 3], "masked_evaluation": True,
            "eval_pairs": [{"fixed": str(p.fixed.relative_to(ds.root.resolve())), "moving": str(p.moving.relative_to(ds.root.resolve()))}
                           for p in pairs],
            "evaluation_methods": [
                {"name": "TRE_kp", "metric": "tre", "dest": "keypoints"},
                {"name": "LogJacDetStd", "metric": "sdlogj"},
                {"name": "Dice", "metric": "dice", "labels": labels},
                {"name": "HD95", "metric": "hd95", "labels": labels},
            ],
        }
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        official = _official_module(args.official)
        with _fields_named_for_official(args.fields) as folder:
            official.evaluate_L2R(str(folder), str(gt), str(Path(tmp) / "official.json"), str(Path(tmp) / "config.json"))
        off = json.loads((Path(tmp) / "official.json").read_text())
    # the official keys and ours: TRE_kp is sampled by the official script with scipy's cubic spline: our
    # TRE_kp_official; the rest share the key
    key_map = {"TRE_kp": "TRE_kp_official", "LogJacDetStd": "LogJacDetStd", "num_foldings": "num_foldings",
               "Dice": "Dice", "HD95": "HD95"}
    rows, worst = [], 0.0
    for case, metrics in off["cases"].items():
        key = f"{case[:4]}_{case.split('<--')[1][:4]}"
        for m, v in metrics.items():
            a, b = float(v["mean"]), float(ours["cases"][key][key_map[m]]["mean"])
            rows.append((key, m, a, b, abs(a - b)))
    for m, agg in off["aggregates"].items():
        for stat in ("mean", "std", "30"):
            a, b = float(agg[stat]), float(ours["aggregates"][key_map[m]][stat])
            rows.append(("aggregate", f"{m}.{stat}", a, b, abs(a - b)))
    print(f"{'case':<10} {'metric':<20} {'official':>14} {'contreg':>14} {'|diff|':>10}")
    for r in rows:
        print(f"{r[0]:<10} {r[1]:<20} {r[2]:>14.6f} {r[3]:>14.6f} {r[4]:>10.2e}")
        worst = max(worst, r[4])
    print(f"largest |difference| {worst:.3e} (tolerance {args.tol:g})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "max_abs_diff": worst}, indent=2))
    return 0 if worst <= args.tol else 1


def _read(path):
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


class _fields_named_for_official:
    """The official script looks for ``disp_FFFF_MMMM.{nii.gz,npz}``; ``contreg run`` writes those names already."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def __enter__(self) -> Path:
        return self.folder

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
