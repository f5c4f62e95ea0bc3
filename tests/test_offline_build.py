"""The whole build pipeline with no network: `fwgen.build.build` called as a library on a
vendor board whose kernel is given as files (an arm64 image carrying its banner and vermagic,
and one hand-made ELF module whose .modinfo vermagic matches), whose userland is the real,
signed Alpine 3.13.4 aarch64 packages of ../shared/samples served on 127.0.0.1 in Alpine's
layout, with Alpine's own BusyBox (so nothing is downloaded or compiled), the base overlay
and a vendor overlay. Every socket connection to anything but 127.0.0.1 raises and is
recorded, and the cache starts empty, so a step that reached for the network would fail."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import subprocess
from pathlib import Path

import pytest
from feedgen import serve
from test_kernel import make_module

from fwgen.build import KERNEL_FILE, build
from fwgen.cache import Cache
from fwgen.config import load_board
from fwgen.fetch.apk import ApkBackend
from fwgen.images.cpio import read_initramfs

SAMPLE = "alpine-aarch64-3.13.4"
RELEASE = "5.10.160-vendor-bsp"
VERMAGIC = f"{RELEASE} SMP preempt mod_unload aarch64"
MODULE = f"lib/modules/{RELEASE}/extra/vendor_led.ko"
EPOCH = 1_700_000_000
LOCAL = ("127.0.0.1", "localhost")
DEVICE_URL = "https://mirror.vendor.example/alpine/v3.13"
# SHA-256 of the images this board built on main before issue 12's restructuring (commit 3322d4d),
# the same on every run and machine: the images hold no host path, time, umask or uid (checked
# under other temporary folders, TZ and umask 077). The decompressed archive is hashed too, so a
# host whose zlib deflates differently (zlib-ng) shows as that alone. manifest.json,
# the SBOMs and .fwgen/inputs.json are left out on purpose: they record the vendor kernel's host
# path and the local mirror's URL with its random port, so they differ from run to run.
GOLDEN = {
    "kernel": "b518a54d081735297106f0b17d59dad336054f612c432eda67d29c86e826b153",
    "initramfs.cpio": "e487c2812bd8861691a46e0ea184c0ae5972143e7d4b009bca3f8c485f7e081f",
    "initramfs.cpio.gz": "020b76eedaff60c48f61c582f8144636596b728bf7869dd710e72c1e8b8d4799",
    "rootfs.squashfs": "037472d1ff3a5c09b2f2ef71a62a48c282eb544e99290d940ab22dc84dcd4773",
}


class NetworkGuard:
    """Lets sockets reach 127.0.0.1 only; every other address is refused and remembered, so a
    step that swallowed the error still shows."""

    def __init__(self) -> None:
        self.refused: list[str] = []
        self.index_loads: list[str] = []  # the feeds whose index was loaded, once per load
        self._connect = socket.socket.connect
        self._getaddrinfo = socket.getaddrinfo

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def connect(sock: socket.socket, address) -> None:
            return self.connect(sock, address)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect)
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def connect(self, sock: socket.socket, address) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in LOCAL:
            self.refused.append(f"connect {host}")
            raise OSError(f"offline test: connection to {host} refused")
        return self._connect(sock, address)

    def getaddrinfo(self, host, *args, **kwargs):
        if host not in LOCAL:
            self.refused.append(f"resolve {host}")
            raise socket.gaierror(f"offline test: no name resolution for {host}")
        return self._getaddrinfo(host, *args, **kwargs)


def write_vendor_kernel(folder: Path) -> tuple[Path, Path]:
    """What a vendor's BSP hands over: an arm64 Image (its 64-byte header, then text holding
    the banner and the kernel's own vermagic) and a `make modules_install` tree."""
    header = bytes(56) + b"ARM\x64" + bytes(4)
    banner = f"Linux version {RELEASE} (builder@vendor) (aarch64-linux-gnu-gcc 10.2.1) #1 SMP PREEMPT\n"
    image = folder / "Image"
    image.write_bytes(header + bytes(4096) + banner.encode() + b"\0" + VERMAGIC.encode() + b"\0" + bytes(4096))
    module = folder / "modroot" / MODULE
    module.parent.mkdir(parents=True)
    module.write_bytes(make_module(["license=GPL", "depends=", "name=vendor_led", f"vermagic={VERMAGIC}"]))
    return image, folder / "modroot"


