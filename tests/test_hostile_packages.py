"""Hostile but validly signed packages: decompression bombs in deb, apk and ipk, refused on
the board's limits before they fill memory. Packages come from the suite's generator
(tests/feedgen.py); the build test serves them as a signed OpenWrt feed on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from buildutil import REPO
from feedgen import (
    ApkSpec,
    FileSpec,
    IpkSpec,
    RsaSigner,
    UsignSigner,
    build_apk,
    build_deb,
    build_ipk,
    serve,
    write_opkg_feed,
)

from fwgen.arch import Arch
from fwgen.config import load_board
from fwgen.errors import ConfigError, LimitError
from fwgen.fetch import (
    FetchedPackage,
    Package,
    UnpackBudget,
    apk,
    install_package,
    read_package_entries,
)
from fwgen.rootfs import RootFS

MIB = 1 << 20
OPENWRT_ARCH = Arch.AARCH64.openwrt
FORMATS = ["deb", "apk", "ipk"]
SPARSE_BOMB = [FileSpec("./usr/share/bomb.bin", kind="sparse", size=2 << 30)]  # 512 bytes -> 2 GiB


def write_package(folder: Path, fmt: str, files: list[FileSpec], name: str = "bomb") -> Path:
    """A package of `fmt` holding `files`; an .apk is signed with a key written beside it."""
    if fmt == "deb":
        blob = build_deb(name, files)
    elif fmt == "ipk":
        blob = build_ipk(IpkSpec(name, "1.0-1", OPENWRT_ARCH, files))
    else:
        signer = RsaSigner.generate()
        signer.write_public(folder / "keys")
        blob = build_apk(ApkSpec(name, "1.0-r0", "aarch64", files), signer).blob
    path = folder / f"{name}.{fmt}"
    path.write_bytes(blob)
    return path


def read_entries(path: Path, budget: UnpackBudget | None = None) -> list:
    if path.suffix == ".apk":  # verified with the key beside it, not Alpine's
        keys = apk.load_rsa_keys([path.parent / "keys"])
        return apk.read_apk(path.read_bytes(), keys, str(path), budget=budget).entries
    return list(read_package_entries(path, budget))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_sparse_bomb_is_refused_on_its_header(tmp_path, fmt):
    path = write_package(tmp_path, fmt, SPARSE_BOMB)
    assert path.stat().st_size < 4096
    with pytest.raises(LimitError) as caught:
        read_entries(path)
    assert re.search(r"\./usr/share/bomb\.bin: unpacks to more than the default package limit \(1024 MiB\)$",
                     caught.value.message), caught.value.message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_deflate_bomb_is_refused_while_it_streams(tmp_path, fmt):
    # 64 files of 1 MiB of zeros (64 MiB, a few hundred KiB compressed), each small enough
    # on its own: only counting what the stream unpacks stops them, at 8 MiB.
    files = [FileSpec(f"./usr/share/z{i:02}", b"\0" * MIB) for i in range(64)]
    path = write_package(tmp_path, fmt, files)
    budget = UnpackBudget(8 * MIB, "limits.package_size (8 MiB)")
    peak = 0

    def read() -> None:
        nonlocal peak
        tracemalloc.start()
        try:
            read_entries(path, budget)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    with pytest.raises(LimitError, match=r"unpacks to more than limits\.package_size \(8 MiB\)$"):
        read()
    # The compressed file, the files kept so far and the reader's buffers; never the 64 MiB.
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert budget.used <= 8 * MIB


def test_a_package_within_its_budget_reads_whole(tmp_path):
    files = [FileSpec(f"./usr/share/z{i}", b"\0" * MIB) for i in range(4)]
    for fmt in FORMATS:
        (tmp_path / fmt).mkdir()
        path = write_package(tmp_path / fmt, fmt, files)
        budget = UnpackBudget(8 * MIB, "eight")
        entries = read_entries(path, budget)
        assert sorted(e.path for e in entries if e.data) == [f"/usr/share/z{i}" for i in range(4)]
        assert 4 * MIB < budget.used < 5 * MIB, (fmt, budget.used)


def _fetched(path: Path, name: str) -> FetchedPackage:
    package = Package(name, "1.0-1", OPENWRT_ARCH, "openwrt-local", "ipk", "http://127.0.0.1", path.name,
                      path.stat().st_size, "0" * 64)
    return FetchedPackage(package, path)


def test_the_image_limit_bounds_the_packages_together(tmp_path):
    files = [FileSpec(f"./usr/share/{i}", b"\0" * MIB) for i in range(6)]
    first = _fetched(write_package(tmp_path, "ipk", files, name="first"), "first")
    second = _fetched(write_package(tmp_path, "ipk", files, name="second"), "second")
    image = UnpackBudget(10 * MIB, "limits.image_size (10 MiB)")
    rootfs = RootFS()
    install_package(rootfs, first, UnpackBudget(8 * MIB, "limits.package_size (8 MiB)", parent=image))
    with pytest.raises(LimitError) as caught:
        install_package(rootfs, second, UnpackBudget(8 * MIB, "limits.package_size (8 MiB)", parent=image))
    message = caught.value.message
    assert message.startswith("package second 1.0-1 (feed openwrt-local): second.ipk: data.tar.gz: offset 0x"), message
    assert message.endswith("unpacks to more than limits.image_size (10 MiB)"), message
    assert str(tmp_path) not in message, "the package's name, not its cache file"
    assert "/usr/share/5" in rootfs and not any(e.provenance == "ipk:second" for e in rootfs), \
        "nothing of a refused package is installed"


def test_board_limits_default_from_the_guest_ram_of_an_initramfs_root(tmp_path):
    assert load_board("qemu-aarch64").limits.image_size == 512  # virt-aarch64: 512 MiB of RAM
    disk = load_board("qemu-aarch64-disk").limits  # the root is on the disk, not in RAM
    assert (disk.package_size, disk.image_size) == (1024, 2048)
    board = tmp_path / "small.yaml"
    board.write_text("arch: aarch64\nqemu: {profile: virt-aarch64, memory: 128}\n")
    assert load_board(board).limits.image_size == 128
    board.write_text("arch: aarch64\nqemu: {profile: virt-aarch64}\nlimits: {package_size: 16, image_size: 64}\n")
    assert (load_board(board).limits.package_size, load_board(board).limits.image_size) == (16, 64)
    board.write_text("arch: aarch64\nlimits:\n  image_size: 0\n")
    with pytest.raises(ConfigError, match=r"small\.yaml:3:15: limits\.image_size: "):
        load_board(board)


# -- fwgen build against a served feed ------------------------------------------------------------
def _bomb_board(folder: Path, url: str, key: Path) -> Path:
    """qemu-aarch64 (512 MiB of RAM, so a 512 MiB image limit) with the bomb from an OpenWrt feed."""
    board = {
        "name": "bomb",
        "arch": "aarch64",
        "feeds": [
            {"name": "debian", "type": "deb", "url": "http://deb.debian.org/debian", "suite": "bookworm"},
            {"name": "openwrt-local", "type": "ipk", "url": f"{url}/openwrt", "components": ["base"],
             "keys": [str(key)]},
        ],
        "kernel": {"package": "linux-image-cloud-arm64", "cmdline": "console=ttyAMA0"},
        "packages": ["bomb"],
        "overlays": ["base"],
        "qemu": {"profile": "virt-aarch64"},
    }
    path = folder / "bomb.yaml"
    path.write_text(json.dumps(board))
    return path


def run_measured(*args: str, cache: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the CLI under GNU time: its result and its peak resident set size in KiB."""
    import os

    time = Path("/usr/bin/time")
    if not time.exists():
        pytest.skip("GNU time (/usr/bin/time) is not installed: apt-get install time")
    result = subprocess.run([str(time), "-v", sys.executable, "-m", "fwgen.cli", *args], capture_output=True,
                            text=True, cwd=REPO, env=dict(os.environ, FWGEN_CACHE=str(cache)), timeout=900)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    assert peak, result.stderr
    return result, int(peak[1])


