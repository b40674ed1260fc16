"""Compiled CPU kernels of the optimisation step, with pure-PyTorch equivalents.

The lowest layer of the package (imports torch only). :mod:`.ops` exposes two differentiable operations,
each with a compiled CPU path and a PyTorch path that computes the same values and gradients:

* :func:`~monai_contreg.kernels.ops.warp_ssd`: trilinear warp of feature maps by a DDF fused with the SSD
  loss and its gradient (one pass over the grid instead of ``grid_sample`` forward + backward + loss);
* :func:`~monai_contreg.kernels.ops.box_smooth`: repeated replicate-padded mean filters with an exact adjoint.

The C++ source (``csrc/contreg_cpu.cpp``) is compiled on first use with
:func:`torch.utils.cpp_extension.load` (needs a C++ compiler and ``ninja``; the build is cached under
``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), as MONAI does for its own C++ extensions.
It is compiled for the host CPU (``-march=native``); the build's name (:func:`build_name`) includes a hash of the
source, the flags, the CPU's instruction-set flags and the torch installation (version and path), so a cache shared
by machines with different CPUs or by several venvs holds one build per CPU kind and torch, each built once.
Where it cannot be built the PyTorch path is used and :func:`extension_status` says why. Set
``CONTREG_EXTENSIONS=0`` to disable the compiled path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType

__all__ = ["build_name", "extension_status", "load_extension"]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "contreg_cpu.cpp"
_LOCK = threading.Lock()
_STATE: dict[str, object] = {"tried": False, "module": None, "error": None}
_DISABLED = ("0", "false", "no", "off")


def _disabled() -> bool:
    return os.environ.get("CONTREG_EXTENSIONS", "1").strip().lower() in _DISABLED


def _cpu_flags() -> str:
    """The host CPU's instruction-set flags (``/proc/cpuinfo``), or the machine name where that is unavailable."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _torch_installation() -> str:
    """The torch this process runs: its version and the folder it is installed in (one per venv)."""
    import torch

    return f"{torch.__version__} {Path(torch.__file__).resolve().parent}"


def build_name(flags: list[str]) -> str:
    """The name of the compiled kernels' build (its folder under ``$TORCH_EXTENSIONS_DIR``).

    ``contreg_cpu_<hash>``, the hash over the C++ source, the compiler ``flags``, the CPU's instruction-set flags
    (``-march=native``) and the torch installation (version and path): each venv and each CPU kind builds its own
    once and keeps it, instead of two venvs on one machine rebuilding one folder in turn.
    """
    key = b"\0".join([_SOURCE.read_bytes(), " ".join(flags).encode(), _cpu_flags().encode(), _torch_installation().encode()])
    return f"contreg_cpu_{hashlib.sha1(key).hexdigest()[:12]}"


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; a venv used without activation lacks it there, so add the
    ``ninja`` package's own binary folder."""
    import shutil

    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass


#: A build lock older than this (seconds) is left by a build that was killed (a build takes about a minute); torch
#: would wait on it for ever, so it is removed with a warning.
STALE_LOCK_S = 20 * 60


def clear_stale_lock(build_dir: str | os.PathLike, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove ``build_dir/lock`` if it is older than ``max_age_s`` seconds; True if one was removed.

    torch's extension builder takes that file as a baton and, when the process holding it is killed, the next
    process waits on it with no end and no message. A lock younger than ``max_age_s`` is another build in progress:
    it is left alone and logged.
    """
    lock = Path(build_dir) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < max_age_s:
        logger.info("monai_contreg: waiting for another process building the kernels (%s, %.0f s old)", lock, age)
        return False
    try:
        lock.unlink()
    except FileNotFoundError:
        return False
    logger.warning("monai_contreg: removed a stale kernel build lock left by a killed build (%s, %.0f s old)", lock, age)
    return True


def load_extension() -> ModuleType | None:
    """The compiled CPU kernels, built on first call (``None`` if disabled or the build failed)."""
    if _disabled():
        return None
    with _LOCK:
        if not _STATE["tried"]:
            _STATE["tried"] = True
            try:
                from torch.utils.cpp_extension import _get_build_directory, load

                _ninja_on_path()

                flags = ["-O3", "-fopenmp", "-march=native"]
                name = build_name(flags)
                clear_stale_lock(_get_build_directory(name, verbose=False))
                _STATE["module"] = load(
                    name=name,
                    sources=[str(_SOURCE)],
                    extra_cflags=flags,
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
            except Exception as exc:  # no compiler, no ninja, read-only cache ...: fall back to PyTorch
                _STATE["error"] = f"{type(exc).__name__}: {exc}".strip()
                logger.warning(
                    "monai_contreg: compiled CPU kernels unavailable (%s); using the PyTorch path (slower).",
                    str(_STATE["error"]).splitlines()[0],
                )
    return _STATE["module"]  # type: ignore[return-value]


def extension_status() -> str:
    """One line: whether the compiled kernels are in use, and why not if they are not."""
    if _disabled():
        return "disabled (CONTREG_EXTENSIONS=0)"
    mod = load_extension()
    return f"compiled ({mod.__name__})" if mod is not None else f"unavailable: {_STATE['error']}"
