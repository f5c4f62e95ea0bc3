"""Raspberry Pi SD-card images: partition table read by sfdisk, boot partition by fsck.vfat and
mtools, root by unsquashfs; `read_boot_files` agrees with mtools; the real rpi-zero build."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from buildutil import run_fwgen

from fwgen.errors import FormatError
from fwgen.images.sdcard import config_txt, read_boot_files, sdcard_size, write_sdcard
from fwgen.images.squashfs import write_squashfs
from fwgen.rootfs import RootFS

MiB = 1 << 20
MTIME = 1_700_000_000
BOOT = {
    "bootcode.bin": b"B" * 52_460,
    "start.elf": bytes(range(256)) * 4000,
    "fixup.dat": b"F" * 7262,
    "kernel.img": b"K" * 300_001,
    "initramfs.cpio.gz": b"I" * 4097,
    "bcm2835-rpi-zero.dtb": b"\xd0\x0d\xfe\xed" + b"D" * 100,
    "config.txt": config_txt("test", dtb="bcm2835-rpi-zero.dtb", extra="gpu_mem=16").encode(),
    "cmdline.txt": b"console=ttyAMA0 rdinit=/init\nignored second line\n",
}


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sdcard")
    rootfs = RootFS()
    rootfs.add_file("/etc/hostname", b"pi\n")
    squashfs = folder / "root.squashfs"
    write_squashfs(rootfs, squashfs, mtime=MTIME)
    path = folder / "sdcard.img"
    write_sdcard(path, boot_files=BOOT, root=squashfs, boot_size=64 * MiB, data_size=32 * MiB, mtime=MTIME)
    return path


def _partitions(card: Path) -> list[dict]:
    _need("sfdisk")
    out = subprocess.run(["sfdisk", "--json", str(card)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["partitiontable"]["partitions"]


def test_size_is_a_power_of_two_and_partitions_are_as_laid_out(card):
    size = card.stat().st_size
    assert size == 128 * MiB and size & (size - 1) == 0
    boot, root, data = _partitions(card)
    assert (boot["type"], boot["start"], boot["size"]) == ("c", 4 * MiB // 512, 64 * MiB // 512)
    assert (root["type"], root["start"]) == ("83", 68 * MiB // 512)
    assert data["type"] == "83" and data["start"] == root["start"] + root["size"]
    # The data partition takes the rest of the card, more than the 32 MiB asked for.
    assert (data["start"] + data["size"]) * 512 == size and data["size"] * 512 >= 32 * MiB


def test_sizes_round_up_to_powers_of_two():
    assert sdcard_size(64 * MiB, 4 * MiB, 32 * MiB) == 128 * MiB
    assert sdcard_size(64 * MiB, 60 * MiB, 0) == 128 * MiB
    assert sdcard_size(64 * MiB, 61 * MiB, 0) == 256 * MiB


def test_boot_partition_passes_fsck_and_mtools_reads_it(card, tmp_path):
    _need("fsck.vfat", "mcopy")
    boot = _partitions(card)[0]
    part = tmp_path / "boot.vfat"
    with open(card, "rb") as f:
        f.seek(boot["start"] * 512)
        part.write_bytes(f.read(boot["size"] * 512))
    result = subprocess.run(["fsck.vfat", "-n", str(part)], capture_output=True, text=True)
    assert result.returncode == 0 and "differ" not in result.stdout, result.stdout
    for name, data in BOOT.items():
        # mtools' image@@offset reads the partition in place, from the card itself.
        got = subprocess.run(["mcopy", "-n", "-i", f"{card}@@{boot['start'] * 512}", f"::{name}", "-"],
                             capture_output=True, check=True).stdout
        assert got == data, name


def test_root_partition_holds_the_squashfs(card, tmp_path):
    _need("unsquashfs")
    root = _partitions(card)[1]
    listing = subprocess.run(["unsquashfs", "-o", str(root["start"] * 512), "-l", "-d", "r", str(card)],
                             capture_output=True, text=True, check=True).stdout
    assert "r/etc/hostname" in listing


def test_read_boot_files_follows_config_txt(card):
    files = read_boot_files(card)
    assert files.kernel == BOOT["kernel.img"]
    assert files.initramfs == BOOT["initramfs.cpio.gz"]
    assert files.dtb == BOOT["bcm2835-rpi-zero.dtb"] and files.dtb_name == "bcm2835-rpi-zero.dtb"
    assert files.cmdline == "console=ttyAMA0 rdinit=/init"
    assert files.config["gpu_mem"] == "16"


def test_a_card_without_a_fat_first_partition_is_refused(tmp_path):
    _need("sfdisk")
    path = tmp_path / "linux.img"
    path.write_bytes(bytes(8 * MiB))
    subprocess.run(["sfdisk", "-q", str(path)], input="2048,,83\n", text=True, check=True, capture_output=True)
    with pytest.raises(FormatError, match="partition 1 has type 0x83, not FAT"):
        read_boot_files(path)


@pytest.mark.network
@pytest.mark.slow
def test_rpi_zero_build_writes_a_card_the_firmware_can_read(cache_dir, tmp_path):
    _need("fsck.vfat", "mdir")
    result = run_fwgen("build", "--board", "rpi-zero", "--out", str(tmp_path), cache=cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    card = tmp_path / "rpi-zero" / "sdcard.img"
    size = card.stat().st_size
    assert size & (size - 1) == 0
    boot = _partitions(card)[0]
    listing = subprocess.run(["mdir", "-b", "-i", f"{card}@@{boot['start'] * 512}", "::"],
                             capture_output=True, text=True, check=True).stdout.split()
    names = {Path(p).name for p in listing}
    assert {"bootcode.bin", "start.elf", "fixup.dat", "config.txt", "cmdline.txt", "kernel.img",
            "initramfs.cpio.gz", "bcm2835-rpi-zero.dtb"} <= names
    files = read_boot_files(card)
    assert files.dtb[:4] == b"\xd0\x0d\xfe\xed"
    assert files.kernel == (tmp_path / "rpi-zero" / "kernel").read_bytes()
    # The firmware left the root filesystem for the boot partition.
    manifest = json.loads((tmp_path / "rpi-zero" / "manifest.json").read_text())
    assert not any(p.startswith("/usr/lib/raspi-firmware/") for p in manifest["files"])
