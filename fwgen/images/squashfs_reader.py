"""Reading squashfs 4.0 images (ours, mksquashfs's, firmware dumps) for `inspect` and tests.

The inode and directory tables are decompressed whole: they are small next to the data,
and flat buffers make inodes that straddle metadata blocks trivial to parse.
"""

from __future__ import annotations

import mmap
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from construct import ConstructError

from ..errors import PARSE_ERRORS, FormatError, parse_error
from ..rootfs import Entry, EntryType, RootFS
from . import squashfs_layout as L


@dataclass(frozen=True)
class SquashfsEntry:
    """One inode as the image records it."""

    path: str
    type: EntryType
    mode: int  # permission bits (07777)
    uid: int
    gid: int
    size: int  # file length, symlink target length, 0 otherwise
    mtime: int
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    inode_number: int = 0


@dataclass
class _Inode:
    header: Any  # construct Containers: fields by the inode type
    body: Any
    type: EntryType
    extra: bytes = b""  # symlink target
    blocks: tuple[int, ...] = ()  # data block size words
    index: tuple = ()  # directory index entries


def read_squashfs(path: Path) -> SquashfsImage:
    """Open a squashfs 4.0 image (little-endian) for reading."""
    return SquashfsImage(Path(path))


class SquashfsImage:
    """A squashfs image on disk: its superblock, its entries and its files' contents."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        try:
            with open(path, "rb") as f:
                self._data: bytes | mmap.mmap = (
                    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
                )
        except OSError as e:
            raise FormatError(f"{path}: cannot read: {e.strerror}") from e
        self._dir_cache: dict[int, dict[bytes, int]] = {}
        self._fragment_cache: dict[int, bytes] = {}
        self.superblock = self._parse_superblock()
        sb = self.superblock
        self.block_size = sb.block_size
        self.compression = L.COMPRESSION_NAMES.get(sb.compression, str(sb.compression))
        self._compressor = L.reader_compressor(self.name, sb.compression, sb.block_size)
        self.ids = self._read_table("id table", sb.id_table_start, sb.no_ids, 4)
        self.fragments = self._read_fragments()
        self._inodes, self._inode_blocks = self._read_metadata_run(
            "inode table", sb.inode_table_start, sb.directory_table_start
        )
        self._dirs, self._dir_blocks = self._read_metadata_run(
            "directory table", sb.directory_table_start, self._directory_table_end()
        )

    # -- public -------------------------------------------------------------------------
    def entries(self) -> list[SquashfsEntry]:
        """Every path in the image, directories before their contents, names sorted."""
        return list(self._walk())

    def to_rootfs(self) -> RootFS:
        """The image as a `RootFS` model (file contents read)."""
        rootfs = RootFS()
        for e in self._walk():
            data = self.read_file(e.path) if e.type is EntryType.FILE else b""
            rootfs.add(Entry(e.path, e.type, e.mode, e.uid, e.gid, e.mtime, data, e.target, e.rdev,
                             provenance=f"squashfs:{self.name}"))
        return rootfs

    def read_file(self, path: str) -> bytes:
        """The content of the regular file at `path` (symlinks are not followed)."""
        inode = self._lookup(path)
        if inode.type is not EntryType.FILE:
            raise FormatError(f"{self.name}: {path} is a {inode.type.value}, not a file")
        return self._file_content(path, inode)

    def data_blocks(self, path: str) -> list[tuple[int, int]]:
        """Where the regular file at `path` keeps its full data blocks: (offset in the image,
        stored size) each, sparse blocks left out. Its tail may sit in a shared fragment."""
        inode = self._lookup(path)
        if inode.type is not EntryType.FILE:
            raise FormatError(f"{self.name}: {path} is a {inode.type.value}, not a file")
        sizes = ((at, word & ~L.DATA_UNCOMPRESSED) for at, word in self._block_positions(inode))
        return [(at, size) for at, size in sizes if size]

    def _block_positions(self, inode: _Inode) -> Iterator[tuple[int, int]]:
        at = inode.body.start_block
        for word in inode.blocks:
            yield at, word
            at += word & ~L.DATA_UNCOMPRESSED

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    def __enter__(self) -> SquashfsImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- superblock and tables ----------------------------------------------------------
    def _parse_superblock(self):
        if len(self._data) < L.SUPERBLOCK_SIZE:
            raise FormatError(f"{self.name}: superblock at 0x0: file too short ({len(self._data)} bytes)")
        try:
            sb = L.SUPERBLOCK.parse(self._data[: L.SUPERBLOCK_SIZE])
        except ConstructError:
            magic = bytes(self._data[:4])
            hint = "big-endian squashfs is not supported" if magic == b"sqsh" else None
            raise FormatError(f"{self.name}: superblock at 0x0: bad magic {magic!r}", hint) from None
        if (sb.s_major, sb.s_minor) != (4, 0):
            raise FormatError(f"{self.name}: superblock at 0x0: squashfs {sb.s_major}.{sb.s_minor}, need 4.0")
        if sb.block_size != 1 << sb.block_log or not 4096 <= sb.block_size <= 1 << 20:
            raise FormatError(f"{self.name}: superblock at 0x0: bad block size {sb.block_size}")
        if sb.bytes_used > len(self._data):
            raise FormatError(
                f"{self.name}: superblock at 0x0: bytes_used {sb.bytes_used} beyond the end of the file "
                f"({len(self._data)} bytes)", "the image is truncated")
        return sb

    def _directory_table_end(self) -> int:
        sb = self.superblock
        ends = [sb.bytes_used]
        for start, count in ((sb.fragment_table_start, sb.fragments), (sb.lookup_table_start, sb.inodes),
                             (sb.id_table_start, sb.no_ids), (sb.xattr_id_table_start, 1)):
            if start != L.INVALID_TABLE and count and start + 8 <= len(self._data):
                ends.append(int.from_bytes(self._data[start:start + 8], "little"))
        after = [e for e in ends if e >= sb.directory_table_start]
        if not after:
            raise FormatError(f"{self.name}: superblock at 0x0: directory table at {sb.directory_table_start:#x} "
                              f"starts past the image's end ({sb.bytes_used} bytes used)")
        return min(after)

    def _read_table(self, what: str, start: int, count: int, item: int) -> list[int]:
        raw = self._read_indexed(what, start, count * item)
        return [int.from_bytes(raw[i:i + item], "little") for i in range(0, len(raw), item)]

    def _read_indexed(self, what: str, start: int, size: int) -> bytes:
        """A table stored as metadata blocks plus an index of their offsets at `start`."""
        blocks = -(-size // L.METADATA_SIZE)
        if start + 8 * blocks > len(self._data):
            raise FormatError(f"{self.name}: {what} at 0x{start:x}: index beyond the end of the image")
        out = bytearray()
        for i in range(blocks):
            at = int.from_bytes(self._data[start + 8 * i:start + 8 * i + 8], "little")
            block, _ = self._read_metadata_block(what, at)
            out += block
        if len(out) < size:
            raise FormatError(f"{self.name}: {what} at 0x{start:x}: {len(out)} bytes, expected {size}")
        return bytes(out[:size])

    def _read_fragments(self) -> list[tuple[int, int]]:
        sb = self.superblock
        raw = self._read_indexed("fragment table", sb.fragment_table_start, sb.fragments * 16)
        return [(int.from_bytes(raw[i:i + 8], "little"), int.from_bytes(raw[i + 8:i + 12], "little"))
                for i in range(0, len(raw), 16)]

    def _read_metadata_block(self, what: str, at: int) -> tuple[bytes, int]:
        """One metadata block at image offset `at`: (its content, offset of the next block)."""
        if at + 2 > len(self._data):
            raise FormatError(f"{self.name}: {what} at 0x{at:x}: metadata block beyond the end of the image")
        word = int.from_bytes(self._data[at:at + 2], "little")
        size = word & ~L.METADATA_UNCOMPRESSED
        raw = bytes(self._data[at + 2:at + 2 + size])
        if size == 0 or size > L.METADATA_SIZE or len(raw) < size:
            raise FormatError(f"{self.name}: {what} at 0x{at:x}: bad metadata block length {size}")
        if word & L.METADATA_UNCOMPRESSED:
            return raw, at + 2 + size
        return self._decompress(what, at, raw, L.METADATA_SIZE), at + 2 + size

    def _read_metadata_run(self, what: str, start: int, end: int) -> tuple[bytes, dict[int, int]]:
        """Every metadata block from `start` to `end`, concatenated, and a map from each
        block's offset (relative to `start`) to where its content begins in the result."""
        out = bytearray()
        starts: dict[int, int] = {}
        at = start
        while at < end:
            starts[at - start] = len(out)
            block, at = self._read_metadata_block(what, at)
            out += block
        return bytes(out), starts

    def _decompress(self, what: str, at: int, raw: bytes, limit: int) -> bytes:
        try:
            return self._compressor.decompress(raw, limit)
        except Exception as e:  # zlib.error, lzma.LZMAError, zstandard.ZstdError
            raise FormatError(f"{self.name}: {what} at 0x{at:x}: cannot decompress {self.compression}: {e}") from e

    # -- inodes -------------------------------------------------------------------------
    def _inode(self, ref: int) -> _Inode:
        block, offset = ref >> 16, ref & 0xFFFF
        where = f"{self.name}: inode table at 0x{self.superblock.inode_table_start + block:x}+{offset}"
        if block not in self._inode_blocks:
            raise FormatError(f"{where}: no metadata block starts there")
        pos = self._inode_blocks[block] + offset
        try:
            header = _HEADER.parse(self._inodes[pos:pos + 16])
            kind = header.inode_type
            if kind not in L.INODE_BODY:
                raise FormatError(f"{where}: bad inode type {kind}")
            struct = L.INODE_BODY[kind]
            pos += 16
            body = struct.parse(self._inodes[pos:pos + 64])
            pos += struct.sizeof()
            inode = _Inode(header, body, L.ENTRY_TYPE[kind])
            if kind in (L.SYMLINK, L.LSYMLINK):
                inode.extra = self._inodes[pos:pos + body.symlink_size]
            elif kind in (L.REG, L.LREG):
                inode.blocks = self._block_list(pos, body)
            elif kind == L.LDIR:
                inode.index = self._dir_index(pos, body.i_count)
        except PARSE_ERRORS as e:
            raise parse_error(where, "bad inode", e) from None
        return inode

    def _block_list(self, pos: int, body) -> tuple[int, ...]:
        size = body.file_size
        if body.fragment == L.NO_FRAGMENT:
            count = -(-size // self.block_size)
        else:
            count = size // self.block_size
        raw = self._inodes[pos:pos + 4 * count]
        return tuple(int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4))

    def _dir_index(self, pos: int, count: int) -> tuple:
        out = []
        for _ in range(count):
            item = L.DIR_INDEX.parse(self._inodes[pos:pos + 12 + 257])
            out.append(item)
            pos += 12 + len(item.name)
        return tuple(out)

    # -- directories --------------------------------------------------------------------
    def _children(self, path: str, ref: int, inode: _Inode) -> dict[bytes, int]:
        """A directory's {name: inode reference}, parsed once."""
        found = self._dir_cache.get(ref)
        if found is None:
            found = self._dir_cache[ref] = dict(self._listing(path, inode))
        return found

    def _listing(self, path: str, inode: _Inode) -> Iterator[tuple[bytes, int]]:
        """(name, inode reference) of every entry of a directory inode."""
        body = inode.body
        if body.file_size <= 3:  # only the implicit "." and "..": nothing is stored
            return
        where = f"{self.name}: directory table at 0x{self.superblock.directory_table_start + body.start_block:x}"
        if body.start_block not in self._dir_blocks:
            raise FormatError(f"{where}: no metadata block starts there (directory {path})")
        pos = self._dir_blocks[body.start_block] + body.offset
        end = pos + body.file_size - 3
        if end > len(self._dirs):
            raise FormatError(f"{where}: listing of {path} runs past the table end")
        while pos < end:
            header = self._parse_dir(_DIR_HEADER, pos, 12, where, path)
            pos += 12
            if header.count >= L.MAX_DIR_HEADER_ENTRIES:
                raise FormatError(f"{where}: directory header of {path} claims {header.count + 1} entries")
            for _ in range(header.count + 1):
                entry = self._parse_dir(_DIR_ENTRY, pos, 8 + 257, where, path)
                pos += 8 + len(entry.name)
                if b"/" in entry.name or entry.name in (b".", b".."):
                    raise FormatError(f"{where}: bad name {entry.name!r} in {path}")
                yield entry.name, L.inode_ref(header.start_block, entry.offset)

    def _parse_dir(self, struct, pos: int, size: int, where: str, path: str):
        try:
            return struct.parse(self._dirs[pos:pos + size])
        except PARSE_ERRORS as e:
            raise parse_error(where, f"bad listing of {path}", e) from None

    def _walk(self) -> Iterator[SquashfsEntry]:
        stack = [("/", self.superblock.root_inode, 0)]
        seen = 0
        while stack:
            path, ref, depth = stack.pop()
            inode = self._inode(ref)
            seen += 1
            if seen > self.superblock.inodes or depth > 4096:
                raise FormatError(f"{self.name}: directory tree loops or exceeds the inode count")
            yield self._entry(path, inode)
            if inode.type is EntryType.DIR:
                children = list(self._children(path, ref, inode).items())
                for name, child in reversed(children):
                    stack.append((posixpath.join(path, name.decode("utf-8", "surrogateescape")), child, depth + 1))

    def _entry(self, path: str, inode: _Inode) -> SquashfsEntry:
        h, b = inode.header, inode.body
        try:
            uid, gid = self.ids[h.uid], self.ids[h.guid]
        except IndexError:
            raise FormatError(f"{self.name}: inode {h.inode_number} ({path}): id index out of range") from None
        size, target, rdev = 0, "", (0, 0)
        if inode.type is EntryType.FILE:
            size = b.file_size
        elif inode.type is EntryType.SYMLINK:
            target = inode.extra.decode("utf-8", "surrogateescape")
            size = len(inode.extra)
        elif inode.type in (EntryType.CHARDEV, EntryType.BLOCKDEV):
            rdev = L.decode_rdev(b.rdev)
        return SquashfsEntry(path, inode.type, h.mode & 0o7777, uid, gid, size, h.mtime, target, rdev,
                             h.inode_number)

    def _lookup(self, path: str) -> _Inode:
        ref = self.superblock.root_inode
        inode = self._inode(ref)
        walked = "/"
        for part in [p for p in path.split("/") if p]:
            if inode.type is not EntryType.DIR:
                raise FormatError(f"{self.name}: {walked} is not a directory")
            ref = self._children(walked, ref, inode).get(part.encode("utf-8", "surrogateescape"))
            walked = posixpath.join(walked, part)
            if ref is None:
                raise FormatError(f"{self.name}: no such path {walked}")
            inode = self._inode(ref)
        return inode

    # -- file data ----------------------------------------------------------------------
    def _file_content(self, path: str, inode: _Inode) -> bytes:
        b = inode.body
        out = bytearray()
        for at, word in self._block_positions(inode):
            want = min(self.block_size, b.file_size - len(out))
            if word & ~L.DATA_UNCOMPRESSED == 0:  # a sparse block
                out += bytes(want)
                continue
            out += self._data_block(f"data block of {path}", at, word, want)
        if b.fragment != L.NO_FRAGMENT:
            if b.fragment >= len(self.fragments):
                raise FormatError(f"{self.name}: {path}: fragment {b.fragment} beyond the fragment table")
            block = self._fragment_block(b.fragment)
            tail = block[b.offset:b.offset + b.file_size - len(out)]
            out += tail
        if len(out) != b.file_size:
            raise FormatError(f"{self.name}: {path}: read {len(out)} bytes, inode says {b.file_size}")
        return bytes(out)

    def _fragment_block(self, number: int) -> bytes:
        # Many small files share one fragment block: keep the last few decompressed.
        block = self._fragment_cache.get(number)
        if block is None:
            start, word = self.fragments[number]
            block = self._data_block(f"fragment {number}", start, word, self.block_size)
            if len(self._fragment_cache) >= 8:
                self._fragment_cache.pop(next(iter(self._fragment_cache)))
            self._fragment_cache[number] = block
        return block

    def _data_block(self, what: str, at: int, word: int, want: int) -> bytes:
        size = word & ~L.DATA_UNCOMPRESSED
        if size > self.block_size or at + size > len(self._data):
            raise FormatError(f"{self.name}: {what} at 0x{at:x}: bad block size {size}")
        raw = bytes(self._data[at:at + size])
        if word & L.DATA_UNCOMPRESSED:
            return raw
        return self._decompress(what, at, raw, self.block_size)


_HEADER = L.INODE_HEADER.compile()
_DIR_HEADER = L.DIR_HEADER.compile()
_DIR_ENTRY = L.DIR_ENTRY.compile()