@pytest.mark.network
@pytest.mark.slow
def test_a_bomb_from_a_signed_feed_is_refused_with_one_line_and_little_memory(tmp_path, cache_dir):
    signer = UsignSigner.generate()
    key = signer.write_public(tmp_path / "keys")
    spec = IpkSpec("bomb", "1.0-1", OPENWRT_ARCH, SPARSE_BOMB)
    write_opkg_feed(tmp_path / "www" / "openwrt" / "packages" / OPENWRT_ARCH / "base", [(spec, build_ipk(spec))], signer)
    out = tmp_path / "out"
    with serve(tmp_path / "www") as url:
        board = _bomb_board(tmp_path, url, key)
        result, peak_kib = run_measured("build", "--board", str(board), "--out", str(out), cache=cache_dir)
    errors = [line for line in result.stderr.splitlines() if line.startswith("fwgen: error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0] == ("fwgen: error: package bomb 1.0-1 (feed openwrt-local): "
                         f"bomb_1.0-1_{OPENWRT_ARCH}.ipk: data.tar.gz: offset 0x0: "
                         "./usr/share/bomb.bin: unpacks to more than limits.image_size (512 MiB)"), errors[0]
    assert not out.exists() or list(out.iterdir()) == []
    # The 2 GiB are never unpacked: the build's peak is what any build of this board needs.
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib} KiB"
