"""cpio "newc" archives: the initramfs format the Linux kernel unpacks at boot.

The layout follows the kernel's Documentation/driver-api/early-userspace/buffer-format.rst:
a 110-byte header of ASCII (magic "070701" and 13 numbers of 8 hex digits), the NUL-terminated
name padded so that header + name end on 4 bytes, the data padded to 4 bytes, and a last
member named "TRAILER!!!". A symlink's data is its target. The "070702" variant stores a sum
of the data bytes in c_chksum; it is read (and checked) here, never written.
"""

from __future__ import annotations

import gzip
import io
import lzma
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import zstandard
from construct import Adapter, Bytes, ConstructError, OneOf, Padding, Struct, this

from ..compression import BOOT_COMPRESSIONS, by_magic
from ..compression import ERRORS as DECOMPRESSION_ERRORS
from ..errors import FormatError, UserError, parse_error, quoted
from ..files import replacing
from ..rootfs import Entry, EntryType, RootFS, normalize_path

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
# The kernel skips a member whose name (with its NUL) or symlink target is longer than
# PATH_MAX (init/initramfs.c, do_header and do_symlink), silently: refuse to write one.
PATH_MAX = 4096
NAME_MAX = 255  # bytes of one path component (linux/limits.h)
COMPRESSIONS = ("gzip", "xz", "zstd", "none")


class _Hex8(Adapter):
    """A 32-bit unsigned number stored as 8 ASCII hex digits, as every newc header field is."""

    def _decode(self, obj: bytes, context, path) -> int:
        if not all(c in b"0123456789abcdefABCDEF" for c in obj):
            raise ConstructError(f"not 8 hex digits: {obj!r}", path)
        return int(obj, 16)

    def _encode(self, obj: int, context, path) -> bytes:
        if not 0 <= obj <= 0xFFFFFFFF:
            raise ConstructError(f"{obj} does not fit in 8 hex digits", path)
        return b"%08X" % obj


Hex8 = _Hex8(Bytes(8))

# Field names as in buffer-format.rst.
NEWC_HEADER = Struct(
    "c_magic" / OneOf(Bytes(6), [NEWC_MAGIC, CRC_MAGIC]),
    "c_ino" / Hex8,
    "c_mode" / Hex8,
    "c_uid" / Hex8,
    "c_gid" / Hex8,
    "c_nlink" / Hex8,
    "c_mtime" / Hex8,
    "c_filesize" / Hex8,
    "c_maj" / Hex8,  # device the file lived on: meaningless in an image, always 0 here
    "c_min" / Hex8,
    "c_rmaj" / Hex8,  # device number of a device node
    "c_rmin" / Hex8,
    "c_namesize" / Hex8,  # includes the terminating NUL
    "c_chksum" / Hex8,  # 0 for 070701
)

NEWC_MEMBER = Struct(
    "header" / NEWC_HEADER,
    "name" / Bytes(this.header.c_namesize),
    # "The pathname is followed by NUL bytes so that the total size of the fixed header plus
    # pathname is a multiple of four. Likewise, the file data is padded ..."
    Padding(lambda ctx: -(HEADER_SIZE + ctx.header.c_namesize) % 4),
    "data" / Bytes(this.header.c_filesize),
    Padding(lambda ctx: -ctx.header.c_filesize % 4),
)


@dataclass(frozen=True)
class CpioMember:
    """One member of a newc archive as read back; `mode` holds the file type bits too."""

    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    dev: tuple[int, int]
    rdev: tuple[int, int]
    data: bytes
    offset: int  # of the member's header in the (decompressed) archive

    @property
    def type(self) -> EntryType:
        if kind := EntryType.of_mode(self.mode):
            return kind
        raise FormatError(f"cpio member {self.name} at 0x{self.offset:x}: unknown file type {self.mode:o}")

    @property
    def permissions(self) -> int:
        return stat.S_IMODE(self.mode)

    @property
    def target(self) -> str:
        """A symlink's target (its data); "" for every other type, whose data is content."""
        if self.type is not EntryType.SYMLINK:
            return ""
        return self.data.decode("utf-8", "surrogateescape")

    def entry(self, source: str) -> Entry:
        """The member as the model's Entry: its path from the root ("." is "/"), owners,
        mtime and device numbers kept, a symlink's data as its target; `source` names the
        archive (in the entry's provenance and in the error for a name that climbs out)."""
        kind = self.type
        try:
            path = normalize_path(self.name)
        except UserError as e:
            raise FormatError(f"{source}: cpio member {self.name!r} at 0x{self.offset:x}: {e}") from e
        return Entry(path, kind, self.permissions, self.uid, self.gid, self.mtime,
                     self.data if kind is EntryType.FILE else b"", self.target, self.rdev, f"initramfs:{source}")



# -- writing ---------------------------------------------------------------------------


