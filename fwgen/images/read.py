"""The one reader from an image file to the model: squashfs or initramfs into a `RootFS`.

Kept apart from inspect.py, which also reads bootloader images (FIT signatures need the
cryptography package): fwgen audit imports this at the top without that cost.
"""

from __future__ import annotations

from pathlib import Path

from ..rootfs import RootFS
from .cpio import initramfs_rootfs
from .squashfs_reader import read_squashfs

SQUASHFS_MAGIC = b"hsqs"


def is_squashfs(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == SQUASHFS_MAGIC


def read_image(path: Path) -> RootFS:
    """An image file as a RootFS: squashfs, or an initramfs (newc cpio: plain, compressed,
    several segments), as fwgen audit reads it."""
    if is_squashfs(path):
        with read_squashfs(path) as image:
            return image.to_rootfs()
    return initramfs_rootfs(path)
