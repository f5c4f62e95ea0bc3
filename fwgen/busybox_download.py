"""Fetching the pinned BusyBox source tarball: mirrors in order, SHA-256 verified, atomic."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FetchError, IntegrityError
from .progress import Progress

if TYPE_CHECKING:
    from .busybox import BusyboxSource

# A dead mirror must cost seconds, not minutes: the next one is tried.
CONNECT_TIMEOUT = 10.0
CHUNK = 1 << 16


def download_source(source: BusyboxSource, folder: Path, progress: Progress) -> Path:
    """The verified tarball in `folder`, downloaded from the first mirror that serves it."""
    dest = folder / source.filename
    if dest.is_file() and _sha256(dest) == source.sha256:
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in source.urls:
        try:
            _download(url, dest, source.sha256, progress)
            return dest
        except (FetchError, IntegrityError) as e:
            failures.append(str(e))
            progress.info(f"{e}; trying the next mirror")
    raise FetchError(f"cannot download {source.filename}: " + "; ".join(failures))


def _download(url: str, dest: Path, sha256: str, progress: Progress) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                progress.advance(dest.name, done, total)
        if digest.hexdigest() != sha256:
            raise IntegrityError(f"{url}: SHA-256 {digest.hexdigest()} differs from the pinned {sha256}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
