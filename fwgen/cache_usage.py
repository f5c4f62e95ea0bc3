"""What the cache holds, by kind, and removing what no recent build used (`fwgen cache`).

An entry is the unit the cache makes and checks whole: a download (sha256/, url/ with its
recorded hash), a derived file, a BusyBox build or source tree, an overlay build, zig's cache.
Its last use is its modification time (for a download by URL, the newest of its own and its
recorded hash's); readers record it (cache.note_use). Pruning is safe while builds run:

- nothing used since the oldest running user of the cache started is removed (users register
  under locks/users/ and hold a lock there until they end; a file whose lock is free is a user
  that died, and is removed);
- an entry with a lock (downloads, BusyBox builds and trees, overlay builds, zig's cache) is
  removed only while prune holds that lock, taken without waiting: one in use is skipped, and
  its last use is read again under the lock;
- derived files have no lock: they are replaced whole by rename, and a reader that finds one
  gone computes it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .cache import USERS
from .compression import by_magic

PACKAGES, INDEXES, PARSED = "packages", "indexes", "parsed indexes"
DERIVED, BUSYBOX, TREES = "other derived files", "BusyBox builds", "BusyBox trees"
OVERLAY_BUILDS, ZIG, OTHERS = "overlay builds", "zig cache", "others"
KINDS = (PACKAGES, INDEXES, PARSED, DERIVED, BUSYBOX, TREES, OVERLAY_BUILDS, ZIG, OTHERS)


@dataclass
class Entry:
    path: Path
    kind: str
    size: int  # bytes, the files' apparent sizes
    last_use: float
    lock: Path | None = None  # the flock(2) file its makers and readers hold
    companions: tuple[Path, ...] = ()  # removed with it (a download's recorded hash)


@dataclass
class Pruned:
    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)  # old enough, but locked or used meanwhile

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.removed)


def scan(root: Path) -> list[Entry]:
    """Every entry of the cache at `root`."""
    root = Path(root)
    entries = [*_downloads(root), *_derived(root), *_folders(root)]
    known = {e.path for e in entries} | {c for e in entries for c in e.companions}
    entries += _others(root, known)
    return entries


def usage(root: Path) -> dict[str, tuple[int, int]]:
    """Kind -> (entries, bytes), every kind listed."""
    totals = {kind: (0, 0) for kind in KINDS}
    for entry in scan(root):
        count, size = totals[entry.kind]
        totals[entry.kind] = (count + 1, size + entry.size)
    return totals


def prune(root: Path, *, older_than: float | None = None, max_size: int | None = None,
          now: float | None = None) -> Pruned:
    """Remove entries last used more than `older_than` seconds ago, then the least recently
    used ones until the cache holds at most `max_size` bytes; never one used since the oldest
    running user of the cache started, nor one locked by another process."""
    now = time.time() if now is None else now
    horizon = min(now, _oldest_user_start(Path(root)))
    entries = sorted(scan(root), key=lambda e: e.last_use)
    total = sum(e.size for e in entries)
    result = Pruned()
    for entry in entries:
        too_old = older_than is not None and entry.last_use < now - older_than
        too_big = max_size is not None and total > max_size
        if not (too_old or too_big) or entry.last_use >= horizon:
            continue
        if _remove(entry, horizon):
            result.removed.append(entry)
            total -= entry.size
        else:
            result.in_use.append(entry)
    return result


# -- finding entries ---------------------------------------------------------------------------


def _downloads(root: Path) -> Iterator[Entry]:
    for store in ("sha256", "url"):
        for path in _fanned_out(root / store):
            companions = (root / "url-sha256" / path.parent.name / path.name,) if store == "url" else ()
            yield Entry(path, _download_kind(path), _size(path) + sum(_size(c) for c in companions),
                        max(_last_use(p) for p in (path, *companions)), root / "locks" / f"{path.name}.lock", companions)


def _derived(root: Path) -> Iterator[Entry]:
    for path in _fanned_out(root / "derived"):
        kind = path.name.partition(".")[2]
        yield Entry(path, PARSED if kind.startswith(("deb-index", "apk-index", "ipk-index")) else DERIVED,
                    _size(path), _last_use(path))


def _folders(root: Path) -> Iterator[Entry]:
    busybox, builds = root / "busybox", root / "builds"
    for parent, kind in ((busybox, BUSYBOX), (busybox / "trees", TREES), (builds, OVERLAY_BUILDS)):
        for folder in _subfolders(parent):
            if (parent, folder.name) in ((busybox, "trees"), (busybox, "failed"), (builds, "work"), (builds, "failed")):
                continue
            yield Entry(folder, kind, _size(folder), _last_use(folder), folder.with_name(folder.name + ".lock"))
    for folder in _subfolders(root / "sdk"):  # `fwgen sdk`'s toolchain wrappers: made again on demand
        yield Entry(folder, OTHERS, _size(folder), _last_use(folder))
    zig = root / "zig"
    if zig.is_dir():
        yield Entry(zig, ZIG, _size(zig), max(_last_use(zig), _last_use(zig / "fwgen-link-inputs.json")),
                    root / "zig.lock")


def _others(root: Path, known: set[Path]) -> Iterator[Entry]:
    """Files no entry holds (failed-build logs, leftovers): reported; removed by age as
    files, never the lock files, the users' registrations or a build's work folder."""
    skip = {root / "locks", root / "zig", root / "builds" / "work"}
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        dirnames[:] = [d for d in dirnames if folder / d not in skip and folder / d not in known]
        for name in filenames:
            path = folder / name
            if path not in known and not name.endswith(".lock") and path.is_file():
                yield Entry(path, OTHERS, _size(path), _last_use(path))


def _fanned_out(store: Path) -> Iterator[Path]:
    for fan in _subfolders(store):
        for path in fan.iterdir():
            if path.is_file() and not path.name.startswith("."):  # .part files are downloads in progress
                yield path


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def _download_kind(path: Path) -> str:
    """Packages or indexes, told by content (the cache names downloads by hash, not by name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return OTHERS
    if head.startswith(b"!<arch>\n"):
        return PACKAGES  # a .deb, or an ar-format .ipk
    if head.startswith((b"-----BEGIN PGP SIGNED MESSAGE", b"untrusted comment:", b"Package:")):
        return INDEXES  # InRelease, an OpenWrt usign signature, an uncompressed Packages
    text = _decompressed_head(head)
    if text.startswith(b"Package:"):
        return INDEXES
    if b"APKINDEX\0" in text or b"DESCRIPTION\0" in text:
        return INDEXES  # tar member names of an APKINDEX.tar.gz
    if b".PKGINFO\0" in text or b"debian-binary\0" in text:
        return PACKAGES  # an Alpine .apk, a tar-format .ipk
    return OTHERS  # a source tarball (BusyBox, an overlay build's)


def _decompressed_head(head: bytes) -> bytes:
    compression = by_magic(head)
    if compression is None:
        return head
    out = b""
    with contextlib.suppress(Exception):  # a head cut mid-stream, or not compressed after all
        decompressor = compression.decompressobj()
        out = decompressor.decompress(head)
        # An .apk is three gzip streams (signature, control, data): look into the second too.
        if getattr(decompressor, "eof", False) and decompressor.unused_data:
            out += compression.decompressobj().decompress(decompressor.unused_data)
    return out


def _size(path: Path) -> int:
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except FileNotFoundError:
        return 0
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _last_use(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# -- removing safely ---------------------------------------------------------------------------


def _oldest_user_start(root: Path) -> float:
    """When the oldest running user of the cache started (infinity: none runs). The files of
    users that died are removed."""
    oldest = float("inf")
    for path in sorted((root / USERS).glob("*")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            oldest = min(oldest, os.fstat(fd).st_mtime)  # alive
        else:
            path.unlink(missing_ok=True)  # its process ended without a word
        finally:
            os.close(fd)
    return oldest


def _remove(entry: Entry, horizon: float) -> bool:
    """Remove `entry` unless it is locked or was used since `horizon`; whether it did."""
    with _lock_if_free(entry.lock) as free:
        if not free or max(_last_use(p) for p in (entry.path, *entry.companions)) >= horizon:
            return False
        for path in (entry.path, *entry.companions):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return True


@contextlib.contextmanager
def _lock_if_free(lock: Path | None) -> Iterator[bool]:
    if lock is None:
        yield True
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only cache: nothing is removed from it
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)
