"""Raw disk images, read back by util-linux (sfdisk, fdisk) as the independent reader."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fwgen.errors import UserError
from fwgen.images.disk import Partition, write_disk_image
from fwgen.run import run

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    shutil.which("sfdisk") is None or shutil.which("fdisk") is None,
    reason="util-linux sfdisk/fdisk not installed (apt install fdisk)",
)


def sfdisk_json(image: Path) -> dict:
    return json.loads(run(["sfdisk", "--json", image]).stdout)["partitiontable"]


def layout(tmp_path: Path) -> list[Partition]:
    boot = tmp_path / "boot.vfat"
    boot.write_bytes(b"FAT!" + bytes(range(256)) * 4000)
    return [
        Partition("boot", 0x0C, boot, 64 * MiB, bootable=True),
        Partition("rootfs", 0x83, b"hsqs" + b"R" * 5000),  # size from the data: 10 sectors
        Partition("data", 0x83, None, 8 * MiB),
    ]


def read_at(image: Path, offset: int, size: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(offset)
        return f.read(size)


@pytest.mark.parametrize("table", ["mbr", "gpt"])
def test_sfdisk_reads_the_table_and_data_sits_at_the_partitions(tmp_path, table):
    parts = layout(tmp_path)
    image = tmp_path / "disk.img"
    write_disk_image(image, parts, table=table)

    pt = sfdisk_json(image)
    assert pt["label"] == ("dos" if table == "mbr" else "gpt")
    got = [(p["start"], p["size"]) for p in pt["partitions"]]
    assert got == [(2048, 131072), (133120, 10), (135168, 16384)]
    assert image.stat().st_size == (135168 + 16384 + (33 if table == "gpt" else 0) + 2047) // 2048 * 2048 * 512
    if table == "mbr":
        assert [p["type"] for p in pt["partitions"]] == ["c", "83", "83"]
        assert [p.get("bootable", False) for p in pt["partitions"]] == [True, False, False]
        fdisk = run(["fdisk", "-l", image]).stdout.decode()
        assert "different physical/logical" not in fdisk  # CHS fields agree with the LBAs
    else:
        assert [p["type"] for p in pt["partitions"]] == [
            "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]
        assert [p["name"] for p in pt["partitions"]] == ["boot", "rootfs", "data"]
        assert pt["partitions"][0].get("attrs") == "LegacyBIOSBootable"
        assert len({p["uuid"] for p in pt["partitions"]} | {pt["id"]}) == 4
        verify = run(["sfdisk", "--verify", image]).stdout.decode()
        assert "No errors detected" in verify  # both headers, both arrays, CRCs

    for p, spec in zip(pt["partitions"], parts, strict=True):
        data = spec.data.read_bytes() if isinstance(spec.data, Path) else spec.data or b""
        assert read_at(image, p["start"] * 512, len(data)) == data, spec.name
        # The byte after the data is zero: nothing else was written into the partition.
        assert read_at(image, p["start"] * 512 + len(data), 1) == b"\0"


@pytest.mark.parametrize("table", ["mbr", "gpt"])
def test_identifiers_are_deterministic_and_follow_the_content(tmp_path, table):
    parts = layout(tmp_path)
    a, b, c = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "c.img"
    write_disk_image(a, parts, table=table)
    write_disk_image(b, parts, table=table)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    changed = [parts[0], Partition("rootfs", 0x83, b"hsqs" + b"S" * 5000), parts[2]]
    write_disk_image(c, changed, table=table)
    assert sfdisk_json(a)["id"] != sfdisk_json(c)["id"]


def test_partition_beyond_chs_range_and_explicit_disk_size(tmp_path):
    """Past cylinder 1023 (8 GiB) the CHS fields saturate; fdisk must not complain."""
    image = tmp_path / "big.img"
    parts = [Partition("pad", 0x83, None, 9 << 30), Partition("tail", 0x83, b"tail data", MiB)]
    write_disk_image(image, parts, size=12 << 30)
    assert image.stat().st_size == 12 << 30
    assert image.stat().st_blocks * 512 < 8 * MiB  # sparse: nothing written but the table
    pt = sfdisk_json(image)
    assert [(p["start"], p["size"]) for p in pt["partitions"]] == [(2048, 9 << 21), (2048 + (9 << 21), 2048)]
    assert "different physical/logical" not in run(["fdisk", "-l", image]).stdout.decode()
    assert read_at(image, (2048 + (9 << 21)) * 512, 9) == b"tail data"


def test_bad_layouts_are_refused_and_leave_nothing(tmp_path):
    image = tmp_path / "x.img"
    with pytest.raises(UserError, match="an MBR holds 4 primary partitions, 5 were given"):
        write_disk_image(image, [Partition(f"p{i}", 0x83, None, MiB) for i in range(5)])
    with pytest.raises(UserError, match="partition root: 2000 bytes of data do not fit in 1024 bytes"):
        write_disk_image(image, [Partition("root", 0x83, bytes(2000), 1024)])
    with pytest.raises(UserError, match="disk size 2097152 is too small: the partitions need 3145728 bytes"):
        write_disk_image(image, [Partition("root", 0x83, None, 2 * MiB)], size=2 * MiB)
    with pytest.raises(UserError, match="partition odd: no GPT type known for MBR type 0x07"):
        write_disk_image(image, [Partition("odd", 0x07, None, MiB)], table="gpt")
    assert list(tmp_path.iterdir()) == []
