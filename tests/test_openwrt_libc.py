"""OpenWrt's libc and kernel, which no feed index lists: a board brings them as package files
pinned by SHA-256, or names them in `provides`. Against the real openwrt-core-mvebu feed
served on 127.0.0.1; a qemu-armv7 board built from it boots and runs OpenWrt's fwtool and
fw_printenv.

The board is generated here, not kept in boards/examples/: its feed URL is the test
server's port, and its libc file and key come from ../shared/samples, outside the checkout.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from buildutil import check_sboms, run_fwgen
from feedgen import serve
from localhttp import content_files

from fwgen.arch import Arch
from fwgen.board import Feed, PackageFile
from fwgen.cache import Cache
from fwgen.config import load_board
from fwgen.errors import ConfigError, IntegrityError, ResolveError, UserError
from fwgen.fetch import (
    Relation,
    fetch_packages,
    install_package,
    load_index,
    read_package_file,
    resolve_packages,
)
from fwgen.images.cpio import read_initramfs
from fwgen.rootfs import EntryType, RootFS

MVEBU = "openwrt-core-mvebu"
MT7621 = "openwrt-simonsmh-mt7621"
KEY = "d95e275d41a63bff"
FEED_ARCH = "arm_cortex-a9_vfpv3-d16"
LIBC = "libc_1.2.4-4_arm_cortex-a9_vfpv3-d16.ipk"
LIBC_SHA256 = "10d59e12bdf852d9f6f9cf06810c2bda0c63185dd4b80c036a2862de420f57c3"
KERNEL = "5.15.137-1-40d241266c049468fd1eeac34d3457e0"  # what the feed's kmods depend on
BOARD = "openwrt-mvebu-libc"


def _serve_mvebu(samples: Path, root: Path):
    """The sample feed at <url>/openwrt/packages/<arch>/core, as OpenWrt's mirrors lay it out."""
    folder = root / "openwrt" / "packages" / FEED_ARCH
    folder.mkdir(parents=True)
    (folder / "core").symlink_to(samples / MVEBU)
    return serve(root)


@pytest.fixture()
def feed(samples, tmp_path):
    with _serve_mvebu(samples, tmp_path / "www") as url:
        yield Feed("openwrt-core", "ipk", f"{url}/openwrt", components=("core",), keys=(samples / MVEBU / KEY,),
                   arch=FEED_ARCH)


def _libc(samples: Path, sha256: str = LIBC_SHA256) -> PackageFile:
    return PackageFile(samples / MVEBU / LIBC, sha256, "board.yaml:9:11: package_files[0]")


def _cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache", attempts=1)


def test_libc_from_a_pinned_package_file_resolves_and_installs_with_the_feed(feed, samples, tmp_path):
    cache = _cache(tmp_path)
    fetched = fetch_packages([feed], Arch.ARMV7, ["fwtool", "uboot-envtools"], files=[_libc(samples)], cache=cache)
    assert [(f.package.name, f.package.feed) for f in fetched] == [
        ("libgcc1", "openwrt-core"), ("libc", "package_files"), ("fwtool", "openwrt-core"),
        ("uboot-envtools", "openwrt-core")]
    libc = fetched[1]
    assert (libc.package.version, libc.package.arch, libc.package.sha256) == ("1.2.4-4", FEED_ARCH, LIBC_SHA256)
    assert libc.package.url == (samples / MVEBU / LIBC).as_uri() and libc.package.size == 275861
    assert libc.path == cache.path_for(LIBC_SHA256)  # the verified copy is what gets read
    rootfs = RootFS()
    for package in fetched:
        install_package(rootfs, package)
    assert rootfs["/lib/ld-musl-armhf.so.1"].target == "libc.so"
    assert rootfs["/lib/libc.so"].provenance == "ipk:libc"
    assert rootfs.resolve("/usr/sbin/fw_setenv").type is EntryType.FILE


def test_without_libc_one_line_names_the_package_that_needs_it_and_the_feed(feed, tmp_path):
    with pytest.raises(ResolveError) as caught:
        resolve_packages([feed], Arch.ARMV7, ["fwtool"], cache=_cache(tmp_path))
    error = caught.value
    assert error.message == ("cannot install fwtool: fwtool depends on libc but no package libc in openwrt-core "
                             "(chain: fwtool -> libc)")
    assert error.hint is not None and "list it in provides" in error.hint and "package_files" in error.hint
    assert "\n" not in str(error)


