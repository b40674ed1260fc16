import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_contreg.data.demo import make_demo_pair
from monai_contreg.data.keypoints import save_keypoints
from monai_contreg.evaluation.metrics import keypoint_tre
from monai_contreg.losses import MINDSSCLoss
from monai_contreg.methods.presets import get_preset
from monai_contreg.pipeline import ApplyDDFd, LoadKeypointsd, RefineHandler, RegisterPaird, refine


def _quick(steps=30):
    cfg = get_preset("io-lr1")
    cfg.optim.schedule.total_steps = cfg.optim.schedule.constant_steps = cfg.optim.schedule.cosine_end = steps
    return cfg


@pytest.fixture(scope="module")
def pair():
    return make_demo_pair(shape=(40, 36, 40), spacing=(3.0, 3.0, 3.0), max_motion=3.0, n_keypoints=60, seed=2)


def test_apply_ddf_known_shift_on_images_labels_keypoints():
    ddf = MetaTensor(torch.zeros(3, 8, 8, 8), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    ddf[0] = 1.0
    img = torch.arange(8.0).view(1, 8, 1, 1).expand(1, 8, 8, 8).contiguous()
    lab = (img > 3).to(torch.int64)
    kp = torch.tensor([[2.0, 3.0, 4.0]], dtype=torch.float64)
    d = ApplyDDFd(["img", "lab"], mode=["bilinear", "nearest"], keypoint_keys="kp")({"img": img, "lab": lab, "kp": kp, "ddf": ddf})
    assert torch.allclose(d["img"][0, :7, 0, 0], torch.arange(1.0, 8.0))
    assert d["lab"].dtype == torch.int64 and d["lab"][0, 3, 0, 0] == 1 and d["lab"][0, 2, 0, 0] == 0
    assert torch.allclose(d["kp"], torch.tensor([[3.0, 3.0, 4.0]], dtype=torch.float64))
    assert torch.allclose(d["img"].affine, ddf.affine)
    with pytest.raises(ValueError, match="ApplyDDFd: unknown mode 'nearst'"):
        ApplyDDFd("img", mode="nearst")


def test_compose_register_then_warp_keypoints(pair, tmp_path):
    save_keypoints(tmp_path / "f.csv", pair.fixed_keypoints)
    pipeline = Compose([
        LoadKeypointsd(["fixed_kp"], ref_keys="fixed"),
        RegisterPaird("fixed", "moving", "fixed_mask", "moving_mask", ddf_key="ddf", config=_quick()),
        ApplyDDFd(["moving"], keypoint_keys=["fixed_kp"]),
    ])
    aff = torch.as_tensor(pair.affine)
    data = {
        "fixed": MetaTensor(torch.as_tensor(pair.fixed)[None], affine=aff),
        "moving": MetaTensor(torch.as_tensor(pair.moving)[None], affine=aff),
        "fixed_mask": torch.as_tensor(pair.fixed_mask)[None], "moving_mask": torch.as_tensor(pair.moving_mask)[None],
        "fixed_kp": str(tmp_path / "f.csv"),
    }
    out = pipeline(data)
    assert out["ddf"].shape == (3, 40, 36, 40) and torch.allclose(out["ddf"].affine.double(), aff.double())
    moved = out["fixed_kp"].as_tensor()
    err_before = np.linalg.norm((pair.fixed_keypoints - pair.moving_keypoints) * 3.0, axis=1).mean()
    err_after = np.linalg.norm((moved.numpy() - pair.moving_keypoints) * 3.0, axis=1).mean()
    assert err_after < 0.6 * err_before
    assert out["moving"].shape == (1, 40, 36, 40)
    assert len(out["ddf_history"]["loss"]) == 30


def test_refine_improves_a_weak_prediction(pair):
    # a "weak network": half of a good field
    good = refine(pair.fixed, pair.moving, torch.zeros(1, 3, 40, 36, 40), fixed_mask=pair.fixed_mask,
                  moving_mask=pair.moving_mask, config=_quick(60), spacing=pair.spacing).ddf.as_tensor()
    weak = 0.5 * good
    fk, mk = torch.as_tensor(pair.fixed_keypoints), torch.as_tensor(pair.moving_keypoints)
    before = keypoint_tre(weak, fk, mk, pair.spacing).mean()
    after = refine(pair.fixed, pair.moving, weak, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, config=_quick(20), spacing=pair.spacing).tre(
        fk, mk, pair.spacing).mean()
    assert after < before


def test_refine_handler_in_an_inference_engine(pair):
    weak = torch.zeros(1, 3, 40, 36, 40)
    batch = {"fixed": torch.as_tensor(pair.fixed)[None, None], "moving": torch.as_tensor(pair.moving)[None, None]}
    eng = Engine(lambda e, b: {"ddf": weak})
    RefineHandler(config=_quick(5), spacing=pair.spacing).attach(eng)
    state = eng.run([batch], max_epochs=1)
    assert state.output["ddf_refined"].shape == (1, 3, 40, 36, 40)
    assert state.output["ddf_refined"].abs().max() > 0


def test_mind_loss():
    loss = MINDSSCLoss()
    a = torch.rand(1, 1, 12, 12, 12, requires_grad=True)
    b = torch.rand(1, 1, 12, 12, 12)
    assert loss(b, b).item() == 0.0
    v = loss(a, b)
    v.backward()
    assert v.item() > 0 and a.grad is not None and torch.isfinite(a.grad).all()
    with pytest.raises(ValueError, match="MINDSSCLoss: pred and target must be single-channel"):
        loss(torch.rand(1, 2, 8, 8, 8), torch.rand(1, 2, 8, 8, 8))
