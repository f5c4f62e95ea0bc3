"""Raspberry Pi SD-card images: an MBR with a FAT32 boot partition, the squashfs root and the
data partition; and the way back, reading what the boot firmware would load out of the image.

The Pi's GPU firmware (bootcode.bin, then start.elf with fixup.dat) reads the first FAT
partition of the card, takes its settings from config.txt (`kernel=`, `initramfs`,
`device_tree=`) and the kernel command line from cmdline.txt. QEMU's raspi0 does not run
that firmware, so `fwgen boot` plays its part with `read_boot_files`: everything the guest
boots comes out of the image's FAT partition, which is what proves the layout.

QEMU requires an SD card's size to be a power of two: the image is rounded up, and the data
partition takes the rest of the card (at least the size asked for).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from construct import ConstructError

from ..errors import FormatError, UserError, parse_error
from ..progress import QUIET, Progress
from .disk import MBR, Partition, write_disk_image
from .fat import FatVolume, write_fat

__all__ = ["BootFiles", "config_txt", "read_boot_files", "sdcard_size", "write_sdcard"]

MiB = 1 << 20
ALIGN = 4 * MiB  # SD cards erase in 4 MiB units: partitions start on them
FAT32_LBA = 0x0C
LINUX = 0x83
KERNEL_NAME = "kernel.img"  # what the firmware loads on a BCM2835 when config.txt says nothing
INITRAMFS_NAME = "initramfs.cpio.gz"


def config_txt(board_name: str, *, dtb: str | None, extra: str = "") -> str:
    """config.txt naming the kernel, the initramfs and the DTB, so nothing depends on the
    firmware's defaults (which change between firmware releases)."""
    lines = [
        f"# Raspberry Pi boot configuration for board {board_name}, written by fwgen.",
        f"kernel={KERNEL_NAME}",
        # "followkernel": load the initramfs right after the kernel in memory.
        f"initramfs {INITRAMFS_NAME} followkernel",
    ]
    if dtb:
        lines.append(f"device_tree={dtb}")
    lines.append("enable_uart=1")
    text = "\n".join(lines) + "\n"
    return text + (extra.rstrip("\n") + "\n" if extra.strip() else "")


def sdcard_size(boot_size: int, root_size: int, data_size: int) -> int:
    """The card's size in bytes: the partitions at their alignment, rounded up to a power of two."""
    end = ALIGN
    for size in (boot_size, root_size, data_size):
        end += -(-size // ALIGN) * ALIGN
    return 1 << (end - 1).bit_length()


def write_sdcard(
    path: Path,
    *,
    boot_files: Mapping[str, bytes],
    root: Path,
    boot_size: int,
    data_size: int,
    mtime: int,
    progress: Progress = QUIET,
) -> int:
    """Write the SD-card image to `path` atomically; returns its size.

    Partition 1: FAT32 (type 0x0c) of `boot_size` bytes holding `boot_files`; 2: the squashfs
    `root`; 3: the data partition (left empty: /init formats it on first boot), at least
    `data_size` bytes and filling the card up to its power-of-two size.
    """
    root_size = -(-root.stat().st_size // ALIGN) * ALIGN
    size = sdcard_size(boot_size, root_size, data_size)
    boot_start = ALIGN
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".boot.", suffix=".vfat") as fat:
        write_fat(boot_files, fat, size=boot_size, mtime=mtime, label="BOOT",
                  hidden_sectors=boot_start // 512)
        fat.flush()
        data_start = boot_start + boot_size + root_size
        partitions = [
            Partition("boot", FAT32_LBA, Path(fat.name), boot_size),
            Partition("root", LINUX, root, root_size),
        ]
        if data_size:
            partitions.append(Partition("data", LINUX, None, size - data_start))
        write_disk_image(path, partitions, size=size, align=ALIGN, progress=progress)
    return size


@dataclass(frozen=True)
class BootFiles:
    """What the Pi firmware would load, read out of the image's FAT partition."""

    kernel: bytes
    initramfs: bytes | None
    dtb: bytes | None
    dtb_name: str | None
    cmdline: str
    config: dict[str, str]


def read_boot_files(image: Path) -> BootFiles:
    """Read config.txt, cmdline.txt and the files they name from partition 1 of `image`."""
    with open(image, "rb") as f:
        volume = FatVolume(f, _first_partition_offset(f, image), where=f"{image} partition 1")
        config = _parse_config(volume.read("config.txt").decode("utf-8", "replace"))
        kernel_name = config.get("kernel", KERNEL_NAME)
        initramfs_name = config.get("initramfs")
        dtb_name = config.get("device_tree")
        return BootFiles(
            kernel=volume.read(kernel_name),
            initramfs=volume.read(initramfs_name) if initramfs_name else None,
            dtb=volume.read(dtb_name) if dtb_name else None,
            dtb_name=dtb_name,
            # cmdline.txt is one line; the firmware ignores what follows the first newline.
            cmdline=volume.read("cmdline.txt").decode("utf-8", "replace").split("\n")[0].strip(),
            config=config,
        )


def _first_partition_offset(f, image: Path) -> int:
    f.seek(0)
    try:
        mbr = MBR.parse(f.read(512))
    except ConstructError as e:
        raise parse_error(f"{image}: sector 0", "no MBR", e) from e
    first = mbr.partitions[0]
    if first.type not in (FAT32_LBA, 0x0B, 0x0E, 0x06):
        raise FormatError(f"{image}: partition 1 has type {first.type:#04x}, not FAT",
                          "the Raspberry Pi firmware boots from a FAT first partition")
    return first.lba_first * 512


def _parse_config(text: str) -> dict[str, str]:
    """config.txt's `key=value` lines, and `initramfs <file> <address>` (the one key the
    firmware writes with a space). Later lines win, as in the firmware."""
    config: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("["):
            continue  # conditional sections ([pi0]...) are not evaluated: fwgen writes none
        if line.startswith("initramfs "):
            config["initramfs"] = line.split()[1]
        elif "=" in line:
            key, value = line.split("=", 1)
            config[key.strip()] = value.strip()
    return config


def check_boot_size(boot_size_mib: int, files: Mapping[str, bytes], setting: str = "sdcard.boot_size") -> None:
    total = sum(len(data) for data in files.values())
    if total > (boot_size_mib - 2) * MiB:
        raise UserError(f"the boot files need {total / MiB:.1f} MiB, the boot partition is {boot_size_mib} MiB",
                        f"raise {setting} in the board file")