def test_a_package_file_with_another_hash_is_refused_before_it_is_read(feed, samples, tmp_path):
    cache = _cache(tmp_path)
    wrong = "0" * 64
    with pytest.raises(IntegrityError) as caught:
        resolve_packages([feed], Arch.ARMV7, ["fwtool"], files=[_libc(samples, wrong)], cache=cache)
    message = str(caught.value)
    assert message.startswith(f"board.yaml:9:11: package_files[0]: {LIBC}: SHA-256 mismatch: expected {wrong}, "
                              f"got {LIBC_SHA256}"), message
    assert not cache.path_for(wrong).exists() and not cache.path_for(LIBC_SHA256).exists()
    assert content_files(cache) == [], "nothing of the refused file was kept"


def test_a_package_file_for_another_arch_is_refused(feed, samples, tmp_path):
    zlib = samples / MT7621 / "zlib_1.2.13-1_mipsel_24kc.ipk"
    pinned = PackageFile(zlib, hashlib.sha256(zlib.read_bytes()).hexdigest(), "board.yaml:10:11: package_files[1]")
    with pytest.raises(UserError, match=r"^board\.yaml:10:11: package_files\[1\]: zlib_1\.2\.13-1_mipsel_24kc\.ipk "
                                        r"is package zlib for mipsel_24kc, but the board's ipk feeds are for "
                                        r"arm_cortex-a9_vfpv3-d16$"):
        resolve_packages([feed], Arch.ARMV7, ["fwtool"], files=[_libc(samples), pinned], cache=_cache(tmp_path))


def test_provides_satisfies_what_the_board_supplies_itself(feed, tmp_path):
    cache = _cache(tmp_path)
    # libc supplied by the board: fwtool alone is installed.
    alone = resolve_packages([feed], Arch.ARMV7, ["fwtool"], provided={"libc": None}, cache=cache)
    assert [p.name for p in alone.packages] == ["fwtool"]
    assert [str(d) for d in alone.provided] == ["fwtool depends on libc"]
    # A kmod names its exact kernel build: the board's kernel must say that version.
    kmod = resolve_packages([feed], Arch.ARMV7, ["kmod-lib-crc8"], provided={"kernel": KERNEL}, cache=cache)
    assert [p.name for p in kmod.packages] == ["kmod-lib-crc8"]
    with pytest.raises(ResolveError, match=r"kmod-lib-crc8 depends on kernel \(= 5\.15\.137-1-40d2.*\) but the board "
                                           r"provides kernel without a version"):
        resolve_packages([feed], Arch.ARMV7, ["kmod-lib-crc8"], provided={"kernel": None}, cache=cache)
    with pytest.raises(ResolveError, match=r"but the board provides kernel = 6\.1\.0-1"):
        resolve_packages([feed], Arch.ARMV7, ["kmod-lib-crc8"], provided={"kernel": "6.1.0-1"}, cache=cache)


def test_feeds_of_one_type_share_one_package_arch(feed, tmp_path):
    other = Feed("openwrt-other", "ipk", feed.url, components=("core",), keys=feed.keys)  # arch from the table
    with pytest.raises(UserError, match=r"ipk feeds name different package architectures \(openwrt-core "
                                        r"arm_cortex-a9_vfpv3-d16, openwrt-other arm_cortex-a7_neon-vfpv4\)"):
        load_index([feed, other], Arch.ARMV7, cache=_cache(tmp_path))


# -- the board keys ------------------------------------------------------------------------------
def _board_text(libc: str = f"packages/{LIBC}", sha256: str = LIBC_SHA256, provides: str = "[kernel]") -> str:
    return f"""\
arch: armv7
feeds:
  - name: openwrt-core
    type: ipk
    url: http://127.0.0.1:9/openwrt
    components: [core]
    arch: {FEED_ARCH}
    keys: [keys/{KEY}]
package_files:
  - path: {libc}
    sha256: {sha256}
provides: {provides}
packages: [fwtool]
"""


def _board_folder(samples: Path, folder: Path) -> Path:
    (folder / "packages").mkdir(parents=True, exist_ok=True)
    (folder / "keys").mkdir(exist_ok=True)
    shutil.copy(samples / MVEBU / LIBC, folder / "packages" / LIBC)
    shutil.copy(samples / MVEBU / KEY, folder / "keys" / KEY)
    return folder


def test_board_keys_load_into_the_board(samples, tmp_path):
    folder = _board_folder(samples, tmp_path)
    (folder / "b.yaml").write_text(_board_text(provides="[kernel=5.15.137-1, libfoo]"))
    board = load_board(folder / "b.yaml")
    [libc] = board.package_files
    assert (libc.path, libc.sha256) == ((folder / "packages" / LIBC).resolve(), LIBC_SHA256)
    assert libc.where.endswith("b.yaml:10:11: package_files[0]")
    assert board.provides == {"kernel": "5.15.137-1", "libfoo": None}
    assert board.feeds[0].arch == FEED_ARCH


