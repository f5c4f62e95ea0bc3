"""The squashfs 4.0 on-disk layout, shared by the writer and the reader.

Facts from the kernel's Documentation/filesystems/squashfs.rst and squashfs-tools'
squashfs_fs.h; everything is little-endian. An image reads, in order:
superblock, [compressor options], data blocks and fragment blocks, inode table, directory
table, fragment table, export (lookup) table, uid/gid table, xattr table.
"""

from __future__ import annotations

import lzma
import threading
import zlib

import zstandard
from construct import (
    Bytes,
    Const,
    Int16sl,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
    this,
)

from ..errors import FormatError, UserError
from ..rootfs import EntryType

MAGIC = b"hsqs"
SUPERBLOCK_SIZE = 96
METADATA_SIZE = 8192  # "Metadata blocks hold 8 KiB" (uncompressed)
METADATA_UNCOMPRESSED = 0x8000  # bit 15 of a metadata block's length word
DATA_UNCOMPRESSED = 1 << 24  # bit 24 of a data/fragment block size word
NO_FRAGMENT = 0xFFFFFFFF
INVALID_TABLE = 0xFFFFFFFFFFFFFFFF
PAD_TO = 4096

# Superblock flags (squashfs_fs.h SQUASHFS_*_BIT).
FLAG_NOI = 1 << 0  # inodes uncompressed
FLAG_NOD = 1 << 1  # data uncompressed
FLAG_NOF = 1 << 3  # fragments uncompressed
FLAG_NO_FRAG = 1 << 4
FLAG_ALWAYS_FRAG = 1 << 5
FLAG_DUPLICATE = 1 << 6
FLAG_EXPORT = 1 << 7
FLAG_NOX = 1 << 8
FLAG_NO_XATTR = 1 << 9
FLAG_COMP_OPT = 1 << 10
FLAG_NOID = 1 << 11

SUPERBLOCK = Struct(
    "s_magic" / Const(MAGIC),
    "inodes" / Int32ul,
    "mkfs_time" / Int32ul,
    "block_size" / Int32ul,
    "fragments" / Int32ul,
    "compression" / Int16ul,
    "block_log" / Int16ul,
    "flags" / Int16ul,
    "no_ids" / Int16ul,
    "s_major" / Int16ul,
    "s_minor" / Int16ul,
    "root_inode" / Int64ul,
    "bytes_used" / Int64ul,
    "id_table_start" / Int64ul,
    "xattr_id_table_start" / Int64ul,
    "inode_table_start" / Int64ul,
    "directory_table_start" / Int64ul,
    "fragment_table_start" / Int64ul,
    "lookup_table_start" / Int64ul,
)

# -- inodes ---------------------------------------------------------------------------
# Inode types; the "extended" (L*) variants carry 64-bit sizes, nlink or an xattr index.
DIR, REG, SYMLINK, BLKDEV, CHRDEV, FIFO, SOCKET = range(1, 8)
LDIR, LREG, LSYMLINK, LBLKDEV, LCHRDEV, LFIFO, LSOCKET = range(8, 15)
EXTENDED_OFFSET = 7  # LDIR == DIR + 7, and so on

BASIC_TYPE = {
    EntryType.DIR: DIR,
    EntryType.FILE: REG,
    EntryType.SYMLINK: SYMLINK,
    EntryType.BLOCKDEV: BLKDEV,
    EntryType.CHARDEV: CHRDEV,
    EntryType.FIFO: FIFO,
    EntryType.SOCKET: SOCKET,
}
ENTRY_TYPE = {code: kind for kind, code in BASIC_TYPE.items()}
ENTRY_TYPE.update({code + EXTENDED_OFFSET: kind for kind, code in BASIC_TYPE.items()})

INODE_HEADER = Struct(
    "inode_type" / Int16ul,
    "mode" / Int16ul,  # permission bits; the type comes from inode_type
    "uid" / Int16ul,  # index into the id table
    "guid" / Int16ul,  # index into the id table
    "mtime" / Int32ul,
    "inode_number" / Int32ul,
)

DIR_INODE = Struct(
    "start_block" / Int32ul,  # directory table offset of the listing's metadata block
    "nlink" / Int32ul,
    "file_size" / Int16ul,  # listing size + 3 ("." and ".." are implicit)
    "offset" / Int16ul,
    "parent_inode" / Int32ul,
)
LDIR_INODE = Struct(
    "nlink" / Int32ul,
    "file_size" / Int32ul,
    "start_block" / Int32ul,
    "parent_inode" / Int32ul,
    "i_count" / Int16ul,  # number of directory index entries that follow
    "offset" / Int16ul,
    "xattr" / Int32ul,
)
DIR_INDEX = Struct(
    "index" / Int32ul,  # byte offset of a directory header inside the listing
    "start_block" / Int32ul,  # directory table offset of the metadata block holding it
    "size" / Int32ul,  # name length - 1
    "name" / Bytes(this.size + 1),
)
REG_INODE = Struct(
    "start_block" / Int32ul,
    "fragment" / Int32ul,
    "offset" / Int32ul,
    "file_size" / Int32ul,
)
LREG_INODE = Struct(
    "start_block" / Int64ul,
    "file_size" / Int64ul,
    "sparse" / Int64ul,
    "nlink" / Int32ul,
    "fragment" / Int32ul,
    "offset" / Int32ul,
    "xattr" / Int32ul,
)
SYMLINK_INODE = Struct(
    "nlink" / Int32ul,
    "symlink_size" / Int32ul,
    # then symlink_size bytes of target (and, for LSYMLINK, an xattr index)
)
DEV_INODE = Struct("nlink" / Int32ul, "rdev" / Int32ul)
LDEV_INODE = Struct("nlink" / Int32ul, "rdev" / Int32ul, "xattr" / Int32ul)
IPC_INODE = Struct("nlink" / Int32ul)
LIPC_INODE = Struct("nlink" / Int32ul, "xattr" / Int32ul)

