"""The README's ablation recipe (`benchmarks/ablation.py`) runs as written, on a tiny dataset.

The README runs it on nlst_synth with the reference ConvexAdam's venv; here the same command line is taken from
the README, with the dataset swapped for a tiny synthetic Learn2Reg one, the reference left out and 1 thread.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.learn2reg_helpers import make_tiny_learn2reg

REPO = Path(__file__).resolve().parents[1]


def _readme_ablation_command() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Beyond the paper"):text.index("## Speed and memory")]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    cmds = [b.replace("\\\n", " ") for b in blocks if "benchmarks/ablation.py" in b]
    assert len(cmds) == 1, cmds
    return shlex.split(cmds[0])


@pytest.mark.slow
def test_readme_ablation_recipe_runs_every_row(tmp_path):
    argv = _readme_ablation_command()
    assert argv[:2] == ["python", "benchmarks/ablation.py"]
    args = argv[2:]
    presets = args[args.index("--presets") + 1:]
    presets = presets[: next((i for i, a in enumerate(presets) if a.startswith("--")), len(presets))]
    assert presets[0] == "accurate" and {"accurate-fine", "accurate-coarse", "accurate-kernel5"} <= set(presets)
    assert "--reference-python" in args  # the README compares with the reference in the same run
    ds = make_tiny_learn2reg(tmp_path / "ds", n_pairs=1)
    out = tmp_path / "ablation.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "ablation.py"), "--data", str(ds), "--presets", *presets,
           "--threads", "1", "--no-reference", "--json", str(out)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == sorted(presets)
    for name in presets:
        r = results[name]["0001"]
        assert "error" not in r, (name, r)
        assert 0 <= r["tre"] < r["tre_initial"] and r["folding_percent"] >= 0 and r["register_peak_gib"] > 0
    # the full-resolution level improves on the half-resolution level alone on this pair too
    assert results["accurate"]["0001"]["tre"] < results["accurate-fine"]["0001"]["tre"]
