"""Failures a user sees are one line naming the file and where in it, never a traceback
(issue 11, "Failures that must be one clean line")."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import subprocess
from pathlib import Path

import pytest
from buildutil import REPO, run_fwgen
from feedgen import FileSpec, IpkSpec, build_ipk
from localhttp import content_files

from fwgen.cache import Cache
from fwgen.errors import FormatError, StorageError, UserError
from fwgen.fetch import FetchedPackage, install_package
from fwgen.fetch.package import Package
from fwgen.images.inspect import list_image
from fwgen.images.squashfs import write_squashfs
from fwgen.rootfs import RootFS

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


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs (needs mount rights: root, as in CI); skips where mount is refused."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


class _FullFile(io.RawIOBase):
    """A file on a disk that fills up after `room` bytes, as write(2) reports it: no file name."""

    def __init__(self, real, room: int) -> None:
        self.real, self.room = real, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.real.write(data)

    def close(self) -> None:
        self.real.close()
        super().close()


def test_download_onto_a_full_disk_is_one_line_naming_the_file(server, tmp_path, monkeypatch):
    from fwgen import cache as cache_module

    real_fdopen = os.fdopen
    monkeypatch.setattr(cache_module.os, "fdopen", lambda fd, mode: _FullFile(real_fdopen(fd, mode), 1000))
    body = b"x" * 200_000
    server.serve("/big.deb", body)
    cache = Cache(tmp_path / "cache")
    url = f"{server.url}/big.deb"
    with pytest.raises(StorageError) as e:
        cache.fetch(url, sha256=hashlib.sha256(body).hexdigest(), size=len(body))
    assert str(e.value) == f"{cache.path_for(hashlib.sha256(body).hexdigest())}: no space left on device " \
                           f"while writing the download of {url}"
    assert e.value.exit_code == 2
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and "locks" not in p.parts]


def test_download_onto_a_real_full_tmpfs(server, small_disk):
    body = b"y" * (2 << 20)
    server.serve("/big.deb", body)
    cache = Cache(small_disk / "cache")
    digest = hashlib.sha256(body).hexdigest()
    with pytest.raises(StorageError) as e:
        cache.fetch(f"{server.url}/big.deb", sha256=digest, size=len(body))
    assert str(e.value) == (f"{cache.path_for(digest)}: no space left on device while writing the download of "
                            f"{server.url}/big.deb")
    assert content_files(cache) == [] and not list(small_disk.rglob("*.part"))


def test_build_onto_a_real_full_tmpfs_is_one_line(cache_dir, small_disk):
    """The kernel alone (20 MiB) does not fit in 1 MiB: exit 2, one line naming the staging
    folder, and nothing left in the output folder."""
    result = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(small_disk), cache=cache_dir)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()[-1:]
    assert "Traceback" not in result.stderr, result.stderr
    assert line.startswith(f"fwgen: error: {small_disk}/.qemu-aarch64.tmp-"), line
    assert line.endswith("no space left on device while writing the outputs of board qemu-aarch64"), line
    assert list(small_disk.iterdir()) == []


# -- errors that say where ---------------------------------------------------------------------


def test_package_symlink_climbing_above_root_names_package_and_link(tmp_path):
    evil = IpkSpec("evil", "1.0", "aarch64_generic", [
        FileSpec("./usr/lib/plugins", kind="symlink", target="../../../../../../etc"),
        FileSpec("./usr/lib/plugins/passwd", b"root::0:0::/:/bin/sh\n"),
    ])
    ipk = tmp_path / "evil_1.0_aarch64_generic.ipk"
    ipk.write_bytes(build_ipk(evil))
    package = Package("evil", "1.0", "aarch64_generic", "test", "ipk", "file://", ipk.name, ipk.stat().st_size, "")
    with pytest.raises(UserError) as e:
        install_package(RootFS(), FetchedPackage(package, ipk))
    assert str(e.value) == "ipk:evil: symlink /usr/lib/plugins -> ../../../../../../etc climbs above /"


def test_squashfs_name_too_long_names_the_path_and_package(tmp_path):
    rootfs = RootFS()
    long_path = "/usr/share/" + "n" * 300
    rootfs.add_file(long_path, b"x", provenance="deb:longnames")
    with pytest.raises(UserError) as e:
        write_squashfs(rootfs, tmp_path / "rootfs.squashfs", mtime=0)
    assert str(e.value) == (f"squashfs: '{long_path}' (from deb:longnames): file name too long "
                            "(300 bytes; squashfs stores at most 256)")
    assert not (tmp_path / "rootfs.squashfs").exists()


@pytest.mark.parametrize("command", [
    ["build", "--board", "qemu-aarch64", "--out", "{long}"],
    ["build", "--board", "{long}.yaml"],
    ["squashfs", str(REPO / "overlays"), "{long}/rootfs.squashfs"],
])
def test_host_name_too_long_is_one_line_naming_the_path(tmp_path, command):
    long = str(tmp_path / ("o" * 300))
    result = run_fwgen(*(arg.format(long=long) for arg in command), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"fwgen: error: {long}") and line.endswith(": file name too long"), line


def test_build_with_a_disk_filling_up_mid_image_is_one_error_and_leaves_nothing(cache_dir, tmp_path, monkeypatch):
    """A fault point in the initramfs writer: half the image written, then ENOSPC (as write(2)
    reports it, without a file name). The library raises StorageError (the CLI's one line)."""
    from fwgen import build as build_module
    from fwgen import outputs as outputs_module
    from fwgen.config import load_board

    def fill_up(rootfs, path, **kw):
        path.write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs_module, "write_initramfs", fill_up)
    out = tmp_path / "out"
    with pytest.raises(StorageError) as e:
        build_module.build(load_board("qemu-aarch64"), outdir=out / "qemu-aarch64", cache=Cache(cache_dir))
    assert str(e.value).startswith(f"{out}/.qemu-aarch64.tmp-"), str(e.value)
    assert str(e.value).endswith(": no space left on device while writing the outputs of board qemu-aarch64")
    assert not out.exists(), "no staging folder and no empty out/ left behind"
