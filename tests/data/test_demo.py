import numpy as np
import torch

from monai_contreg.data.demo import make_demo_pair
from monai_contreg.spatial.warp import sample_at_points


def test_demo_pair_deterministic_and_consistent():
    a = make_demo_pair(shape=(40, 36, 40), n_keypoints=50, seed=3)
    b = make_demo_pair(shape=(40, 36, 40), n_keypoints=50, seed=3)
    assert np.array_equal(a.fixed, b.fixed) and np.array_equal(a.fixed_keypoints, b.fixed_keypoints)
    assert a.fixed.shape == (40, 36, 40) and a.fixed_mask.sum() > 0 and a.moving_mask.sum() > 0
    assert len(a.fixed_keypoints) == 50
    # correspondences are exact: the noise-free intensity of the moving keypoint equals the fixed one
    c = make_demo_pair(shape=(40, 36, 40), n_keypoints=50, seed=3, noise=0.0)
    fv = sample_at_points(torch.as_tensor(c.fixed)[None, None].double(), torch.as_tensor(c.fixed_keypoints))
    mv = sample_at_points(torch.as_tensor(c.moving)[None, None].double(), torch.as_tensor(c.moving_keypoints))
    # trilinear interpolation of a sampled image: close, not identical
    assert (fv - mv).abs().median() < 60.0


def test_apply_mask_keeps_image_metadata():
    from monai.data import MetaTensor

    from monai_contreg.data.transforms import ApplyMaskd

    img = MetaTensor(torch.ones(1, 4, 4, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    mask = MetaTensor(torch.zeros(1, 4, 4, 4))
    mask[:, :2] = 1
    out = ApplyMaskd(["img"], ["mask"], fill=-1.0)({"img": img, "mask": mask})["img"]
    assert torch.equal(out.affine, img.affine)
    assert out[0, :2].eq(1).all() and out[0, 2:].eq(-1).all()
