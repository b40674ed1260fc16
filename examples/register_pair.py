"""Register one pair with the Python API and report TRE before/after.

    python examples/register_pair.py                     # built-in synthetic demo pair
    python examples/register_pair.py --nlst ../shared/data/nlst_synth --case 0102 [--preset io]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from monai_contreg import register
from monai_contreg.data import load_keypoints, make_demo_pair
from monai_contreg.evaluation import keypoint_tre


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nlst", type=Path, help="a Learn2Reg NLST-layout folder (imagesTr, masksTr, keypointsTr)")
    ap.add_argument("--case", default="0101")
    ap.add_argument("--preset", default="io")
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--out", type=Path, help="write the field here (.nii.gz)")
    args = ap.parse_args(argv)
    from monai_contreg import get_preset

    cfg = get_preset(args.preset).with_overrides(args.set)
    if args.nlst:
        img = sorted((args.nlst / "imagesTr").glob(f"*_{args.case}_0000.nii.gz"))
        if not img:
            raise SystemExit(f"no fixed image for case {args.case} in {args.nlst / 'imagesTr'}")
        stem = img[0].name[: -len("_0000.nii.gz")]
        f, m = (args.nlst / "imagesTr" / f"{stem}_{i}.nii.gz" for i in ("0000", "0001"))
        fm, mm = (args.nlst / "masksTr" / f"{stem}_{i}.nii.gz" for i in ("0000", "0001"))
        fk = load_keypoints(args.nlst / "keypointsTr" / f"{stem}_0000.csv")
        mk = load_keypoints(args.nlst / "keypointsTr" / f"{stem}_0001.csv")
        res = register(f, m, fixed_mask=fm, moving_mask=mm, config=cfg)
    else:
        pair = make_demo_pair()
        fk, mk = torch.as_tensor(pair.fixed_keypoints), torch.as_tensor(pair.moving_keypoints)
        res = register(pair.fixed, pair.moving, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, spacing=pair.spacing,
                       config=cfg)
    before = keypoint_tre(torch.zeros_like(res.ddf.as_tensor()), fk, mk, res.spacing).mean().item()
    after = res.tre(fk, mk).mean().item()
    stats = res.jacobian_statistics()
    print(f"TRE {before:.3f} -> {after:.3f} mm, SDlogJ {stats['sdlogj']:.4f}, {res.steps} steps, {res.timings['total']:.1f} s")
    if args.out:
        res.save(args.out)
    return {"before": before, "after": after, **stats}


if __name__ == "__main__":
    main()
