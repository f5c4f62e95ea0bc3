"""Failures a user sees are one line naming the file and where in it, never a traceback
(issue 11, "Failures that must be one clean line")."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from buildutil import run_fwgen

from fwgen.errors import FormatError
from fwgen.images.inspect import list_image

# ar(5): the first member header starts after the 8-byte magic; ar_fmag is its last 2 bytes.
AR_FIRST_HEADER = 8
AR_SIZE_FIELD = slice(AR_FIRST_HEADER + 48, AR_FIRST_HEADER + 58)


def _damaged(tmp_path: Path, source: Path, name: str, at: slice, data: bytes) -> Path:
    raw = bytearray(source.read_bytes())
    raw[at] = data
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("at, data, offset", [
    # debian-binary's size 5, not 4: the next header is read two bytes late (after the
    # padding to an even offset) and its ar_fmag is wrong.
    (AR_SIZE_FIELD, b"5".ljust(10), "0x4a"),
    # The header's terminating magic "`\n" damaged.
    (slice(AR_FIRST_HEADER + 58, AR_FIRST_HEADER + 60), b"xx", "0x8"),
])
def test_verify_of_a_deb_with_a_bad_ar_header_is_one_line(samples, tmp_path, at, data, offset):
    deb = _damaged(tmp_path, samples / "debian" / "fact-test.deb", "bad.deb", at, data)
    result = run_fwgen("verify", str(deb), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert str(deb) in lines[0] and f"offset {offset}" in lines[0] and "ar_fmag" in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_truncated_sdcard_image_is_one_line_naming_the_offset(tmp_path):
    """`fwgen boot` of an SD-card board reads the card's MBR and FAT boot sector."""
    from fwgen.images.sdcard import read_boot_files

    card = tmp_path / "sdcard.img"
    for size, where in ((300, "sector 0"), (446, "sector 0"), (4 << 20, "boot sector at 0x400000")):
        card.write_bytes(b"\0" * 446 + bytes.fromhex("00000000 0c000000 00200000 00000200") + b"\0" * 48
                         + b"\x55\xaa" + b"\0" * ((4 << 20) - 512))
        with open(card, "r+b") as f:
            f.truncate(size)
        with pytest.raises(FormatError) as e:
            read_boot_files(card)
        message = str(e.value)
        assert "\n" not in message and str(card) in message and where in message, message


@pytest.mark.parametrize("sample", ["squashfs/fact-gzip.sqfs", "squashfs/fact-xz.sqfs",
                                    "squashfs/binwalk-squashfs.bin", "cpio/test_svr4.cpio"])
def test_damaged_images_fail_with_one_line_naming_the_file(samples, tmp_path, sample):
    """Flipped bytes and truncations of real images: a FormatError on one line, or a listing,
    never another exception (a compiled construct parser raises bare struct.error)."""
    data = (samples / sample).read_bytes()
    rng = random.Random(sample)
    image = tmp_path / "image"
    failures = 0
    for _ in range(300):
        damaged = bytearray(data)
        if rng.random() < 0.3:
            damaged = damaged[:rng.randrange(len(damaged))]
        else:
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        image.write_bytes(bytes(damaged))
        try:
            list_image(image)
        except FormatError as e:
            failures += 1
            assert "\n" not in str(e) and "image" in str(e), str(e)
    assert failures > 0


def test_inspect_of_a_squashfs_with_a_bad_root_inode_is_one_line(samples, tmp_path):
    """The superblock's root_inode (offset 32) pointing past the end of the inode table was a
    struct.error traceback from the compiled inode parser."""
    image = _damaged(tmp_path, samples / "squashfs" / "fact-gzip.sqfs", "rootfs.squashfs", slice(32, 33), b"\xff")
    result = run_fwgen("inspect", str(image), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"fwgen: error: {image.name}: inode table at 0x"), line
