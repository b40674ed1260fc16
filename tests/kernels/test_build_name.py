"""The compiled kernels' build folder is keyed to the torch installation: one build per venv (and CPU kind)."""

from pathlib import Path

import torch

from monai_contreg import kernels

FLAGS = ["-O3", "-fopenmp", "-march=native"]


def test_build_name_is_stable_for_one_installation():
    assert kernels.build_name(FLAGS) == kernels.build_name(list(FLAGS))
    assert kernels.build_name(FLAGS).startswith("contreg_cpu_") and len(kernels.build_name(FLAGS)) == len("contreg_cpu_") + 12


def test_build_name_differs_per_torch_version_path_flags_and_cpu(monkeypatch):
    base = kernels.build_name(FLAGS)
    other_venv = str(Path("/elsewhere/venv/lib/python3.11/site-packages/torch/__init__.py"))
    with monkeypatch.context() as m:
        m.setattr(torch, "__file__", other_venv)
        assert kernels.build_name(FLAGS) != base
    with monkeypatch.context() as m:
        m.setattr(torch, "__version__", "0.0.1+other")
        assert kernels.build_name(FLAGS) != base
    with monkeypatch.context() as m:
        m.setattr(kernels, "_cpu_flags", lambda: "fpu sse sse2")
        assert kernels.build_name(FLAGS) != base
    assert kernels.build_name(["-O2"]) != base
    assert kernels.build_name(FLAGS) == base  # everything restored: the same name again


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    """A lock left by a killed build would make every later process wait for ever (seen: a stalled test run)."""
    import os
    import time

    from monai_contreg.kernels import STALE_LOCK_S, clear_stale_lock

    lock = tmp_path / "lock"
    assert clear_stale_lock(tmp_path) is False  # no lock: nothing to do
    lock.touch()
    assert clear_stale_lock(tmp_path) is False and lock.exists()  # a build in progress: kept
    old = time.time() - STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    assert clear_stale_lock(tmp_path) is True and not lock.exists()
