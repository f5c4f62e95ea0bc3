"""Fetching the pinned BusyBox source tarball: mirrors in order, through the package cache.

`fwgen.cache.Cache` verifies the SHA-256, publishes atomically and locks; here it is
asked with few retries so a dead mirror (busybox.net is unreachable from some CI machines)
costs seconds before the next one is tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .cache import Cache
from .errors import FetchError, IntegrityError
from .progress import Progress

if TYPE_CHECKING:
    from .busybox import BusyboxSource

ATTEMPTS = 2
TIMEOUT = 20.0


def download_source(source: BusyboxSource, cache_root: Path, progress: Progress) -> Path:
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
