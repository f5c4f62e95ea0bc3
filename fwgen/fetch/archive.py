"""Readers for the containers packages come in: `ar` archives and (compressed) tarballs.

Both yield `fwgen.rootfs.Entry` objects; nothing is written to the host.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import construct as c
import zstandard

from ..errors import FormatError, UserError, parse_error
from ..rootfs import Entry, EntryType, normalize_path

AR_MAGIC = b"!<arch>\n"

# ar(5), the common "System V / GNU" layout dpkg writes (deb(5)): after the 8-byte global
# magic, each member has a 60-byte header of space-padded ASCII fields, then its data,
# "padded with a newline to an even offset" (2-byte alignment).
ArHeader = c.Struct(
    "ar_name" / c.PaddedString(16, "ascii"),
    "ar_date" / c.PaddedString(12, "ascii"),
    "ar_uid" / c.PaddedString(6, "ascii"),
    "ar_gid" / c.PaddedString(6, "ascii"),
    "ar_mode" / c.PaddedString(8, "ascii"),
    "ar_size" / c.PaddedString(10, "ascii"),
    "ar_fmag" / c.Const(b"`\n"),
)
AR_HEADER_SIZE = ArHeader.sizeof()


@dataclass(frozen=True)
class ArMember:
    name: str
    offset: int  # of the member's data in the archive
    size: int


def list_ar_members(data: bytes, source: str) -> list[ArMember]:
    """The members of an ar archive held in `data`; FormatError naming `source` and the offset."""
    if not data.startswith(AR_MAGIC):
        raise FormatError(f"{source}: offset 0x0: not an ar archive (magic {data[:8]!r})")
    members: list[ArMember] = []
    offset = len(AR_MAGIC)
    while offset < len(data):
        if len(data) - offset < AR_HEADER_SIZE:
            raise FormatError(f"{source}: offset {offset:#x}: truncated ar member header")
        try:
            header = ArHeader.parse(data[offset : offset + AR_HEADER_SIZE])
            size = int(header.ar_size.strip())
        except (c.ConstructError, ValueError, UnicodeDecodeError) as e:
            raise parse_error(f"{source}: offset {offset:#x}", "bad ar member header", e) from e
        start = offset + AR_HEADER_SIZE
        if start + size > len(data):
            raise FormatError(
                f"{source}: offset {start:#x}: ar member '{header.ar_name.strip()}' needs "
                f"{size} bytes, only {len(data) - start} left (truncated file)"
            )
        # GNU ar ends names with "/"; dpkg's own members have none.
        members.append(ArMember(header.ar_name.strip().rstrip("/"), start, size))
        offset = start + size + (size & 1)
    return members


def decompress(data: bytes, compression: str, source: str) -> bytes:
    """Decompress a whole member by its suffix: "", "gz", "xz", "bz2", "zst"."""
    try:
        match compression:
            case "":
                return data
            case "gz":
                return gzip.decompress(data)
            case "xz" | "lzma":
                return lzma.decompress(data)
            case "bz2":
                return bz2.decompress(data)
            case "zst":
                # Streaming reader: zstd frames made by dpkg need not declare their size.
                with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
                    return reader.read()
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError, ValueError) as e:
        raise FormatError(f"{source}: cannot decompress ({compression}): {e}") from e
    raise FormatError(f"{source}: unknown compression '{compression}'")


def read_tar_entries(data: bytes, source: str) -> Iterator[Entry]:
    """Every entry of an uncompressed tar archive as an Entry, in archive order.

    Hard links become copies of the file they link to; "./usr/bin/x" becomes "/usr/bin/x";
    the archive's own root ("./") is skipped; a path escaping the root is a FormatError.
    """
    files: dict[str, bytes] = {}
    offset = 0  # of the tar header being read, for the error message
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                offset = info.offset
                entry = _entry_from_tarinfo(tar, info, files, source)
                if entry is not None:
                    yield entry
                offset = tar.offset
    except tarfile.TarError as e:
        raise FormatError(f"{source}: tar offset {offset:#x}: bad tar archive: {e}") from e
    # tarfile stops quietly at a damaged or truncated header after the first one; what
    # follows the last member must be the end-of-archive zero blocks and nothing else.
    if data[offset:].strip(b"\0"):
        raise FormatError(f"{source}: tar offset {offset:#x}: damaged or truncated tar header")


def _entry_from_tarinfo(
    tar: tarfile.TarFile, info: tarfile.TarInfo, files: dict[str, bytes], source: str
) -> Entry | None:
    content = b""
    if info.isreg():
        extracted = tar.extractfile(info)
        content = extracted.read() if extracted else b""
        if len(content) != info.size:
            raise FormatError(f"{source}: offset {info.offset_data:#x}: {info.name} is truncated")
    return entry_from_tar_member(info, content, files, f"{source}: offset {info.offset:#x}: {info.name}")


def entry_from_tar_member(
    info: tarfile.TarInfo,
    content: bytes,
    files: dict[str, bytes],
    where: str,
    *,
    provenance: str = "",
    check: Callable[[tarfile.TarInfo, bytes, str], None] | None = None,
) -> Entry | None:
    """The rootfs Entry for one tar member (None for the archive's own "./").

    `content` is a regular file's data; `files` maps the regular files seen so far, so a hard
    link becomes a copy of its earlier target. `check(info, content, where)` verifies what a
    format records per member (apk's SHA-1 of a file or a symlink target)."""
    try:
        path = normalize_path(info.name)
    except UserError as e:
        raise FormatError(f"{where}: {e.message}") from e
    if path == "/":
        return None
    common = dict(mode=info.mode & 0o7777, uid=info.uid, gid=info.gid, mtime=int(info.mtime),
                  provenance=provenance)
    if info.isreg():
        if check:
            check(info, content, where)
        files[path] = content
        return Entry(path, EntryType.FILE, data=content, **common)
    if info.isdir():
        return Entry(path, EntryType.DIR, **common)
    if info.issym():
        if check:
            check(info, info.linkname.encode(), where)
        return Entry(path, EntryType.SYMLINK, target=info.linkname, **common)
    if info.islnk():
        try:
            target = normalize_path(info.linkname)
        except UserError as e:
            raise FormatError(f"{where}: {e.message}") from e
        if target not in files:
            raise FormatError(f"{where}: hard link to {info.linkname}, which is not an earlier regular file")
        files[path] = files[target]
        return Entry(path, EntryType.FILE, data=files[target], **common)
    if info.ischr() or info.isblk():
        kind = EntryType.CHARDEV if info.ischr() else EntryType.BLOCKDEV
        return Entry(path, kind, rdev=(info.devmajor, info.devminor), **common)
    if info.isfifo():
        return Entry(path, EntryType.FIFO, **common)
    raise FormatError(f"{where}: unsupported tar entry type {info.type!r}")


def read_member_tar(path: Path, data: bytes, members: list[ArMember], stem: str) -> Iterator[Entry]:
    """The entries of the ar member `stem`.tar[.gz|.xz|.bz2|.zst] (a deb's data or control)."""
    for member in members:
        base, _, suffix = member.name.partition(".tar")
        if base != stem or (suffix and not suffix.startswith(".")):
            continue
        source = f"{path}: {member.name} at {member.offset:#x}"
        raw = decompress(data[member.offset : member.offset + member.size], suffix.lstrip("."), source)
        return read_tar_entries(raw, source)
    raise FormatError(f"{path}: no {stem}.tar member (members: {', '.join(m.name for m in members)})")
