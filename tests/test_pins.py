"""Version pins (`packages: [jq=1.6-2.1]` or `{name: jq, version: 1.6-2.1}`): the board file
forms, the resolver, and every feed type: generated Alpine and OpenWrt feeds served on
127.0.0.1, and Debian's real mirror."""

from __future__ import annotations

import pytest
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
from test_resolver import make_index, names

from fwgen.arch import Arch
from fwgen.board import Feed
from fwgen.cache import Cache
from fwgen.config import load_board
from fwgen.errors import ResolveError
from fwgen.fetch import load_index, resolve_packages
from fwgen.fetch.resolver import resolve

OPENWRT_ARCH = Arch.AARCH64.openwrt


def test_both_forms_pin_a_version_and_the_feed_form_still_works(tmp_path):
    board = tmp_path / "pinned.yaml"
    board.write_text(
        "arch: aarch64\n"
        "feeds: [{name: debian, type: deb, url: 'http://deb.debian.org/debian'}]\n"
        "packages:\n"
        "  - jq=1.6-2.1\n"
        "  - {name: libonig5, version: 6.9.8-1}\n"
        "  - {name: curl, feed: debian, version: '7.88.1-10'}\n"
        "  - {name: dropbear, feed: debian}\n"
        "  - busybox\n"
    )
    loaded = load_board(board)
    assert loaded.packages == ("jq", "libonig5", "curl", "dropbear", "busybox")
    assert loaded.package_versions == {"jq": "1.6-2.1", "libonig5": "6.9.8-1", "curl": "7.88.1-10"}
    assert loaded.package_feeds == {"curl": "debian", "dropbear": "debian"}


INDEX = """
    Package: app
    Version: 2
    Depends: lib

    Package: app
    Version: 1
    Depends: lib (>= 1)

    Package: lib
    Version: 1:3

    Package: lib
    Version: 1:2
"""


def test_a_pin_chooses_that_version_as_requested_and_as_a_dependency():
    index = make_index(INDEX)
    assert [(p.name, p.version) for p in resolve(index, ["app"]).packages] == [("lib", "1:3"), ("app", "2")]
    pinned = resolve(index, ["app"], versions={"app": "1", "lib": "1:2"})
    assert [(p.name, p.version) for p in pinned.packages] == [("lib", "1:2"), ("app", "1")]
    # Versions compare as the format does: epoch 0 written or not is one version.
    assert names(resolve(index, ["app"], versions={"app": "0:2"})) == ["lib", "app"]


def test_a_missing_pin_names_the_versions_the_feed_has():
    index = make_index(INDEX)
    with pytest.raises(ResolveError) as caught:
        resolve(index, ["app"], versions={"app": "3"})
    assert caught.value.message == "cannot install app: app is pinned to 3 but debian has 1, 2"
    with pytest.raises(ResolveError) as caught:
        resolve(index, ["app"], versions={"lib": "1:1"})
    assert "lib is pinned to 1:1 but debian has 1:2, 1:3" in caught.value.message
    assert "\n" not in caught.value.message


# -- generated Alpine and OpenWrt feeds ---------------------------------------------------------
@pytest.fixture(scope="module")
def two_version_feeds(tmp_path_factory):
    """An Alpine repository and an OpenWrt feed, each offering `tool` at two versions."""
    root = tmp_path_factory.mktemp("pins")
    rsa_signer, usign_signer = RsaSigner.generate(), UsignSigner.generate()
    rsa_signer.write_public(root / "keys" / "alpine")
    openwrt_key = usign_signer.write_public(root / "keys" / "openwrt")
    apks = [build_apk(ApkSpec("tool", version, "aarch64", [FileSpec("usr/bin/tool", version.encode(), mode=0o755)]),
                      rsa_signer) for version in ("1.0-r0", "1.1-r0")]
    write_alpine_repo(root / "www", "alpine/v3.99/main/aarch64", apks, rsa_signer)
    ipks = [IpkSpec("tool", version, OPENWRT_ARCH, [FileSpec("./usr/bin/tool", version.encode(), mode=0o755)])
            for version in ("1.0-1", "1.1-1")]
    write_opkg_feed(root / "www" / f"openwrt/packages/{OPENWRT_ARCH}/base", [(s, build_ipk(s)) for s in ipks],
                    usign_signer)
    with serve(root / "www") as url:
        yield (Feed("alpine", "apk", f"{url}/alpine/v3.99", components=("main",), keys=(root / "keys" / "alpine",)),
               Feed("openwrt", "ipk", f"{url}/openwrt", components=("base",), keys=(openwrt_key,)))


@pytest.mark.parametrize("kind,old,new", [("apk", "1.0-r0", "1.1-r0"), ("ipk", "1.0-1", "1.1-1")])
def test_pins_against_alpine_and_openwrt_feeds(two_version_feeds, tmp_path, kind, old, new):
    feed = next(f for f in two_version_feeds if f.type == kind)
    cache = Cache(tmp_path / "cache", attempts=1)
    newest = resolve_packages([feed], Arch.AARCH64, ["tool"], cache=cache)
    assert [p.version for p in newest.packages] == [new]
    pinned = resolve_packages([feed], Arch.AARCH64, ["tool"], versions={"tool": old}, cache=cache)
    assert [p.version for p in pinned.packages] == [old]
    with pytest.raises(ResolveError) as caught:
        resolve_packages([feed], Arch.AARCH64, ["tool"], versions={"tool": "0.9"}, cache=cache)
    assert caught.value.message == f"cannot install tool: tool is pinned to 0.9 but {feed.name} has {old}, {new}"


# -- Debian's mirror ----------------------------------------------------------------------------
@pytest.mark.network
def test_pins_against_the_debian_mirror(tmp_path):
    from fwgen.config import load_board as load

    board = load("qemu-aarch64")
    cache = Cache.default()
    offered = load_index(board.feeds, board.arch, cache=cache).by_name["jq"][0].version
    pinned = resolve_packages(board.feeds, board.arch, ["jq"], versions={"jq": offered}, cache=cache)
    assert ("jq", offered) in [(p.name, p.version) for p in pinned.packages]
    # bookworm released jq 1.6-2.1; its point releases replaced it on the mirror.
    with pytest.raises(ResolveError) as caught:
        resolve_packages(board.feeds, board.arch, ["jq"], versions={"jq": "1.6-2.1"}, cache=cache)
    assert caught.value.message == f"cannot install jq: jq is pinned to 1.6-2.1 but debian has {offered}"
