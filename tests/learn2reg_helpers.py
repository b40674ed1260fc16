"""A tiny synthetic Learn2Reg dataset on disk (demo pairs in the NLST layout), shared by the Learn2Reg tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_contreg.data.demo import make_demo_pair

#: Config overrides that make a registration take a fraction of a second.
FAST = [
    "optim.schedule.total_steps=3",
    "optim.schedule.constant_steps=3",
    "optim.schedule.cosine_end=3",
    "optim.schedule.peak_lr=1",
]


def make_tiny_learn2reg(
    root: Path, n_pairs: int = 2, shape=(32, 32, 32), name: str = "TINY", spacing: float = 2.0, split: str = "registration_val"
) -> Path:
    """Write ``n_pairs`` demo pairs as ``imagesTr/TINY_000k_000{0,1}.nii.gz`` + masks + keypoints + json."""
    root = Path(root)
    for sub in ("imagesTr", "masksTr", "keypointsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    aff = np.diag([spacing, spacing, spacing, 1.0])
    entries = []
    for k in range(n_pairs):
        case = f"{k + 1:04d}"
        pair = make_demo_pair(shape=shape, n_keypoints=40, seed=k, max_motion=2.0)
        for mod, img, mask, kp in (("0000", pair.fixed, pair.fixed_mask, pair.fixed_keypoints),
                                   ("0001", pair.moving, pair.moving_mask, pair.moving_keypoints)):
            stem = f"{name}_{case}_{mod}"
            nib.save(nib.Nifti1Image(img.astype(np.int16), aff), str(root / "imagesTr" / f"{stem}.nii.gz"))
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), str(root / "masksTr" / f"{stem}.nii.gz"))
            np.savetxt(root / "keypointsTr" / f"{stem}.csv", kp, delimiter=",", fmt="%.6f")
        entries.append({"fixed": f"./imagesTr/{name}_{case}_0000.nii.gz", "moving": f"./imagesTr/{name}_{case}_0001.nii.gz"})
    desc = {
        "name": name,
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(shape)},
        "training_paired_images": [],
        "registration_val": [],
        "registration_test": [],
    }
    desc[split] = entries
    (root / f"{name}_dataset.json").write_text(json.dumps(desc, indent=2))
    return root
