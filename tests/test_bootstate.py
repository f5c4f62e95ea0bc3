"""The device state `fwgen boot` keeps beside the builds (fwgen/bootstate.py): partition tables
read back (sfdisk the independent reader), the data partition carried across a rebuild when
its layout is unchanged and started empty (with a warning) when it changed, `--fresh-disk`,
a router's overlay, console logs of the last boots, one boot of a device at a time. The boots
themselves are in tests/test_device_state.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fwgen.bootstate import (
    BootState,
    data_partition,
    device_state,
    firmware_overlay,
    rotate_console_logs,
)
from fwgen.errors import UserError
from fwgen.images.disk import MiB, Partition, read_partition_table, write_disk_image
from fwgen.images.flash import firmware_image, plan_firmware
from fwgen.images.uimage import make_uimage

LINUX_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def write_disk(path: Path, root: bytes, data_mib: int, *, table: str = "mbr") -> Path:
    """A disk as fwgen writes one: a root partition holding `root`, an empty data partition
    (named "data" on a GPT, with a FAT boot partition first)."""
    parts = [Partition("root", 0x83, root, -(-len(root) // MiB) * MiB), Partition("data", 0x83, None, data_mib * MiB)]
    if table == "gpt":
        parts.insert(0, Partition("boot", 0x0C, b"\1" * 4096, MiB))
    write_disk_image(path, parts, table=table)
    return path


def guest_writes(disk: Path, text: bytes) -> None:
    """What a boot leaves on the data partition (the guest's overlay)."""
    kept = data_partition(disk)
    assert kept is not None
    with open(disk, "r+b") as f:
        f.seek(kept.start + 4096)
        f.write(text)


def data_of(disk: Path) -> bytes:
    kept = data_partition(disk)
    assert kept is not None
    with open(disk, "rb") as f:
        f.seek(kept.start)
        return f.read(kept.size)


@pytest.mark.parametrize("table", ["mbr", "gpt"])
def test_the_partition_table_reads_back_as_sfdisk_reads_it(tmp_path, table):
    disk = write_disk(tmp_path / "disk.img", os.urandom(3 * MiB), 4, table=table)
    ours = read_partition_table(disk)
    theirs = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                       check=True).stdout)["partitiontable"]["partitions"]
    assert [(p.start, p.size) for p in ours] == [(p["start"] * 512, p["size"] * 512) for p in theirs]
    if table == "gpt":
        assert [p.name for p in ours] == ["boot", "root", "data"] == [p["name"] for p in theirs]
        assert [p.type.upper() for p in ours] == [p["type"] for p in theirs]
    else:
        assert [p.type for p in ours] == ["0x83", "0x83"] and [p["type"] for p in theirs] == ["83", "83"]
    if table == "gpt":
        damaged = bytearray(disk.read_bytes())
        damaged[1024 + 40] ^= 1  # a bit of the first entry's start LBA
        disk.write_bytes(damaged)
        with pytest.raises(UserError, match="GPT entry array CRC32 mismatch"):
            read_partition_table(disk)


@pytest.mark.parametrize("table", ["mbr", "gpt"])
def test_a_table_sfdisk_wrote_reads_as_sfdisk_wrote_it(tmp_path, table):
    """The reader on tables nobody here wrote: util-linux's sfdisk writes them, with a GPT's
    backup header at the end of the disk and its own alignment, names and types."""
    disk = tmp_path / "theirs.img"
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    script = {"mbr": "label: dos\nstart=2048, size=20480, type=c\nsize=40960, type=83\ntype=83\n",
              "gpt": f"label: gpt\nsize=20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=boot\n"
                     f"size=40960, type={LINUX_GUID}, name=root\ntype={LINUX_GUID}, name=data\n"}[table]
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", str(disk)], input=script, text=True,
                   capture_output=True, check=True)
    theirs = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                       check=True).stdout)["partitiontable"]["partitions"]
    ours = read_partition_table(disk)
    assert len(ours) == 3
    assert [(p.number, p.start, p.size) for p in ours] == [(n, t["start"] * 512, t["size"] * 512)
                                                          for n, t in enumerate(theirs, 1)]
    if table == "gpt":
        assert [(p.name, p.type.upper()) for p in ours] == [(t["name"], t["type"]) for t in theirs]
        assert data_partition(disk).start == theirs[2]["start"] * 512
    else:
        assert [p.type for p in ours] == ["0x0c", "0x83", "0x83"]
        assert data_partition(disk).name == "partition 3"


