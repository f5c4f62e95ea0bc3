"""squashfs 4.0 images: written from the in-memory `RootFS`, read back for `inspect`.

The writer lays the image out as mksquashfs does (superblock, data and fragment blocks,
inode table, directory table, fragment table, export table, id table), compresses data
blocks in a thread pool (zlib, lzma and zstandard release the GIL) but writes them in
plan order, so the same model always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError
from ..files import replacing
from ..progress import QUIET, Progress
from ..rootfs import Entry, EntryType, RootFS
from . import squashfs_layout as L
from .squashfs_reader import SquashfsEntry, SquashfsImage, read_squashfs

__all__ = ["write_squashfs", "read_squashfs", "SquashfsImage", "SquashfsEntry"]


def write_squashfs(
    rootfs: RootFS,
    path: Path,
    *,
    compression: str = "gzip",
    block_size: int = 131072,
    mtime: int,
    jobs: int = 2,
    progress: Progress = QUIET,
) -> None:
    """Write `rootfs` as a squashfs 4.0 image to `path`, atomically and deterministically.

    `mtime` is the image's mkfs_time and the mtime of entries that carry none. Files are
    split into `block_size` blocks; tails and small files are packed into fragments;
    identical files are stored once; all-zero blocks are stored sparse.
    """
    if block_size < 4096 or block_size > 1 << 20 or block_size & (block_size - 1):
        raise UserError(f"squashfs block size {block_size} must be a power of two from 4096 to 1048576")
    if not 0 <= mtime < 1 << 32:
        raise UserError(f"squashfs mtime {mtime} does not fit in 32 bits")
    compressor = L.make_compressor(compression, block_size)
    path = Path(path)
    tree = _Tree(rootfs)
    plan = _plan_data(tree, block_size)
    progress.step(f"writing squashfs {path.name} ({compression}, {len(tree.order)} inodes)")
    with replacing(path, mode=0o644) as out:
        _ImageWriter(out, tree, plan, compressor, mtime, progress).write(jobs)


# -- the tree in write order ------------------------------------------------------------
class _Tree:
    """The model as squashfs wants it: children sorted by name bytes, inodes numbered in
    post-order (every directory after its contents, the root last)."""

    def __init__(self, rootfs: RootFS) -> None:
        self.entries = rootfs.entries
        self.children: dict[str, list[str]] = {p: [] for p, e in self.entries.items() if e.type is EntryType.DIR}
        for p in self.entries:
            if p != "/":
                self.children[posixpath.dirname(p)].append(p)
        for names in self.children.values():
            names.sort(key=lambda p: _encode(posixpath.basename(p)))
        self.order = self._post_order()
        self.number = {p: i + 1 for i, p in enumerate(self.order)}
        ids = sorted({e.uid for e in self.entries.values()} | {e.gid for e in self.entries.values()})
        if len(ids) > 65536:
            raise UserError(f"squashfs holds at most 65536 distinct uids/gids, the tree has {len(ids)}")
        self.ids = ids
        self.id_index = {v: i for i, v in enumerate(ids)}

    def _post_order(self) -> list[str]:
        order: list[str] = []
        stack: list[tuple[str, bool]] = [("/", False)]
        while stack:
            p, expanded = stack.pop()
            if expanded or p not in self.children:
                order.append(p)
                continue
            stack.append((p, True))
            stack.extend((c, False) for c in reversed(self.children[p]))
        return order


# -- data plan --------------------------------------------------------------------------
@dataclass
class _FileData:
    """Where one file's content lives: full blocks (chunk numbers, None = sparse) + a tail."""

    first_chunk: int
    blocks: list[int | None] = field(default_factory=list)
    fragment: int = L.NO_FRAGMENT
    fragment_offset: int = 0


@dataclass
class _Plan:
    chunks: list[memoryview | bytes]  # in write order: file blocks and fragment blocks
    fragment_chunks: list[int]  # chunk number of each fragment block
    files: dict[str, _FileData]
    duplicates: int = 0