def write_vendor_overlay(folder: Path) -> Path:
    overlay = folder / "overlays" / "vendor"
    (overlay / "files" / "etc" / "vendor").mkdir(parents=True)
    (overlay / "overlay.yaml").write_text("description: the vendor's device settings\ndepends: [base]\n")
    (overlay / "files" / "etc" / "vendor" / "device.conf").write_text("model=vendor-board-1\n")
    return overlay.parent


def write_board(folder: Path, url: str) -> Path:
    board = {
        "name": "vendor-offline",
        "description": "a vendor board: kernel as files, Alpine userland from a local mirror",
        "arch": "aarch64",
        # The device's own mirror: the image then holds no trace of the test server's random port.
        "feeds": [{"name": "alpine", "type": "apk", "url": f"{url}/v3.13", "components": ["main"],
                   "device_url": DEVICE_URL}],
        "kernel": {"package": None, "image": "vendor/Image", "modules_from": "vendor/modroot",
                   "cmdline": "console=ttyAMA0 panic=-1", "modules": ["vendor_led"]},
        "busybox": {"package": "busybox"},
        "packages": ["busybox", "alpine-baselayout", "musl"],
        "overlays": ["base", "vendor"],
        "outputs": ["initramfs", "squashfs"],
    }
    path = folder / "vendor-offline.yaml"
    path.write_text(json.dumps(board, indent=2))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def offline(samples, tmp_path_factory):
    """Two builds of the board, each with a new empty cache (no remote cache), with the network guarded."""
    tmp = tmp_path_factory.mktemp("offline")
    (tmp / "repo" / "v3.13" / "main").mkdir(parents=True)
    (tmp / "repo" / "v3.13" / "main" / "aarch64").symlink_to(samples / SAMPLE)
    (tmp / "vendor").mkdir()
    write_vendor_kernel(tmp / "vendor")
    overlays = write_vendor_overlay(tmp)
    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as monkeypatch, serve(tmp / "repo") as url:
        guard.install(monkeypatch)
        load_index = ApkBackend.load_index
        monkeypatch.setattr(ApkBackend, "load_index", lambda self, feed, *rest: (
            guard.index_loads.append(feed.name), load_index(self, feed, *rest))[1])
        board = load_board(write_board(tmp, url), overlay_dirs=[overlays])
        results = [build(board, outdir=tmp / f"out{n}" / board.name, cache=Cache(tmp / f"cache{n}", attempts=1),
                         source_date_epoch=EPOCH) for n in (1, 2)]
    return tmp, guard, results


def test_nothing_but_the_local_mirror_was_reached(offline):
    _, guard, results = offline
    assert guard.refused == []
    assert len(results) == 2 and all(r.manifest["inputs"]["kernel"]["release"] == RELEASE for r in results)


def test_each_build_reads_and_resolves_the_feed_index_once(offline):
    """The up-to-date check and the fetch step share one resolution (build.resolve_board)."""
    _, guard, _ = offline
    assert guard.index_loads == ["alpine", "alpine"]  # two builds


def test_the_guard_refuses_the_network():
    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as monkeypatch:
        guard.install(monkeypatch)
        with pytest.raises(OSError, match="offline test"):
            socket.create_connection(("deb.debian.org", 80), timeout=1)
        with socket.socket() as sock, pytest.raises(OSError, match="offline test"):
            sock.connect(("192.0.2.1", 80))
    assert guard.refused == ["resolve deb.debian.org", "connect 192.0.2.1"]


