"""Fetching a pinned source tarball (BusyBox's, an overlay build's): mirrors in order, through the package cache.

`fwgen.cache.Cache` verifies the SHA-256, publishes atomically and locks; here it is
asked with few retries so a dead mirror (busybox.net is unreachable from some CI machines)
costs seconds before the next one is tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .cache import Cache
from .errors import FetchError, IntegrityError
from .progress import Progress


class PinnedSource(Protocol):
    """A source tarball pinned by SHA-256, with the mirrors to try in order."""

    @property
    def sha256(self) -> str: ...
    @property
    def urls(self) -> tuple[str, ...]: ...
    @property
    def filename(self) -> str: ...

ATTEMPTS = 2
TIMEOUT = 20.0


def download_source(source: PinnedSource, cache_root: Path, progress: Progress) -> Path:
    """The verified tarball in the cache, downloaded from the first mirror that serves it."""
    cache = Cache(cache_root, attempts=ATTEMPTS, backoff=0.5, timeout=TIMEOUT)
    failures = []
    for url in source.urls:
        try:
            return cache.fetch(url, sha256=source.sha256, size=None, progress=progress)
        except (FetchError, IntegrityError) as e:
            failures.append(str(e))
            progress.info(f"{e}; trying the next mirror")
    raise FetchError(f"cannot download {source.filename}: " + "; ".join(failures))