def _plan_data(tree: _Tree, block_size: int) -> _Plan:
    """Decide every data block and fragment before compressing anything."""
    plan = _Plan([], [], {})
    seen: dict[bytes, _FileData] = {}
    pending: list[bytes] = []  # tails waiting in the current fragment block
    pending_size = 0

    def flush_fragment() -> None:
        nonlocal pending, pending_size
        plan.fragment_chunks.append(len(plan.chunks))
        plan.chunks.append(b"".join(pending))
        pending, pending_size = [], 0

    for p in tree.order:
        entry = tree.entries[p]
        if entry.type is not EntryType.FILE or not entry.data:
            continue
        data = entry.data
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            plan.files[p] = seen[digest]
            plan.duplicates += 1
            continue
        view = memoryview(data)
        info = _FileData(len(plan.chunks))
        full = len(data) - len(data) % block_size
        for start in range(0, full, block_size):
            if data.count(0, start, start + block_size) == block_size:
                info.blocks.append(None)
            else:
                info.blocks.append(len(plan.chunks))
                plan.chunks.append(view[start : start + block_size])
        tail = view[full:]
        if tail:
            if pending_size + len(tail) > block_size:
                flush_fragment()
            info.fragment = len(plan.fragment_chunks)
            info.fragment_offset = pending_size
            pending.append(bytes(tail))
            pending_size += len(tail)
        seen[digest] = info
        plan.files[p] = info
    if pending:
        flush_fragment()
    return plan


# -- compression ------------------------------------------------------------------------
def _compress_in_order(
    compress: Callable[[bytes | memoryview], bytes], chunks: Iterable[bytes | memoryview], jobs: int
) -> Iterator[tuple[bytes | memoryview, bytes]]:
    """Yield (raw, compressed) in input order; a bounded window of blocks is in flight."""
    if jobs <= 1:
        for raw in chunks:
            yield raw, compress(raw)
        return
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="squashfs") as pool:
        window: deque = deque()
        for raw in chunks:
            window.append((raw, pool.submit(compress, raw)))
            if len(window) >= jobs * 4:
                head, future = window.popleft()
                yield head, future.result()
        while window:
            head, future = window.popleft()
            yield head, future.result()


def _stored(raw: bytes | memoryview, packed: bytes) -> tuple[bytes | memoryview, bool]:
    """squashfs keeps a block uncompressed when compressing does not make it smaller."""
    if len(packed) < len(raw):
        return packed, True
    return raw, False


