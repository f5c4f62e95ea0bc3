"""FAT32 file systems: a deterministic writer and a reader (Raspberry Pi boot partitions).

Layout, as Microsoft's "FAT: General Overview of On-Disk Format" (fatgen103) describes it:

    reserved sectors (boot sector at 0, FSInfo at 1, backup boot sector at 6, backup FSInfo
    at 7) | FAT #1 | FAT #2 | data region (cluster 2 = the root directory, then directories
    and files, each one contiguous run of clusters)

fatgen103: "the FAT type is determined solely by the count of clusters": fewer than 65525
clusters is FAT12/16, whatever the BPB says. So a FAT32 volume must be large enough: the
writer picks the *largest* cluster size (fewest FAT sectors) that still leaves at least
65529 clusters (mkfs.fat's MIN_CLUST_32; a few more than the spec's 65525, because some
systems count differently). With 512-byte clusters that is about 33 MiB; the SD-card boot
partition is 64 MiB or more, so it gets 512-byte clusters (a 64 MiB FAT32 volume has about
129,000 of them); a 256 MiB volume gets 2 KiB clusters (4 sectors).

Names that are not plain 8.3 get VFAT long-file-name (LFN) entries before their short entry;
plain names in one case (`config.txt`) get no LFN but the NT case bits (DIR_NTRes 0x08
lower-case base, 0x10 lower-case extension), as Windows and Linux write them. Every time
stamp is the one given (SOURCE_DATE_EPOCH); the volume serial number is derived from the
content, so the same files give the same bytes.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from construct import (
    Bytes,
    Const,
    ConstructError,
    Int8ul,
    Int16ul,
    Int32ul,
    Padding,
    Struct,
)

from ..errors import FormatError, UserError, parse_error
from ..files import replacing

__all__ = ["FatLayout", "FatVolume", "plan_layout", "read_fat", "write_fat", "write_fat_image"]

SECTOR = 512
RESERVED_SECTORS = 32
NUM_FATS = 2
MEDIA = 0xF8  # fixed disk
MIN_CLUSTERS = 65529  # mkfs.fat's MIN_CLUST_32
MAX_CLUSTERS = 0x0FFFFFF5 - 2
END_OF_CHAIN = 0x0FFFFFFF
FSINFO_SECTOR = 1
BACKUP_BOOT_SECTOR = 6
ENTRY = 32  # bytes per directory entry

ATTR_READ_ONLY, ATTR_HIDDEN, ATTR_SYSTEM, ATTR_VOLUME_ID = 0x01, 0x02, 0x04, 0x08
ATTR_DIRECTORY, ATTR_ARCHIVE = 0x10, 0x20
ATTR_LONG_NAME = ATTR_READ_ONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_VOLUME_ID
NTRES_LOWER_BASE, NTRES_LOWER_EXT = 0x08, 0x10
LAST_LONG_ENTRY = 0x40
# fatgen103: characters allowed in a short name besides upper-case letters and digits.
SHORT_NAME_EXTRA = set("$%'-_@~`!(){}^#&")

# fatgen103 "Boot Sector and BPB Structure" with the FAT32 extension, field names from the spec.
BootSector = Struct(
    "BS_jmpBoot" / Bytes(3),
    "BS_OEMName" / Bytes(8),
    "BPB_BytsPerSec" / Int16ul,
    "BPB_SecPerClus" / Int8ul,
    "BPB_RsvdSecCnt" / Int16ul,
    "BPB_NumFATs" / Int8ul,
    "BPB_RootEntCnt" / Int16ul,  # 0 on FAT32: the root directory is a cluster chain
    "BPB_TotSec16" / Int16ul,  # 0 on FAT32
    "BPB_Media" / Int8ul,
    "BPB_FATSz16" / Int16ul,  # 0 on FAT32
    "BPB_SecPerTrk" / Int16ul,
    "BPB_NumHeads" / Int16ul,
    "BPB_HiddSec" / Int32ul,  # sectors before the partition on its disk
    "BPB_TotSec32" / Int32ul,
    "BPB_FATSz32" / Int32ul,
    "BPB_ExtFlags" / Int16ul,  # 0: the FAT is mirrored into every copy
    "BPB_FSVer" / Int16ul,
    "BPB_RootClus" / Int32ul,
    "BPB_FSInfo" / Int16ul,
    "BPB_BkBootSec" / Int16ul,
    "BPB_Reserved" / Padding(12),
    "BS_DrvNum" / Int8ul,
    "BS_Reserved1" / Padding(1),
    "BS_BootSig" / Int8ul,  # 0x29: the three fields below are present
    "BS_VolID" / Int32ul,
    "BS_VolLab" / Bytes(11),
    "BS_FilSysType" / Bytes(8),  # informational only, "FAT32   "
    "BootCode" / Bytes(420),
    "Signature_word" / Const(b"\x55\xaa"),
)

# fatgen103 "FAT32 FSInfo Sector Structure": hints only, but fsck.fat checks them.
FSInfo = Struct(
    "FSI_LeadSig" / Const(0x41615252, Int32ul),
    "FSI_Reserved1" / Padding(480),
    "FSI_StrucSig" / Const(0x61417272, Int32ul),
    "FSI_Free_Count" / Int32ul,
    "FSI_Nxt_Free" / Int32ul,
    "FSI_Reserved2" / Padding(12),
    "FSI_TrailSig" / Const(0xAA550000, Int32ul),
)

DirEntry = Struct(
    "DIR_Name" / Bytes(11),
    "DIR_Attr" / Int8ul,
    "DIR_NTRes" / Int8ul,
    "DIR_CrtTimeTenth" / Int8ul,
    "DIR_CrtTime" / Int16ul,
    "DIR_CrtDate" / Int16ul,
    "DIR_LstAccDate" / Int16ul,
    "DIR_FstClusHI" / Int16ul,
    "DIR_WrtTime" / Int16ul,
    "DIR_WrtDate" / Int16ul,
    "DIR_FstClusLO" / Int16ul,
    "DIR_FileSize" / Int32ul,
)

# A long-name entry holds 13 UCS-2 characters of the name, in three pieces.
LongNameEntry = Struct(
    "LDIR_Ord" / Int8ul,
    "LDIR_Name1" / Bytes(10),
    "LDIR_Attr" / Const(ATTR_LONG_NAME, Int8ul),
    "LDIR_Type" / Const(0, Int8ul),
    "LDIR_Chksum" / Int8ul,
    "LDIR_Name2" / Bytes(12),
    "LDIR_FstClusLO" / Const(0, Int16ul),
    "LDIR_Name3" / Bytes(4),
)

# The boot code of a non-bootable volume: print nothing, halt. x86 `int 0x18` ("no bootable
# disk") after the jump in BS_jmpBoot (EB 58 90 jumps over the 90-byte FAT32 BPB).
BOOT_CODE = bytes([0xCD, 0x18, 0xEB, 0xFE]).ljust(420, b"\0")


@dataclass(frozen=True)
class FatLayout:
    """Where everything is in a FAT32 volume, in sectors from its start."""

    total_sectors: int
    sectors_per_cluster: int
    fat_sectors: int
    reserved_sectors: int = RESERVED_SECTORS

    @property
    def cluster_bytes(self) -> int:
        return self.sectors_per_cluster * SECTOR

    @property
    def data_start(self) -> int:
        return self.reserved_sectors + NUM_FATS * self.fat_sectors

    @property
    def cluster_count(self) -> int:
        return (self.total_sectors - self.data_start) // self.sectors_per_cluster

    def cluster_offset(self, cluster: int) -> int:
        """Byte offset of `cluster` (2 is the first) from the start of the volume."""
        return (self.data_start + (cluster - 2) * self.sectors_per_cluster) * SECTOR


def plan_layout(size: int) -> FatLayout:
    """The FAT32 layout of a `size`-byte volume: the largest cluster size that keeps it FAT32."""
    if size % SECTOR:
        raise UserError(f"FAT32 volume size {size} is not a multiple of {SECTOR} bytes")
    total = size // SECTOR
    for per_cluster in (64, 32, 16, 8, 4, 2, 1):
        # The FATs' own size depends on the cluster count; sizing them for every sector
        # being data over-estimates by a few sectors, which is allowed (fatgen103).
        fat_sectors = -(-((total - RESERVED_SECTORS) // per_cluster + 2) * 4 // SECTOR)
        layout = FatLayout(total, per_cluster, fat_sectors)
        if MIN_CLUSTERS <= layout.cluster_count <= MAX_CLUSTERS:
            return layout
    raise UserError(
        f"a FAT32 volume of {size / 2**20:.1f} MiB is too small",
        f"FAT32 needs at least {MIN_CLUSTERS} clusters: about 33 MiB with 512-byte clusters",
    )


# ---------------------------------------------------------------------------------------------
# Names


def short_name_of(name: str) -> tuple[bytes, int] | None:
    """`name` as an 11-byte short name and its NT case bits, or None when it needs an LFN."""
    base, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    if not base or (dot and not ext) or len(base) > 8 or len(ext) > 3:
        return None
    flags = 0
    for part, lower_flag in ((base, NTRES_LOWER_BASE), (ext, NTRES_LOWER_EXT)):
        if not all(c.isascii() and (c.isalnum() or c in SHORT_NAME_EXTRA) for c in part):
            return None
        if part != part.upper():
            if part != part.lower():
                return None  # mixed case needs a long name to keep it
            flags |= lower_flag
    return (base.upper().ljust(8) + ext.upper().ljust(3)).encode("ascii"), flags


def basis_name_of(name: str, taken: set[bytes]) -> bytes:
    """A unique NAME~N.EXT short name for a long name (fatgen103 "Basis-Name Generation")."""

    def clean(text: str) -> str:
        text = text.upper().replace(" ", "")
        return "".join(c if c.isascii() and (c.isalnum() or c in SHORT_NAME_EXTRA) else "_" for c in text)

    stripped = name.lstrip(".")
    base, _, ext = stripped.rpartition(".") if "." in stripped else (stripped, "", "")
    base, ext = clean(base) or "_", clean(ext)[:3]
    for number in range(1, 1_000_000):
        tail = f"~{number}"
        candidate = (base[: 8 - len(tail)] + tail).ljust(8) + ext.ljust(3)
        encoded = candidate.encode("ascii")
        if encoded not in taken:
            return encoded
    raise UserError(f"no free short name for {name!r}")


def checksum_of(short_name: bytes) -> int:
    """fatgen103 ChkSum(): rotate right by one, then add each byte of the 11-byte name."""
    total = 0
    for byte in short_name:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def long_name_entries(name: str, short_name: bytes) -> list[bytes]:
    """The LFN entries for `name`, in on-disk order (last piece first)."""
    units = name.encode("utf-16-le")
    if len(units) // 2 > 255:
        raise UserError(f"FAT long name longer than 255 characters: {name!r}")
    # fatgen103: the name is NUL-terminated unless it exactly fills the last entry; the rest
    # of the last entry is padded with 0xFFFF.
    if len(units) % 26:
        units += b"\0\0"
        units += b"\xff" * (-len(units) % 26)
    checksum = checksum_of(short_name)
    pieces = [units[i : i + 26] for i in range(0, len(units), 26)]
    entries = []
    for order, piece in enumerate(pieces, start=1):
        flag = LAST_LONG_ENTRY if order == len(pieces) else 0
        entries.append(LongNameEntry.build(dict(
            LDIR_Ord=order | flag, LDIR_Name1=piece[:10], LDIR_Chksum=checksum,
            LDIR_Name2=piece[10:22], LDIR_Name3=piece[22:26],
        )))
    return entries[::-1]


def dos_datetime(epoch: int) -> tuple[int, int]:
    """(date, time) in FAT's encoding for a Unix time (UTC), clamped to 1980..2107."""
    t = time.gmtime(min(max(epoch, 315532800), 4354819198))
    date = ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    clock = (t.tm_hour << 11) | (t.tm_min << 5) | (min(t.tm_sec, 59) // 2)
    return date, clock


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class _Node:
    name: str
    data: bytes | None = None  # None for a directory
    children: dict[str, _Node] = field(default_factory=dict)
    cluster: int = 0
    entries: list[bytes] = field(default_factory=list)  # a directory's own entries, built late

    @property
    def is_dir(self) -> bool:
        return self.data is None


def _build_tree(files: Mapping[str, bytes]) -> _Node:
    root = _Node("")
    for path in sorted(files):
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise UserError(f"FAT: bad path {path!r}")
        node = root
        for part in parts[:-1]:
            node = node.children.setdefault(part.lower(), _Node(part))
            if not node.is_dir:
                raise UserError(f"FAT: {path!r} is inside the file {node.name!r}")
        if parts[-1].lower() in node.children:
            raise UserError(f"FAT: {path!r} is there twice (FAT names ignore case)")
        node.children[parts[-1].lower()] = _Node(parts[-1], data=bytes(files[path]))
    return root


def _walk(node: _Node) -> Iterator[_Node]:
    yield node
    for child in node.children.values():
        yield from _walk(child)


def _entry_count(node: _Node) -> int:
    """Directory entries `node` needs: dot entries (or the label), LFNs, shorts, end mark."""
    count = 1 + 2  # end-of-directory mark; "." and ".." (the root's label takes one of them)
    for child in node.children.values():
        count += 1
        if short_name_of(child.name) is None:
            count += -(-len(child.name.encode("utf-16-le")) // 26)
    return count


def _allocate(root: _Node, layout: FatLayout) -> tuple[list[int], dict[int, int]]:
    """Give every directory and non-empty file a contiguous cluster run, in tree order.
    Returns the FAT and the byte size of each allocated run by its first cluster."""
    fat = [0] * (layout.cluster_count + 2)
    fat[0], fat[1] = 0x0FFFFF00 | MEDIA, END_OF_CHAIN
    sizes: dict[int, int] = {}
    nxt = 2
    for node in _walk(root):
        size = _entry_count(node) * ENTRY if node.is_dir else len(node.data or b"")
        if size == 0:
            continue
        count = -(-size // layout.cluster_bytes)
        if nxt + count > len(fat):
            raise UserError(f"FAT volume of {layout.total_sectors * SECTOR} bytes is full at {node.name!r}",
                            "make the boot partition larger")
        node.cluster = nxt
        for cluster in range(nxt, nxt + count - 1):
            fat[cluster] = cluster + 1
        fat[nxt + count - 1] = END_OF_CHAIN
        sizes[nxt] = count * layout.cluster_bytes
        nxt += count
    return fat, sizes


def _short_entry(name: bytes, attr: int, ntres: int, cluster: int, size: int, stamp: tuple[int, int]) -> bytes:
    date, clock = stamp
    return DirEntry.build(dict(
        DIR_Name=name, DIR_Attr=attr, DIR_NTRes=ntres, DIR_CrtTimeTenth=0, DIR_CrtTime=clock,
        DIR_CrtDate=date, DIR_LstAccDate=date, DIR_FstClusHI=cluster >> 16, DIR_WrtTime=clock,
        DIR_WrtDate=date, DIR_FstClusLO=cluster & 0xFFFF, DIR_FileSize=size,
    ))


def _directory_bytes(node: _Node, parent: _Node | None, label: bytes, stamp: tuple[int, int]) -> bytes:
    entries: list[bytes] = []
    if parent is None:
        entries.append(_short_entry(label, ATTR_VOLUME_ID, 0, 0, 0, stamp))
    else:
        # fatgen103: ".." of a directory in the root points at cluster 0, not RootClus.
        up = 0 if parent.name == "" else parent.cluster
        entries.append(_short_entry(b".          ", ATTR_DIRECTORY, 0, node.cluster, 0, stamp))
        entries.append(_short_entry(b"..         ", ATTR_DIRECTORY, 0, up, 0, stamp))
    taken: set[bytes] = {short_name_of(c.name)[0] for c in node.children.values()  # type: ignore[index]
                         if short_name_of(c.name) is not None}
    for child in node.children.values():
        short = short_name_of(child.name)
        if short is None:
            name = basis_name_of(child.name, taken)
            taken.add(name)
            entries += long_name_entries(child.name, name)
            ntres = 0
        else:
            name, ntres = short
        attr = ATTR_DIRECTORY if child.is_dir else ATTR_ARCHIVE
        size = 0 if child.is_dir else len(child.data or b"")
        entries.append(_short_entry(name, attr, ntres, child.cluster, size, stamp))
    return b"".join(entries)


def _volume_id(files: Mapping[str, bytes], mtime: int) -> int:
    digest = hashlib.sha256(str(mtime).encode())
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return int.from_bytes(digest.digest()[:4], "little")


def _label_bytes(label: str) -> bytes:
    text = label.upper()
    if len(text) > 11 or not all(c.isascii() and (c.isalnum() or c in SHORT_NAME_EXTRA or c == " ") for c in text):
        raise UserError(f"FAT volume label {label!r}: up to 11 letters, digits or {''.join(sorted(SHORT_NAME_EXTRA))}")
    return text.ljust(11).encode("ascii")


def write_fat(
    files: Mapping[str, bytes],
    out: IO[bytes],
    *,
    size: int,
    mtime: int,
    label: str = "BOOT",
    offset: int = 0,
    hidden_sectors: int = 0,
) -> FatLayout:
    """Write a FAT32 volume of `size` bytes holding `files` (path -> content) into `out` at
    `offset`. Directories are implied by the paths. Regions left zero are not written, so
    `out` may be a sparse file. `hidden_sectors` is the partition's start sector on its disk.
    """
    layout = plan_layout(size)
    root = _build_tree(files)
    fat, run_sizes = _allocate(root, layout)
    stamp = dos_datetime(mtime)
    label_bytes = _label_bytes(label)
    out.seek(offset + size - 1)
    if out.read(1) == b"":
        out.seek(offset + size - 1)
        out.write(b"\0")
    for node in _walk(root):
        if node.cluster == 0:
            continue
        out.seek(offset + layout.cluster_offset(node.cluster))
        if node.is_dir:
            # Zeroed to the end of the run: stale bytes after the end mark would read as
            # entries when an image file is rewritten in place.
            entries = _directory_bytes(node, _parent_of(root, node), label_bytes, stamp)
            out.write(entries.ljust(run_sizes[node.cluster], b"\0"))
        else:
            out.write(node.data or b"")
    used = sum(1 for entry in fat[2:] if entry)
    _write_reserved(out, offset, layout, label_bytes, _volume_id(files, mtime), hidden_sectors,
                    free=layout.cluster_count - used, next_free=used + 2)
    table = b"".join(entry.to_bytes(4, "little") for entry in fat)
    table = table.ljust(layout.fat_sectors * SECTOR, b"\0")
    for copy in range(NUM_FATS):
        out.seek(offset + (layout.reserved_sectors + copy * layout.fat_sectors) * SECTOR)
        out.write(table)
    return layout


def _parent_of(root: _Node, target: _Node) -> _Node | None:
    for node in _walk(root):
        if any(child is target for child in node.children.values()):
            return node
    return None


def _write_reserved(out: IO[bytes], offset: int, layout: FatLayout, label: bytes, volume_id: int,
                    hidden_sectors: int, *, free: int, next_free: int) -> None:
    boot = BootSector.build(dict(
        BS_jmpBoot=b"\xeb\x58\x90", BS_OEMName=b"FWGEN   ", BPB_BytsPerSec=SECTOR,
        BPB_SecPerClus=layout.sectors_per_cluster, BPB_RsvdSecCnt=layout.reserved_sectors,
        BPB_NumFATs=NUM_FATS, BPB_RootEntCnt=0, BPB_TotSec16=0, BPB_Media=MEDIA, BPB_FATSz16=0,
        BPB_SecPerTrk=63, BPB_NumHeads=255, BPB_HiddSec=hidden_sectors,
        BPB_TotSec32=layout.total_sectors, BPB_FATSz32=layout.fat_sectors, BPB_ExtFlags=0,
        BPB_FSVer=0, BPB_RootClus=2, BPB_FSInfo=FSINFO_SECTOR, BPB_BkBootSec=BACKUP_BOOT_SECTOR,
        BS_DrvNum=0x80, BS_BootSig=0x29, BS_VolID=volume_id, BS_VolLab=label,
        BS_FilSysType=b"FAT32   ", BootCode=BOOT_CODE,
    ))
    info = FSInfo.build(dict(FSI_Free_Count=free, FSI_Nxt_Free=next_free))
    for first in (0, BACKUP_BOOT_SECTOR):
        out.seek(offset + first * SECTOR)
        out.write(boot + info)
        # fatgen103: sector 2 of the boot record also ends in the 0xAA55 signature.
        out.write(bytes(SECTOR - 2) + b"\x55\xaa")


def write_fat_image(files: Mapping[str, bytes], path: Path, *, size: int, mtime: int,
                    label: str = "BOOT") -> FatLayout:
    """Write a FAT32 volume image file of `size` bytes to `path`, atomically."""
    path = Path(path)
    with replacing(path, mode=0o644) as out:
        return write_fat(files, out, size=size, mtime=mtime, label=label)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class FatEntry:
    name: str  # the long name when there is one
    short_name: str
    is_dir: bool
    cluster: int
    size: int


class FatVolume:
    """A FAT32 volume inside a file (at `offset`): list directories and read files by path.

    Names are matched case-insensitively, long or short, as FAT does.
    """

    def __init__(self, f: BinaryIO, offset: int = 0, *, where: str = "FAT volume") -> None:
        self.f, self.offset, self.where = f, offset, where
        f.seek(offset)
        raw = f.read(SECTOR)
        try:
            boot = BootSector.parse(raw)
        except ConstructError as e:
            raise parse_error(f"{where}: boot sector at {offset:#x}", "not a FAT boot sector", e) from e
        if boot.BPB_BytsPerSec != SECTOR or boot.BPB_FATSz16 != 0 or boot.BPB_FATSz32 == 0:
            raise FormatError(f"{where}: boot sector at {offset:#x}: not FAT32 with 512-byte sectors")
        self.layout = FatLayout(boot.BPB_TotSec32, boot.BPB_SecPerClus, boot.BPB_FATSz32, boot.BPB_RsvdSecCnt)
        self.root_cluster = boot.BPB_RootClus
        self.label = boot.BS_VolLab.decode("ascii", "replace").rstrip()
        f.seek(offset + self.layout.reserved_sectors * SECTOR)
        table = f.read(self.layout.fat_sectors * SECTOR)
        count = min(len(table) // 4, self.layout.cluster_count + 2)
        self.fat = [int.from_bytes(table[i * 4 : i * 4 + 4], "little") & 0x0FFFFFFF for i in range(count)]

    def _chain(self, first: int) -> list[int]:
        chain: list[int] = []
        cluster = first
        while 2 <= cluster < 0x0FFFFFF8:
            if cluster >= len(self.fat) or len(chain) > len(self.fat):
                raise FormatError(f"{self.where}: cluster chain from {first} is broken at {cluster}")
            chain.append(cluster)
            cluster = self.fat[cluster]
        return chain

    def _read_chain(self, first: int, size: int | None = None) -> bytes:
        parts = []
        for cluster in self._chain(first):
            self.f.seek(self.offset + self.layout.cluster_offset(cluster))
            parts.append(self.f.read(self.layout.cluster_bytes))
        data = b"".join(parts)
        if size is not None:
            if len(data) < size:
                raise FormatError(f"{self.where}: file at cluster {first} has {len(data)} of its {size} bytes")
            data = data[:size]
        return data

    def entries(self, cluster: int) -> list[FatEntry]:
        """The entries of the directory at `cluster`, without '.', '..' and the label."""
        raw = self._read_chain(cluster)
        found: list[FatEntry] = []
        long_parts: dict[int, bytes] = {}
        for at in range(0, len(raw), ENTRY):
            chunk = raw[at : at + ENTRY]
            if chunk[0] == 0:
                break
            if chunk[0] == 0xE5:
                long_parts.clear()
                continue
            if chunk[11] == ATTR_LONG_NAME:
                lfn = LongNameEntry.parse(chunk)
                long_parts[lfn.LDIR_Ord & 0x1F] = lfn.LDIR_Name1 + lfn.LDIR_Name2 + lfn.LDIR_Name3
                checksum = lfn.LDIR_Chksum
                continue
            entry = DirEntry.parse(chunk)
            if entry.DIR_Attr & ATTR_VOLUME_ID or entry.DIR_Name[0:1] == b".":
                long_parts.clear()
                continue
            short = _display_short(entry.DIR_Name, entry.DIR_NTRes)
            name = short
            if long_parts:
                if checksum_of(entry.DIR_Name) != checksum:
                    raise FormatError(f"{self.where}: long name of {short!r} has a wrong checksum")
                units = b"".join(long_parts[i] for i in sorted(long_parts))
                name = units.decode("utf-16-le").split("\0")[0]
                long_parts.clear()
            found.append(FatEntry(name, short, bool(entry.DIR_Attr & ATTR_DIRECTORY),
                                  (entry.DIR_FstClusHI << 16) | entry.DIR_FstClusLO, entry.DIR_FileSize))
        return found

    def lookup(self, path: str) -> FatEntry:
        """The entry at `path` ('/' separated); the root directory for '/'."""
        current = FatEntry("", "", True, self.root_cluster, 0)
        for part in [p for p in path.split("/") if p]:
            if not current.is_dir:
                raise FormatError(f"{self.where}: {path}: {current.name} is not a directory")
            matches = [e for e in self.entries(current.cluster)
                       if part.lower() in (e.name.lower(), e.short_name.lower())]
            if not matches:
                raise FormatError(f"{self.where}: {path}: no such file")
            current = matches[0]
        return current

    def listdir(self, path: str = "/") -> list[str]:
        entry = self.lookup(path)
        return [e.name for e in self.entries(entry.cluster)]

    def read(self, path: str) -> bytes:
        """The content of the file at `path`."""
        entry = self.lookup(path)
        if entry.is_dir:
            raise FormatError(f"{self.where}: {path} is a directory")
        return self._read_chain(entry.cluster, entry.size) if entry.size else b""

    def walk(self, path: str = "/") -> Iterator[tuple[str, FatEntry]]:
        """Every file below `path` with its entry, depth first, in directory order."""
        for entry in self.entries(self.lookup(path).cluster):
            child = posixpath.join(path, entry.name)
            if entry.is_dir:
                yield from self.walk(child)
            else:
                yield child, entry

    def read_entry(self, entry: FatEntry) -> bytes:
        return self._read_chain(entry.cluster, entry.size) if entry.size else b""


def _display_short(name: bytes, ntres: int) -> str:
    base = name[:8].decode("ascii", "replace").rstrip()
    ext = name[8:].decode("ascii", "replace").rstrip()
    if ntres & NTRES_LOWER_BASE:
        base = base.lower()
    if ntres & NTRES_LOWER_EXT:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


def read_fat(path: Path, offset: int = 0) -> dict[str, bytes]:
    """Every file of the FAT32 volume at `offset` in `path`, by path."""
    with open(path, "rb") as f:
        volume = FatVolume(f, offset, where=str(path))
        return {p: volume.read_entry(entry) for p, entry in volume.walk()}