INODE_BODY = {
    DIR: DIR_INODE,
    LDIR: LDIR_INODE,
    REG: REG_INODE,
    LREG: LREG_INODE,
    SYMLINK: SYMLINK_INODE,
    LSYMLINK: SYMLINK_INODE,
    BLKDEV: DEV_INODE,
    CHRDEV: DEV_INODE,
    LBLKDEV: LDEV_INODE,
    LCHRDEV: LDEV_INODE,
    FIFO: IPC_INODE,
    SOCKET: IPC_INODE,
    LFIFO: LIPC_INODE,
    LSOCKET: LIPC_INODE,
}

# -- directories ----------------------------------------------------------------------
DIR_HEADER = Struct(
    "count" / Int32ul,  # entries - 1
    "start_block" / Int32ul,  # inode table offset of the metadata block of these inodes
    "inode_number" / Int32ul,  # base the entries' inode numbers are relative to
)
DIR_ENTRY = Struct(
    "offset" / Int16ul,  # offset of the inode inside its metadata block
    "inode_number" / Int16sl,  # delta from the header's inode_number
    "type" / Int16ul,  # always the basic type, even for an extended inode
    "size" / Int16ul,  # name length - 1
    "name" / Bytes(this.size + 1),
)
DIR_HEADER_SIZE = 12
DIR_ENTRY_SIZE = 8  # without the name
MAX_DIR_HEADER_ENTRIES = 256
# SQUASHFS_NAME_LEN (fs/squashfs/squashfs_fs.h): the kernel refuses longer names.
MAX_NAME = 256

FRAGMENT_ENTRY = Struct("start_block" / Int64ul, "size" / Int32ul, "unused" / Int32ul)


def encode_rdev(major: int, minor: int) -> int:
    """Device numbers as Linux's new_encode_dev(), which the kernel's squashfs decodes."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def decode_rdev(rdev: int) -> tuple[int, int]:
    return (rdev & 0xFFF00) >> 8, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)


def inode_ref(block: int, offset: int) -> int:
    """An inode reference: metadata block start (relative to the table) << 16 | offset."""
    return (block << 16) | offset


# -- compressors ----------------------------------------------------------------------
class Compressor:
    """One squashfs compressor: `compress` is thread-safe and releases the GIL."""

    name = ""
    id = 0

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size

    def compress(self, data: bytes | memoryview) -> bytes:
        raise NotImplementedError

    def decompress(self, data: bytes, limit: int) -> bytes:
        raise NotImplementedError


class GzipCompressor(Compressor):
    # squashfs "gzip" is a zlib stream (RFC 1950), not the gzip file format;
    # mksquashfs's default level is 9 with a 15-bit window.
    name, id = "gzip", 1

    def compress(self, data):
        return zlib.compress(data, 9)

    def decompress(self, data, limit):
        out = zlib.decompressobj()
        result = out.decompress(data, limit)
        return result


class LzmaCompressor(Compressor):
    """Legacy lzma (id 2): read-only support, mksquashfs 4 writes it only on request."""

    name, id = "lzma", 2

    def decompress(self, data, limit):
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data, limit)


class XzCompressor(Compressor):
    # The kernel's xz decompressor (lib/xz) is preallocated with a dictionary of
    # max(block_size, 8 KiB) when the image carries no compressor options
    # (fs/squashfs/xz_wrapper.c), and knows the CRC32 check but not SHA-256;
    # the LZMA2 dictionary must therefore not exceed that size.
    name, id = "xz", 4

    def __init__(self, block_size: int) -> None:
        super().__init__(block_size)
        dict_size = max(block_size, METADATA_SIZE)
        self.filters = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": dict_size}]

    def compress(self, data):
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=self.filters)

    def decompress(self, data, limit):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data, limit)


class ZstdCompressor(Compressor):
    # mksquashfs's default zstd level is 15. A ZstdCompressor object is not
    # thread-safe, so each worker thread keeps its own.
    name, id = "zstd", 6

    def __init__(self, block_size: int) -> None:
        super().__init__(block_size)
        self._local = threading.local()

    def compress(self, data):
        compressor = getattr(self._local, "c", None)
        if compressor is None:
            compressor = self._local.c = zstandard.ZstdCompressor(level=15)
        return compressor.compress(data)

    def decompress(self, data, limit):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)[:limit]


COMPRESSORS: dict[str, type[Compressor]] = {c.name: c for c in (GzipCompressor, XzCompressor, ZstdCompressor)}
COMPRESSION_NAMES = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
READABLE: dict[int, type[Compressor]] = {
    c.id: c for c in (GzipCompressor, LzmaCompressor, XzCompressor, ZstdCompressor)
}


def make_compressor(name: str, block_size: int) -> Compressor:
    """The writer's compressor by name ("gzip", "xz", "zstd")."""
    try:
        return COMPRESSORS[name](block_size)
    except KeyError:
        raise UserError(
            f"unknown squashfs compression '{name}'", f"choose one of {', '.join(COMPRESSORS)}"
        ) from None


def reader_compressor(where: str, compression_id: int, block_size: int) -> Compressor:
    """The reader's decompressor for a superblock's compression id."""
    try:
        return READABLE[compression_id](block_size)
    except KeyError:
        name = COMPRESSION_NAMES.get(compression_id, f"id {compression_id}")
        raise FormatError(f"{where}: superblock: unsupported compression {name}") from None
