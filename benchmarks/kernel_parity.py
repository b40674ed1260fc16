"""How far the compiled CPU kernels and the PyTorch (grid_sample + autograd) path drift apart in a whole run.

Both paths compute the same loss and gradient to float rounding per step; over hundreds of Adam steps the
rounding differences grow where the loss is flat or non-smooth. This registers one pair twice from a zero field,
default preset, once per path, and prints the largest and typical field difference (voxels) and both TREs.

    python benchmarks/kernel_parity.py [--data ../shared/data/nlst_synth] [--case 0101] [--preset io] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "nlst_synth")
    ap.add_argument("--case", default="0101")
    ap.add_argument("--preset", default="io")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from monai_contreg import get_preset, register
    from monai_contreg.data.keypoints import load_keypoints

    d = args.data
    stem = sorted((d / "imagesTr").glob(f"*_{args.case}_0000.nii.gz"))[0].name[: -len("_0000.nii.gz")]
    files = {k: d / sub / f"{stem}_{i}.nii.gz" for k, sub, i in (("fixed", "imagesTr", "0000"), ("moving", "imagesTr", "0001"),
                                                                ("fixed_mask", "masksTr", "0000"), ("moving_mask", "masksTr", "0001"))}
    fk = load_keypoints(d / "keypointsTr" / f"{stem}_0000.csv")
    mk = load_keypoints(d / "keypointsTr" / f"{stem}_0001.csv")
    out, fields = {}, {}
    for label, fused in (("compiled", None), ("pytorch", False)):
        cfg = get_preset(args.preset).with_overrides([*args.set, f"engine.fused={'null' if fused is None else 'false'}"])
        res = register(files["fixed"], files["moving"], fixed_mask=files["fixed_mask"], moving_mask=files["moving_mask"],
                       config=cfg)
        fields[label] = res.ddf.as_tensor().double()
        out[label] = {"kernels": res.kernels, "tre_mm": float(res.tre(fk, mk).mean()), "seconds": res.timings["total"]}
    diff = (fields["compiled"] - fields["pytorch"]).norm(dim=1).flatten()
    out["field_diff_voxels"] = {"max": float(diff.max()), "p99.9": float(torch.quantile(diff[::7], 0.999)),
                                "mean": float(diff.mean())}
    out["tre_diff_mm"] = abs(out["compiled"]["tre_mm"] - out["pytorch"]["tre_mm"])
    print(json.dumps({"case": args.case, "preset": args.preset, "threads": args.threads, **out}, indent=2))
    return out


if __name__ == "__main__":
    main()
