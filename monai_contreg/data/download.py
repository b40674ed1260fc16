"""Download Learn2Reg datasets: resumable HTTP(S) transfer, SHA-256 check, safe extraction.

A transfer goes to ``NAME.part`` beside the target; an interrupted transfer is resumed with an HTTP
``Range`` request (or restarted when the server ignores it); the finished file is checked against its
SHA-256 (when known) and only then renamed to its final name, so an archive that exists is complete.
Extraction writes a ``.contreg_extracted`` marker last, so a half-extracted folder is re-extracted.

Examples:
    >>> fetch_dataset("nlst", "data/")            # data/NLST2023.zip -> data/NLST/...
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._validation import choose
from ..errors import UserInputError

__all__ = ["DATASETS", "DatasetSource", "download_file", "extract_archive", "fetch_dataset", "sha256sum"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MARKER = ".contreg_extracted"


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset archive lives.

    Attributes:
        url: the archive's address.
        filename: the archive's file name on disk.
        sha256: its SHA-256 (hex), or ``None`` when not published (the computed digest is logged).
    """

    url: str
    filename: str
    sha256: str | None = None


#: Known datasets. The NLST address is the Learn2Reg 2023 release as linked by the organisers' cloud share;
#: no checksum is published, so none is checked unless given.
DATASETS = {
    "nlst": DatasetSource("https://cloud.imi.uni-luebeck.de/s/pERQBNyEFNLY8gR/download/NLST2023.zip", "NLST2023.zip"),
}


def sha256sum(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial transfer, verifying the checksum.

    Args:
        url: ``http(s)://`` (or ``file://``) address.
        dest: the target file; ``dest + ".part"`` holds the transfer until it is complete and verified.
        sha256: expected hex digest; an existing ``dest`` with this digest is not downloaded again.
        timeout: socket timeout in seconds.
        progress: called as ``progress(bytes_so_far, total_or_None)`` after each chunk.

    Returns:
        ``dest``.

    Raises:
        ValueError: checksum mismatch (the bad transfer is deleted); OSError / urllib errors on network failure
            (the partial file is kept for the next attempt).
    """
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    want = sha256.lower() if sha256 else None
    if target.is_file():
        if want is None or sha256sum(target) == want:
            logger.info("%s exists; not downloaded again", target)
            return target
        logger.warning("%s exists but its checksum differs; downloading again", target)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file already holds everything
            resp = None
        else:
            raise OSError(f"download_file: {url} answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:  # unreachable host, refused connection, timeout, DNS
        reason = getattr(exc, "reason", None) or exc
        raise OSError(f"download_file: cannot reach {url}: {reason}") from exc
    if resp is not None:
        with resp:
            status = getattr(resp, "status", 200)
            resumed = have > 0 and status == 206
            if have and not resumed:
                logger.info("server ignored the range request; restarting %s", target.name)
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as fh:
                done = have
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    fh.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
                fh.flush()
                os.fsync(fh.fileno())
        if total is not None and part.stat().st_size != total:
            raise OSError(
                f"download_file: transfer of {url} ended at {part.stat().st_size} of {total} bytes; run again to resume."
            )
    got = sha256sum(part)
    if want is not None and got != want:
        part.unlink()
        raise UserInputError(f"download_file: checksum of {url} is {got}, expected {want}; the download was deleted.")
    if want is None:
        logger.info("sha256 of %s: %s", target.name, got)
    os.replace(part, target)
    return target


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip archive into ``dest`` (members must stay inside it); skipped if already complete.

    Raises:
        ValueError: not a zip archive, or a member that would land outside ``dest``.
    """
    src, out = Path(archive), Path(dest)
    if (out / _MARKER).is_file():
        return out
    if not zipfile.is_zipfile(src):
        raise UserInputError(f"extract_archive: {str(src)!r} is not a zip archive.")
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    with zipfile.ZipFile(src) as zf:
        for info in zf.infolist():
            target = (out / info.filename).resolve()
            if root != target and root not in target.parents:
                raise UserInputError(f"extract_archive: member {info.filename!r} of {src.name} would be written outside {str(out)!r}.")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as s, open(target, "wb") as d:
                shutil.copyfileobj(s, d, _CHUNK)
    (out / _MARKER).write_text(src.name)
    return out


def fetch_dataset(
    name: str,
    dest: str | Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    extract: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download (resumably) and extract a known dataset into ``dest``.

    Args:
        name: a key of :data:`DATASETS` (``"nlst"``).
        dest: folder receiving the archive and the extracted dataset.
        url, sha256: override the source's address and checksum.
        extract: unpack the archive (into ``dest``).
        progress: see :func:`download_file`.

    Returns:
        The extracted folder (``dest``) or, with ``extract=False``, the archive.
    """
    key = choose("fetch_dataset", "dataset", name.lower(), list(DATASETS))
    src = DATASETS[key]
    out = Path(dest)
    archive = download_file(url or src.url, out / src.filename, sha256 or src.sha256, progress=progress)
    return extract_archive(archive, out) if extract else archive
