"""A mirror that fails: the error names the feed and its line in the board file, and a build
that fails while fetching leaves no output folder behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from buildutil import run_fwgen
from feedgen import FileSpec, IpkSpec, UsignSigner, build_ipk, write_opkg_feed
from localhttp import Server, send

from fwgen.arch import Arch
from fwgen.cache import Cache
from fwgen.config import load_board
from fwgen.errors import FetchError
from fwgen.fetch import fetch_packages

ARCH = Arch.MIPSEL
FOLDER = f"/packages/{ARCH.openwrt}/base"


def write_board(tmp: Path, url: str, keys: Path) -> Path:
    """Two feeds on the local server; errors about the second one (line 9) must point there."""
    board = tmp / "router.yaml"
    board.write_text(
        "arch: mipsel\n"
        "feeds:\n"
        "  - name: base\n"
        "    type: ipk\n"
        f"    url: {url}/base\n"
        "    components: [base]\n"
        f"    keys: [{keys}]\n"
        "    # the feed below is the one that fails\n"
        f"  - name: vendor\n    type: ipk\n    url: {url}\n    components: [base]\n    keys: [{keys}]\n"
        "kernel:\n  package: null\n"  # the build resolves a kernel before fetching: these feeds hold none
        "packages: [{name: hello, feed: vendor}]\n"
    )
    return board


@pytest.fixture()
def signed_feed(tmp_path) -> tuple[Path, Path]:
    """An opkg feed holding one package, and its usign key file."""
    signer = UsignSigner.generate()
    key = signer.write_public(tmp_path / "keys")
    spec = IpkSpec("hello", "1.0-1", ARCH.openwrt, [FileSpec("./usr/bin/hello", b"hi", mode=0o755)])
    return write_opkg_feed(tmp_path / "feed", [(spec, build_ipk(spec))], signer), key


@pytest.fixture()
def vendor_feed(tmp_path, server: Server, signed_feed) -> Path:
    """The board, with both feeds' indexes served but not the package (a 404)."""
    folder, key = signed_feed
    for name in ("Packages.gz", "Packages.sig"):
        for prefix in ("", "/base"):
            server.serve(f"{prefix}{FOLDER}/{name}", (folder / name).read_bytes())
    return write_board(tmp_path, server.url, key)


def test_a_missing_index_names_the_feed_and_its_line(tmp_path, server, signed_feed):
    board = load_board(write_board(tmp_path, server.url, signed_feed[1]))
    with pytest.raises(FetchError) as caught:
        fetch_packages(board.feeds[1:], ARCH, ["hello"], cache=Cache(tmp_path / "cache"))
    assert str(caught.value) == (
        f"{board.source}:9:5: feed vendor: {server.url}{FOLDER}/Packages.sig: HTTP 404 Not Found "
        "(a definite answer: not retried)")


def test_a_missing_package_names_the_feed_its_line_and_the_package(tmp_path, server, vendor_feed):
    board = load_board(vendor_feed)
    with pytest.raises(FetchError) as caught:
        fetch_packages(board.feeds, ARCH, ["hello"], pins=board.package_feeds, cache=Cache(tmp_path / "cache"))
    assert str(caught.value) == (
        f"{board.source}:9:5: feed vendor: package hello 1.0-1: "
        f"{server.url}{FOLDER}/hello_1.0-1_{ARCH.openwrt}.ipk: HTTP 404 Not Found (a definite answer: not retried)")


def test_a_server_error_is_retried_and_then_named_by_feed(tmp_path, server, vendor_feed):
    board = load_board(vendor_feed)
    package = f"{FOLDER}/hello_1.0-1_{ARCH.openwrt}.ipk"
    server.routes[package] = lambda h, _c: send(h, b"mirror down", status=502)
    with pytest.raises(FetchError, match=r"router.yaml:9:5: feed vendor: package hello 1.0-1: .*HTTP 502 .*"
                                         r"gave up after 2 attempts"):
        fetch_packages(board.feeds, ARCH, ["hello"], pins=board.package_feeds, cache=Cache(tmp_path / "cache", attempts=2, backoff=0.01))
    assert server.hits[package] == 2


def test_a_build_failing_while_fetching_leaves_no_output_folder(tmp_path, server, vendor_feed):
    board = vendor_feed
    out = tmp_path / "out"
    result = run_fwgen("build", "--board", str(board), "--out", str(out), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fwgen: error: ") and "router.yaml:9:5: feed vendor: package hello 1.0-1: " in last
    assert not out.exists(), sorted(out.rglob("*"))
    # An out/ that holds another board's build keeps it, and gains nothing.
    (out / "other").mkdir(parents=True)
    (out / "other" / "manifest.json").write_text(json.dumps({}))
    result = run_fwgen("build", "--board", str(board), "--out", str(out), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["other"]
