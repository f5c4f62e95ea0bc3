"""Read any image fwgen writes (squashfs, initramfs cpio) into one listing shape."""

from __future__ import annotations

import stat
from pathlib import Path

from ..errors import FormatError, UserError
from ..rootfs import EntryType
from .cpio import read_initramfs
from .squashfs import read_squashfs

SQUASHFS_MAGIC = b"hsqs"


def _is_squashfs(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == SQUASHFS_MAGIC


def list_image(path: Path) -> tuple[str, list[dict]]:
    """(kind, rows): one row per entry with path, type, mode string, uid, gid, size, target."""
    if _is_squashfs(path):
        with read_squashfs(path) as image:
            rows = [_row(e.path, e.type, e.mode, e.uid, e.gid, e.size, e.target, e.rdev)
                    for e in image.entries()]
        return "squashfs", rows
    members = read_initramfs(path)
    rows = [_row("/" + m.name.lstrip("./") if m.name != "." else "/", m.type, m.permissions, m.uid,
                 m.gid, len(m.data) if m.type in (EntryType.FILE, EntryType.SYMLINK) else 0, m.target, m.rdev)
            for m in members]
    return "initramfs", rows


def read_image_file(path: Path, member: str) -> bytes:
    """The content of one regular file of the image."""
    wanted = "/" + member.strip("/")
    if _is_squashfs(path):
        with read_squashfs(path) as image:
            return image.read_file(wanted)
    for m in read_initramfs(path):
        if "/" + m.name.lstrip("./") == wanted:
            if m.type is not EntryType.FILE:
                raise UserError(f"{path}: {wanted} is a {m.type.value}, not a file")
            return m.data
    raise FormatError(f"{path}: no {wanted} in the image")


def _row(path, kind: EntryType, mode: int, uid: int, gid: int, size: int, target: str, rdev) -> dict:
    return {
        "path": path, "type": kind.value, "mode": stat.filemode(kind.format_bits | (mode & 0o7777)),
        "uid": uid, "gid": gid, "size": size, "target": target or "",
        "rdev": list(rdev) if kind in (EntryType.CHARDEV, EntryType.BLOCKDEV) else None,
    }