@pytest.mark.parametrize("table", ["mbr", "gpt"])
def test_a_rebuild_keeps_the_data_partition_when_its_layout_is_unchanged(tmp_path, table, capsys):
    state = tmp_path / "state"
    first = write_disk(tmp_path / "first.img", os.urandom(2 * MiB), 4, table=table)
    copy = BootState(state).copy(first, "disk.img", keep=data_partition)
    guest_writes(copy, b"written by boot 1")
    # The rebuild's root is larger: the data partition moves, its name, type and size stay.
    second = write_disk(tmp_path / "second.img", os.urandom(5 * MiB), 4, table=table)
    assert data_partition(second).start != data_partition(first).start
    BootState(state).copy(second, "disk.img", keep=data_partition)
    assert b"written by boot 1" in data_of(copy)
    assert read_partition_table(copy) == read_partition_table(second), "the rebuild's table"
    rest = data_partition(second).start
    assert copy.read_bytes()[:rest] == second.read_bytes()[:rest], "the rebuild's root"
    assert "warning" not in capsys.readouterr().err
    # A boot of the same build keeps the disk as the guest left it.
    guest_writes(copy, b"written by boot 2")
    BootState(state).copy(second, "disk.img", keep=data_partition)
    assert b"written by boot 2" in data_of(copy)
    # --fresh-disk: the built image again, the data partition empty.
    BootState(state, fresh=True).copy(second, "disk.img", keep=data_partition)
    assert copy.read_bytes() == second.read_bytes()


def test_a_changed_data_partition_starts_empty_with_one_warning(tmp_path, capsys):
    state = tmp_path / "state"
    copy = BootState(state).copy(write_disk(tmp_path / "first.img", b"r" * MiB, 4), "disk.img", keep=data_partition)
    guest_writes(copy, b"written by boot 1")
    larger = write_disk(tmp_path / "larger.img", b"R" * MiB, 8)
    BootState(state).copy(larger, "disk.img", keep=data_partition)
    assert copy.read_bytes() == larger.read_bytes(), "no half-merged disk"
    [warning] = [line for line in capsys.readouterr().err.splitlines() if line]
    assert warning == (f"warning: {copy}: partition 2 changed in the rebuild (partition 2 (0x83, 4,194,304 bytes) -> "
                       "partition 2 (0x83, 8,388,608 bytes)): it starts empty, what earlier boots wrote there is dropped")


def test_an_unreadable_old_disk_is_not_merged(tmp_path, capsys):
    state = tmp_path / "state"
    copy = BootState(state).copy(write_disk(tmp_path / "first.img", b"r" * MiB, 4), "disk.img", keep=data_partition)
    with open(copy, "r+b") as f:
        f.seek(510)
        f.write(b"\0\0")  # the guest (or a person) wrote over the MBR
    second = write_disk(tmp_path / "second.img", b"R" * MiB, 4)
    BootState(state).copy(second, "disk.img", keep=data_partition)
    assert copy.read_bytes() == second.read_bytes()
    assert "sector 0: no MBR" in capsys.readouterr().err


def test_a_routers_overlay_is_kept_when_the_squashfs_ends_in_the_same_erase_block(tmp_path, capsys):
    erase = 0x10000

    def firmware(name: str, squashfs_size: int) -> Path:
        kernel = make_uimage(b"k" * 5000, name="Linux", arch="mips")
        squashfs = bytearray(os.urandom(squashfs_size))
        squashfs[:4], squashfs[40:48] = b"hsqs", squashfs_size.to_bytes(8, "little")
        layout = plan_firmware(len(kernel), len(squashfs), 16 * erase, erase)
        path = tmp_path / name
        path.write_bytes(firmware_image(layout, kernel, bytes(squashfs)))
        return path

    state = tmp_path / "state"
    keep = firmware_overlay(erase)
    copy = BootState(state).copy(firmware("a.bin", 70_000), "firmware.bin", keep=keep)
    overlay = keep(copy)
    assert (overlay.start, overlay.size) == (3 * erase, 13 * erase)
    with open(copy, "r+b") as f:
        f.seek(overlay.start)
        f.write(b"overlay of boot 1")
        f.seek(overlay.start + 5 * erase)
        f.write(bytes(erase))  # zeros over the built image's erased (0xff) flash: carried too
    BootState(state).copy(firmware("b.bin", 71_000), "firmware.bin", keep=keep)
    assert copy.read_bytes()[overlay.start:].startswith(b"overlay of boot 1")
    assert copy.read_bytes()[overlay.start + 5 * erase:][:erase] == bytes(erase)
    grown = firmware("c.bin", 140_000)  # one erase block more: the overlay moves and shrinks
    BootState(state).copy(grown, "firmware.bin", keep=keep)
    assert copy.read_bytes() == grown.read_bytes()
    assert "overlay changed in the rebuild" in capsys.readouterr().err


def test_console_logs_of_the_last_four_boots_are_kept(tmp_path):
    for boot in range(1, 7):
        rotate_console_logs(tmp_path)
        (tmp_path / "console.log").write_text(f"boot {boot}\n")
    logs = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert logs == {"console.log": "boot 6\n", "console.log.1": "boot 5\n", "console.log.2": "boot 4\n",
                    "console.log.3": "boot 3\n"}


def test_the_state_is_beside_the_builds_and_one_boot_holds_it(tmp_path):
    outdir = tmp_path / "out" / "acme"
    with device_state(outdir, fresh=False) as state:
        assert state.folder == tmp_path / "out" / ".state" / "acme"
        with pytest.raises(UserError, match="being booted by another fwgen boot"), \
                device_state(outdir, fresh=False):
            pass
    with device_state(outdir, fresh=True) as state:
        assert state.fresh
