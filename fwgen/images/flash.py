"""A router's NOR flash: the whole image (what a factory programs) and its firmware partition.

A router's flash holds no partition table: the layout lives in the bootloader's and the
kernel's configuration (mtdparts, a device tree). OpenWrt's classic layout is
`u-boot | u-boot-env | firmware | art`, the firmware partition holding the uImage kernel,
then the squashfs root on the next erase block, then a writable overlay filling the rest
(`append-kernel | pad-to $(BLOCKSIZE) | append-rootfs`). fwgen writes the same: the kernel
and the squashfs each start on an erase-block boundary, so a flasher can erase and rewrite
either alone, and what follows the squashfs up to the end of the partition is left erased
(0xFF) for the overlay.

The size budget is checked from the sizes alone, before any of these files is written.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .read import SQUASHFS_MAGIC
from .uimage import HEADER_SIZE, is_uimage, read_uimage

ERASED = 0xFF  # what an erased NOR cell reads
SQUASHFS_SUPERBLOCK = 96  # bytes_used is the u64 at offset 40


@dataclass(frozen=True)
class Region:
    """Where something sits: `offset` and `size` in bytes (inside a partition or the flash)."""

    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class FirmwareLayout:
    """The firmware partition's content: kernel at 0, squashfs on the next erase block, the
    overlay from the erase block after it to the end."""

    size: int  # of the partition
    erase_block: int
    kernel: Region
    squashfs: Region
    overlay: Region

    @property
    def free(self) -> int:
        """Bytes left for the writable overlay."""
        return self.overlay.size

    def to_dict(self) -> dict:
        return {"size": self.size, "erase_block": self.erase_block, "free": self.free,
                **{name: {"offset": r.offset, "size": r.size}
                   for name, r in (("kernel", self.kernel), ("squashfs", self.squashfs), ("overlay", self.overlay))}}


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def plan_firmware(kernel: int, squashfs: int, partition: int, erase_block: int) -> FirmwareLayout:
    """Place a `kernel`-byte uImage and a `squashfs`-byte root in a `partition`-byte firmware
    partition, or raise the budget error with the numbers (each size counted as the erase
    blocks it takes, since a flasher erases whole blocks)."""
    kernel_blocks, squashfs_blocks = round_up(kernel, erase_block), round_up(squashfs, erase_block)
    used = kernel_blocks + squashfs_blocks
    if used > partition:
        raise UserError(
            f"squashfs {squashfs_blocks:,} + kernel {kernel_blocks:,} bytes exceed the {partition:,}-byte "
            f"firmware partition by {used - partition:,}",
            f"sizes rounded up to the {erase_block:,}-byte erase block (squashfs {squashfs:,}, kernel {kernel:,} "
            "bytes); shrink the image (packages, exclude_paths) or enlarge the firmware partition")
    return FirmwareLayout(partition, erase_block, Region(0, kernel), Region(kernel_blocks, squashfs),
                          Region(used, partition - used))


def firmware_image(layout: FirmwareLayout, kernel: bytes, squashfs: bytes) -> bytes:
    """The firmware partition's bytes: erased flash with the kernel and the squashfs in place."""
    image = bytearray([ERASED]) * layout.size
    image[layout.kernel.offset:layout.kernel.end] = kernel
    image[layout.squashfs.offset:layout.squashfs.end] = squashfs
    return bytes(image)


def flash_image(size: int, contents: Iterable[tuple[int, bytes]], *, swap_words_below: int = 0) -> bytes:
    """The whole flash: erased, each (offset, data) in place, then the 32-bit words below
    `swap_words_below` byte-swapped (a little-endian Malta's flash is wired for big-endian
    firmware: U-Boot's build makes u-boot-swap.bin for it, and QEMU swaps what it loads)."""
    image = bytearray([ERASED]) * size
    for offset, data in contents:
        image[offset:offset + len(data)] = data
    return swap_words(bytes(image), swap_words_below)


def swap_words(data: bytes, end: int) -> bytes:
    """`data` with the bytes of every 32-bit word below `end` reversed (its own inverse)."""
    if end <= 0:
        return data
    head = bytearray(data[:end])
    head[0::4], head[1::4], head[2::4], head[3::4] = head[3::4], head[2::4], head[1::4], head[0::4]
    return bytes(head) + data[end:]


# --- reading: what `fwgen inspect` shows of a flash image --------------------------------

@dataclass(frozen=True)
class Found:
    """An image found at `offset` (from the start of the file): kind, size and a summary."""

    offset: int
    kind: str  # "uimage", "squashfs"
    size: int
    summary: str


def scan_region(data: bytes, region: Region, step: int) -> Iterator[Found]:
    """The uImages and squashfs images that start on a `step` boundary inside `region`, as a
    flasher would have placed them; a found image is skipped over."""
    at = region.offset
    while at < region.end:
        found = identify(data, at, region.end)
        if found is None:
            at += step
            continue
        yield found
        at += max(step, round_up(found.size, step))


