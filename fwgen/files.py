"""Host files written and hashed the one way fwgen does it everywhere.

A leaf every layer may use (images/, fetch/, the cache, the outputs): it imports nothing of
fwgen, so the image writers can share it without reaching up (tests/test_layers.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

# Of the final name, the part a temporary file's name keeps: with mkstemp's random part and the
# suffix it stays far below NAME_MAX (255) whatever the final name's length.
_NAME_KEPT = 64


@contextlib.contextmanager
def replacing(path: Path, *, mode: int | None = None, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A temporary file beside `path`, open for writing (and reading back), that replaces
    `path` when the block ends and is removed when the block fails: `path` is the old file or
    the whole new one, never a part.

    mode: the new file's permission bits; None gives what a new file gets from the umask
    (0666 minus it), as outputs do. suffix: how the temporary file's name ends (the cache
    calls its downloads in progress .part).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:_NAME_KEPT]}.", suffix=suffix)
    try:
        with os.fdopen(fd, "w+b") as out:
            yield out
        os.chmod(tmp, 0o666 & ~current_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def hash_file(path: Path) -> str:
    """The SHA-256 of the file at `path`, hex."""
    with open(path, "rb") as f:
        return hash_stream(f)


def hash_stream(f: IO[bytes]) -> str:
    """The SHA-256 of what is left to read from `f`, hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask would race other threads)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # kernels before 4.7 do not report it
    os.umask(mask)
    return mask
