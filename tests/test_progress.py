"""Progress: a tqdm bar (ignite's ProgressBar) on a terminal, none in a pipe or with --quiet; stages in -v logs."""

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "optim.schedule.total_steps=20", "--set", "optim.schedule.constant_steps=20",
        "--set", "optim.schedule.cosine_end=20", "--set", "optim.schedule.peak_lr=1", "--threads", "1"]
BAR = "%|"  # the percentage and the bar's left edge


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from scipy import ndimage as ndi

    d = tmp_path_factory.mktemp("progress")
    f = ndi.gaussian_filter(np.random.default_rng(0).standard_normal((24, 24, 24)), 2).astype(np.float32) * 3000
    for name, arr in (("fixed", f), ("moving", np.roll(f, 1, axis=0))):
        nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.5, 1.5, 1.0])), str(d / f"{name}.nii.gz"))
    return d


def _command(d: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "monai_contreg.cli", *extra, "register", str(d / "fixed.nii.gz"),
            str(d / "moving.nii.gz"), "-o", str(d / "disp.nii.gz"), *FAST]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _on_terminal(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal; everything it wrote."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # a real terminal has a size (a bare pty has 0 columns, and tqdm then draws an empty bar)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=_env(), close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=3600), b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminals via the pty module (Linux)")
def test_bar_on_a_terminal_with_stage_times(pair):
    rc, out = _on_terminal(_command(pair, "-v"))
    assert rc == 0, out[-3000:]
    assert BAR in out and "[1/20]" in out  # ignite: "registration: [1/20]   5%|#  | loss=..."
    for stage in ("stage load", "stage features", "stage optimisation", "stage write"):
        assert stage in out, stage
    rc, out = _on_terminal(_command(pair) + ["--quiet"])
    assert rc == 0 and BAR not in out and "wrote" in out


def test_no_bar_in_a_pipe(pair):
    out = subprocess.run(_command(pair), capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert BAR not in out.stderr and BAR not in out.stdout
    assert out.stdout.startswith("wrote ")