@pytest.mark.parametrize("change, where, message", [
    (dict(sha256="ABC"), "11:13: package_files[0].sha256", "'ABC' is not 64 lower-case hex digits"),
    (dict(libc="packages/nope.ipk"), "10:11: package_files[0].path", "packages/nope.ipk not found"),
    (dict(libc="packages"), "10:11: package_files[0].path", "packages is not a file"),
    (dict(provides="['kernel (= 5)']"), "12:12: provides[0]", "'kernel (= 5)' is not a package name"),
], ids=["sha256", "missing", "folder", "provides"])
def test_board_key_mistakes_name_file_line_and_key(samples, tmp_path, change, where, message):
    folder = _board_folder(samples, tmp_path)
    (folder / "b.yaml").write_text(_board_text(**change))
    with pytest.raises(ConfigError) as caught:
        load_board(folder / "b.yaml")
    assert f"b.yaml:{where}: {message}" in str(caught.value)


# -- fwgen build and boot ------------------------------------------------------------------------
CHECKS = [
    {"run": "uname -m", "expect": "armv7l"},
    {"run": "readlink /lib/ld-musl-armhf.so.1", "expect": "libc.so"},
    {"run": "fwtool 2>&1 | head -1", "expect": "Usage: fwtool <options> <firmware>"},
    {"run": "fwtool >/dev/null 2>&1; echo $?", "name": "fwtool without arguments exits 1", "expect": "1"},
    {"run": "echo '{\"v\":1}' > /tmp/m.json && head -c 4096 /dev/zero > /tmp/fw.bin && fwtool -I /tmp/m.json "
            "/tmp/fw.bin && fwtool -i /tmp/out.json /tmp/fw.bin && cmp /tmp/m.json /tmp/out.json && echo same",
     "name": "fwtool appends metadata and extracts it again", "expect": "same"},
    {"run": "fw_printenv --help 2>&1 | head -2",
     "expect": "Usage: fw_printenv [OPTIONS]... [VARIABLE]...\nPrint variables from U-Boot environment"},
]


