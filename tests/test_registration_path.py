"""One registration path: each step (load, config, memory estimate) runs once on two grids as on one, the device
is the inputs' own or a UserInputError, api and native no longer import each other, results carry Grids."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import monai_contreg.methods.memory as memory_mod
import monai_contreg.registration as registration
from monai_contreg import register
from monai_contreg.data.demo import make_demo_pair
from monai_contreg.errors import UserInputError
from monai_contreg.methods.config import RegistrationConfig
from monai_contreg.methods.presets import get_preset
from monai_contreg.native import register_native
from monai_contreg.spatial.grid import Grid

FAST = ["optim.schedule.total_steps=4", "optim.schedule.constant_steps=4", "optim.schedule.cosine_end=4",
        "optim.schedule.peak_lr=1"]


@pytest.fixture(scope="module")
def pair():
    return make_demo_pair(shape=(32, 32, 32), n_keypoints=10)


def _two_grids(pair):
    """Fixed on the demo grid; moving on a shifted 2.5 mm grid (another shape): two grids."""
    f = MetaTensor(torch.as_tensor(pair.fixed)[None], affine=torch.as_tensor(pair.affine))
    aff = np.diag([2.5, 2.5, 2.5, 1.0])
    aff[:3, 3] = [1.0, -0.5, 0.75]
    m = MetaTensor(torch.as_tensor(pair.moving[:, :26, :26]).clone()[None], affine=torch.as_tensor(aff))
    return f, m


def _count(monkeypatch, owner, name):
    calls = []
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("grids", ["one", "two"])
def test_every_step_runs_once(pair, monkeypatch, grids):
    """Before, two grids ran the public register twice: the config validated and the memory estimated twice."""
    cfg = get_preset("io").with_overrides(FAST)
    validations = _count(monkeypatch, RegistrationConfig, "validate")
    estimates = _count(monkeypatch, memory_mod, "estimate_memory")
    loads = _count(monkeypatch, registration, "load_inputs")
    if grids == "one":
        res = register(pair.fixed, pair.moving, spacing=pair.spacing, config=cfg)
        assert res.working is None
    else:
        f, m = _two_grids(pair)
        res = register(f, m, config=cfg)
        assert res.working is not None and res.working_grid != res.fixed_grid
    assert res.steps == 4
    assert (len(validations), len(estimates), len(loads)) == (1, 1, 1)


def test_api_and_native_do_not_import_each_other():
    import ast
    import inspect

    import monai_contreg.api as api
    import monai_contreg.native as native

    def imported(mod):
        names = set()
        for node in ast.walk(ast.parse(inspect.getsource(mod))):
            if isinstance(node, ast.ImportFrom):
                names.add(("." * node.level) + (node.module or ""))
        return names

    assert ".native" not in imported(api) and ".api" not in imported(native)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("path", ["one grid", "two grids", "register_native"])
def test_cuda_without_cuda_is_a_user_input_error_on_every_path(pair, path):
    """Before: the two-grid path raised a raw AssertionError ('Torch not compiled with CUDA enabled')."""
    cfg = get_preset("io").with_overrides(FAST)
    f, m = _two_grids(pair)
    with pytest.raises(UserInputError, match=r"device 'cuda' requested but CUDA is not available"):
        if path == "one grid":
            register(pair.fixed, pair.moving, spacing=pair.spacing, config=cfg, device="cuda")
        elif path == "two grids":
            register(f, m, config=cfg, device="cuda")
        else:
            register_native(pair.fixed, pair.moving, spacing=pair.spacing, config=cfg, device="cuda")


def test_unknown_device_is_a_user_input_error(pair):
    with pytest.raises(UserInputError, match=r"register: device 'gpu0' is not a torch device"):
        register(pair.fixed, pair.moving, spacing=pair.spacing, device="gpu0")


def test_device_defaults_to_the_inputs_device():
    """The plan's device is the first tensor input's (a 'meta' tensor stands in for a CUDA one here)."""
    x = torch.empty(2, device="meta")
    assert registration.resolve_device("register", None, "file.nii.gz", x).type == "meta"
    assert registration.resolve_device("register", None, "a", "b") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_grids_run_on_the_cuda_inputs_device(pair):
    """Before: the two-grid path registered CUDA tensors on the CPU unless device= was given."""
    f, m = _two_grids(pair)
    res = register(f.cuda(), m.cuda(), config=get_preset("io").with_overrides(FAST))
    assert res.ddf.is_cuda and res.working.ddf.is_cuda


def test_results_carry_grids(pair):
    cfg = get_preset("io").with_overrides([*FAST, "engine.divergence_check=false"])
    f, m = _two_grids(pair)
    res = register(f, m, config=cfg, working_spacing=3.0)
    assert res.fixed_grid == Grid.of(f) and res.moving_grid == Grid.of(m)
    assert res.working_grid == Grid.of(f).working(3.0)
    assert res.working_grid.shape == res.working_shape and np.allclose(res.working_grid.affine, res.working_affine)
    assert res.working.fixed_grid == res.working_grid
    one = register(pair.fixed, pair.moving, spacing=pair.spacing, config=cfg)
    assert one.fixed_grid == one.working_grid == one.moving_grid == Grid.from_spacing((32, 32, 32), pair.spacing)
