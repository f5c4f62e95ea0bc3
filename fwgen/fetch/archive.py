"""Readers for the containers packages come in: `ar` archives and (compressed) tarballs.

Both yield `fwgen.rootfs.Entry` objects; nothing is written to the host.
"""

from __future__ import annotations

import io
import tarfile
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import construct as c

from ..compression import ERRORS, ByteStream, by_suffix
from ..errors import FormatError, LimitError, UserError, parse_error, quoted
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


MIB = 1 << 20
# The board file's limits.package_size default (the schema documents it): Debian's largest
# kernel packages unpack to a few hundred MiB.
DEFAULT_PACKAGE_SIZE = 1024 * MIB
_CHUNK = 1 << 20
_DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (*ERRORS, ValueError)


class UnpackBudget:
    """How many bytes archives may still unpack to; beyond it they are refused (LimitError).

    `what` names the bound for the message ("limits.package_size (1024 MiB)"). A package's
    budget has the image's as its `parent`: every byte charged counts against both, and a
    refusal names the tighter of the two."""

    def __init__(self, limit: int, what: str, parent: UnpackBudget | None = None) -> None:
        self.limit, self.what, self.parent, self.used = limit, what, parent, 0

    @classmethod
    def default(cls) -> UnpackBudget:
        return cls(DEFAULT_PACKAGE_SIZE, f"the default package limit ({DEFAULT_PACKAGE_SIZE // MIB} MiB)")

    def _chain(self) -> Iterator[UnpackBudget]:
        budget: UnpackBudget | None = self
        while budget is not None:
            yield budget
            budget = budget.parent

    def check(self, size: int, where: str) -> None:
        """Refuse if `size` more bytes would not fit (without charging them), naming the
        tightest bound."""
        binding = self._binding()
        if size > binding.limit - binding.used:
            raise LimitError(where, binding.what)

    def _binding(self) -> UnpackBudget:
        return min(self._chain(), key=lambda b: b.limit - b.used)

    def charge(self, size: int, where: str) -> None:
        self.check(size, where)
        for budget in self._chain():
            budget.used += size

    def headroom(self) -> UnpackBudget:
        """A detached budget of what is left here: bounds a copy or a container without
        charging the package twice for the same bytes."""
        binding = self._binding()
        return UnpackBudget(binding.limit - binding.used, binding.what)


def open_decompressed(data: bytes, compression: str, source: str) -> ByteStream:
    """A stream of `data` decompressed by its suffix: "", "gz", "xz", "bz2", "zst".

    Nothing is decompressed until it is read: a reader bounds what it takes with a budget."""
    raw = io.BytesIO(data)
    if not compression:
        return raw
    found = by_suffix(compression)
    if found is None:
        raise FormatError(f"{source}: unknown compression '{compression}'")
    return found.open_reader(raw)


def decompress(data: bytes, compression: str, source: str, budget: UnpackBudget | None = None) -> bytes:
    """Decompress a whole member by its suffix, refused (LimitError) beyond `budget`, which
    is not charged: what it bounds is read again, and charged, by its reader."""
    reader = BoundedReader(open_decompressed(data, compression, source),
                           (budget or UnpackBudget.default()).headroom(), source)
    return reader.read()