def identify(data: bytes, at: int, end: int) -> Found | None:
    head = data[at:at + HEADER_SIZE]
    if is_uimage(head):
        try:
            image = read_uimage(data[at:end], where=f"offset {at:#x}")
        except UserError:
            return None
        facts = image.describe()
        crcs = "CRCs OK" if facts["header_crc_ok"] and facts["data_crc_ok"] else "CRC MISMATCH"
        files = f", {len(facts['files'])} files" if facts["files"] else ""
        return Found(at, "uimage", HEADER_SIZE + facts["size"],
                     f"uImage {facts['name']!r} {facts['os']} {facts['arch']} {facts['type']}, {facts['compression']}, "
                     f"load {facts['load']:#010x} entry {facts['entry']:#010x}{files}, {crcs}")
    if head[:4] == SQUASHFS_MAGIC and len(head) >= SQUASHFS_SUPERBLOCK - 32:
        inodes = int.from_bytes(head[4:8], "little")
        block_size = int.from_bytes(head[12:16], "little")
        used = int.from_bytes(data[at + 40:at + 48], "little")
        major = int.from_bytes(head[28:30], "little")
        minor = int.from_bytes(head[30:32], "little")
        return Found(at, "squashfs", used,
                     f"squashfs {major}.{minor}, {inodes:,} inodes, block size {block_size:,}, {used:,} bytes used")
    return None


def identify_environment(chunk: bytes, offset: int) -> Found:
    """A U-Boot environment partition (mkenvimage's layout: CRC32 of the rest, little-endian,
    then name=value pairs ended by an empty one): its variables' names and whether the CRC
    matches, as U-Boot checks it when it loads the environment."""
    ok = len(chunk) > 4 and zlib.crc32(chunk[4:]) == int.from_bytes(chunk[:4], "little")
    pairs = chunk[4:].split(b"\0\0", 1)[0].split(b"\0")
    names = [pair.split(b"=", 1)[0].decode("utf-8", "replace") for pair in pairs if b"=" in pair]
    verdict = "CRC OK" if ok else "CRC MISMATCH (U-Boot uses its built-in default)"
    return Found(offset, "environment", len(chunk),
                 f"U-Boot environment, {len(names)} variable(s) ({', '.join(names[:8])}), {verdict}")


def load_layout(path: Path) -> dict | None:
    """The flash layout the build recorded in the manifest.json beside `path`, when that
    manifest lists `path` (same name, size and SHA-256) as its flash or firmware output:
    a router's flash carries no partition table of its own."""
    manifest = _read_json(path.parent / "manifest.json")
    layout = manifest.get("flash")
    if not isinstance(layout, dict):
        return None
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    for output in ("flash", "firmware"):
        record = manifest.get("outputs", {}).get(output)
        if isinstance(record, dict) and (record.get("file"), record.get("sha256")) == (path.name, digest):
            return dict(layout, kind=output)
    return None


def scanned_layout(size: int, erase_block: int = 0x10000) -> dict:
    """A layout for a flash dump no manifest describes: one region, the whole file, searched
    on `erase_block` boundaries (64 KiB, the usual NOR sector) as binwalk would."""
    return {"kind": "dump", "size": size, "erase_block": erase_block,
            "partitions": [{"name": "(no layout)", "offset": 0, "size": size, "content": "unknown"}]}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_flash(data: bytes, layout: dict) -> list[dict]:
    """Each partition of a flash image (or the firmware partition alone, `kind` firmware)
    with what it holds: the images found on erase-block boundaries, else how much of it is
    erased."""
    step = layout["erase_block"]
    if layout["kind"] == "firmware":
        partitions = [{"name": "firmware", "offset": 0, "size": layout["firmware"]["size"], "content": "firmware"}]
        swapped = 0
    else:
        partitions, swapped = layout["partitions"], layout.get("swap_words_below", 0)
    rows = []
    for part in partitions:
        region = Region(part["offset"], part["size"])
        chunk = swap_words(data[:region.end], swapped)[region.offset:] if region.offset < swapped else \
            data[region.offset:region.end]
        local = Region(0, len(chunk))
        found = [Found(f.offset + region.offset, f.kind, f.size, f.summary) for f in scan_region(chunk, local, step)]
        if part["content"] == "environment":
            found.append(identify_environment(chunk, region.offset))
        used = len(chunk.rstrip(bytes([ERASED])))
        rows.append(dict(part, found=[vars(f) for f in found], used=used,
                         swapped=region.offset < swapped, truncated=region.end > len(data)))
    return rows


def format_flash(path: Path, layout: dict, rows: list[dict]) -> list[str]:
    """The lines `fwgen inspect` prints for a flash image."""
    kind = layout["kind"]
    what = {"firmware": "firmware partition", "flash": "flash image", "dump": "flash dump"}[kind]
    source = "no manifest.json beside it lists it: searched" if kind == "dump" else "layout from manifest.json"
    lines = [f"{path}: {what}, {layout['firmware']['size'] if kind == 'firmware' else layout['size']:,} bytes, "
             f"erase block {layout['erase_block']:,} ({source})"]
    for row in rows:
        note = ", words swapped as the board's wiring needs" if row["swapped"] else ""
        lines.append(f"  {row['name']}: {row['offset']:#010x}-{row['offset'] + row['size']:#010x} "
                     f"({row['size']:,} bytes, {row['content']}){note}: "
                     + (f"{row['used']:,} bytes before the erased tail" if row["used"] else "erased"))
        lines += [f"    {f['offset']:#010x}: {f['summary']}" for f in row["found"]]
    firmware = layout.get("firmware")
    if firmware is None:
        return lines
    lines.append(f"  free for the overlay: {firmware['free']:,} bytes of the {firmware['size']:,}-byte firmware partition")
    return lines
