"""Feeds of several formats in one board: resolution rules, Alpine provider priority and
install_if, `fwgen build` end to end against generated, signed Alpine and OpenWrt feeds
served on 127.0.0.1 (the kernel from Debian's real mirror), and the example boards."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from buildutil import REPO, check_sboms, run_fwgen
from feedgen import (
    ApkSpec,
    FileSpec,
    IpkSpec,
    RsaSigner,
    UsignSigner,
    build_apk,
    build_ipk,
    serve,
    write_alpine_repo,
    write_opkg_feed,
)

from fwgen.arch import Arch
from fwgen.board import Feed
from fwgen.cache import Cache
from fwgen.config import load_board
from fwgen.errors import ResolveError, UserError
from fwgen.fetch import apk, fetch_packages, resolve_packages
from fwgen.fetch.package import PackageIndex
from fwgen.fetch.resolver import resolve
from fwgen.images.cpio import read_initramfs

ALPINE_DIR = "alpine/v3.99/main/aarch64"
OPENWRT_ARCH = Arch.AARCH64.openwrt
OPENWRT_DIR = f"openwrt/packages/{OPENWRT_ARCH}/base"
BOARD = "mixed-feeds"


# -- generated feeds ----------------------------------------------------------------------------
def _alpine_packages(signer: RsaSigner) -> list:
    """fwgen-hello (Debian has a `hello`) needs a library by `so:` name and the bare virtual `cmd:greet`, which two providers
    offer with priorities; fwgen-hello-doc comes in by install_if; `common` is in both feeds."""
    specs = [
        ApkSpec("fwgen-hello", "1.0-r0", "aarch64", [
            FileSpec("usr", kind="dir", mode=0o755), FileSpec("usr/bin", kind="dir", mode=0o755),
            FileSpec("usr/bin/hello", b"#!/bin/sh\necho hello from alpine\n", mode=0o755),
            FileSpec("etc", kind="dir", mode=0o755),
            FileSpec("etc/hello.conf", b"secret=1\n", mode=0o600),
            FileSpec("var", kind="dir", mode=0o755), FileSpec("var/lib", kind="dir", mode=0o755),
            FileSpec("var/lib/hello", kind="dir", mode=0o700, uid=100, gid=101),
        ], depends=["so:libgreet.so.1", "cmd:greet"]),
        ApkSpec("libgreet", "1.0-r0", "aarch64", [FileSpec("usr/lib/libgreet.so.1", b"greet library")],
                provides=["so:libgreet.so.1=1.0"]),
        ApkSpec("greet-low", "1-r0", "aarch64", [FileSpec("usr/bin/greet-low", b"low", mode=0o755)],
                provides=["cmd:greet"], provider_priority=10),
        ApkSpec("greet-high", "1-r0", "aarch64", [FileSpec("usr/bin/greet-high", b"high", mode=0o755)],
                provides=["cmd:greet"], provider_priority=20),
        ApkSpec("fwgen-hello-doc", "1.0-r0", "noarch", [FileSpec("usr/share/hello/README", b"read me")],
                depends=["doc-base"], install_if=["fwgen-hello=1.0-r0", "docs"]),
        ApkSpec("doc-base", "1-r0", "noarch", [FileSpec("usr/share/doc/.base", b"")]),
        ApkSpec("docs", "1-r0", "noarch", [FileSpec("etc/docs-wanted", b"yes\n")]),
        ApkSpec("common", "1-r0", "aarch64", [FileSpec("etc/common-from-alpine", b"alpine\n")]),
        ApkSpec("lonely", "1-r0", "aarch64", [], depends=["cmd:nobody-ranks"]),
        ApkSpec("unranked", "1-r0", "aarch64", [FileSpec("usr/bin/unranked", b"u", mode=0o755)],
                provides=["cmd:nobody-ranks"]),
    ]
    return [build_apk(spec, signer) for spec in specs]


def _openwrt_packages() -> list[tuple[IpkSpec, bytes]]:
    # Content-addressed caching would serve an identical .ipk from an earlier run without
    # asking the feed: a build id makes every generated feed's package new.
    build_id = FileSpec("./usr/share/owrt-tool.id", os.urandom(8).hex().encode())
    specs = [
        IpkSpec("owrt-tool", "1.0-1", OPENWRT_ARCH, [
            build_id,
            FileSpec("./usr", kind="dir", mode=0o755), FileSpec("./usr/sbin", kind="dir", mode=0o755),
            FileSpec("./usr/sbin/owrt-tool", b"#!/bin/sh\necho openwrt\n", mode=0o750, gid=5),
            FileSpec("./usr/sbin/owrt", kind="symlink", target="owrt-tool", mode=0o777),
        ], depends="common"),
        IpkSpec("common", "2-1", "all", [FileSpec("./etc/common-from-openwrt", b"openwrt\n")]),
    ]
    return [(spec, build_ipk(spec)) for spec in specs]


@dataclass
class Feeds:
    """Generated feeds under `root`, with the files their keys live in."""

    root: Path
    alpine_keys: Path
    openwrt_key: Path
    alpine: list
    openwrt: list[tuple[IpkSpec, bytes]]

    def feeds(self, url: str) -> tuple[Feed, Feed]:
        return (Feed("alpine-local", "apk", f"{url}/alpine/v3.99", components=("main",), keys=(self.alpine_keys,)),
                Feed("openwrt-local", "ipk", f"{url}/openwrt", components=("base",), keys=(self.openwrt_key,)))


def make_feeds(root: Path) -> Feeds:
    rsa_signer, usign_signer = RsaSigner.generate(), UsignSigner.generate()
    keys = root / "keys"
    rsa_signer.write_public(keys / "alpine")
    openwrt_key = usign_signer.write_public(keys / "openwrt")
    alpine, openwrt = _alpine_packages(rsa_signer), _openwrt_packages()
    write_alpine_repo(root / "www", ALPINE_DIR, alpine, rsa_signer)
    write_opkg_feed(root / "www" / OPENWRT_DIR, openwrt, usign_signer)
    return Feeds(root / "www", keys / "alpine", openwrt_key, alpine, openwrt)


@pytest.fixture()
def served(tmp_path):
    feeds = make_feeds(tmp_path)
    with serve(feeds.root) as url:
        yield feeds, url


def _cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache", attempts=1)


# -- mixing formats -----------------------------------------------------------------------------
def test_each_package_comes_from_the_first_feed_that_has_it(served, tmp_path):
    feeds, url = served
    alpine, openwrt = feeds.feeds(url)
    resolution = resolve_packages([alpine, openwrt], Arch.AARCH64, ["common", "owrt-tool"], cache=_cache(tmp_path))
    chosen = {(p.name, p.feed, p.format) for p in resolution.packages}
    # `common` asked for by name comes from the first feed; owrt-tool's dependency on `common`
    # is resolved among OpenWrt feeds only, so the OpenWrt `common` is taken for it.
    assert chosen == {("common", "alpine-local", "apk"), ("owrt-tool", "openwrt-local", "ipk"),
                      ("common", "openwrt-local", "ipk")}
    reversed_order = resolve_packages([openwrt, alpine], Arch.AARCH64, ["common"], cache=_cache(tmp_path))
    assert [(p.name, p.feed) for p in reversed_order.packages] == [("common", "openwrt-local")]


def test_dependencies_never_cross_formats(served, tmp_path):
    feeds, url = served
    orphan = IpkSpec("needs-libgreet", "1", OPENWRT_ARCH, [], depends="libgreet")
    write_opkg_feed(feeds.root / OPENWRT_DIR, [*feeds.openwrt, (orphan, build_ipk(orphan))], _resign(feeds))
    alpine, openwrt = feeds.feeds(url)
    # Alpine has libgreet, but an OpenWrt package's dependency is looked up in OpenWrt feeds.
    with pytest.raises(ResolveError, match=r"needs-libgreet depends on libgreet but no package libgreet in openwrt-local"):
        resolve_packages([alpine, openwrt], Arch.AARCH64, ["needs-libgreet"], cache=_cache(tmp_path))


def _resign(feeds: Feeds) -> UsignSigner:
    """A new OpenWrt signing key, trusted in place of the old one."""
    signer = UsignSigner.generate()
    feeds.openwrt_key.unlink()
    feeds.openwrt_key = signer.write_public(feeds.openwrt_key.parent)
    return signer


def test_pins_take_a_package_from_the_named_feed(served, tmp_path):
    feeds, url = served
    alpine, openwrt = feeds.feeds(url)
    resolution = resolve_packages([alpine, openwrt], Arch.AARCH64, ["common"], pins={"common": "openwrt-local"},
                                  cache=_cache(tmp_path))
    assert [(p.name, p.feed) for p in resolution.packages] == [("common", "openwrt-local")]
    with pytest.raises(ResolveError, match="cannot install libgreet: no package libgreet in openwrt-local"):
        resolve_packages([alpine, openwrt], Arch.AARCH64, ["libgreet"], pins={"libgreet": "openwrt-local"},
                         cache=_cache(tmp_path))
    with pytest.raises(UserError, match="pinned to feed 'nowhere'"):
        resolve_packages([alpine, openwrt], Arch.AARCH64, ["common"], pins={"common": "nowhere"}, cache=_cache(tmp_path))


def test_a_name_no_feed_has_names_every_feed(served, tmp_path):
    feeds, url = served
    alpine, openwrt = feeds.feeds(url)
    with pytest.raises(ResolveError, match="no package missing-thing in alpine-local, openwrt-local"):
        resolve_packages([alpine, openwrt], Arch.AARCH64, ["fwgen-hello", "missing-thing"], cache=_cache(tmp_path))


def test_indexes_load_only_as_far_as_needed(served, tmp_path):
    feeds, url = served
    alpine, _ = feeds.feeds(url)
    broken = Feed("broken", "ipk", "http://127.0.0.1:9/none", components=("base",), keys=(feeds.openwrt_key,))
    resolution = resolve_packages([alpine, broken], Arch.AARCH64, ["libgreet"], cache=_cache(tmp_path))
    assert [p.name for p in resolution.packages] == ["libgreet"]


# -- provider priority and install_if --------------------------------------------------------------
def _apk_index(text: str) -> PackageIndex:
    backend = apk.ApkBackend()
    packages = [apk.package_from_entry(e, feed="t", base_url="http://t", source="t") for e in apk.parse_apkindex(text)]
    return PackageIndex(packages, backend.satisfies, backend.compare_versions, "aarch64", "noarch",
                        bare_provides_need_priority=True)


PRIORITY_INDEX = """\
P:app
V:1-r0
A:aarch64
D:cmd:editor