def test_manifest_records_local_packages_vendor_kernel_and_overlays(offline, samples):
    tmp, _, [first, _] = offline
    manifest = first.manifest
    packages = {p["name"]: p for p in manifest["inputs"]["packages"]}
    assert {"busybox", "alpine-baselayout", "musl"} <= set(packages)
    for record in packages.values():
        assert record["feed"] == "alpine" and record["url"].startswith("http://127.0.0.1:")
        sample = samples / SAMPLE / record["url"].rsplit("/", 1)[1]
        assert record["sha256"] == hashlib.sha256(sample.read_bytes()).hexdigest()
    kernel = manifest["inputs"]["kernel"]
    assert kernel["release"] == RELEASE and kernel["vendor_image"] == str(tmp / "vendor" / "Image")
    assert kernel["sha256"] == hashlib.sha256((tmp / "vendor" / "Image").read_bytes()).hexdigest()
    assert kernel["modules_from"] == str(tmp / "vendor" / "modroot")
    assert manifest["inputs"]["kernel_modules"] == ["vendor_led"]
    assert manifest["inputs"]["busybox"] == {"package": "busybox"}
    assert [o["name"] for o in manifest["inputs"]["overlays"]] == ["base", "vendor"]
    files = manifest["files"]
    assert files["/etc/vendor/device.conf"] == "overlay:vendor"
    assert files["/etc/inittab"] == "overlay:base"
    assert files["/bin/busybox"] == "apk:busybox"
    assert files[f"/{MODULE}"] == f"vendor:{tmp / 'vendor' / 'Image'}"
    written = json.loads((first.outdir / "manifest.json").read_text())
    assert written == manifest


def test_initramfs_holds_packages_overlays_and_the_vendor_module(offline, samples):
    tmp, _, [first, _] = offline
    members = {m.name: m for m in read_initramfs(first.outdir / "initramfs.cpio.gz")}
    assert members["etc/vendor/device.conf"].data == b"model=vendor-board-1\n"
    assert members["etc/apk/repositories"].data.decode().split() == [f"{DEVICE_URL}/main"]
    assert members[MODULE].data == (tmp / "vendor" / "modroot" / MODULE).read_bytes()
    assert members["bin/ls"].data == b"/bin/busybox"  # Alpine's applet links, a symlink's data is its target
    assert members["bin/busybox"].mode == 0o100755 and members["init"].mode & 0o111
    assert (first.outdir / KERNEL_FILE).read_bytes() == (tmp / "vendor" / "Image").read_bytes()
    archive = subprocess.run(["gzip", "-dc", str(first.outdir / "initramfs.cpio.gz")], capture_output=True,
                             check=True).stdout
    names = _gnu_cpio(archive, "-it").splitlines()
    # Both listings come in archive order; a verbose line's name column moves for device nodes.
    gnu = {name: line.split() for name, line in zip(names, _gnu_cpio(archive, "-itvn").splitlines(), strict=True)}
    assert sorted(names) == sorted(members)  # GNU cpio reads the same archive fwgen's reader does
    assert gnu["dev/console"][0].startswith("c") and gnu["dev/console"][4:6] == ["5,", "1"]
    assert gnu["etc/vendor/device.conf"][0] == "-rw-r--r--" and gnu["etc/vendor/device.conf"][2:4] == ["0", "0"]
    assert gnu["bin/ls"][0].startswith("l") and gnu["bin/busybox"][0] == "-rwxr-xr-x"


def _gnu_cpio(archive: bytes, option: str) -> str:
    return subprocess.run(["cpio", option, "--quiet"], input=archive, capture_output=True, check=True).stdout.decode()


def test_a_second_build_is_byte_identical(offline):
    _, _, [first, second] = offline
    def files(folder):  # every file, the up-to-date record in .fwgen/ included
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    names = files(first.outdir)
    assert names == files(second.outdir) and "initramfs.cpio.gz" in names
    for name in names:
        assert (first.outdir / name).read_bytes() == (second.outdir / name).read_bytes(), name


def test_images_are_byte_identical_to_before_the_restructuring(offline):
    """Refactoring must not change one output byte: the images hash as they did on main at 3322d4d."""
    _, _, [first, _] = offline
    images = {name: (first.outdir / name).read_bytes() for name in GOLDEN if name != "initramfs.cpio"}
    images["initramfs.cpio"] = gzip.decompress(images["initramfs.cpio.gz"])
    assert {name: hashlib.sha256(data).hexdigest() for name, data in images.items()} == GOLDEN
