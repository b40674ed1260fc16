"""monai_contreg's dictionary transforms in a MONAI Compose: load, register, warp image/mask/keypoints.

    python examples/compose_pipeline.py --nlst ../shared/data/nlst_synth --case 0102
    python examples/compose_pipeline.py              # built-in synthetic pair (written to a temp folder)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose, LoadImaged

from monai_contreg.data import make_demo_pair, save_keypoints
from monai_contreg.pipeline import ApplyDDFd, LoadKeypointsd, RegisterPaird


def demo_files(folder: Path, **kwargs) -> dict[str, str]:
    """Write the synthetic pair as NIfTI/CSV files and return the data dict of paths."""
    pair = make_demo_pair(**kwargs)
    out = {}
    for key in ("fixed", "moving", "fixed_mask", "moving_mask"):
        out[key] = str(folder / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(getattr(pair, key).astype(np.float32), pair.affine), out[key])
    for key in ("fixed_kp", "moving_kp"):
        out[key] = str(folder / f"{key}.csv")
        save_keypoints(out[key], getattr(pair, key.replace("_kp", "_keypoints")))
    return out


def main(argv: list[str] | None = None, demo_kwargs: dict | None = None, config="io") -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nlst", type=Path)
    ap.add_argument("--case", default="0101")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.nlst:
            stem = sorted((args.nlst / "imagesTr").glob(f"*_{args.case}_0000.nii.gz"))[0].name[: -len("_0000.nii.gz")]
            data = {
                "fixed": str(args.nlst / "imagesTr" / f"{stem}_0000.nii.gz"), "moving": str(args.nlst / "imagesTr" / f"{stem}_0001.nii.gz"),
                "fixed_mask": str(args.nlst / "masksTr" / f"{stem}_0000.nii.gz"), "moving_mask": str(args.nlst / "masksTr" / f"{stem}_0001.nii.gz"),
                "fixed_kp": str(args.nlst / "keypointsTr" / f"{stem}_0000.csv"), "moving_kp": str(args.nlst / "keypointsTr" / f"{stem}_0001.csv"),
            }
        else:
            data = demo_files(Path(tmp), **(demo_kwargs or {}))
        pipeline = Compose([
            LoadImaged(["fixed", "moving", "fixed_mask", "moving_mask"], ensure_channel_first=True, image_only=True),
            LoadKeypointsd(["fixed_kp", "moving_kp"], ref_keys=["fixed", "moving"]),
            RegisterPaird("fixed", "moving", "fixed_mask", "moving_mask", ddf_key="ddf", config=config),
            ApplyDDFd(["moving", "moving_mask"], mode=["bilinear", "nearest"], keypoint_keys=["fixed_kp"]),
        ])
        out = pipeline(data)
    spacing = np.linalg.norm(np.asarray(out["ddf"].affine)[:3, :3], axis=0)
    moved = out["fixed_kp"].as_tensor().numpy()
    tre = float(np.linalg.norm((moved - out["moving_kp"].as_tensor().numpy()) * spacing, axis=1).mean())
    print(f"warped moving image {tuple(out['moving'].shape)}, mean TRE after registration {tre:.3f} mm")
    return tre


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