P:vi-low
V:1-r0
A:aarch64
k:5
p:cmd:editor

P:aaa-unranked
V:9-r0
A:aarch64
p:cmd:editor

P:vi-high
V:1-r0
A:aarch64
k:50
p:cmd:editor

P:tool
V:1-r0
A:aarch64
D:virt

P:virt-impl
V:1-r0
A:aarch64
p:virt
"""


def test_highest_provider_priority_wins_a_bare_virtual():
    resolution = resolve(_apk_index(PRIORITY_INDEX), ["app"])
    assert [p.name for p in resolution.packages] == ["vi-high", "app"]
    assert {p.name: p.provider_priority for p in _apk_index(PRIORITY_INDEX).packages}["vi-high"] == 50


def test_a_bare_virtual_without_priority_is_not_auto_selected():
    with pytest.raises(ResolveError, match=r"virt is virtual and none of its providers \(virt-impl\) has a provider priority"):
        resolve(_apk_index(PRIORITY_INDEX), ["tool"])
    # Named by the board, the unranked provider satisfies the virtual name.
    resolution = resolve(_apk_index(PRIORITY_INDEX), ["virt-impl", "tool"])
    assert [p.name for p in resolution.packages] == ["virt-impl", "tool"]
    chosen = resolve(_apk_index(PRIORITY_INDEX), ["aaa-unranked", "app"])
    assert [p.name for p in chosen.packages] == ["aaa-unranked", "app"]


def test_debian_bare_provides_stay_auto_selected():
    index = _apk_index(PRIORITY_INDEX)
    index = PackageIndex(index.packages, index.satisfies, index.compare, "aarch64", "noarch")
    assert [p.name for p in resolve(index, ["tool"]).packages] == ["virt-impl", "tool"]


def test_install_if_adds_packages_with_their_dependencies(served, tmp_path):
    feeds, url = served
    alpine, _ = feeds.feeds(url)
    cache = _cache(tmp_path)
    plain = fetch_packages([alpine], Arch.AARCH64, ["fwgen-hello"], cache=cache)
    assert [p.package.name for p in plain] == ["libgreet", "greet-high", "fwgen-hello"]
    fetched = fetch_packages([alpine], Arch.AARCH64, ["fwgen-hello", "docs"], cache=cache)
    names = [p.package.name for p in fetched]
    assert set(names) == {"libgreet", "greet-high", "fwgen-hello", "docs", "fwgen-hello-doc", "doc-base"}
    assert names.index("doc-base") < names.index("fwgen-hello-doc")
    excluded = fetch_packages([alpine], Arch.AARCH64, ["fwgen-hello", "docs"], exclude=["*-doc"], cache=cache)
    assert "fwgen-hello-doc" not in [p.package.name for p in excluded]
    # A package taken without its dependencies triggers nothing.
    alone = fetch_packages([alpine], Arch.AARCH64, ["fwgen-hello", "docs"], nodeps=["fwgen-hello", "docs"], cache=cache)
    assert [p.package.name for p in alone] == ["fwgen-hello", "docs"]


# -- fwgen build end to end ----------------------------------------------------------------------
def write_board(folder: Path, feeds: Feeds, url: str, *, name: str = BOARD) -> Path:
    """A board based on qemu-aarch64: Debian kernel and zlib1g (with glibc), dropbear compiled
    by the ssh overlay, Alpine and OpenWrt packages from the served feeds, `common` pinned to
    the OpenWrt feed."""
    board = {
        "name": name,
        "description": "qemu-aarch64 with packages from Debian, Alpine and OpenWrt feeds",
        "arch": "aarch64",
        "feeds": [
            {"name": "debian", "type": "deb", "url": "http://deb.debian.org/debian", "suite": "bookworm"},
            {"name": "alpine-local", "type": "apk", "url": f"{url}/alpine/v3.99", "keys": [str(feeds.alpine_keys)]},
            {"name": "openwrt-local", "type": "ipk", "url": f"{url}/openwrt", "components": ["base"],
             "keys": [str(feeds.openwrt_key)]},
        ],
        "kernel": {"package": "linux-image-cloud-arm64", "cmdline": "console=ttyAMA0 panic=-1",
                   "modules": ["virtio_mmio", "failover", "net_failover", "virtio_net"]},
        "packages": ["fwgen-hello", "docs", "owrt-tool", {"name": "common", "feed": "openwrt-local"}, "zlib1g"],
        "overlays": ["base", "network", "ssh"],
        "outputs": ["initramfs"],
        "qemu": {"profile": "virt-aarch64", "forward": [22]},
        "checks": [
            {"run": "/usr/bin/hello", "expect": "hello from alpine"},
            {"run": "/usr/sbin/owrt", "expect": "openwrt"},
            {"run": "stat -c '%a %u:%g' /etc/hello.conf /var/lib/hello", "expect": "600 0:0\n700 100:101"},
            {"run": "dropbear -V 2>&1", "contains": "Dropbear"},
        ],
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(board, indent=2))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, cache_dir):
    tmp = tmp_path_factory.mktemp("mixed")
    feeds = make_feeds(tmp)
    with serve(feeds.root) as url:
        board = write_board(tmp, feeds, url)
        out = tmp / "out"
        result = run_fwgen("build", "--board", str(board), "--out", str(out), cache=cache_dir)
        assert result.returncode == 0, result.stderr
    return out / BOARD, feeds, board


@pytest.mark.network
@pytest.mark.slow
def test_mixed_boards_sboms_name_apk_and_openwrt_packages_by_purl_with_their_index_licences(built):
    outdir, _, _ = built
    spdx, _ = check_sboms(outdir)
    manifest = json.loads((outdir / "manifest.json").read_text())
    records = {p["name"]: p for p in manifest["inputs"]["packages"]}
    apks = [p for p in records.values() if p["purl"].startswith("pkg:apk/alpine/")]
    ipks = [p for p in records.values() if p["purl"].startswith("pkg:generic/openwrt/")]
    assert apks and ipks
    for record in [*apks, *ipks]:
        assert record["license"] == "MIT" and " index of feed " in record["license_source"]
    debs = [p for p in records.values() if p["purl"].startswith("pkg:deb/debian/")]
    assert {p["license_source"] for p in debs} == {f"usr/share/doc/{p['name']}/copyright" for p in debs}


@pytest.mark.network
@pytest.mark.slow
def test_mixed_board_image_holds_every_feeds_files_with_their_modes(built):
    built, _, _ = built
    members = {m.name: m for m in read_initramfs(built / "initramfs.cpio.gz")}
    hello = members["usr/bin/hello"]
    assert (hello.mode, hello.data) == (0o100755, b"#!/bin/sh\necho hello from alpine\n")
    assert members["etc/hello.conf"].mode == 0o100600
    assert (members["var/lib/hello"].mode, members["var/lib/hello"].uid, members["var/lib/hello"].gid) == (0o40700, 100, 101)
    assert members["usr/bin/greet-high"].mode == 0o100755 and "usr/bin/greet-low" not in members
    assert members["usr/share/hello/README"].data == b"read me"  # install_if
    tool = members["usr/sbin/owrt-tool"]
    assert (tool.mode, tool.gid) == (0o100750, 5)
    assert members["usr/sbin/owrt"].data == b"owrt-tool"  # a symlink's data is its target
    assert members["etc/common-from-openwrt"].data == b"openwrt\n"
    assert "etc/common-from-alpine" not in members  # pinned to the OpenWrt feed
    assert "usr/sbin/dropbear" in members  # the ssh overlay's build


@pytest.mark.network
@pytest.mark.slow
def test_gnu_cpio_agrees_on_modes_and_owners(built):
    built, _, _ = built
    archive = subprocess.run(["gzip", "-dc", str(built / "initramfs.cpio.gz")], capture_output=True,
                             check=True).stdout
    listing = subprocess.run(["cpio", "-itvn", "--quiet"], input=archive, capture_output=True,
                             check=True).stdout.decode()
    lines = {line.split()[8]: line.split() for line in listing.splitlines()}
    assert lines["usr/bin/hello"][0] == "-rwxr-xr-x"
    assert lines["etc/hello.conf"][0] == "-rw-------"
    assert lines["var/lib/hello"][0] == "drwx------" and lines["var/lib/hello"][2:4] == ["100", "101"]
    assert lines["usr/sbin/owrt-tool"][0] == "-rwxr-x---" and lines["usr/sbin/owrt"][0].startswith("l")


@pytest.mark.network
@pytest.mark.slow
def test_manifest_records_each_packages_feed(built):
    built, feeds, _ = built
    manifest = json.loads((built / "manifest.json").read_text())
    feed_of = {p["name"]: p["feed"] for p in manifest["inputs"]["packages"]}
    assert feed_of["fwgen-hello"] == feed_of["fwgen-hello-doc"] == feed_of["greet-high"] == "alpine-local"
    assert feed_of["owrt-tool"] == feed_of["common"] == "openwrt-local"
    assert feed_of["zlib1g"] == feed_of["libc6"] == "debian"
    assert manifest["inputs"]["kernel"]["feed"] == "debian"
    records = {p["name"]: p for p in manifest["inputs"]["packages"]}
    hello = records["fwgen-hello"]
    assert hello["url"].endswith("/main/aarch64/fwgen-hello-1.0-r0.apk")
    assert hello["sha256"] == hashlib.sha256((feeds.root / ALPINE_DIR / "fwgen-hello-1.0-r0.apk").read_bytes()).hexdigest()
    assert manifest["files"]["/usr/bin/hello"] == "apk:fwgen-hello"
    assert manifest["files"]["/usr/sbin/owrt-tool"] == "ipk:owrt-tool"
    assert manifest["files"]["/usr/sbin/dropbear"] == "build:ssh/dropbear"


@pytest.mark.network
@pytest.mark.qemu
@pytest.mark.slow
def test_mixed_board_boots_and_runs_each_feeds_programs(built, cache_dir):
    outdir, _, board = built
    result = run_fwgen("boot", "--board", str(board), "--out", str(outdir.parent), "--json", cache=cache_dir)
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = {c["name"] for c in report["checks"] if c["passed"]}
    # The ssh overlay's own check (dropbear answering on port 22) runs too.
    assert {"run: /usr/bin/hello", "run: /usr/sbin/owrt", "run: dropbear -V 2>&1"} <= passed
    assert len(passed) == len(report["checks"]) >= 5


def _flip(blob: bytes, offset: int) -> bytes:
    return blob[:offset] + bytes([blob[offset] ^ 0x01]) + blob[offset + 1:]


def _url_cache_entry(cache: Path, url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()
    return cache / "url" / key[:2] / key


def _tamper_apkindex(feeds: Feeds) -> str:
    path = feeds.root / ALPINE_DIR / "APKINDEX.tar.gz"
    blob = path.read_bytes()
    path.write_bytes(_flip(blob, apk.split_gzip_streams(blob, "index")[1].start + 4))
    return f"{ALPINE_DIR}/APKINDEX.tar.gz"


def _tamper_apk(feeds: Feeds) -> str:
    hello = next(p for p in feeds.alpine if p.spec.name == "fwgen-hello")
    (feeds.root / ALPINE_DIR / "fwgen-hello-1.0-r0.apk").write_bytes(_flip(hello.blob, hello.data_range[0] + 4))
    return f"{ALPINE_DIR}/fwgen-hello-1.0-r0.apk"


def _tamper_ipk(feeds: Feeds) -> str:
    path = feeds.root / OPENWRT_DIR / f"owrt-tool_1.0-1_{OPENWRT_ARCH}.ipk"
    blob = path.read_bytes()
    path.write_bytes(_flip(blob, len(blob) // 2))
    return f"{OPENWRT_DIR}/{path.name}"


def _tamper_packages_index(feeds: Feeds) -> str:
    path = feeds.root / OPENWRT_DIR / "Packages.gz"
    text = gzip.decompress(path.read_bytes()).replace(b"Version: 1.0-1", b"Version: 1.0-2")
    path.write_bytes(gzip.compress(text))
    return f"{OPENWRT_DIR}/Packages.gz"


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("tamper, message", [
    (_tamper_apkindex, r"APKINDEX\.tar\.gz: RSA signature by .* does not verify"),
    (_tamper_apk, r"fwgen-hello-1\.0-r0\.apk: offset 0x[0-9a-f]+: data stream does not match datahash"),
    (_tamper_ipk, r"owrt-tool_1\.0-1_aarch64_cortex-a53\.ipk: SHA-256 mismatch"),
    (_tamper_packages_index, r"base/Packages: usign signature by key [0-9a-f]{16} does not verify"),
], ids=["apkindex", "apk", "ipk", "opkg-index"])
def test_tampered_feed_is_refused_and_nothing_is_written(tmp_path, cache_dir, tamper, message):
    feeds = make_feeds(tmp_path)
    changed = tamper(feeds)
    with serve(feeds.root) as url:
        board = write_board(tmp_path, feeds, url)
        out = tmp_path / "out"
        result = run_fwgen("build", "--board", str(board), "--out", str(out), cache=cache_dir)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fwgen: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(message, errors[0]), errors[0]
    assert not out.exists() or list(out.iterdir()) == [], "no output folder, no staging left behind"
    assert not _url_cache_entry(cache_dir, f"{url}/{changed}").exists(), "a refused file stays out of the cache"
    if changed.endswith(".ipk"):
        tampered = (feeds.root / changed).read_bytes()
        assert not Cache(cache_dir).path_for(hashlib.sha256(tampered).hexdigest()).exists()


# -- example boards ------------------------------------------------------------------------------
EXAMPLES = sorted((REPO / "boards" / "examples").glob("*.yaml"))


def test_there_are_example_boards():
    assert {p.name for p in EXAMPLES} >= {"rpi-zero-alpine.yaml", "router-openwrt.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_board_loads_and_validates_through_fwgen_show(path, tmp_path):
    result = run_fwgen("show", str(path.relative_to(REPO)), "--json", cache=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    board = load_board(path)
    assert shown["name"] == board.name == path.stem
    assert {f["type"] for f in shown["feeds"]} == {f.type for f in board.feeds}


def test_example_boards_are_not_listed_among_the_boards(tmp_path):
    result = run_fwgen("boards", cache=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "qemu-aarch64" in result.stdout
    assert not any(p.stem in result.stdout for p in EXAMPLES)


def test_router_example_without_its_key_stops_before_fetching(tmp_path):
    out = tmp_path / "out"
    result = run_fwgen("build", "--board", "boards/examples/router-openwrt.yaml", "--out", str(out),
                       cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fwgen: error: feed 'openwrt-base': no usign keys in ")
    assert last.endswith("boards/examples/keys/openwrt (OpenWrt signs feeds with usign: add the release's public "
                         "key file, from OpenWrt's keyring or the vendor, to the feed's keys)")
    assert not out.exists() or list(out.iterdir()) == []
    assert not (tmp_path / "cache" / "url").exists(), "nothing was downloaded"