def write_cpio(rootfs: RootFS, out: SupportsWrite[bytes], *, mtime: int) -> None:
    """Write `rootfs` as a newc archive to `out`.

    Entries come in the model's order (directories before their contents), inode numbers are
    assigned 1, 2, 3 ... in that order, and an entry without its own mtime gets `mtime`
    (SOURCE_DATE_EPOCH). The same model always gives the same bytes.
    """
    for ino, entry in enumerate(rootfs, start=1):
        _check_name_length(entry)
        out.write(_build_member(_name_of(entry), _header_of(entry, ino, mtime), _data_of(entry)))
    trailer = dict(_EMPTY_HEADER, c_nlink=1)
    out.write(_build_member(TRAILER, trailer, b""))


_EMPTY_HEADER = {field.name: 0 for field in NEWC_HEADER.subcons if field.name != "c_magic"}


def _check_name_length(entry: Entry) -> None:
    # newc carries any name, but the kernel unpacks it onto tmpfs, whose names (like every
    # Linux filesystem's) stop at NAME_MAX bytes: a longer one would be missing at boot.
    name = posixpath.basename(entry.path).encode("utf-8", "surrogateescape")
    if len(name) > NAME_MAX:
        origin = f" (from {quoted(entry.provenance)})" if entry.provenance else ""
        raise FormatError(f"initramfs: {quoted(entry.path)}{origin}: file name too long "
                        f"({len(name)} bytes; Linux allows at most {NAME_MAX})")


def _name_of(entry: Entry) -> str:
    # The kernel and GNU cpio expect relative names: "bin/sh", and "." for the root.
    return "." if entry.path == "/" else entry.path.lstrip("/")


def _data_of(entry: Entry) -> bytes:
    if entry.type is EntryType.FILE:
        return entry.data
    if entry.type is EntryType.SYMLINK:
        target = _encode_text(entry.path, "symlink target", entry.target)
        if len(target) > PATH_MAX:
            raise FormatError(f"initramfs: {entry.path}: symlink target longer than {PATH_MAX} bytes")
        return target
    return b""


def _header_of(entry: Entry, ino: int, mtime: int) -> dict[str, int]:
    fields = dict(_EMPTY_HEADER)
    fields.update(
        c_ino=ino,
        c_mode=entry.st_mode,
        c_uid=entry.uid,
        c_gid=entry.gid,
        # nlink 1 for everything but directories: the kernel treats a regular file with
        # nlink >= 2 as a possible hard link and looks it up by inode number.
        c_nlink=2 if entry.type is EntryType.DIR else 1,
        c_mtime=mtime if entry.mtime is None else entry.mtime,
        c_filesize=entry.size,
        c_rmaj=entry.rdev[0],
        c_rmin=entry.rdev[1],
    )
    for key, value in fields.items():
        if not 0 <= value <= 0xFFFFFFFF:
            what = "file size (over 4 GiB)" if key == "c_filesize" else key
            raise FormatError(f"initramfs: {entry.path}: {what} {value} cannot be stored in newc's 8 hex digits")
    return fields


def _build_member(name: str, header: dict[str, int], data: bytes) -> bytes:
    raw_name = _encode_text(name, "name", name) + b"\0"
    if len(raw_name) > PATH_MAX:
        raise FormatError(f"initramfs: {name[:60]}...: name longer than {PATH_MAX} bytes")
    fields: dict[str, Any] = {**header, "c_magic": NEWC_MAGIC, "c_namesize": len(raw_name)}
    try:
        return NEWC_MEMBER.build({"header": fields, "name": raw_name, "data": data})
    except ConstructError as e:
        raise parse_error(f"initramfs: {name}", "cannot write member", e) from e


def _encode_text(path: str, what: str, text: str) -> bytes:
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise FormatError(f"initramfs: {path!r}: {what} cannot be encoded: {e.reason}") from e
    if b"\0" in raw:
        raise FormatError(f"initramfs: {path!r}: {what} contains a NUL byte")
    return raw


def write_initramfs(rootfs: RootFS, path: Path, *, compression: str = "gzip", mtime: int) -> None:
    """Write `rootfs` as a (compressed) newc initramfs at `path`, atomically.

    compression: gzip (mtime 0, no file name in the header), xz (CRC32 check, as the kernel's
    decompressor wants), zstd, or none. The output is byte-identical for the same model.
    """
    if compression not in COMPRESSIONS:
        raise UserError(f"unknown initramfs compression '{compression}'", f"use one of {', '.join(COMPRESSIONS)}")
    path = Path(path)
    with replacing(path, mode=0o644) as raw, _open_compressor(compression, raw) as out:
        write_cpio(rootfs, out, mtime=mtime)


