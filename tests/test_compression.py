"""The one compression table (fwgen/compression.py) against real compressed files: OpenWrt's
Packages.gz beside its Packages, the xz data member of a Debian package, the zstd blocks of
a squashfs made by mksquashfs."""

from __future__ import annotations

import bz2
import io
import tarfile

import pytest

from fwgen.compression import (
    BOOT_COMPRESSIONS,
    BZIP2,
    COMPRESSIONS,
    ERRORS,
    GZIP,
    XZ,
    ZSTD,
    by_magic,
    by_suffix,
)
from fwgen.fetch.archive import list_ar_members


def _whole(kind, data: bytes) -> bytes:
    """`data` decompressed incrementally, checking the stream ends and nothing follows."""
    decompressor = kind.decompressobj()
    out = decompressor.decompress(data)
    assert decompressor.eof and decompressor.unused_data == b""
    return out


def test_gzip_index_inflates_to_the_plain_index_published_beside_it(samples):
    packed = (samples / "openwrt-core-mvebu" / "Packages.gz").read_bytes()
    plain = (samples / "openwrt-core-mvebu" / "Packages").read_bytes()
    assert by_magic(packed) is GZIP and by_suffix("gz") is GZIP
    assert _whole(GZIP, packed) == plain
    assert GZIP.open_reader(io.BytesIO(packed)).read() == plain
    assert by_magic(plain) is None  # "Package: ..." is no compression's magic


def test_xz_member_of_a_deb_is_a_tarball(samples):
    deb = (samples / "debian" / "fact-test.deb").read_bytes()
    member = next(m for m in list_ar_members(deb, "fact-test.deb") if m.name == "data.tar.xz")
    packed = deb[member.offset : member.offset + member.size]
    assert by_magic(packed) is XZ and by_suffix("xz") is XZ and by_suffix("lzma") is XZ
    tar_bytes = XZ.open_reader(io.BytesIO(packed)).read()
    assert _whole(XZ, packed) == tar_bytes
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert tar.getmembers()


def test_zstd_blocks_of_a_squashfs_decompress(samples):
    image = (samples / "squashfs" / "fact-zstd.sqfs").read_bytes()
    start = image.find(ZSTD.magic)
    assert start > 0
    assert by_magic(image, start) is ZSTD and by_suffix("zst") is ZSTD
    decompressor = ZSTD.decompressobj()
    assert decompressor.decompress(image[start:])
    assert decompressor.eof  # one whole frame: what followed it is the next block


def test_bzip2_round_trip_and_what_the_boot_formats_leave_out():
    # No real bzip2 sample in /work/shared/samples: bzip2 appears only in package members.
    packed = bz2.compress(b"fwgen " * 1000)
    assert by_magic(packed) is BZIP2 and by_suffix("bz2") is BZIP2
    assert _whole(BZIP2, packed) == b"fwgen " * 1000
    # An initramfs or kernel payload is gzip, xz or zstd only, as before the table.
    assert by_magic(packed, among=BOOT_COMPRESSIONS) is None
    assert by_suffix("zip") is None and by_suffix("") is None


@pytest.mark.parametrize("kind", COMPRESSIONS, ids=lambda k: k.name)
def test_damaged_stream_raises_one_of_the_listed_errors(kind):
    with pytest.raises(ERRORS):
        kind.decompressobj().decompress(kind.magic + b"\xff" * 64)
