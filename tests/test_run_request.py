"""One run request (monai_contreg.request.RunRequest), built once from the arguments and honoured by every command
that accepts its options: --max-memory, --threads, --device."""

import argparse
import dataclasses
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_contreg.cli import build_parser, main
from monai_contreg.errors import UserInputError
from monai_contreg.options import parse_device, parse_memory, parse_spacing
from monai_contreg.request import RunRequest
from tests.learn2reg_helpers import FAST, make_tiny_learn2reg

SETS = [a for kv in FAST for a in ("--set", kv)]


def _image(path, shape=(32, 32, 32), spacing=2.0, seed=0):
    arr = np.random.default_rng(seed).random(shape, dtype=np.float32) * 1000 - 1000
    nib.save(nib.Nifti1Image(arr, np.diag([spacing] * 3 + [1.0])), str(path))
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_learn2reg(tmp_path_factory.mktemp("request") / "ds", n_pairs=2)


@pytest.fixture
def images(tmp_path):
    return _image(tmp_path / "f.nii.gz"), _image(tmp_path / "m.nii.gz", seed=1)


# ------------------------------------------------------------------------------------------------ the request
def test_request_from_arguments():
    args = build_parser().parse_args(["register", "f", "m", "-o", "d.nii.gz", "--threads", "3", "--max-memory", "2G",
                                      "--device", "CPU", "--quiet", "--progress"])
    req = RunRequest.from_args(args)
    assert req == RunRequest(command="register", device="cpu", threads=3, max_memory=2 * 2**30, progress=False,
                             quiet=True, verbosity=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.threads = 1  # type: ignore[misc]
    # options a command lacks take their defaults; progress follows the terminal unless asked or quieted
    req = RunRequest.from_args(build_parser().parse_args(["-vv", "warp", "--field", "d.nii.gz"]), stderr_is_tty=True)
    assert (req.device, req.threads, req.max_memory, req.progress, req.verbosity) == (None, None, None, True, 2)
    assert RunRequest.from_args(argparse.Namespace(progress=True), stderr_is_tty=False).progress


def test_request_and_option_errors_name_the_option():
    with pytest.raises(UserInputError, match=r"^--max-memory: expected a memory size such as 8G.*got 'lots'"):
        RunRequest(max_memory="lots")
    with pytest.raises(UserInputError, match=r"^--threads: expected a whole number >= 1, got 0"):
        RunRequest(threads=0)
    with pytest.raises(UserInputError, match=r"^--device: expected a device such as cpu, cuda or cuda:1"):
        RunRequest(device="cuda:x")
    assert parse_memory("m", "1.5k") == 1536 and parse_memory("m", 10) == 10
    assert parse_spacing("1.5") == 1.5 and parse_spacing("1, 2,3") == (1.0, 2.0, 3.0)
    assert parse_device(" CUDA:1 ") == "cuda:1" and parse_device("mps") == "mps"
    for bad in ("gpu", "cuda:", "cuda:-1", ""):
        with pytest.raises(UserInputError, match="--device"):
            parse_device(bad)


# ---------------------------------------------------------------------------------------------- --max-memory
def _refused(capsys, argv, command, *names):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = next(ln for ln in err.splitlines() if ln.startswith(f"contreg {command}: error: "))
    assert "more than max_memory (--max-memory), 1.00 KiB" in line, err
    for name in names:
        assert name in line, line
    assert "Traceback" not in err


def test_max_memory_register(images, tmp_path, capsys):
    _refused(capsys, ["register", *images, "-o", tmp_path / "d.nii.gz", "--max-memory", "1K", *SETS], "register",
             "--working-spacing")
    assert not (tmp_path / "d.nii.gz").exists()


def test_max_memory_register_native(images, tmp_path, capsys):
    _refused(capsys, ["register-native", *images, "-o", tmp_path / "d.nii.gz", "--max-memory", "1K",
                      "--working-spacing", "2"], "register-native", "--working-spacing MM; now 2.0 mm")
    assert not (tmp_path / "d.nii.gz").exists()


@pytest.mark.parametrize("extra", [[], ["--nproc-per-node", "2", "--backend", "gloo"]], ids=["single", "spawned"])
def test_max_memory_run(dataset, tmp_path, capsys, extra):
    out = tmp_path / "out"
    _refused(capsys, ["run", dataset, "-o", out, "--max-memory", "1K", "--threads", "1", *extra, *SETS], "run",
             "pair 0001_0001", "(and 1 more pair(s))", "--working-spacing")
    assert not out.exists() or not list(out.glob("disp_*"))


def test_max_memory_demo(capsys):
    _refused(capsys, ["demo", "--max-memory", "1K"], "demo", "(96, 80, 96) grid")


def test_max_memory_tune(dataset, tmp_path, capsys):
    """The base config is refused on the split's pairs before any trial runs (no study is created)."""
    _refused(capsys, ["tune", dataset, "-o", tmp_path / "best.yaml", "--max-memory", "1K", "--trials", "1", *SETS],
             "tune", "pair 0001_0001", "--working-spacing")
    assert not list(tmp_path.iterdir())


def test_max_memory_reaches_the_pairs_of_a_run(dataset, tmp_path):
    """The library runs (single and every rank of a distributed one) pass max_memory to each registration."""
    from monai_contreg.distributed import run_split_distributed
    from monai_contreg.methods.presets import get_preset
    from monai_contreg.workflow import run_split

    cfg = get_preset("io").with_overrides(FAST)
    single = run_split(dataset, "val", tmp_path / "single", cfg, max_memory="1K")
    group = run_split_distributed(dataset, "val", tmp_path / "group", cfg, backend="gloo", threads=1, max_memory=1024)
    for summary in (single, group):
        assert summary.failed == ["0001_0001", "0002_0002"]
        assert all("more than max_memory (--max-memory), 1.00 KiB" in o.error for o in summary.outcomes)
    with pytest.raises(UserInputError, match="run_split_distributed: max_memory: expected a memory size"):
        run_split_distributed(dataset, "val", tmp_path / "bad", cfg, max_memory="lots")


# -------------------------------------------------------------------------------------------------- --threads
class _Stop(Exception):
    pass


@pytest.mark.parametrize("argv", [
    ["register", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz"],
    ["register-native", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz"],
    ["run", "ds", "-o", "out"],
    ["run", "ds", "-o", "out", "--nproc-per-node", "2"],
    ["demo"],
    ["tune", "ds", "-o", "best.yaml"],
], ids=lambda a: " ".join(a[:1] + a[-2:]) if "--nproc-per-node" in a else a[0])
def test_threads_set_before_the_command(argv, monkeypatch):
    """--threads sets torch's threads for the whole process before the command runs (stopped right there)."""
    calls = []

    def record(n):
        calls.append(n)
        raise _Stop

    monkeypatch.setattr(torch, "set_num_threads", record)
    with pytest.raises(_Stop):
        main([*argv, "--threads", "3"])
    assert calls == [3]


def test_threads_without_the_option_leave_torch_alone(images, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["register", *images, "-o", str(tmp_path / "d.nii.gz"), "--max-memory", "1K"]) == 2
    assert calls == []


def test_threads_reach_every_rank_and_the_engine(dataset, tmp_path, monkeypatch):
    from monai_contreg.commands import _config
    from monai_contreg.distributed import run_split_distributed
    from monai_contreg.methods.presets import get_preset

    args = build_parser().parse_args(["run", "ds", "-o", "out", "--threads", "2", *SETS])
    assert _config(args, RunRequest.from_args(args)).engine.num_threads == 2
    real, calls = torch.set_num_threads, []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    old = torch.get_num_threads()
    try:
        run_split_distributed(dataset, "val", tmp_path / "out", get_preset("io").with_overrides(FAST), backend="gloo",
                              threads=1, max_memory="1K")
    finally:
        real(old)
    assert calls[:1] == [1]


def test_tune_receives_the_request(dataset, monkeypatch, tmp_path, capsys):
    import monai_contreg.tuning as tuning

    seen = {}

    def fake_tune(*args, **kwargs):
        seen.update(kwargs)
        return type("R", (), {"rank": 0, "best": None})()

    monkeypatch.setattr(tuning, "tune", fake_tune)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    assert main(["tune", str(dataset), "-o", str(tmp_path / "b.yaml"), "--threads", "2", "--max-memory", "1G",
                 "--device", "cpu"]) == 1
    assert (seen["threads"], seen["max_memory"], seen["device"]) == (2, 2**30, "cpu")
    assert seen["base"].engine.num_threads == 2


# --------------------------------------------------------------------------------------------------- --device
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("argv", [
    ["register", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz"],
    ["register-native", "f.nii.gz", "m.nii.gz", "-o", "d.nii.gz"],
    ["run", "ds", "-o", "out"],
    ["run", "ds", "-o", "out", "--nproc-per-node", "2"],
    ["demo"],
    ["tune", "ds", "-o", "best.yaml"],
], ids=lambda a: " ".join(a[:1] + a[-2:]) if "--nproc-per-node" in a else a[0])
def test_device_cuda_without_cuda_is_a_user_error(argv, capsys):
    rc = main([*argv, "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert re.search(rf"^contreg {argv[0]}: error: {argv[0]}: --device 'cuda' requested but CUDA is not available "
                     r"\(torch .*\); use --device cpu or leave --device out\.$", err.strip()), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_on_the_two_grid_path(images):
    """The API's working-grid path (two grids) refuses it as the one-grid path does (it was an AssertionError)."""
    from monai_contreg.native import register_native

    with pytest.raises(UserInputError, match=r"device 'cuda' requested but CUDA is not available"):
        register_native(*images, device="cuda")