def _open_compressor(compression: str, raw: BinaryIO) -> io.BufferedIOBase | zstandard.ZstdCompressionWriter:
    if compression == "gzip":
        # filename="" leaves FNAME out of the header; mtime=0 keeps the output reproducible.
        # Level 6: a quarter of level 9's time for 0.3% more bytes on a board's initramfs.
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
    if compression == "xz":
        # Documentation/staging/xz.rst: the kernel's XZ decoder supports CRC32 integrity
        # checks (not the xz tool's default CRC64); "--check=crc32 --lzma2=dict=1MiB".
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}]
        return lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=19).stream_writer(raw, closefd=False)
    return _Unclosing(raw)


class _Unclosing(io.BufferedIOBase):
    """Passes writes through; closing it leaves the underlying file open (like the others)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._raw.write(data)


# -- reading ---------------------------------------------------------------------------


def read_cpio(data: bytes, *, source: str = "cpio archive") -> list[CpioMember]:
    """Read every member (trailers excluded) of one or more concatenated newc archives.

    The kernel accepts archives back to back with NUL padding between them; so does this.
    Raises FormatError naming `source` and the offset of the bad member.
    """
    return _read_segments(data, source, allow_compressed=False)


def read_initramfs(path: Path) -> list[CpioMember]:
    """Read an initramfs: plain, gzip, xz or zstd (by magic), possibly several concatenated
    segments (e.g. an uncompressed early-microcode archive followed by a compressed one)."""
    path = Path(path)
    return _read_segments(path.read_bytes(), str(path), allow_compressed=True)


def initramfs_rootfs(path: Path) -> RootFS:
    """An initramfs (`read_initramfs`) as a RootFS; a later member of the same path replaces
    an earlier one, as the kernel's unpacking does."""
    rootfs = RootFS()
    for member in read_initramfs(path):
        rootfs.add(member.entry(str(path)))
    return rootfs


def _read_segments(data: bytes, source: str, *, allow_compressed: bool) -> list[CpioMember]:
    members: list[CpioMember] = []
    offset = 0
    while offset < len(data):
        if data[offset] == 0:  # padding between segments
            offset += 1
            continue
        if data.startswith((NEWC_MAGIC, CRC_MAGIC), offset):
            found, offset = _read_archive(data, offset, source)
            members += found
            continue
        kind = by_magic(data, offset, among=BOOT_COMPRESSIONS)
        if kind is None or not allow_compressed:
            raise FormatError(f"{source}: offset 0x{offset:x}: not a newc cpio archive (magic {data[offset:offset + 6]!r})")
        name, decompressor = kind.name, kind.decompressobj()
        try:
            inner = decompressor.decompress(data[offset:])
        except DECOMPRESSION_ERRORS as e:
            raise FormatError(f"{source}: offset 0x{offset:x}: bad {name} data: {e}") from e
        if not decompressor.eof:
            raise FormatError(f"{source}: offset 0x{offset:x}: {name} stream is truncated")
        members += _read_segments(inner, f"{source} ({name} at 0x{offset:x})", allow_compressed=True)
        offset = len(data) - len(decompressor.unused_data)
    return members


def _read_archive(data: bytes, offset: int, source: str) -> tuple[list[CpioMember], int]:
    """Read one archive starting at `offset`; return its members and the offset after it."""
    stream = io.BytesIO(data)
    stream.seek(offset)
    members: list[CpioMember] = []
    while True:
        start = stream.tell()
        try:
            raw = NEWC_MEMBER.parse_stream(stream)
        except ConstructError as e:
            raise parse_error(f"{source}: member at 0x{start:x}", "bad newc member", e) from e
        member = _member_of(raw, start, source)
        if member.name == TRAILER:
            return members, stream.tell()
        members.append(member)


def _member_of(raw, offset: int, source: str) -> CpioMember:
    h = raw.header
    if not raw.name.endswith(b"\0") or b"\0" in raw.name[:-1]:
        raise FormatError(f"{source}: member at 0x{offset:x}: name is not NUL-terminated: {raw.name[:60]!r}")
    name = raw.name[:-1].decode("utf-8", "surrogateescape")
    # The crc format sums the data of regular files only: GNU cpio writes 0 for a symlink.
    checked = h.c_magic == CRC_MAGIC and stat.S_ISREG(h.c_mode)
    if checked and sum(raw.data) & 0xFFFFFFFF != h.c_chksum:
        raise FormatError(
            f"{source}: member {name} at 0x{offset:x}: checksum 0x{h.c_chksum:08x} "
            f"does not match its data (0x{sum(raw.data) & 0xFFFFFFFF:08x})"
        )
    return CpioMember(
        name=name,
        ino=h.c_ino,
        mode=h.c_mode,
        uid=h.c_uid,
        gid=h.c_gid,
        nlink=h.c_nlink,
        mtime=h.c_mtime,
        dev=(h.c_maj, h.c_min),
        rdev=(h.c_rmaj, h.c_rmin),
        data=raw.data,
        offset=offset,
    )
