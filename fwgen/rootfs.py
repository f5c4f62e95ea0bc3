"""The root filesystem as an in-memory model.

Images are written from this model, never staged in a host folder: a host folder would need
root for owners and device nodes, and following an absolute symlink such as
`/sbin/init -> /bin/busybox` while writing there can overwrite files on the build host.
Every entry records which layer supplied it (its provenance).
"""

from __future__ import annotations

import enum
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import UserError


class EntryType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"
    FIFO = "fifo"
    SOCKET = "socket"

    @property
    def format_bits(self) -> int:
        """The S_IFMT bits of st_mode for this type."""
        return _FORMAT_BITS[self]

    @staticmethod
    def of_mode(st_mode: int) -> EntryType | None:
        """The type whose S_IFMT bits `st_mode` holds; None for bits no type has."""
        return _TYPE_OF_BITS.get(stat.S_IFMT(st_mode))


_FORMAT_BITS = {
    EntryType.FILE: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHARDEV: stat.S_IFCHR,
    EntryType.BLOCKDEV: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
    EntryType.SOCKET: stat.S_IFSOCK,
}
_TYPE_OF_BITS = {bits: kind for kind, bits in _FORMAT_BITS.items()}


def normalize_path(path: str) -> str:
    """Return `path` as an absolute, normalized path inside the image ("/" for the root).

    Raises UserError for a path that climbs above the root with `..`.
    """
    if not path.startswith("/"):
        path = "/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UserError(f"path '{path}' escapes the root filesystem")
            parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


@dataclass(frozen=True)
class Entry:
    """One path of the image. `mode` holds the permission bits only (07777)."""

    path: str
    type: EntryType
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int | None = None  # None: the build's SOURCE_DATE_EPOCH
    data: bytes = b""  # content of a regular file
    target: str = ""  # symlink target, verbatim
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node
    provenance: str = ""  # the layer that supplied it: "deb:busybox-static", "overlay:base", ...

    @property
    def st_mode(self) -> int:
        return self.type.format_bits | (self.mode & 0o7777)

    @property
    def size(self) -> int:
        if self.type is EntryType.FILE:
            return len(self.data)
        if self.type is EntryType.SYMLINK:
            return len(self.target.encode())
        return 0


