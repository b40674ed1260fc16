"""Atomic file writes: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "writer_alive"]

# the writer's process id in a temporary's name: ".NAME.PID.RANDOM.tmpSUFFIX"
_TMP_PID = re.compile(r"\.(\d+)\.[^.]+\.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``path``, else delete it.

    The temporary name keeps the target's suffixes (``.nii.gz``) so that writers choosing a format by
    extension behave as for the final name. Readers never see a half-written ``path``. The temporary's name
    carries the writer's process id (``.NAME.PID.RANDOM.tmpSUFFIX``) so that a cleanup of temporaries left by
    killed writers spares those of a live one (:func:`writer_alive`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give it the mode a plain open() would (0666 minus umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def writer_alive(tmp: str | Path) -> bool:
    """Whether the process writing the temporary ``tmp`` of :func:`atomic_path` still runs (on this host).

    ``False`` for a temporary without a process id in its name (written by an older version) or whose writer is
    gone: such a file is left over by a killed write and may be deleted.
    """
    m = _TMP_PID.search(Path(tmp).name)
    if m is None:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True
