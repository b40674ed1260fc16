import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_contreg import RegistrationConfig, get_preset, register
from monai_contreg.data.demo import make_demo_pair
from monai_contreg.io.fields import load_field


def _quick(steps=40):
    cfg = get_preset("io")
    s = cfg.optim.schedule
    s.peak_lr, s.constant_steps, s.cosine_end, s.total_steps, s.linear_start_lr, s.final_lr = 1.0, steps, steps, steps, 1.0, 1.0
    return cfg


@pytest.fixture(scope="module")
def pair():
    return make_demo_pair(shape=(48, 40, 48), spacing=(3.0, 3.0, 3.0), max_motion=3.0, n_keypoints=100, seed=1)


def test_register_arrays_improves_tre(pair):
    res = register(pair.fixed, pair.moving, spacing=pair.spacing, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, config=_quick())
    assert res.ddf.shape == (1, 3, 48, 40, 48)
    before = np.linalg.norm((pair.fixed_keypoints - pair.moving_keypoints) * 3.0, axis=1).mean()
    after = res.tre(pair.fixed_keypoints, pair.moving_keypoints, pair.spacing).mean().item()
    assert after < 0.6 * before
    assert res.steps == 40 and len(res.history["loss"]) == 40
    assert set(res.timings) >= {"load", "features", "optimisation", "total"}
    assert res.jacobian_statistics()["folding_percent"] < 0.1
    from monai_contreg.kernels import extension_status

    assert res.kernels == ("compiled" if extension_status().startswith("compiled") else "pytorch")


def test_register_files_and_metatensor_agree(pair, tmp_path):
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    paths = {}
    for k in ("fixed", "moving", "fixed_mask", "moving_mask"):
        paths[k] = tmp_path / f"{k}.nii.gz"
        nib.save(nib.Nifti1Image(getattr(pair, k).astype(np.float32), aff), str(paths[k]))
    a = register(paths["fixed"], paths["moving"], fixed_mask=paths["fixed_mask"], moving_mask=paths["moving_mask"], config=_quick(10))
    b = register(
        MetaTensor(torch.as_tensor(pair.fixed), affine=torch.as_tensor(aff)), torch.as_tensor(pair.moving),
        fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, spacing=pair.spacing, config=_quick(10),
    )
    assert torch.allclose(a.ddf.as_tensor(), b.ddf.as_tensor(), atol=1e-4)
    assert a.spacing == pytest.approx((3.0, 3.0, 3.0))
    out = a.save(tmp_path / "disp.nii.gz")
    ddf, affine = load_field(out)
    assert np.allclose(affine, aff) and torch.allclose(ddf, a.ddf.as_tensor(), atol=1e-6)


def test_bad_inputs_named(pair, tmp_path):
    f, m = pair.fixed, pair.moving
    sp = {"spacing": pair.spacing}
    with pytest.raises(ValueError, match=r"register: moving must be a 3-D volume"):
        register(f, np.zeros((2, 3)), **sp)
    with pytest.raises(FileNotFoundError, match=r"register: fixed file '.*nope.nii.gz' does not exist"):
        register(str(tmp_path / "nope.nii.gz"), m, **sp)
    bad = f.copy()
    bad[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match=r"register: fixed contains 1 NaN"):
        register(bad, m, **sp)
    with pytest.raises(ValueError, match=r"register: moving_mask is empty"):
        register(f, m, fixed_mask=pair.fixed_mask, moving_mask=np.zeros_like(pair.moving_mask), **sp)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match=r"register: cannot read fixed"):
        register(str(corrupt), m, **sp)
    with pytest.raises(ValueError, match=r"unknown preset 'i0'"):
        register(f, m, config="i0", **sp)
    with pytest.raises(TypeError, match=r"register: fixed must be a file path"):
        register([1, 2, 3], m, **sp)


def test_dtype_follows_input_or_option(pair):
    res = register(pair.fixed.astype(np.float64), pair.moving.astype(np.float64), spacing=pair.spacing, config=_quick(3))
    assert res.ddf.dtype == torch.float64
    res32 = register(pair.fixed, pair.moving, spacing=pair.spacing, config=_quick(3), dtype=torch.float32)
    assert res32.ddf.dtype == torch.float32
    with pytest.raises(ValueError, match="register: dtype must be torch.float32 or torch.float64"):
        register(pair.fixed, pair.moving, spacing=pair.spacing, config=_quick(3), dtype=torch.float16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(pair):
    cpu = register(pair.fixed, pair.moving, spacing=pair.spacing, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, config=_quick(20))
    gpu = register(pair.fixed, pair.moving, spacing=pair.spacing, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, config=_quick(20), device="cuda")
    assert gpu.ddf.device.type == "cuda"
    assert torch.allclose(gpu.ddf.as_tensor().cpu(), cpu.ddf.as_tensor(), atol=1e-2)


def test_device_option_without_cuda(pair):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="register: device 'cuda' requested but CUDA is not available"):
        register(pair.fixed, pair.moving, spacing=pair.spacing, config=_quick(3), device="cuda")
