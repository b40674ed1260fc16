"""`benchmarks/gpu.py` runs: its CPU smoke mode (`--device cpu --pairs ... --steps 5`) on a tiny synthetic Learn2Reg
folder, every preset, in this process and through its worker processes; without CUDA, `--device cuda` is refused."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
import torch

from tests.learn2reg_helpers import make_tiny_learn2reg

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture
def gpu_main(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return runpy.run_path(str(SCRIPT), run_name="gpu_benchmark")["main"]


def test_smoke_mode_in_process_every_preset(tmp_path, gpu_main, capsys):
    """The smoke command line of the docstring, in this process: one row per preset for the pair asked for."""
    ds = make_tiny_learn2reg(tmp_path / "ds", n_pairs=2)
    res = gpu_main(["--data", str(ds), "--device", "cpu", "--pairs", "0001", "--steps", "5", "--threads", "1",
                    "--no-reference", "--in-process"])
    assert set(res) == {"io", "accurate", "convexadam"}
    for preset, rows in res.items():
        assert [r["case"] for r in rows] == ["0001"], preset  # only the pair asked for
    # 5 steps at io's peak rate diverge on this pair: reported as that row, the other presets still ran
    assert res["io"][0].get("error", "").startswith("RegistrationDivergedError") or "tre" in res["io"][0]
    for preset in ("accurate", "convexadam"):
        r = res[preset][0]
        assert r["seconds"] > 0 and 0 < r["steps"] <= 3 * 5 and math.isfinite(r["tre"]), (preset, r)
    out = capsys.readouterr().out
    assert "CPU (smoke mode)" in out and "schedules shortened to 5 steps" in out
    assert out.count("\n0001   ") == 3 and "mean   accurate" in out


def test_worker_process_gives_figures(tmp_path, gpu_main):
    """Through a worker process (the default), `io` shortened to 40 steps (20 end at 2.0 x the start loss, on the divergence bound): time, TRE no worse, peak memory."""
    ds = make_tiny_learn2reg(tmp_path / "ds", n_pairs=1)
    res = gpu_main(["--data", str(ds), "--device", "cpu", "--pairs", "0001", "--steps", "40", "--threads", "1",
                    "--no-reference", "--presets", "io"])
    (row,) = res["io"]
    assert "error" not in row, row
    assert row["steps"] == 40 and row["peak_gib"] > 0 and row["seconds"] > 0
    assert row["tre"] < row["tre_initial"] + 0.25  # a 40-step run on a demo pair stays near or below the start


def test_unknown_pair_and_missing_cuda_are_refused(tmp_path, gpu_main):
    ds = make_tiny_learn2reg(tmp_path / "ds", n_pairs=1)
    with pytest.raises(SystemExit, match="--pairs 0009"):
        gpu_main(["--data", str(ds), "--device", "cpu", "--pairs", "0009", "--no-reference"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            gpu_main(["--data", str(ds), "--no-reference"])