class BoundedReader:
    """A forward-only view of a decompressing stream for tarfile: every byte read is charged
    to `budget`, and decompression errors become FormatError naming `source`."""

    def __init__(self, stream: ByteStream, budget: UnpackBudget, source: str) -> None:
        self._stream, self._budget, self._source = stream, budget, source
        self.position = 0
        self.last_read = (0, b"")  # (offset, bytes) of the latest read: tarfile's final header

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(_CHUNK), b""))
        parts = []
        start = self.position
        while size > 0:
            chunk = self._read_chunk(min(size, _CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            size -= len(chunk)
        data = b"".join(parts)
        self.last_read = (start, data)
        return data

    def _read_chunk(self, size: int) -> bytes:
        try:
            chunk = self._stream.read(size)
        except _DECOMPRESS_ERRORS as e:
            raise FormatError(f"{self._source}: cannot decompress at decompressed offset "
                              f"{self.position:#x}: {e}") from e
        self._budget.charge(len(chunk), self._source)
        self.position += len(chunk)
        return chunk

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True  # forward only: what tarfile's reading in order asks for

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self.position + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self.position:
            raise FormatError(f"{self._source}: offset {self.position:#x}: tar member out of order")
        while self.position < target and self.read(min(target - self.position, _CHUNK)):
            pass
        return self.position


def read_tar_entries(data: bytes, source: str, budget: UnpackBudget | None = None) -> Iterator[Entry]:
    """Every entry of an uncompressed tar archive held in `data` (see read_tar_stream)."""
    return read_tar_stream(io.BytesIO(data), source, budget)


def read_tar_stream(
    stream: ByteStream,
    source: str,
    budget: UnpackBudget | None = None,
    *,
    provenance: str = "",
    check: Callable[[tarfile.TarInfo, bytes, str], None] | None = None,
) -> Iterator[Entry]:
    """Every entry of the tar archive `stream` yields (decompressing as it goes) as an Entry,
    in archive order, the decompressed bytes charged to `budget` (the default package limit
    when None) as they are read, so a decompression bomb is refused before it fills memory.

    Hard links become copies of the file they link to; "./usr/bin/x" becomes "/usr/bin/x";
    the archive's own root ("./") is skipped; a path escaping the root is a FormatError.
    `check` as for entry_from_tar_member.
    """
    budget = budget or UnpackBudget.default()
    reader = BoundedReader(stream, budget, source)
    files: dict[str, bytes] = {}
    offset = 0  # of the tar header being read, for the error message
    try:
        with tarfile.open(fileobj=reader, mode="r:") as tar:  # type: ignore[call-overload]
            for info in tar:
                offset = info.offset
                where = f"{source}: offset {info.offset:#x}: {quoted(info.name)}"
                content = _read_member_content(tar, info, budget, source, where)
                entry = entry_from_tar_member(info, content, files, where, provenance=provenance, check=check)
                if entry is not None:
                    yield entry
                offset = tar.offset
    except tarfile.TarError as e:
        raise FormatError(f"{source}: tar offset {offset:#x}: bad tar archive: {e}") from e
    _check_tar_end(reader, offset, source)


def _read_member_content(tar: tarfile.TarFile, info: tarfile.TarInfo, budget: UnpackBudget,
                         source: str, where: str) -> bytes:
    if not info.isreg():
        return b""
    # Refused on the header's word, before a byte of it is held: a bomb declares its size.
    budget.check(info.size, where)
    if info.issparse():
        # No package format writes sparse members (dpkg refuses them); their holes would
        # unpack to bytes no stream ever carried.
        raise FormatError(f"{where}: sparse tar member (no package format has them)")
    extracted = tar.extractfile(info)
    content = extracted.read() if extracted else b""
    if len(content) != info.size:
        raise FormatError(f"{source}: offset {info.offset_data:#x}: {quoted(info.name)} is truncated")
    return content


def _check_tar_end(reader: BoundedReader, offset: int, source: str) -> None:
    # tarfile stops quietly at a damaged or truncated header after the first one; what
    # follows the last member must be the end-of-archive zero blocks and nothing else. The
    # header tarfile stopped at is its latest read, which began at `offset`.
    start, last = reader.last_read
    if start > offset:  # tarfile read on past the header it stopped at: nothing vouches for it
        raise FormatError(f"{source}: tar offset {offset:#x}: damaged or truncated tar header")
    tail = last[offset - start:]
    while tail:
        if tail.strip(b"\0"):
            raise FormatError(f"{source}: tar offset {offset:#x}: damaged or truncated tar header")
        tail = reader.read(_CHUNK)


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
    _refuse_control_characters(info, where)
    try:
        path = normalize_path(info.name)
    except UserError as e:
        raise FormatError(f"{where}: {e.message}") from e
    if path == "/":
        return None
    common: dict[str, Any] = dict(mode=info.mode & 0o7777, uid=info.uid, gid=info.gid, mtime=int(info.mtime),
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


def _refuse_control_characters(info: tarfile.TarInfo, where: str) -> None:
    # A newline or an escape byte in a name forges lines in the manifest, in listings and in
    # messages, and terminal commands when printed; no package has a reason to carry one.
    # `where` names the member, quoted.
    for what, text in (("the name", info.name), (f"link target {quoted(info.linkname)}", info.linkname)):
        if any(unicodedata.category(char) == "Cc" for char in text):
            raise FormatError(f"{where}: {what} holds control characters")


def read_member_tar(path: Path, data: bytes, members: list[ArMember], stem: str,
                    budget: UnpackBudget | None = None) -> Iterator[Entry]:
    """The entries of the ar member `stem`.tar[.gz|.xz|.bz2|.zst] (a deb's data or control),
    decompressed as they are read and charged to `budget`."""
    for member in members:
        base, _, suffix = member.name.partition(".tar")
        if base != stem or (suffix and not suffix.startswith(".")):
            continue
        source = f"{path}: {member.name} at {member.offset:#x}"
        stream = open_decompressed(data[member.offset : member.offset + member.size], suffix.lstrip("."), source)
        return read_tar_stream(stream, source, budget)
    raise FormatError(f"{path}: no {stem}.tar member (members: {', '.join(m.name for m in members)})")
