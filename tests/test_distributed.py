"""Distributed `contreg run` (ignite.distributed): 2 gloo processes on CPU against the single-process run.

Both runs use one torch thread per process, so the fields are compared bitwise (np.array_equal).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_contreg.api import register
from monai_contreg.cli import _report_pair, main
from monai_contreg.distributed import DistributedRunError, check_launch, run_split_distributed
from monai_contreg.evaluation.learn2reg import evaluate_learn2reg
from monai_contreg.methods.presets import get_preset
from monai_contreg.workflow import merge_rank_logs, run_split
from tests.learn2reg_helpers import FAST, make_tiny_learn2reg

OVERRIDES = [*FAST[:3], "optim.schedule.peak_lr=0.2"]
CFG = get_preset("io").with_overrides(OVERRIDES)
KEYS = ["0001_0001", "0002_0002", "0003_0003"]  # 3 pairs: rank 0 gets 0001 and 0003, rank 1 gets 0002
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pairs(dataset):
    from monai_contreg.data.learn2reg import Learn2RegDataset

    return Learn2RegDataset(dataset).pairs("val")


def _field(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_learn2reg(tmp_path_factory.mktemp("dist") / "ds", n_pairs=3)


@pytest.fixture(scope="module")
def single(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_single") / "out"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_split(dataset, "val", out, CFG)
    finally:
        torch.set_num_threads(old)
    assert summary.done == KEYS
    return out


@pytest.fixture(scope="module")
def distributed(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_two") / "out"
    summary = run_split_distributed(
        dataset, "val", out, CFG, backend="gloo", nproc_per_node=2, master_port=_free_port(), threads=1,
        evaluate=True, on_pair=_report_pair,
    )
    return out, summary


def test_two_gloo_processes_give_the_single_process_fields(dataset, single, distributed):
    out, summary = distributed
    assert summary.done == KEYS and not summary.failed and summary.rank == 0
    # each outcome carries its field's Grid across the processes (gathered, then pickled back), checked and frozen
    from monai_contreg.data.learn2reg import image_grid

    for o, pair in zip(summary.outcomes, run_pairs(dataset)):
        assert o.grid == image_grid(pair.fixed) and not o.grid.affine.flags.writeable
    for key in KEYS:  # bitwise: one torch thread per process in both runs
        assert np.array_equal(_field(out / f"disp_{key}.nii.gz"), _field(single / f"disp_{key}.nii.gz")), key
    # one merged run log, in the single-process layout (+ the rank of each pair), no per-rank leftovers
    log, ref = json.loads((out / "runtimes.json").read_text()), json.loads((single / "runtimes.json").read_text())
    assert list(log) == list(ref) and list(log["cases"]) == list(ref["cases"]) == KEYS
    assert {k: c["rank"] for k, c in log["cases"].items()} == {"0001_0001": 0, "0002_0002": 1, "0003_0003": 0}
    assert set(log["cases"]["0002_0002"]) == set(ref["cases"]["0002_0002"]) | {"rank"}
    assert log["failures"] == {} and log["config"] == ref["config"] and log["split"] == "registration_val"
    assert sorted(p.name for p in out.iterdir()) == [
        ".runtimes.json.lock", *(f"disp_{k}.nii.gz" for k in KEYS), "evaluation.json", "runtimes.json"]  # + the log's lock
    # one evaluation, written by rank 0: the single-process fields' metrics, with the run's runtimes
    assert summary.evaluation_path == out / "evaluation.json"
    res = json.loads(summary.evaluation_path.read_text())
    assert set(res["cases"]) == set(KEYS) and res["aggregates"]["runtime"]["n"] == 3
    ref_eval = evaluate_learn2reg(dataset, single, "val", runtimes=None)
    assert res["aggregates"]["TRE_kp"]["mean"] == pytest.approx(ref_eval["aggregates"]["TRE_kp"]["mean"], abs=1e-9)
    assert summary.evaluation["aggregates"]["SDlogJ"] == pytest.approx(ref_eval["aggregates"]["SDlogJ"])


def test_torchrun_resume_skips_everything_and_evaluates_once(dataset, distributed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(distributed[0], out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("disp_*")}
    sets = [a for s in OVERRIDES for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "monai_contreg.cli", "run", str(dataset), "--split", "val", "-o", str(out), "--backend", "gloo",
           "--threads", "1", "--evaluate", *sets]
    # the timeout is a hang guard only: a loaded machine is slow, not hung
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sorted(line for line in lines if "skipped:" in line) == [
        f"[rank 0] [1/3] 0001_0001 skipped: {out / 'disp_0001_0001.nii.gz'} exists",
        f"[rank 0] [3/3] 0003_0003 skipped: {out / 'disp_0003_0003.nii.gz'} exists",
        f"[rank 1] [2/3] 0002_0002 skipped: {out / 'disp_0002_0002.nii.gz'} exists",
    ]
    assert [line for line in lines if line.startswith("registered")] == [
        f"registered 0, skipped 3, failed 0 of 3 pairs; run log {out / 'runtimes.json'}"]
    evaluations = [line for line in lines if line.startswith("evaluation:")]
    assert len(evaluations) == 1 and "TINY registration_val: 3 pairs, mean TRE_kp" in evaluations[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("disp_*")} == mtimes
    assert json.loads((out / "runtimes.json").read_text()) == json.loads((distributed[0] / "runtimes.json").read_text())
    assert json.loads((out / "evaluation.json").read_text())["aggregates"]["runtime"]["n"] == 3


def _fails_on_0001(*args, **kwargs):
    if kwargs["name"] == "0001_0001":
        raise RuntimeError("boom")
    return register(*args, **kwargs)


def _rank1_callback_breaks(outcome, i, n):
    import ignite.distributed as idist

    if idist.get_rank() == 1:
        raise RuntimeError("callback broke")


def test_failures_on_a_rank_do_not_hang_the_others(dataset, tmp_path):
    # rank 0: a pair fails (recorded, its next pair still runs); rank 1: an error outside the pair loop's guard
    out = tmp_path / "out"
    with pytest.raises(DistributedRunError, match=r"rank 1 failed registering its pairs: RuntimeError: callback broke"):
        run_split_distributed(dataset, "val", out, CFG, backend="gloo", nproc_per_node=2, master_port=_free_port(),
                              threads=1, evaluate=True, register_fn=_fails_on_0001, on_pair=_rank1_callback_breaks)
    log = json.loads((out / "runtimes.json").read_text())  # merged although a rank failed: nothing is lost
    assert list(log["cases"]) == ["0002_0002", "0003_0003"] and log["failures"] == {"0001_0001": "RuntimeError: boom"}
    assert not (out / "disp_0001_0001.nii.gz").exists() and not (out / "evaluation.json").exists()
    assert not list(out.glob("runtimes.rank*")) and not list(out.glob(".disp_*"))


def test_bad_options_are_clear(dataset, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["run", str(dataset), "-o", out, "--backend", "mpi"]) == 2
    err = capsys.readouterr().err
    assert "contreg run: error: --backend: unknown backend 'mpi'; expected one of ['gloo', 'nccl']" in err
    assert main(["run", str(dataset), "-o", out, "--backend", "glo"]) == 2
    assert "Did you mean 'gloo'?" in capsys.readouterr().err
    assert main(["run", str(dataset), "-o", out, "--nproc-per-node", "0", "--backend", "gloo"]) == 2
    assert "--nproc-per-node: must be a whole number of processes >= 1, got 0" in capsys.readouterr().err
    assert main(["run", str(dataset), "-o", out, "--master-port", "1234"]) == 2
    assert "--master-port: only used with --nproc-per-node" in capsys.readouterr().err
    assert main(["run", str(dataset), "-o", out, "--eval-json", "e.json"]) == 2
    assert "--eval-json: give --evaluate too" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["run", str(dataset), "-o", out, "--backend", "nccl", "--nproc-per-node", "2"]) == 2
        assert "--backend: backend 'nccl' needs CUDA GPUs" in capsys.readouterr().err
        with pytest.raises(ValueError, match=r"run_split_distributed: backend 'nccl' needs CUDA GPUs.*backend='gloo'"):
            check_launch("nccl", 2)
    with pytest.raises(ValueError, match=r"run_split_distributed: unknown backend 'mpi'; expected one of \['gloo', 'nccl'\]"):
        run_split_distributed(dataset, "val", out, CFG, backend="mpi", nproc_per_node=2)
    with pytest.raises(ValueError, match="run_split_distributed: nproc_per_node must be a whole number of processes >= 1"):
        run_split_distributed(dataset, "val", out, CFG, backend="gloo", nproc_per_node=0)
    with pytest.raises(ValueError, match="must pickle"):
        run_split_distributed(dataset, "val", out, CFG, backend="gloo", nproc_per_node=2, on_pair=lambda *a: None)
    with pytest.raises(ValueError, match="Did you mean 'val'"):  # dataset errors before anything is spawned
        run_split_distributed(dataset, "vall", out, CFG, backend="gloo", nproc_per_node=2)
    assert not Path(out).exists()


def test_rank_logs_of_a_killed_run_are_merged_on_resume(dataset, single, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(single, out)
    log = json.loads((out / "runtimes.json").read_text())
    case = log["cases"].pop("0002_0002")
    log["failures"]["0002_0002"] = "RuntimeError: an earlier attempt"
    (out / "runtimes.json").write_text(json.dumps(log))
    # a distributed run killed after rank 1 logged pair 0002 and before rank 0 merged the logs
    (out / "runtimes.rank1.json").write_text(json.dumps({"rank": 1, "cases": {"0002_0002": {**case, "rank": 1}}, "failures": {}}))
    (out / "runtimes.rank0.json").write_text(json.dumps({"rank": 0, "cases": {}, "failures": {"0003_0003": "x"}}))
    summary = run_split(dataset, "val", out, CFG)  # single-process resume: everything skipped, the logs merged
    assert summary.skipped == KEYS
    merged = json.loads((out / "runtimes.json").read_text())
    assert list(merged["cases"]) == KEYS and merged["cases"]["0002_0002"]["rank"] == 1
    assert merged["failures"] == {"0003_0003": "x"} and not list(out.glob("runtimes.rank*"))
    assert merge_rank_logs(out) is None  # nothing left to merge: nothing written


def test_cli_evaluate_in_a_single_process_run(dataset, single, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(single, out)
    (out / ".runtimes.rank1.json.abc.tmp.json").write_text("{")  # a rank log's write interrupted by a kill
    sets = [a for s in OVERRIDES for a in ("--set", s)]
    target = tmp_path / "eval" / "e.json"
    assert main(["run", str(dataset), "-o", str(out), "--no-bar", "--evaluate", "--eval-json", str(target), *sets]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("registered 0, skipped 3, failed 0 of 3 pairs")
    assert lines[-1].startswith("evaluation: TINY registration_val: 3 pairs, mean TRE_kp ") and lines[-1].endswith(str(target))
    assert main(["evaluate", str(dataset), str(out), "--json", str(tmp_path / "ref.json")]) == 0
    assert json.loads(target.read_text()) == json.loads((tmp_path / "ref.json").read_text())  # what `contreg evaluate` writes
    assert not (out / "evaluation.json").exists() and not list(out.glob(".runtimes*.tmp*"))  # the temporary is gone
