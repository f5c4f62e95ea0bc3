"""End to end against the real Debian mirror (few downloads; the session cache is shared)."""

from __future__ import annotations

import lzma
import re

import pytest

from fwgen.arch import Arch
from fwgen.board import Feed
from fwgen.cache import Cache
from fwgen.fetch import (
    PackageIndex,
    deb,
    fetch_packages,
    install_package,
    load_index,
    read_package_entries,
    resolve,
)
from fwgen.fetch.deb import DebBackend
from fwgen.progress import QUIET
from fwgen.rootfs import EntryType, RootFS

pytestmark = pytest.mark.network

DEBIAN = [Feed("debian", "deb", "http://deb.debian.org/debian", suite="bookworm")]


@pytest.fixture(scope="module")
def armhf_index(cache_dir):
    return load_index(DEBIAN, Arch.ARMV7, cache=Cache(cache_dir))


@pytest.fixture(scope="module")
def arm64_index(cache_dir):
    return load_index(DEBIAN, Arch.AARCH64, cache=Cache(cache_dir))


def test_fetch_busybox_static_arm64(cache_dir):
    [fetched] = fetch_packages(DEBIAN, Arch.AARCH64, ["busybox-static"], cache=Cache(cache_dir))
    assert fetched.package.name == "busybox-static" and fetched.package.arch == "arm64"
    assert fetched.path.stat().st_size == fetched.package.size
    rootfs = RootFS()
    install_package(rootfs, fetched)
    busybox = rootfs["/bin/busybox"]
    assert busybox.type is EntryType.FILE and busybox.mode == 0o755
    assert busybox.data[:4] == b"\x7fELF" and busybox.data[18:20] == (183).to_bytes(2, "little")  # EM_AARCH64
    assert busybox.provenance == "deb:busybox-static"


def test_dropbear_bin_resolves_dependencies_first(armhf_index):
    order = [p.name for p in resolve(armhf_index, ["dropbear-bin"]).packages]
    assert order[-1] == "dropbear-bin"
    for dependency in ("libc6", "libtomcrypt1", "libtommath1", "zlib1g", "libcrypt1"):
        assert dependency in order
    assert order.index("libc6") < order.index("libtomcrypt1") < order.index("dropbear-bin")
    # Every package's chosen dependencies come before it, except inside the one dependency
    # cycle of this set (libc6 and libgcc-s1 depend on each other).
    position = {name: i for i, name in enumerate(order)}
    late = set()
    for package in resolve(armhf_index, ["dropbear-bin"]).packages:
        for group in package.depends:
            chosen = [r.name for r in group if r.name in position]
            if chosen and position[chosen[0]] > position[package.name]:
                late.add((package.name, chosen[0]))
    assert late <= {("libgcc-s1", "libc6")}


def test_excluding_libc6_keeps_glibc_out(armhf_index):
    result = resolve(armhf_index, ["dropbear-bin"], exclude=["libc6"])
    assert "libc6" not in {p.name for p in result.packages}
    assert any(e.dependent == "dropbear-bin" for e in result.excluded)


def test_cloud_kernel_metapackage_reaches_a_concrete_image(arm64_index, cache_dir):
    result = resolve(arm64_index, ["linux-image-cloud-arm64"], nodeps=["linux-image-*-cloud-arm64"])
    names = [p.name for p in result.packages]
    assert names[-1] == "linux-image-cloud-arm64" and len(names) == 2
    assert re.fullmatch(r"linux-image-6\.1\.0-\d+-cloud-arm64", names[0])
    [fetched] = fetch_packages(DEBIAN, Arch.AARCH64, [names[0]], nodeps=[names[0]], cache=Cache(cache_dir))
    paths = {e.path for e in read_package_entries(fetched.path)}
    assert any(p.startswith("/boot/vmlinuz-6.1.0-") for p in paths)


def test_compact_index_resolves_as_the_full_parse_of_debian_main(armhf_index, cache_dir):
    """The lazily parsed compact index against every stanza of the real Packages file parsed
    whole, as fwgen did before: the same packages, the same closures."""
    cache = Cache(cache_dir)
    release = DebBackend().fetch_release(DEBIAN[0], cache, QUIET)
    entry = release.files["main/binary-armhf/Packages.xz"]
    text = lzma.decompress(cache.path_for(entry.sha256).read_bytes()).decode("utf-8", "replace")
    parsed = deb.parse_packages(text, feed="debian", base_url=DEBIAN[0].url, source="Packages.xz")
    full = PackageIndex(parsed, armhf_index.satisfies, armhf_index.compare, "armhf", "all", ("debian",))
    [compact] = armhf_index.packages.parts[0].parts
    assert len(parsed) > 60000 and len(compact) == len(parsed)
    assert set(compact.names) == {p.name for p in parsed}
    for name in sorted({p.name for p in parsed})[::25]:  # parsing all 62,000 lazily takes ~20 s
        assert armhf_index.by_name[name] == full.by_name[name]
    for names in (["python3-minimal"], ["dropbear-bin", "busybox-static", "libssl3", "zlib1g", "libstdc++6"],
                  ["mawk", "awk"], ["systemd", "udev"]):
        assert resolve(armhf_index, names).packages == resolve(full, names).packages
    for virtual in ("awk", "mail-transport-agent", "c-compiler"):
        assert armhf_index.providers[virtual] == full.providers[virtual]
