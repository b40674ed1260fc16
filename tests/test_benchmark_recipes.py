"""The docs' ablation recipe (`benchmarks/ablation.py`, docs/guides/presets.md) runs as written, on a tiny dataset.

The page runs it on nlst_synth with the reference ConvexAdam's venv; here the same command line is taken from
the page, with the dataset swapped for a tiny synthetic Learn2Reg one, the reference left out and 1 thread.
"""

import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.learn2reg_helpers import make_tiny_learn2reg

REPO = Path(__file__).resolve().parents[1]


PAGE = REPO / "docs" / "guides" / "presets.md"  # the guide that holds the `accurate` preset's ablation


def _readme_ablation_command() -> list[str]:
    text = PAGE.read_text()
    start = text.index("## Beyond the paper")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else len(text)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    cmds = [b.replace("\\\n", " ") for b in blocks if "benchmarks/ablation.py" in b]
    assert len(cmds) == 1, cmds
    return shlex.split(cmds[0])


STEPS = 100  # the rows' schedules shortened to this many steps (longest level): seconds, on a loaded machine too


def _ablation(argv: list[str], monkeypatch) -> None:
    """``python benchmarks/ablation.py ARGV`` in this process (no interpreter start-up per row or per test)."""
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "ablation.py"), *argv])
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    runpy.run_path(str(REPO / "benchmarks" / "ablation.py"), run_name="__main__")


def test_readme_ablation_recipe_runs_every_row(tmp_path, monkeypatch, capsys):
    """Every row of the page's ablation command runs (in this process, schedules shortened to STEPS steps: the
    rows' code paths, not their figures, are under test; no wall-clock limit)."""
    argv = _readme_ablation_command()
    assert argv[:2] == ["python", "benchmarks/ablation.py"]
    args = argv[2:]
    presets = args[args.index("--presets") + 1:]
    presets = presets[: next((i for i, a in enumerate(presets) if a.startswith("--")), len(presets))]
    assert presets[0] == "accurate" and {"accurate-fine", "accurate-coarse", "accurate-kernel5"} <= set(presets)
    assert "--reference-python" in args  # the page compares with the reference in the same run
    ds = make_tiny_learn2reg(tmp_path / "ds", n_pairs=1)
    out = tmp_path / "ablation.json"
    _ablation(["--data", str(ds), "--presets", *presets, "--threads", "1", "--no-reference", "--json", str(out),
               "--steps", str(STEPS), "--in-process"], monkeypatch)
    assert "mean over pairs" in capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == sorted(presets)
    for name in presets:
        r = results[name]["0001"]
        assert "error" not in r, (name, r)
        assert 0 <= r["tre"] < r["tre_initial"] and r["folding_percent"] >= 0 and r["register_peak_gib"] > 0
    # the rows are what they say: STEPS steps on the longest level, the levels in proportion
    assert results["io"]["0001"]["steps"] == STEPS
    assert results["accurate"]["0001"]["steps"] > results["accurate-fine"]["0001"]["steps"] == STEPS
    # the full-resolution level improves on the half-resolution level alone on this pair too
    assert results["accurate"]["0001"]["tre"] < results["accurate-fine"]["0001"]["tre"]


@pytest.mark.slow
def test_ablation_worker_child_runs_a_row(tmp_path):
    """The script's own mode, one child process per (pair, method), on one short row; the timeout only guards
    against a hang (a loaded machine must not trip it)."""
    ds = make_tiny_learn2reg(tmp_path / "ds", n_pairs=1)
    out = tmp_path / "ablation.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "ablation.py"), "--data", str(ds), "--presets", "accurate-fine",
           "--threads", "1", "--no-reference", "--json", str(out), "--steps", "5"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    r = json.loads(out.read_text())["results"]["accurate-fine"]["0001"]
    # 5 steps say nothing of the row's accuracy: the child ran the row and scored its field
    assert "error" not in r and r["steps"] == 5 and r["peak_gib"] > 0 and r["tre"] >= 0 and r["tre_initial"] > 0
