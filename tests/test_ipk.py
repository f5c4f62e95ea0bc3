"""OpenWrt: .ipk in both containers, a generated usign-signed feed served on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib

import pytest
from feedgen import FileSpec, IpkSpec, UsignSigner, build_ipk, serve, write_opkg_feed

from fwgen.arch import Arch
from fwgen.board import Feed
from fwgen.cache import Cache
from fwgen.errors import FormatError, IntegrityError, UserError
from fwgen.fetch import ipk
from fwgen.fetch.backend import read_head
from fwgen.fetch.package import PackageIndex, Relation
from fwgen.fetch.resolver import resolve
from fwgen.fetch.verify import verify_file
from fwgen.progress import QUIET
from fwgen.rootfs import EntryType, RootFS

ARCH = "mips_24kc"
FILES = [
    FileSpec("./usr", kind="dir", mode=0o755), FileSpec("./usr/sbin", kind="dir", mode=0o755),
    FileSpec("./usr/sbin/dropbear", b"\x7fELF dropbear", mode=0o755),
    FileSpec("./usr/bin", kind="dir", mode=0o755),
    FileSpec("./usr/bin/ssh", kind="symlink", target="../sbin/dropbear", mode=0o777),
    FileSpec("./etc/dropbear", kind="dir", mode=0o700),
]


def _specs() -> list[IpkSpec]:
    return [
        IpkSpec("dropbear", "2022.82-6", ARCH, FILES, depends="libc, libtomcrypt (>= 1.18), kernel (=5.15.134-1-e7ab1cfe)"),
        IpkSpec("libtomcrypt", "1.18.2-1", ARCH, [FileSpec("./usr/lib/libtomcrypt.so.1", b"tom", mode=0o755)], depends="libc"),
        IpkSpec("libtomcrypt", "1.17-1", ARCH, [FileSpec("./usr/lib/libtomcrypt.so.1", b"old", mode=0o755)]),
        IpkSpec("libc", "1.2.4-4", ARCH, [FileSpec("./lib/libc.so", b"musl", mode=0o755)]),
        IpkSpec("kernel", "5.15.134-1-e7ab1cfe", ARCH, []),
        IpkSpec("base-files", "1", "all", [FileSpec("./etc/banner", b"OpenWrt")]),
    ]


@pytest.mark.parametrize("container", ["tar.gz", "ar"])
def test_both_ipk_layouts_extract(container, tmp_path):
    blob = build_ipk(_specs()[0], container=container)
    members = ipk.split_ipk(blob, "dropbear.ipk")
    assert members.container == container and members.debian_binary == b"2.0\n"
    control = ipk.read_control(members, "dropbear.ipk")
    assert control["Package"] == "dropbear" and control["Architecture"] == ARCH
    rootfs = RootFS()
    for entry in ipk.read_ipk_entries(blob, "dropbear.ipk", provenance="ipk:dropbear"):
        rootfs.add(entry)
    assert rootfs["/usr/sbin/dropbear"].data == b"\x7fELF dropbear" and rootfs["/usr/sbin/dropbear"].mode == 0o755
    assert rootfs["/usr/bin/ssh"].type is EntryType.SYMLINK and rootfs["/usr/bin/ssh"].target == "../sbin/dropbear"
    assert rootfs["/etc/dropbear"].mode == 0o700 and rootfs["/usr/sbin/dropbear"].provenance == "ipk:dropbear"
    path = tmp_path / "dropbear.ipk"
    path.write_bytes(blob)
    assert ipk.recognizes(read_head(path)) is (container == "tar.gz")


def test_openwrt_ipk_is_a_gzip_tar_of_three_members():
    blob = build_ipk(_specs()[0])
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        assert tar.getnames() == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]


def test_broken_ipks_are_refused():
    blob = build_ipk(_specs()[0])
    with pytest.raises(FormatError, match="not an .ipk"):
        ipk.split_ipk(b"PK\x03\x04" + blob, "x.ipk")
    with pytest.raises(FormatError, match="x.ipk"):
        ipk.split_ipk(blob[: len(blob) // 2], "x.ipk")


def test_depends_with_versions_and_arch_names():
    groups = ipk.parse_relations("libc, libtomcrypt (>= 1.18), kernel (=5.15.134-1-e7ab1cfe), a | b", "x")
    assert groups == (
        (Relation("libc"),), (Relation("libtomcrypt", ">=", "1.18"),),
        (Relation("kernel", "=", "5.15.134-1-e7ab1cfe"),), (Relation("a"), Relation("b")),
    )
    backend = ipk.IpkBackend()
    assert backend.arch_name(Arch.MIPS) == "mips_24kc"
    assert backend.arch_name(Arch.ARMV6) == "arm_arm1176jzf-s_vfp"
    with pytest.raises(FormatError, match="bad relation"):
        ipk.parse_relations("libc (>= )", "Packages: package x")


@pytest.fixture()
def feed(tmp_path):
    signer = UsignSigner.generate()
    keys = tmp_path / "keys"
    signer.write_public(keys)
    root = tmp_path / "www"
    folder = root / "packages" / ARCH / "base"
    built = [(spec, build_ipk(spec)) for spec in _specs()]
    write_opkg_feed(folder, built, signer)
    with serve(root) as url:
        yield Feed(name="openwrt-test", type="ipk", url=url, components=("base",), keys=(keys,)), folder, signer


def _cached_files(cache: Cache) -> list:
    return sorted(p for p in cache.root.rglob("*") if p.is_file() and "locks" not in p.parts and not p.name.endswith(".part"))


def test_generated_feed_end_to_end(feed, tmp_path):
    feed, folder, signer = feed
    backend = ipk.IpkBackend()
    cache = Cache(tmp_path / "cache", attempts=1)
    packages = backend.load_index(feed, Arch.MIPS, cache, QUIET)
    assert len(packages) == 6 and all(p.format == "ipk" for p in packages)
    index = PackageIndex(packages, backend.satisfies, backend.compare_versions, ARCH, "all")
    resolution = resolve(index, ["dropbear", "base-files"])
    chosen = {p.name: p.version for p in resolution.packages}
    assert chosen["libtomcrypt"] == "1.18.2-1" and chosen["kernel"] == "5.15.134-1-e7ab1cfe"
    assert [p.name for p in resolution.packages].index("libc") < [p.name for p in resolution.packages].index("dropbear")
    rootfs = RootFS()
    for package in resolution.packages:
        path = cache.fetch(package.url, sha256=package.sha256, size=package.size)
        for entry in backend.read_entries(path):
            rootfs.add(entry)
    assert rootfs["/usr/lib/libtomcrypt.so.1"].data == b"tom"
    assert rootfs["/usr/bin/ssh"].target == "../sbin/dropbear" and rootfs["/etc/banner"].data == b"OpenWrt"


def test_resolution_explains_a_too_old_dependency(feed, tmp_path):
    feed, folder, signer = feed
    backend = ipk.IpkBackend()
    packages = [p for p in backend.load_index(feed, Arch.MIPS, Cache(tmp_path / "c", attempts=1), QUIET)
                if (p.name, p.version) != ("libtomcrypt", "1.18.2-1")]
    index = PackageIndex(packages, backend.satisfies, backend.compare_versions, ARCH, "all")
    with pytest.raises(UserError, match=r"libtomcrypt \(>= 1.18\) but .* has 1.17-1"):
        resolve(index, ["dropbear"])


def test_tampered_packages_index_is_refused_and_not_cached(feed, tmp_path):
    feed, folder, signer = feed
    text = gzip.decompress((folder / "Packages.gz").read_bytes()).replace(b"Version: 1.2.4-4", b"Version: 1.2.4-5")
    (folder / "Packages.gz").write_bytes(gzip.compress(text))
    cache = Cache(tmp_path / "cache", attempts=1)
    with pytest.raises(IntegrityError, match="does not verify"):
        ipk.IpkBackend().load_index(feed, Arch.MIPS, cache, QUIET)
    assert _cached_files(cache) == []


def test_feed_without_keys_is_refused(feed, tmp_path):
    feed, folder, signer = feed
    import dataclasses

    with pytest.raises(UserError, match="no usign keys"):
        ipk.IpkBackend().load_index(dataclasses.replace(feed, keys=()), Arch.MIPS, Cache(tmp_path / "c"), QUIET)


def test_tampered_ipk_is_refused_and_not_cached(feed, tmp_path):
    feed, folder, signer = feed
    backend = ipk.IpkBackend()
    cache = Cache(tmp_path / "cache", attempts=1)
    package = next(p for p in backend.load_index(feed, Arch.MIPS, cache, QUIET) if p.name == "libc")
    before = _cached_files(cache)
    target = folder / package.filename
    blob = target.read_bytes()
    target.write_bytes(blob[:4] + bytes([blob[4] ^ 1]) + blob[5:])  # same size, other bytes
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        cache.fetch(package.url, sha256=package.sha256, size=package.size)
    assert _cached_files(cache) == before
    assert not cache.path_for(package.sha256).exists()


def test_verify_file_reports_feed_index_and_ipk(feed, tmp_path):
    feed, folder, signer = feed
    keys = [feed.keys[0]]
    report = verify_file(folder / "Packages.sig", keys)
    assert (report.kind, report.ok, report.key) == ("opkg Packages", True, signer.fingerprint.hex())
    report = verify_file(folder / "dropbear_2022.82-6_mips_24kc.ipk", keys)
    assert report.ok and report.kind == "ipk" and report.key == signer.fingerprint.hex()
    assert "SHA256sum match" in report.detail
    blob = (folder / "libc_1.2.4-4_mips_24kc.ipk").read_bytes()
    (folder / "libc_1.2.4-4_mips_24kc.ipk").write_bytes(blob + b"\0")
    report = verify_file(folder / "libc_1.2.4-4_mips_24kc.ipk", keys)
    assert not report.ok and "Size" in report.detail
    (folder / "Packages").write_bytes((folder / "Packages").read_bytes() + b"\n")
    assert not verify_file(folder / "Packages", keys).ok
    assert hashlib.sha256(blob).hexdigest() in gzip.decompress((folder / "Packages.gz").read_bytes()).decode()
