"""The compressed formats fwgen reads, in one table: name, file suffixes, magic bytes, and
how to decompress each, incrementally or as a stream.

Package members (`data.tar.xz`), kernel modules (`.ko.zst`) and feed indexes are known by
their suffix; initramfs segments and a kernel's embedded payload by their magic. Writing is
left to the writers (cpio, squashfs, uImage), whose settings are part of their output bytes.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import zstandard

# What a decompressing reader is (gzip, lzma and bz2 files are buffered streams, not BinaryIO).
ByteStream = BinaryIO | io.BufferedIOBase

# What a damaged stream raises, across the four libraries (gzip and bz2 raise OSError and
# EOFError, a truncated stream EOFError).
ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


@dataclass(frozen=True)
class Compression:
    name: str
    suffixes: tuple[str, ...]  # without the dot
    magic: bytes
    # An incremental decompressor of one stream: .decompress(data), .eof and .unused_data
    # (what follows the stream: the next initramfs segment).
    decompressobj: Callable[[], Any]
    # A reader of the decompressed stream, nothing decompressed until it is read.
    open_reader: Callable[[BinaryIO], ByteStream]

    def matches(self, data: bytes, offset: int = 0) -> bool:
        return data.startswith(self.magic, offset)


COMPRESSIONS = (
    # RFC 1952: ID1 ID2 and CM, deflate (8) being the only method defined.
    Compression("gzip", ("gz",), b"\x1f\x8b\x08", lambda: zlib.decompressobj(wbits=31),
                lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    # By suffix, "lzma" files are the legacy .lzma format too: the reader detects which.
    Compression("xz", ("xz", "lzma"), b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ),
                lambda raw: lzma.LZMAFile(raw)),
    Compression("bzip2", ("bz2",), b"BZh", bz2.BZ2Decompressor, lambda raw: bz2.BZ2File(raw)),
    # Streaming reader: zstd frames made by dpkg need not declare their size.
    Compression("zstd", ("zst",), b"\x28\xb5\x2f\xfd", lambda: zstandard.ZstdDecompressor().decompressobj(),
                lambda raw: zstandard.ZstdDecompressor().stream_reader(raw)),
)
GZIP, XZ, BZIP2, ZSTD = COMPRESSIONS
# What fwgen looks for by magic in an initramfs and inside a kernel image.
BOOT_COMPRESSIONS = (GZIP, XZ, ZSTD)


def by_suffix(suffix: str) -> Compression | None:
    """The compression a file suffix ("gz", "xz", "lzma", "bz2", "zst") names, if any."""
    return next((c for c in COMPRESSIONS if suffix in c.suffixes), None)


def by_magic(data: bytes, offset: int = 0, among: tuple[Compression, ...] = COMPRESSIONS) -> Compression | None:
    """The compression (of `among`) whose magic `data` holds at `offset`, if any."""
    return next((c for c in among if c.matches(data, offset)), None)
