"""Raw disk images: partitions laid out behind an MBR or GPT partition table.

Used to boot from a disk (an SD card image, a virtio disk under QEMU). Identifiers are
derived from a hash of the inputs, so the same partitions always give the same bytes.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from construct import Bytes, Const, ConstructError, Int8ul, Int32ul, Int64ul, Padding, Struct

from ..errors import FormatError, UserError, parse_error
from ..files import hash_file, replacing
from ..progress import QUIET, Progress

SECTOR = 512
MiB = 1 << 20

# -- MBR (the classic PC partition table; the layout every firmware and kernel reads) -------
MBR_PARTITION = Struct(
    "status" / Int8ul,  # 0x80 = bootable ("active")
    "chs_first" / Bytes(3),
    "type" / Int8ul,
    "chs_last" / Bytes(3),
    "lba_first" / Int32ul,
    "sectors" / Int32ul,
)
MBR = Struct(
    "bootstrap" / Bytes(440),
    "disk_signature" / Int32ul,  # what Linux shows as PARTUUID=<signature>-<nn>
    "reserved" / Bytes(2),
    "partitions" / MBR_PARTITION[4],
    "boot_signature" / Const(b"\x55\xaa"),
)

# -- GPT (UEFI specification 2.10, section 5.3) -------------------------------------------
GPT_HEADER = Struct(
    "signature" / Const(b"EFI PART"),
    "revision" / Const(0x00010000, Int32ul),
    "header_size" / Const(92, Int32ul),
    "header_crc32" / Int32ul,  # CRC32 of these 92 bytes with this field zero
    Padding(4),
    "my_lba" / Int64ul,
    "alternate_lba" / Int64ul,
    "first_usable_lba" / Int64ul,
    "last_usable_lba" / Int64ul,
    "disk_guid" / Bytes(16),
    "partition_entry_lba" / Int64ul,
    "number_of_partition_entries" / Int32ul,
    "size_of_partition_entry" / Int32ul,
    "partition_entry_array_crc32" / Int32ul,
)
GPT_ENTRY = Struct(
    "partition_type_guid" / Bytes(16),
    "unique_partition_guid" / Bytes(16),
    "starting_lba" / Int64ul,
    "ending_lba" / Int64ul,  # inclusive
    "attributes" / Int64ul,
    "partition_name" / Bytes(72),  # UTF-16LE, zero padded
)
GPT_ENTRIES = 128
GPT_ENTRY_SIZE = 128
GPT_ARRAY_SECTORS = GPT_ENTRIES * GPT_ENTRY_SIZE // SECTOR  # 32
GPT_LEGACY_BIOS_BOOTABLE = 1 << 2

# MBR type ids and their GPT partition type GUIDs.
GPT_TYPE_OF_MBR = {
    0x83: "0fc63daf-8483-4772-8e79-3d69d8477de4",  # Linux filesystem
    0x82: "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",  # Linux swap
    0x0B: "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",  # FAT32 -> Microsoft basic data
    0x0C: "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",  # FAT32 LBA -> Microsoft basic data
    0x0E: "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",  # FAT16 LBA -> Microsoft basic data
    0xEF: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",  # EFI system partition
}


@dataclass(frozen=True)
class Partition:
    """One partition: `data` (bytes, a file, or None for an empty one) in `size` bytes.

    `type_id` is an MBR type byte (0x83 Linux, 0x0c FAT32 LBA, ...); on GPT it may also be a
    type GUID string. `size` defaults to the data's size, rounded up to a whole sector.
    """

    name: str
    type_id: int | str
    data: bytes | Path | None = None
    size: int | None = None
    bootable: bool = False


@dataclass(frozen=True)
class _Placed:
    part: Partition
    start: int  # bytes
    size: int  # bytes, a whole number of sectors
    data_size: int


def write_disk_image(
    path: Path,
    partitions: Sequence[Partition],
    *,
    table: str = "mbr",
    size: int | None = None,
    align: int = MiB,
    progress: Progress = QUIET,
) -> None:
    """Write a raw disk image with an MBR ("mbr") or GPT ("gpt") partition table, atomically.

    Partitions start on `align` boundaries in the given order. The disk is `size` bytes, or
    just large enough (rounded up to `align`). Unwritten areas stay sparse in the file.
    """
    if table not in ("mbr", "gpt"):
        raise UserError(f"unknown partition table '{table}'", "use mbr or gpt")
    if align < SECTOR or align % SECTOR:
        raise UserError(f"partition alignment {align} must be a multiple of {SECTOR}")
    if table == "mbr" and len(partitions) > 4:
        raise UserError(f"an MBR holds 4 primary partitions, {len(partitions)} were given",
                        "use table='gpt'")
    if table == "gpt" and len(partitions) > GPT_ENTRIES:
        raise UserError(f"a GPT holds {GPT_ENTRIES} partitions, {len(partitions)} were given")
    path = Path(path)
    placed = _place(partitions, align, table)
    disk_size = _disk_size(placed, size, align, table)
    seed = _identity_seed(table, placed, disk_size)
    tables = _mbr_table(placed, disk_size, seed) if table == "mbr" else _gpt_tables(placed, disk_size, seed)
    progress.step(f"writing disk image {path.name} ({table}, {len(placed)} partitions, {disk_size} bytes)")
    with replacing(path, mode=0o644) as out:
        out.truncate(disk_size)
        for offset, blob in tables:
            out.seek(offset)
            out.write(blob)
        for p in placed:
            _write_data(out, p)


# -- layout -----------------------------------------------------------------------------
def _data_size(part: Partition) -> int:
    if part.data is None:
        return 0
    if isinstance(part.data, (bytes, bytearray, memoryview)):
        return len(part.data)
    try:
        return Path(part.data).stat().st_size
    except OSError as e:
        raise UserError(f"partition {part.name}: cannot read {part.data}: {e.strerror}") from e


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _place(partitions: Sequence[Partition], align: int, table: str) -> list[_Placed]:
    # GPT's primary header and entry array fill LBA 1-33: the first partition may not
    # start before LBA 34, whatever the alignment.
    cursor = max(align, (2 + GPT_ARRAY_SECTORS) * SECTOR if table == "gpt" else SECTOR)
    placed = []
    for part in partitions:
        data_size = _data_size(part)
        size = part.size if part.size is not None else data_size
        if size <= 0:
            raise UserError(f"partition {part.name}: no size and no data")
        if data_size > size:
            raise UserError(f"partition {part.name}: {data_size} bytes of data do not fit in {size} bytes")
        start = _round_up(cursor, align)
        placed.append(_Placed(part, start, _round_up(size, SECTOR), data_size))
        cursor = start + _round_up(size, SECTOR)
    return placed


def _disk_size(placed: list[_Placed], size: int | None, align: int, table: str) -> int:
    end = max((p.start + p.size for p in placed), default=align)
    if table == "gpt":
        end += (1 + GPT_ARRAY_SECTORS) * SECTOR  # the backup entry array and header
    if size is None:
        return _round_up(end, align)
    if size % SECTOR:
        raise UserError(f"disk size {size} is not a multiple of {SECTOR}")
    if size < end:
        raise UserError(f"disk size {size} is too small: the partitions need {end} bytes")
    return size


def _identity_seed(table: str, placed: list[_Placed], disk_size: int) -> bytes:
    """A hash of everything that defines the disk: the source of its identifiers."""
    h = hashlib.sha256(f"fwgen-disk {table} {disk_size}".encode())
    for p in placed:
        h.update(f"\0{p.part.name}\0{p.part.type_id}\0{p.start}\0{p.size}\0{p.part.bootable}\0".encode())
        h.update(_content_digest(p.part))
    return h.digest()


def _content_digest(part: Partition) -> bytes:
    if part.data is None:
        return b""
    if isinstance(part.data, (bytes, bytearray, memoryview)):
        return hashlib.sha256(part.data).digest()
    return bytes.fromhex(hash_file(part.data))


def _write_data(out, p: _Placed) -> None:
    if p.part.data is None:
        return
    out.seek(p.start)
    if isinstance(p.part.data, (bytes, bytearray, memoryview)):
        out.write(p.part.data)
        return
    with open(p.part.data, "rb") as f:
        shutil.copyfileobj(f, out, MiB)


# -- MBR --------------------------------------------------------------------------------
def _chs(lba: int) -> bytes:
    """Cylinder/head/sector for an LBA in the 255-head, 63-sector geometry fdisk uses;
    addresses beyond cylinder 1023 saturate to (1023, 254, 63) as the spec asks."""
    cylinder, rest = divmod(lba, 255 * 63)
    head, sector = divmod(rest, 63)
    if cylinder > 1023:
        cylinder, head, sector = 1023, 254, 62
    return bytes([head, (sector + 1) | ((cylinder >> 2) & 0xC0), cylinder & 0xFF])


def _mbr_entry(status: int, type_id: int, first: int, sectors: int) -> dict:
    return {
        "status": status, "chs_first": _chs(first), "type": type_id,
        "chs_last": _chs(first + sectors - 1), "lba_first": first, "sectors": sectors,
    }


_EMPTY_MBR_ENTRY = {"status": 0, "chs_first": bytes(3), "type": 0, "chs_last": bytes(3),
                    "lba_first": 0, "sectors": 0}


def _mbr_table(placed: list[_Placed], disk_size: int, seed: bytes) -> list[tuple[int, bytes]]:
    entries = []
    for p in placed:
        if not isinstance(p.part.type_id, int) or not 0 < p.part.type_id < 256:
            raise UserError(f"partition {p.part.name}: MBR type must be a byte such as 0x83, not {p.part.type_id!r}")
        first, sectors = p.start // SECTOR, p.size // SECTOR
        if first + sectors > 1 << 32:
            raise UserError(f"partition {p.part.name} ends beyond 2 TiB, which an MBR cannot address",
                            "use table='gpt'")
        entries.append(_mbr_entry(0x80 if p.part.bootable else 0, p.part.type_id, first, sectors))
    entries += [_EMPTY_MBR_ENTRY] * (4 - len(entries))
    signature = int.from_bytes(seed[:4], "little") or 1
    return [(0, _build_mbr(signature, entries))]


def _build_mbr(signature: int, entries: list[dict]) -> bytes:
    return MBR.build({"bootstrap": bytes(440), "disk_signature": signature, "reserved": bytes(2),
                      "partitions": entries})


# -- GPT --------------------------------------------------------------------------------
def _guid(seed: bytes, label: str) -> uuid.UUID:
    """A version-4-shaped GUID derived from the seed: stable, and unique per label."""
    return uuid.UUID(bytes=hashlib.sha256(seed + label.encode()).digest()[:16], version=4)


def _gpt_type(part: Partition) -> uuid.UUID:
    if isinstance(part.type_id, str):
        try:
            return uuid.UUID(part.type_id)
        except ValueError:
            raise UserError(f"partition {part.name}: bad GPT type GUID '{part.type_id}'") from None
    if part.type_id not in GPT_TYPE_OF_MBR:
        raise UserError(f"partition {part.name}: no GPT type known for MBR type 0x{part.type_id:02x}",
                        "give the type GUID as a string")
    return uuid.UUID(GPT_TYPE_OF_MBR[part.type_id])


def _gpt_tables(placed: list[_Placed], disk_size: int, seed: bytes) -> list[tuple[int, bytes]]:
    last_lba = disk_size // SECTOR - 1
    array = bytearray()
    for i, p in enumerate(placed):
        name = p.part.name.encode("utf-16-le")
        if len(name) > 72:
            raise UserError(f"partition name '{p.part.name}' is longer than GPT's 36 UTF-16 units")
        array += GPT_ENTRY.build({
            "partition_type_guid": _gpt_type(p.part).bytes_le,
            "unique_partition_guid": _guid(seed, f"partition {i}").bytes_le,
            "starting_lba": p.start // SECTOR,
            "ending_lba": (p.start + p.size) // SECTOR - 1,
            "attributes": GPT_LEGACY_BIOS_BOOTABLE if p.part.bootable else 0,
            "partition_name": name.ljust(72, b"\0"),
        })
    table = bytes(array.ljust(GPT_ENTRIES * GPT_ENTRY_SIZE, b"\0"))
    backup_array_lba = last_lba - GPT_ARRAY_SECTORS
    common = {
        "first_usable_lba": 2 + GPT_ARRAY_SECTORS,
        "last_usable_lba": backup_array_lba - 1,
        "disk_guid": _guid(seed, "disk").bytes_le,
        "number_of_partition_entries": GPT_ENTRIES,
        "size_of_partition_entry": GPT_ENTRY_SIZE,
        "partition_entry_array_crc32": zlib.crc32(table),
    }
    primary = _gpt_header(common, my_lba=1, alternate_lba=last_lba, entry_lba=2)
    backup = _gpt_header(common, my_lba=last_lba, alternate_lba=1, entry_lba=backup_array_lba)
    # The protective MBR: one partition of type 0xEE covering the disk (capped at 2 TiB).
    protective = _mbr_entry(0, 0xEE, 1, min(last_lba, 0xFFFFFFFF))
    mbr = _build_mbr(0, [protective] + [_EMPTY_MBR_ENTRY] * 3)
    return [(0, mbr), (SECTOR, primary), (2 * SECTOR, table),
            (backup_array_lba * SECTOR, table), (last_lba * SECTOR, backup)]


def _gpt_header(common: dict, *, my_lba: int, alternate_lba: int, entry_lba: int) -> bytes:
    fields = dict(common, header_crc32=0, my_lba=my_lba, alternate_lba=alternate_lba,
                  partition_entry_lba=entry_lba)
    crc = zlib.crc32(GPT_HEADER.build(fields))
    return GPT_HEADER.build(dict(fields, header_crc32=crc))


# -- reading -------------------------------------------------------------------------------
GPT_PROTECTIVE = 0xEE


@dataclass(frozen=True)
class TablePartition:
    """A partition as a disk's table lists it: `name` is GPT's ("" on an MBR), `type` the MBR
    type byte as 0x83 or the GPT type GUID; `start` and `size` in bytes."""

    number: int
    name: str
    type: str
    start: int
    size: int


def read_partition_table(path: Path) -> list[TablePartition]:
    """The partitions of a disk image's MBR, or of its GPT behind a protective MBR (the
    primary header and entry array, both CRC-checked), in table order."""
    with open(path, "rb") as f:
        try:
            mbr = MBR.parse(f.read(SECTOR))
        except ConstructError as e:
            raise parse_error(f"{path}: sector 0", "no MBR", e) from e
        if any(p.type == GPT_PROTECTIVE for p in mbr.partitions):
            return _read_gpt(f, path)
    return [TablePartition(n, "", f"0x{p.type:02x}", p.lba_first * SECTOR, p.sectors * SECTOR)
            for n, p in enumerate(mbr.partitions, 1) if p.type]


def _read_gpt(f, path: Path) -> list[TablePartition]:
    f.seek(SECTOR)
    raw = f.read(SECTOR)
    try:
        header = GPT_HEADER.parse(raw)
    except ConstructError as e:
        raise parse_error(f"{path}: LBA 1", "bad GPT header", e) from e
    if zlib.crc32(raw[:16] + bytes(4) + raw[20:92]) != header.header_crc32:
        raise FormatError(f"{path}: LBA 1: GPT header CRC32 mismatch")
    f.seek(header.partition_entry_lba * SECTOR)
    array = f.read(header.number_of_partition_entries * header.size_of_partition_entry)
    if zlib.crc32(array) != header.partition_entry_array_crc32:
        raise FormatError(f"{path}: LBA {header.partition_entry_lba}: GPT entry array CRC32 mismatch")
    found = []
    for n in range(header.number_of_partition_entries):
        at = n * header.size_of_partition_entry
        entry = GPT_ENTRY.parse(array[at:at + GPT_ENTRY_SIZE])
        if entry.partition_type_guid == bytes(16):
            continue
        name = entry.partition_name.decode("utf-16-le", "replace").split("\0")[0]
        found.append(TablePartition(n + 1, name, str(uuid.UUID(bytes_le=entry.partition_type_guid)),
                                    entry.starting_lba * SECTOR,
                                    (entry.ending_lba - entry.starting_lba + 1) * SECTOR))
    return found
