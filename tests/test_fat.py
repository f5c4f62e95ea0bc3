"""FAT32 writer and reader, checked against dosfstools (fsck.vfat, mkfs.vfat) and mtools."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fwgen.errors import UserError
from fwgen.images.fat import (
    FatVolume,
    basis_name_of,
    checksum_of,
    plan_layout,
    read_fat,
    short_name_of,
    write_fat_image,
)

MTIME = 1_700_000_000  # 2023-11-14 22:13:20 UTC
MiB = 1 << 20


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt install dosfstools mtools)")


def _blob(seed: str, size: int) -> bytes:
    digests = (hashlib.sha256(f"{seed}{i}".encode()).digest() for i in range(-(-size // 32)))
    return b"".join(digests)[:size]


# A Raspberry Pi boot partition's kind of content: short names, long names, sub-folders,
# a file exactly one cluster long, an empty file, a big file spanning thousands of clusters.
FILES = {
    "bootcode.bin": _blob("bootcode", 52_456),
    "start.elf": _blob("start", 2_980_000),
    "fixup.dat": _blob("fixup", 7_314),
    "config.txt": b"kernel=kernel.img\ndevice_tree=bcm2835-rpi-zero.dtb\n",
    "cmdline.txt": b"console=ttyAMA0 rdinit=/init\n",
    "bcm2835-rpi-zero.dtb": _blob("dtb", 31_004),
    "initramfs.cpio.gz": _blob("initramfs", 1_000_001),
    "kernel.img": _blob("kernel", 512),
    "empty": b"",
    "Mixed.Case": b"mixed\n",
    "overlays/README": b"overlays go here\n",
    "overlays/a-rather-long-overlay-name-for-a-hat.dtbo": _blob("hat", 1300),
    "deep/er/still/file.txt": b"deep\n",
}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fat") / "boot.vfat"
    write_fat_image(FILES, path, size=64 * MiB, mtime=MTIME, label="BOOT")
    return path


def test_fsck_vfat_finds_nothing_to_complain_about(image):
    _need("fsck.vfat")
    result = subprocess.run(["fsck.vfat", "-n", "-v", str(image)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # -v prints the geometry it read; nothing may be reported as wrong or changed.
    assert "FAT32" in result.stdout or "32-bit" in result.stdout or "32 bit" in result.stdout
    for word in ("differ", "invalid", "Free cluster summary wrong", "Leaving filesystem unchanged"):
        assert word not in result.stdout + result.stderr
    # fsck.fat counts files and folders, the root included: overlays, deep, deep/er, deep/er/still.
    files = len(FILES) + 4 + 1
    assert re.search(rf"{files} files, \d+/128992 clusters", result.stdout), result.stdout


def test_mdir_lists_long_and_short_names(image):
    _need("mdir")
    result = subprocess.run(["mdir", "-i", str(image), "::/"], capture_output=True, text=True,
                            env={"MTOOLS_SKIP_CHECK": "0", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Volume in drive : is BOOT" in text
    assert re.search(r"BCM283~1 DTB\s+31004 2023-11-14\s+22:13\s+bcm2835-rpi-zero\.dtb", text), text
    assert re.search(r"INITRA~1 GZ\s+1000001 .*initramfs\.cpio\.gz", text)
    # Lower-case 8.3 names carry the NT case bits instead of a long name (mdir shows them lower).
    assert re.search(r"bootcode bin\s+52456 2023-11-14", text)
    assert "MIXED~1" in text and "Mixed.Case" in text


def test_mcopy_reads_every_file_back(image, tmp_path):
    _need("mcopy")
    for name, data in FILES.items():
        target = tmp_path / name.replace("/", "_")
        subprocess.run(["mcopy", "-n", "-i", str(image), f"::/{name}", str(target)], check=True,
                       capture_output=True)
        assert target.read_bytes() == data, name


def test_our_reader_reads_every_file_back(image):
    assert read_fat(image) == {"/" + name: data for name, data in FILES.items()}


def test_our_reader_reads_a_volume_made_by_mkfs_and_mcopy(tmp_path):
    _need("mkfs.vfat", "mcopy", "mmd")
    path = tmp_path / "mkfs.vfat"
    subprocess.run(["mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", "-n", "OTHER", "-C", str(path),
                    str(40 * 1024)], check=True, capture_output=True)
    subprocess.run(["mmd", "-i", str(path), "::/overlays"], check=True)
    for name in ("bcm2835-rpi-zero.dtb", "config.txt", "start.elf", "overlays/README"):
        source = tmp_path / name.replace("/", "_")
        source.write_bytes(FILES[name])
        subprocess.run(["mcopy", "-i", str(path), str(source), f"::/{name}"], check=True)
    with open(path, "rb") as f:
        volume = FatVolume(f, where=str(path))
        assert volume.label == "OTHER"
        assert volume.read("/BCM2835-RPI-ZERO.DTB") == FILES["bcm2835-rpi-zero.dtb"]
        assert volume.read("start.elf") == FILES["start.elf"]
        assert volume.read("/overlays/README") == FILES["overlays/README"]
        assert sorted(volume.listdir("/")) == ["bcm2835-rpi-zero.dtb", "config.txt", "overlays", "start.elf"]


def test_the_same_files_give_the_same_bytes(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_fat_image(FILES, first, size=64 * MiB, mtime=MTIME)
    write_fat_image(dict(reversed(list(FILES.items()))), second, size=64 * MiB, mtime=MTIME)
    assert first.read_bytes() == second.read_bytes()
    changed = tmp_path / "c"
    write_fat_image(dict(FILES, **{"config.txt": b"other\n"}), changed, size=64 * MiB, mtime=MTIME)
    assert changed.read_bytes() != first.read_bytes()


def test_a_directory_spanning_many_clusters(tmp_path):
    _need("fsck.vfat", "mdir")
    files = {f"many/a file with a long name number {i:04d}.txt": f"{i}\n".encode() for i in range(300)}
    path = tmp_path / "many.vfat"
    write_fat_image(files, path, size=40 * MiB, mtime=MTIME)
    assert subprocess.run(["fsck.vfat", "-n", str(path)], capture_output=True).returncode == 0
    listing = subprocess.run(["mdir", "-b", "-i", str(path), "::/many"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert len(listing) == 300
    assert read_fat(path) == {"/" + k: v for k, v in files.items()}


def test_cluster_size_keeps_fat32(tmp_path):
    assert plan_layout(64 * MiB).sectors_per_cluster == 1
    assert plan_layout(256 * MiB).sectors_per_cluster == 4  # 2 KiB clusters
    assert plan_layout(4096 * MiB).sectors_per_cluster == 64  # 32 KiB clusters
    for size in (34 * MiB, 64 * MiB, 256 * MiB, 4096 * MiB):
        assert plan_layout(size).cluster_count >= 65529
    with pytest.raises(UserError, match="too small"):
        plan_layout(32 * MiB)
    with pytest.raises(UserError, match="multiple of 512"):
        plan_layout(64 * MiB + 1)


def test_a_volume_too_small_for_its_files_is_refused(tmp_path):
    with pytest.raises(UserError, match="full"):
        write_fat_image({"big": bytes(40 * MiB)}, tmp_path / "full.vfat", size=34 * MiB, mtime=MTIME)
    assert list(tmp_path.iterdir()) == []


def test_names_as_fatgen103_makes_them():
    assert short_name_of("config.txt") == (b"CONFIG  TXT", 0x18)
    assert short_name_of("KERNEL.IMG") == (b"KERNEL  IMG", 0)
    assert short_name_of("Mixed.Case") is None
    assert short_name_of("bcm2835-rpi-zero.dtb") is None
    assert basis_name_of("bcm2835-rpi-zero.dtb", set()) == b"BCM283~1DTB"
    assert basis_name_of("bcm2835-rpi-zero.dtb", {b"BCM283~1DTB"}) == b"BCM283~2DTB"
    assert basis_name_of("initramfs.cpio.gz", set()) == b"INITRA~1GZ "
    # fatgen103's ChkSum of "FOO     BAR" checked by hand: rotate-right-and-add over 11 bytes.
    total = 0
    for byte in b"FOO     BAR":
        total = ((total >> 1) | ((total & 1) << 7)) + byte & 0xFF
    assert checksum_of(b"FOO     BAR") == total