def write_board(folder: Path, url: str, samples: Path) -> Path:
    """A qemu-armv7 board (Debian armmp kernel, virt-armv7 profile) whose userland beyond
    BusyBox is OpenWrt's: libc from a pinned package file, the rest from the served feed."""
    _board_folder(samples, folder)
    board = {
        "name": BOARD,
        "description": "qemu-armv7 with OpenWrt 23.05 mvebu packages and OpenWrt's libc from a package file",
        "arch": "armv7",
        "feeds": [
            {"name": "openwrt-core", "type": "ipk", "url": f"{url}/openwrt", "components": ["core"],
             "arch": FEED_ARCH, "keys": [f"keys/{KEY}"]},
            {"name": "debian", "type": "deb", "url": "http://deb.debian.org/debian", "suite": "bookworm"},
        ],
        "package_files": [{"path": f"packages/{LIBC}", "sha256": LIBC_SHA256}],
        "provides": ["kernel"],
        "kernel": {"package": "linux-image-armmp", "cmdline": "console=ttyAMA0 panic=-1"},
        "packages": ["fwtool", "uboot-envtools", "libgcc1"],
        "overlays": ["base"],
        "outputs": ["initramfs"],
        "qemu": {"profile": "virt-armv7"},
        "checks": CHECKS,
    }
    path = folder / f"{BOARD}.yaml"
    path.write_text(json.dumps(board, indent=2))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, samples, cache_dir):
    tmp = tmp_path_factory.mktemp("owrt")
    with _serve_mvebu(samples, tmp / "www") as url:
        board = write_board(tmp / "board", url, samples)
        result = run_fwgen("build", "--board", str(board), "--out", str(tmp / "out"), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return tmp / "out" / BOARD, board


@pytest.mark.network
@pytest.mark.slow
def test_sboms_carry_the_real_openwrt_licences_and_no_path_of_the_build_machine(built):
    """OpenWrt's own License: fields, from the signed index and from the pinned libc file's
    control data; the package file's file: URL is no download location in either SBOM."""
    outdir, _ = built
    spdx, cdx = check_sboms(outdir)
    licences = {p["name"]: p["licenseDeclared"] for p in spdx["packages"]}
    assert licences["fwtool"] == "GPL-2.0-only"
    assert licences["uboot-envtools"] == "GPL-2.0-only AND GPL-2.0-or-later"
    assert licences["libc"] == licences["libgcc1"] == "GPL-3.0-or-later WITH GCC-exception-3.1"
    libc = next(p for p in spdx["packages"] if p["name"] == "libc")
    assert libc["downloadLocation"] == "NOASSERTION"
    assert "pkg:generic/openwrt/libc@1.2.4-4" in libc["externalRefs"][0]["referenceLocator"]
    text = (outdir / "sbom.spdx.json").read_text() + (outdir / "sbom.cdx.json").read_text()
    assert "file:" not in text and str(outdir.parent.parent) not in text


@pytest.mark.network
@pytest.mark.slow
def test_build_installs_openwrt_libc_and_records_its_file_and_hash(built):
    outdir, _ = built
    manifest = json.loads((outdir / "manifest.json").read_text())
    records = {p["name"]: p for p in manifest["inputs"]["packages"]}
    assert {"libc", "libgcc1", "fwtool", "uboot-envtools"} <= set(records)
    libc = records["libc"]
    assert (libc["feed"], libc["sha256"], libc["version"], libc["arch"]) == (
        "package_files", LIBC_SHA256, "1.2.4-4", FEED_ARCH)
    assert libc["url"].endswith(f"/packages/{LIBC}")
    assert records["fwtool"]["feed"] == "openwrt-core"
    assert manifest["inputs"]["provides"] == ["kernel"]
    assert manifest["files"]["/lib/libc.so"] == "ipk:libc" and manifest["files"]["/usr/bin/fwtool"] == "ipk:fwtool"
    members = {m.name: m for m in read_initramfs(outdir / "initramfs.cpio.gz")}
    assert members["lib/ld-musl-armhf.so.1"].data == b"libc.so"  # a symlink's data is its target
    assert members["usr/bin/fwtool"].mode == 0o100755 and members["usr/sbin/fw_setenv"].data == b"fw_printenv"


@pytest.mark.network
@pytest.mark.qemu
@pytest.mark.slow
def test_board_boots_and_runs_openwrts_fwtool_and_fw_printenv(built, cache_dir):
    outdir, board = built
    result = run_fwgen("boot", "--board", str(board), "--out", str(outdir.parent), "--json", cache=cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    passed = {c["name"] for c in report["checks"] if c["passed"]}
    assert {"run: fwtool 2>&1 | head -1", "fwtool appends metadata and extracts it again",
            "run: fw_printenv --help 2>&1 | head -2"} <= passed
    assert len(passed) == len(report["checks"]) >= len(CHECKS)
    size = (outdir / "initramfs.cpio.gz").stat().st_size
    print(f"ready after {report.get('ready_seconds')} s; initramfs {size} bytes")


def test_package_files_of_each_format(samples, tmp_path):
    cache = _cache(tmp_path)

    def pinned(path: Path) -> PackageFile:
        return PackageFile(path, hashlib.sha256(path.read_bytes()).hexdigest(), "b.yaml:7:11: package_files[0]")

    deb = read_package_file(pinned(samples / "debian" / "fact-test.deb"), cache=cache)
    assert (deb.name, deb.version, deb.arch, deb.format, deb.feed) == ("Unpacking-test", "0.1", "all", "deb",
                                                                        "package_files")
    libc = read_package_file(pinned(samples / MVEBU / LIBC), cache=cache)
    assert (libc.name, libc.depends, libc.format, libc.filename) == ("libc", ((Relation("libgcc1"),),), "ipk", LIBC)
    # An .apk is trusted through its signature and index, which a bare file lacks.
    with pytest.raises(UserError, match=r"^b\.yaml:7:11: package_files\[0\]: fwgen takes apk packages from feeds only$"):
        read_package_file(pinned(samples / "alpine" / "curl-7.83.1-r1.x86_64.apk"), cache=cache)


def test_a_package_file_replaces_the_feeds_package_of_its_name(feed, samples, tmp_path):
    # libgcc1 is in the feed too; the board's file of it is the one resolved.
    path = samples / MVEBU / "libgcc1_13.1.0-4_arm_cortex-a9_vfpv3-d16.ipk"
    own = PackageFile(path, hashlib.sha256(path.read_bytes()).hexdigest(), "b.yaml:9:11: package_files[1]")
    resolution = resolve_packages([feed], Arch.ARMV7, ["fwtool"], files=[_libc(samples), own], cache=_cache(tmp_path))
    assert [(p.name, p.feed) for p in resolution.packages] == [
        ("libgcc1", "package_files"), ("libc", "package_files"), ("fwtool", "openwrt-core")]