@dataclass
class RootFS:
    """A mapping of normalized path -> Entry, with the root directory always present."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "/" not in self.entries:
            self.entries["/"] = Entry("/", EntryType.DIR, 0o755, provenance="rootfs")

    # -- adding -------------------------------------------------------------
    def add(self, entry: Entry) -> Entry:
        """Add or replace an entry; missing parent directories are created (0755, root)."""
        path = normalize_path(entry.path)
        entry = replace(entry, path=path)
        if path == "/":
            if entry.type is not EntryType.DIR:
                raise UserError("the root of the filesystem must be a directory")
            self.entries["/"] = entry
            return entry
        self._ensure_parents(path, entry.provenance)
        existing = self.entries.get(path)
        if existing is not None and existing.type is EntryType.DIR and entry.type is not EntryType.DIR:
            if any(p.startswith(path + "/") for p in self.entries):
                raise UserError(
                    f"{entry.provenance or 'a layer'} replaces directory {path} "
                    f"(from {existing.provenance}) with a {entry.type.value}"
                )
        self.entries[path] = entry
        return entry

    def _ensure_parents(self, path: str, provenance: str) -> None:
        parent = posixpath.dirname(path)
        missing: list[str] = []
        while parent not in self.entries:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        existing = self.entries[parent]
        if existing.type is not EntryType.DIR:
            raise UserError(
                f"cannot add {path}: {parent} is a {existing.type.value} (from {existing.provenance})"
            )
        for directory in reversed(missing):
            self.entries[directory] = Entry(directory, EntryType.DIR, 0o755, provenance=provenance)

    def add_file(self, path: str, data: bytes, mode: int = 0o644, **kw) -> Entry:
        return self.add(Entry(path, EntryType.FILE, mode, data=data, **kw))

    def add_dir(self, path: str, mode: int = 0o755, **kw) -> Entry:
        return self.add(Entry(path, EntryType.DIR, mode, **kw))

    def add_symlink(self, path: str, target: str, **kw) -> Entry:
        return self.add(Entry(path, EntryType.SYMLINK, 0o777, target=target, **kw))

    def add_device(self, path: str, kind: EntryType, major: int, minor: int, mode: int = 0o600, **kw) -> Entry:
        if kind not in (EntryType.CHARDEV, EntryType.BLOCKDEV):
            raise ValueError(f"not a device type: {kind}")
        return self.add(Entry(path, kind, mode, rdev=(major, minor), **kw))

    def remove(self, path: str) -> None:
        """Remove a path and everything below it."""
        path = normalize_path(path)
        for p in [p for p in self.entries if p == path or p.startswith(path.rstrip("/") + "/")]:
            if p != "/":
                del self.entries[p]

    # -- reading ------------------------------------------------------------
    def __contains__(self, path: str) -> bool:
        return normalize_path(path) in self.entries

    def get(self, path: str) -> Entry | None:
        return self.entries.get(normalize_path(path))

    def __getitem__(self, path: str) -> Entry:
        return self.entries[normalize_path(path)]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        """Entries in a deterministic order in which every directory precedes its contents."""
        for path in sorted(self.entries, key=_sort_key):
            yield self.entries[path]

    def children(self, directory: str) -> list[Entry]:
        """The entries directly inside `directory`, sorted by name."""
        directory = normalize_path(directory)
        found = [e for p, e in self.entries.items() if p != "/" and posixpath.dirname(p) == directory]
        return sorted(found, key=lambda e: e.path)

    def resolve(self, path: str, *, max_links: int = 40) -> Entry | None:
        """Follow symlinks inside the image (never on the host) and return the final entry."""
        path = normalize_path(path)
        for _ in range(max_links):
            parts = path.strip("/").split("/") if path != "/" else []
            current = "/"
            for i, part in enumerate(parts):
                candidate = posixpath.join(current, part)
                entry = self.entries.get(candidate)
                if entry is None:
                    return None
                if entry.type is EntryType.SYMLINK:
                    base = posixpath.dirname(candidate)
                    target = entry.target if entry.target.startswith("/") else posixpath.join(base, entry.target)
                    rest = "/".join(parts[i + 1 :])
                    path = _follow(entry, posixpath.join(target, rest) if rest else target)
                    break
                current = candidate
            else:
                return self.entries.get(current)
        return None


def _follow(link: Entry, path: str) -> str:
    try:
        return normalize_path(path)
    except UserError:
        where = f"{link.provenance}: " if link.provenance else ""
        raise UserError(f"{where}symlink {link.path} -> {link.target} climbs above /") from None


def _sort_key(path: str) -> tuple[str, ...]:
    # Component-wise ordering: "/a/b" sorts right after "/a", before "/a-b".
    return tuple(path.strip("/").split("/")) if path != "/" else ()


# -- reading a host folder ----------------------------------------------------------------
def read_folder(src: Path, *, all_root: bool = False) -> RootFS:
    """The host folder `src` as a `RootFS`, never following a symlink: the one folder reader
    (fwgen squashfs, audit, a vendor's module tree).

    Owners, modes, mtimes and device numbers are kept (owners become 0:0 with `all_root`).
    """
    src = Path(src)
    try:
        return _read_folder(src, all_root)
    except OSError as e:
        raise UserError(f"cannot read {e.filename or src}: {e.strerror}") from e


def _read_folder(src: Path, all_root: bool) -> RootFS:
    top = os.lstat(src)
    if not stat.S_ISDIR(top.st_mode):
        raise UserError(f"{src}: not a directory")
    rootfs = RootFS()
    provenance = f"dir:{src}"
    rootfs.add(_entry_from_stat("/", top, all_root, provenance))
    stack = [(src, "/")]
    while stack:
        host, image = stack.pop()
        with os.scandir(host) as it:
            for item in sorted(it, key=lambda d: d.name):
                entry = _entry_from_stat(posixpath.join(image, item.name), item.stat(follow_symlinks=False),
                                         all_root, provenance)
                if entry.type is EntryType.FILE:
                    entry = replace(entry, data=Path(item.path).read_bytes())
                elif entry.type is EntryType.SYMLINK:
                    entry = replace(entry, target=os.readlink(item.path))
                rootfs.add(entry)
                if entry.type is EntryType.DIR:
                    stack.append((Path(item.path), entry.path))
    return rootfs


def _entry_from_stat(path: str, st: os.stat_result, all_root: bool, provenance: str) -> Entry:
    kind = EntryType.of_mode(st.st_mode)
    assert kind is not None, f"{path}: st_mode {st.st_mode:o}"  # Linux has no eighth file type
    rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in (EntryType.CHARDEV, EntryType.BLOCKDEV) else (0, 0)
    return Entry(
        path, kind, stat.S_IMODE(st.st_mode),
        uid=0 if all_root else st.st_uid, gid=0 if all_root else st.st_gid,
        mtime=int(st.st_mtime), rdev=rdev, provenance=provenance,
    )