class _MetadataWriter:
    """Packs a table into 8 KiB metadata blocks, each with its 2-byte length header.

    Blocks are compressed as soon as they fill, so the compressed offset of the block
    being filled is always known: that is what inode and directory references need.
    """

    def __init__(self, compress: Callable[[bytes], bytes]) -> None:
        self.compress = compress
        self.out = bytearray()
        self.buffer = bytearray()
        self.block_starts: list[int] = []  # compressed offset of each finished block

    def position(self) -> tuple[int, int]:
        """(compressed offset of the current block, offset inside it)."""
        return len(self.out), len(self.buffer)

    def uncompressed_size(self) -> int:
        return len(self.block_starts) * L.METADATA_SIZE + len(self.buffer)

    def block_start(self, uncompressed_offset: int) -> int:
        number = uncompressed_offset // L.METADATA_SIZE
        return self.block_starts[number] if number < len(self.block_starts) else len(self.out)

    def append(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= L.METADATA_SIZE:
            self._flush(bytes(self.buffer[: L.METADATA_SIZE]))
            del self.buffer[: L.METADATA_SIZE]

    def finish(self) -> bytes:
        if self.buffer:
            self._flush(bytes(self.buffer))
            self.buffer.clear()
        return bytes(self.out)

    def _flush(self, block: bytes) -> None:
        self.block_starts.append(len(self.out))
        packed, compressed = _stored(block, self.compress(block))
        header = len(packed) | (0 if compressed else L.METADATA_UNCOMPRESSED)
        self.out += header.to_bytes(2, "little") + packed


# -- the image --------------------------------------------------------------------------
class _ImageWriter:
    def __init__(self, out: BinaryIO, tree: _Tree, plan: _Plan, compressor: L.Compressor, mtime: int,
                 progress: Progress) -> None:
        self.out, self.tree, self.plan = out, tree, plan
        self.compressor, self.mtime, self.progress = compressor, mtime, progress
        self.block_size = compressor.block_size
        self.chunk_pos: list[int] = []  # image offset of each chunk
        self.chunk_size: list[int] = []  # size word of each chunk (with the uncompressed bit)
        self.inodes = _MetadataWriter(compressor.compress)
        self.directories = _MetadataWriter(compressor.compress)
        self.refs: dict[str, int] = {}

    def write(self, jobs: int) -> None:
        self.out.write(bytes(L.SUPERBLOCK_SIZE))
        self._write_data(jobs)
        for p in self.tree.order:
            self._write_inode(p)
        inode_table = self.inodes.finish()
        directory_table = self.directories.finish()
        sb = {"inode_table_start": self.out.tell()}
        self.out.write(inode_table)
        sb["directory_table_start"] = self.out.tell()
        self.out.write(directory_table)
        fragments = b"".join(
            L.FRAGMENT_ENTRY.build({"start_block": self.chunk_pos[c], "size": self.chunk_size[c], "unused": 0})
            for c in self.plan.fragment_chunks
        )
        sb["fragment_table_start"] = self._write_table(fragments)
        exports = b"".join(self.refs[p].to_bytes(8, "little") for p in self.tree.order)
        sb["lookup_table_start"] = self._write_table(exports)
        sb["id_table_start"] = self._write_table(b"".join(i.to_bytes(4, "little") for i in self.tree.ids))
        bytes_used = self.out.tell()
        self.out.write(bytes(-bytes_used % L.PAD_TO))
        self.out.seek(0)
        self.out.write(self._superblock(sb, bytes_used))

    def _superblock(self, tables: dict[str, int], bytes_used: int) -> bytes:
        flags = L.FLAG_ALWAYS_FRAG | L.FLAG_DUPLICATE | L.FLAG_EXPORT | L.FLAG_NO_XATTR
        return L.SUPERBLOCK.build({
            "inodes": len(self.tree.order),
            "mkfs_time": self.mtime,
            "block_size": self.block_size,
            "fragments": len(self.plan.fragment_chunks),
            "compression": self.compressor.id,
            "block_log": self.block_size.bit_length() - 1,
            "flags": flags,
            "no_ids": len(self.tree.ids),
            "s_major": 4,
            "s_minor": 0,
            "root_inode": self.refs["/"],
            "bytes_used": bytes_used,
            "xattr_id_table_start": L.INVALID_TABLE,
            **tables,
        })

    def _write_table(self, content: bytes) -> int:
        """A lookup table: metadata blocks, then the index of their offsets; returns the index's."""
        metadata = _MetadataWriter(self.compressor.compress)
        metadata.append(content)
        base = self.out.tell()
        self.out.write(metadata.finish())
        start = self.out.tell()
        self.out.write(b"".join((base + s).to_bytes(8, "little") for s in metadata.block_starts))
        return start

    def _write_data(self, jobs: int) -> None:
        total = sum(len(c) for c in self.plan.chunks)
        done = 0
        for raw, packed in _compress_in_order(self.compressor.compress, self.plan.chunks, jobs):
            stored, compressed = _stored(raw, packed)
            self.chunk_pos.append(self.out.tell())
            self.chunk_size.append(len(stored) | (0 if compressed else L.DATA_UNCOMPRESSED))
            self.out.write(stored)
            done += len(raw)
            self.progress.advance("data", done, total)
        self.chunk_pos.append(self.out.tell())

    # -- inodes and directories ---------------------------------------------------------
    def _header(self, entry: Entry, inode_type: int) -> bytes:
        mtime = self.mtime if entry.mtime is None else entry.mtime
        if not 0 <= mtime < 1 << 32:
            raise UserError(f"{entry.path}: mtime {mtime} does not fit in squashfs's 32 bits")
        return _HEADER.build({
            "inode_type": inode_type,
            "mode": entry.mode & 0o7777,
            "uid": self.tree.id_index[entry.uid],
            "guid": self.tree.id_index[entry.gid],
            "mtime": mtime,
            "inode_number": self.tree.number[entry.path],
        })

    def _write_inode(self, p: str) -> None:
        entry = self.tree.entries[p]
        block, offset = self.inodes.position()
        self.refs[p] = L.inode_ref(block, offset)
        kind = entry.type
        if kind is EntryType.DIR:
            record = self._directory_inode(entry)
        elif kind is EntryType.FILE:
            record = self._file_inode(entry)
        elif kind is EntryType.SYMLINK:
            target = _encode(entry.target)
            record = self._header(entry, L.SYMLINK) + _SYMLINK.build(
                {"nlink": 1, "symlink_size": len(target)}) + target
        elif kind in (EntryType.CHARDEV, EntryType.BLOCKDEV):
            record = self._header(entry, L.BASIC_TYPE[kind]) + _DEV.build(
                {"nlink": 1, "rdev": L.encode_rdev(*entry.rdev)})
        else:
            record = self._header(entry, L.BASIC_TYPE[kind]) + _IPC.build({"nlink": 1})
        self.inodes.append(record)

    def _file_inode(self, entry: Entry) -> bytes:
        info = self.plan.files.get(entry.path)
        if info is None:  # empty file
            info = _FileData(len(self.plan.chunks))
        start = self.chunk_pos[info.first_chunk]
        sizes = [0 if c is None else self.chunk_size[c] for c in info.blocks]
        block_list = b"".join(s.to_bytes(4, "little") for s in sizes)
        size = len(entry.data)
        if size < 1 << 32 and start < 1 << 32:
            return self._header(entry, L.REG) + _REG.build({
                "start_block": start, "fragment": info.fragment,
                "offset": info.fragment_offset, "file_size": size,
            }) + block_list
        sparse = sum(self.block_size for c in info.blocks if c is None)
        return self._header(entry, L.LREG) + _LREG.build({
            "start_block": start, "file_size": size, "sparse": sparse, "nlink": 1,
            "fragment": info.fragment, "offset": info.fragment_offset, "xattr": 0xFFFFFFFF,
        }) + block_list

    def _child_name(self, path: str) -> bytes:
        name = _encode(posixpath.basename(path))
        if len(name) > L.MAX_NAME:
            provenance = self.tree.entries[path].provenance
            raise UserError(f"squashfs: {path!r}{f' (from {provenance})' if provenance else ''}: file name too "
                            f"long ({len(name)} bytes; squashfs stores at most {L.MAX_NAME})")
        return name

    def _directory_inode(self, entry: Entry) -> bytes:
        children = self.tree.children[entry.path]
        listing_block, listing_offset = self.directories.position()
        listing_start = self.directories.uncompressed_size()
        listing, index = _build_listing(
            [(self._child_name(c), self.tree.entries[c].type, self.tree.number[c], self.refs[c]) for c in children]
        )
        self.directories.append(listing)
        index_records = b"".join(
            L.DIR_INDEX.build({
                "index": at, "start_block": self.directories.block_start(listing_start + at),
                "size": len(name) - 1, "name": name,
            })
            for at, name in index
        )
        nlink = 2 + sum(1 for c in children if self.tree.entries[c].type is EntryType.DIR)
        parent = posixpath.dirname(entry.path)
        # mksquashfs gives the root a parent one past the last inode number.
        parent_number = len(self.tree.order) + 1 if entry.path == "/" else self.tree.number[parent]
        file_size = len(listing) + 3  # "." and ".." are counted but not stored
        if file_size <= 0xFFFF and not index:
            return self._header(entry, L.DIR) + _DIR.build({
                "start_block": listing_block, "nlink": nlink, "file_size": file_size,
                "offset": listing_offset, "parent_inode": parent_number,
            })
        return self._header(entry, L.LDIR) + _LDIR.build({
            "nlink": nlink, "file_size": file_size, "start_block": listing_block,
            "parent_inode": parent_number, "i_count": len(index), "offset": listing_offset,
            "xattr": 0xFFFFFFFF,
        }) + index_records


def _build_listing(children: list[tuple[bytes, EntryType, int, int]]) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A directory's listing (headers + entries) and its index [(offset of header, first name)].

    A header covers at most 256 entries whose inodes share one metadata block and whose
    inode numbers are within a signed 16-bit delta of its base. As mksquashfs does, a new
    header (recorded in the index, which lets the kernel skip ahead on lookup) starts
    whenever the listing has grown by a metadata block since the last indexed header.
    """
    out = bytearray()
    index: list[tuple[int, bytes]] = []
    header_at = -1
    count = base = block = 0
    anchor = 0
    for name, kind, number, ref in children:
        entry_size = L.DIR_ENTRY_SIZE + len(name)
        crosses = len(out) + L.DIR_HEADER_SIZE + entry_size - anchor > L.METADATA_SIZE
        if (header_at < 0 or count == L.MAX_DIR_HEADER_ENTRIES or ref >> 16 != block
                or not -32768 <= number - base <= 32767 or crosses):
            if header_at >= 0:
                out[header_at:header_at + 4] = (count - 1).to_bytes(4, "little")
                if crosses:
                    index.append((len(out), name))
                    anchor = len(out)
            header_at, count, base, block = len(out), 0, number, ref >> 16
            out += _DIR_HEADER.build({"count": 0, "start_block": block, "inode_number": base})
        out += _DIR_ENTRY.build({
            "offset": ref & 0xFFFF, "inode_number": number - base,
            "type": L.BASIC_TYPE[kind], "size": len(name) - 1, "name": name,
        })
        count += 1
    if header_at >= 0:
        out[header_at:header_at + 4] = (count - 1).to_bytes(4, "little")
    return bytes(out), index


def _encode(name: str) -> bytes:
    # Host names that are not UTF-8 arrive as surrogate escapes (os.fsdecode); store their bytes.
    return name.encode("utf-8", "surrogateescape")


# Compiled once: construct's compiled parsers/builders are several times faster.
_HEADER = L.INODE_HEADER.compile()
_DIR = L.DIR_INODE.compile()
_LDIR = L.LDIR_INODE.compile()
_REG = L.REG_INODE.compile()
_LREG = L.LREG_INODE.compile()
_SYMLINK = L.SYMLINK_INODE.compile()
_DEV = L.DEV_INODE.compile()
_IPC = L.IPC_INODE.compile()
_DIR_HEADER = L.DIR_HEADER.compile()
_DIR_ENTRY = L.DIR_ENTRY.compile()


