"""The emulated device's state: its storage as the guest wrote it, kept where a rebuild does
not touch it, and the console logs of its last boots.

    out/<board>                 the current build (a link, fwgen/publish.py)
    out/.state/<board>/         the device, beside the builds, never replaced by one:
        disk.img                the board's disk (sdcard.img, firmware.bin and flash-bios.img
                                for SD-card and flash boards), written by the guest
        disk.img.built          the SHA-256 of the built image that copy was made from
        console.log             this boot's console; console.log.1 ... .3 the three before
        qemu.argv, qemu.stderr, from-sdcard/   this boot's QEMU command, errors, SD-card files

The first boot copies the built image. A later boot of the same build keeps the copy. A boot
after a rebuild starts from a copy of the new image and carries the persistent part of the old
copy into it (the data partition of a disk or SD card, the overlay after the squashfs in a
router's firmware partition) when it has the same name, size and type in both; when it
changed, one warning says so and that part starts empty: never a half-merged disk. The rest of
the device (root, boot and A/B slot partitions, U-Boot's boot counters) is the new build's.
`fwgen boot --fresh-disk` starts every image from the built one, the data with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import FwgenError, UserError
from .files import hash_file, replacing
from .images.disk import read_partition_table
from .images.flash import identify, round_up
from .progress import QUIET, Progress
from .publish import lock_folder, write_file

STATE_FOLDER = ".state"
CONSOLE_LOG = "console.log"
KEPT_CONSOLE_LOGS = 3  # older boots' logs kept beside this boot's
BUILT_SUFFIX = ".built"
CHUNK = 64 << 10


def state_folder(outdir: Path) -> Path:
    """The device state of the board whose builds `outdir` (out/<board>) shows."""
    return outdir.parent / STATE_FOLDER / outdir.name


@dataclass(frozen=True)
class Kept:
    """The part of a boot image that outlives a rebuild: where it is and what identifies it."""

    name: str  # "data", "partition 3", "overlay"
    type: str  # the partition type (0x83, a GPT type GUID), "firmware overlay"
    start: int
    size: int

    def describe(self) -> str:
        return f"{self.name} ({self.type}, {self.size:,} bytes)"


# Finds the persistent part of a boot image (None: it has none); FwgenError when unreadable.
FindKept = Callable[[Path], "Kept | None"]


@dataclass
class BootState:
    """The device state folder of one boot: `fresh` starts every image from the built one."""

    folder: Path
    fresh: bool = False
    progress: Progress = QUIET

    def copy(self, built: Path, name: str, *, sha256: str | None = None, keep: FindKept | None = None,
             length: int | None = None) -> Path:
        """The device's copy of the built image `built` (its first `length` bytes): see the
        module docstring. `sha256` is the built image's (from the manifest), `keep` finds the
        part carried over a rebuild (None: nothing is)."""
        copy = self.folder / name
        built_sha256 = sha256 or hash_file(built)
        record = copy.with_name(name + BUILT_SUFFIX)
        if not self.fresh and copy.exists() and _read(record) == built_sha256:
            return copy
        self.folder.mkdir(parents=True, exist_ok=True)
        old = copy if copy.exists() and not self.fresh else None
        with replacing(copy) as out:
            _sparse_copy(built, out, length)
            if old is not None and keep is not None:
                self._carry(old, built, out, keep)
        write_file(record, f"{built_sha256}\n".encode())
        return copy

    def _carry(self, old: Path, built: Path, out: BinaryIO, keep: FindKept) -> None:
        """Write the persistent part of `old` over the copy of `built` being written to `out`
        when both have it alike; else say so."""
        try:
            before, after = keep(old), keep(built)
        except FwgenError as e:
            self.progress.warn(f"{old}: {e}; the rebuilt image starts with empty data")
            return
        if after is None:
            if before is not None:
                self.progress.warn(f"{old}: the rebuilt image has no {before.name}: what earlier boots wrote there "
                                   "is dropped")
            return
        if before is None or (before.name, before.type, before.size) != (after.name, after.type, after.size):
            was = before.describe() if before else "none"
            self.progress.warn(f"{old}: {after.name} changed in the rebuild ({was} -> {after.describe()}): "
                               "it starts empty, what earlier boots wrote there is dropped")
            return
        carry_region(old, before.start, built, out, after.start, after.size)
        self.progress.info(f"kept {after.describe()} from the previous boots, across the rebuild")


def carry_region(old: Path, old_start: int, built: Path, out: BinaryIO, start: int, size: int) -> None:
    """Write `size` bytes of `old` from `old_start` to `out` (a sparse copy of `built`) at
    `start`; runs of zeros where `built` has zeros too stay unwritten."""
    with open(old, "rb") as src, open(built, "rb") as base:
        src.seek(old_start)
        for done in range(0, size, CHUNK):
            want = min(CHUNK, size - done)
            chunk = src.read(want).ljust(want, b"\0")  # past the end of a shorter file: zeros
            base.seek(start + done)
            if chunk.count(0) != want or base.read(want).count(0) != want:
                out.seek(start + done)
                out.write(chunk)


def data_partition(image: Path) -> Kept | None:
    """A disk's or SD card's data partition: GPT's partition named "data", or on an MBR the
    last Linux partition when there is one after the root (the layouts fwgen writes)."""
    table = read_partition_table(image)
    named = [p for p in table if p.name == "data"]
    if named:
        return Kept("data", named[0].type, named[0].start, named[0].size)
    linux = [p for p in table if not p.name and p.type == "0x83"]
    if len(linux) < 2:
        return None  # the root alone: the board keeps its overlay in RAM
    last = linux[-1]
    return Kept(f"partition {last.number}", last.type, last.start, last.size)


def firmware_overlay(erase_block: int) -> FindKept:
    """A router firmware partition's overlay: from the erase block after the squashfs to the
    end, found as the guest's /init finds it (uImage at 0, squashfs on the next erase block)."""
    def find(image: Path) -> Kept | None:
        data = image.read_bytes()
        kernel = identify(data, 0, len(data))
        if kernel is None or kernel.kind != "uimage":
            raise UserError(f"{image}: no uImage at offset 0")
        root_at = round_up(kernel.size, erase_block)
        root = identify(data, root_at, len(data))
        if root is None or root.kind != "squashfs":
            raise UserError(f"{image}: no squashfs at offset {root_at:#x}")
        data_at = round_up(root_at + root.size, erase_block)
        return Kept("overlay", "firmware overlay", data_at, len(data) - data_at) if data_at < len(data) else None
    return find


@contextlib.contextmanager
def device_state(outdir: Path, *, fresh: bool, progress: Progress = QUIET) -> Iterator[BootState]:
    """The state folder of the board `outdir` shows, locked for one boot (two boots of one
    board at once would write one disk)."""
    folder = state_folder(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = lock_folder(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"{folder}: the device is being booted by another fwgen boot",
                        "wait until it ends: both would write the same disk") from None
    try:
        yield BootState(folder, fresh, progress)
    finally:
        os.close(fd)


def rotate_console_logs(folder: Path, kept: int = KEPT_CONSOLE_LOGS) -> None:
    """console.log becomes console.log.1 (and .1 .2, ...), the oldest beyond `kept` goes."""
    for n in range(kept, 0, -1):
        older = folder / f"{CONSOLE_LOG}.{n - 1}" if n > 1 else folder / CONSOLE_LOG
        if older.exists():
            os.replace(older, folder / f"{CONSOLE_LOG}.{n}")


def _sparse_copy(built: Path, out: BinaryIO, length: int | None) -> None:
    """`built` (its first `length` bytes) into the empty file `out`, runs of zeros skipped."""
    left = length if length is not None else os.path.getsize(built)
    with open(built, "rb") as src:
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                break
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            left -= len(chunk)
        out.truncate()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
