"""Lock files and diffs: `fwgen lock` pins what a build takes, `fwgen build --locked` builds
exactly that even after the feed moved on, fails naming a package no mirror has (exit 2), and
takes it from the feed's fallback mirror when one has it; `fwgen diff` of two builds that
differ by one package and one overlay file reports exactly those. The feed is an OpenWrt feed
generated and served on 127.0.0.1; the kernel comes from Debian's real mirror."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from unittest.mock import ANY

import pytest
import yaml
from buildutil import run_fwgen
from feedgen import FileSpec, IpkSpec, UsignSigner, build_ipk, serve, write_opkg_feed
from test_sums import SIGNIFY, signify_check

from fwgen.arch import Arch
from fwgen.cache import Cache
from fwgen.config import load_board
from fwgen.errors import ConfigError, UserError
from fwgen.fetch import resolve_packages
from fwgen.lock import fetch_locked, read_lock
from fwgen.sums import SIGNATURE_FILE, SUMS_FILE
from fwgen.usign import write_key_pair

OPENWRT_ARCH = Arch.AARCH64.openwrt
FEED_DIR = f"openwrt/packages/{OPENWRT_ARCH}/base"
BOARD = "locked"
# The variant board's files are newer, which would date its images (and /etc/os-release)
# later: one epoch for every build keeps the builds' differences to what the test changes.
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


def tool_ipk(version: str, run_id: str, name: str = "tool") -> tuple[IpkSpec, bytes]:
    # A run id in the content: the content-addressed cache must not know this package yet.
    spec = IpkSpec(name, version, OPENWRT_ARCH, [
        FileSpec(f"./usr/bin/{name}", f"#!/bin/sh\necho {name} {version} {run_id}\n".encode(), mode=0o755)])
    return spec, build_ipk(spec)


def write_feed(root: Path, packages: list[tuple[IpkSpec, bytes]], signer: UsignSigner) -> None:
    folder = root / FEED_DIR
    shutil.rmtree(folder, ignore_errors=True)
    write_opkg_feed(folder, packages, signer)


def write_board(folder: Path, url: str, fallback: str, key: Path, *, packages=("tool",), conf: str = "one\n",
                name: str = BOARD) -> Path:
    """qemu-aarch64's kernel with OpenWrt packages from the served feed and an overlay of its own."""
    overlay = folder / "overlays" / "acme"
    (overlay / "files" / "etc").mkdir(parents=True, exist_ok=True)
    (overlay / "overlay.yaml").write_text("description: the product's own files\n")
    (overlay / "files" / "etc" / "acme.conf").write_text(conf)
    board = {
        "name": name, "arch": "aarch64",
        "feeds": [
            {"name": "debian", "type": "deb", "url": "http://deb.debian.org/debian", "suite": "bookworm"},
            {"name": "openwrt-local", "type": "ipk", "url": f"{url}/openwrt", "components": ["base"],
             "keys": [str(key)], "fallback": [f"{fallback}/openwrt"]},
        ],
        "kernel": {"package": "linux-image-cloud-arm64", "cmdline": "console=ttyAMA0 panic=-1"},
        "packages": list(packages),
        "overlays": ["base", str(overlay)],
        "outputs": ["initramfs"],
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(board, indent=2))
    return path


def image_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def locked(tmp_path_factory, cache_dir):
    """A build and the lock written beside it, and a build of the board with one package more
    and one overlay file changed; then the feed moves to tool 1.1-1 (1.0-1 gone)."""
    tmp = tmp_path_factory.mktemp("lock")
    signer, run_id = UsignSigner.generate(), os.urandom(8).hex()
    key = signer.write_public(tmp / "keys")
    old, new, extra = tool_ipk("1.0-1", run_id), tool_ipk("1.1-1", run_id), tool_ipk("2-1", run_id, "extra")
    write_feed(tmp / "main", [old, extra], signer)
    (tmp / "fallback").mkdir()
    with serve(tmp / "main") as url, serve(tmp / "fallback") as fallback:
        board = write_board(tmp, url, fallback, key)
        first = run_fwgen("build", str(board), "--out", str(tmp / "out-a"), cache=cache_dir, env=EPOCH)
        assert first.returncode == 0, first.stderr
        wrote = run_fwgen("lock", str(board), cache=cache_dir, cwd=tmp)
        assert wrote.returncode == 0, wrote.stderr
        (tmp / "variant").mkdir()
        variant = write_board(tmp / "variant", url, fallback, key, packages=("tool", "extra"), conf="two\n")
        second = run_fwgen("build", str(variant), "--out", str(tmp / "out-d"), cache=cache_dir, env=EPOCH)
        assert second.returncode == 0, second.stderr
        write_feed(tmp / "main", [new, extra], signer)
        yield tmp, board, url, fallback, old, signer


@pytest.mark.network
def test_the_lock_pins_every_package_in_install_order(locked):
    tmp, board, *_ = locked
    lock = yaml.safe_load((tmp / f"{BOARD}.lock").read_text())
    assert [(p["feed"], p["name"], p["version"]) for p in lock["packages"]] == [("openwrt-local", "tool", "1.0-1")]
    assert lock["kernel"]["name"].startswith("linux-image-") and lock["kernel"]["feed"] == "debian"
    manifest = json.loads((tmp / "out-a" / BOARD / "manifest.json").read_text())
    assert lock["packages"][0]["sha256"] == manifest["inputs"]["packages"][0]["sha256"]
    assert lock["busybox"]["sha256"] == "faeeb244c35a348a334f4a59e44626ee870fb07b6884d68c10ae8bc19f83a694"
    assert (tmp / f"{BOARD}.lock").read_text().startswith("# fwgen lock of board locked")


@pytest.mark.network
def test_a_locked_build_is_byte_identical_after_the_feed_moved_on(locked, cache_dir, tmp_path):
    tmp, board, *_ = locked
    secret, public = write_key_pair(tmp_path / "release")
    relocked = run_fwgen("build", str(board), "--out", str(tmp / "out-b"), "--sign", str(secret), "--locked",
                         cache=cache_dir, cwd=tmp, env=EPOCH)
    assert relocked.returncode == 0, relocked.stderr
    signed = image_files(tmp / "out-b" / BOARD)
    sums = signed.pop(SUMS_FILE).decode()
    signed.pop(SIGNATURE_FILE)
    assert signed == image_files(tmp / "out-a" / BOARD)
    # --sign: SHA256SUMS over every output and the manifest, checked by OpenBSD's signify.
    assert [line.split(" (")[1].split(")")[0] for line in sums.splitlines()] == sorted(signed)
    if SIGNIFY is not None:
        checked = signify_check(tmp / "out-b" / BOARD, public)
        assert checked.returncode == 0, checked.stderr
    # Without the lock the board would now take the feed's new version.
    feeds = [f for f in load_board(board).feeds if f.type == "ipk"]
    moved = resolve_packages(feeds, Arch.AARCH64, ["tool"], cache=Cache(tmp_path / "cache", attempts=1))
    assert [p.version for p in moved.packages] == ["1.1-1"]


@pytest.mark.network
def test_a_locked_version_no_mirror_has_fails_naming_it(locked, tmp_path):
    tmp, board, *_ = locked
    # An empty cache: the package can only come from a mirror, and neither has it.
    result = run_fwgen("build", str(board), "--out", str(tmp_path / "out"), "--locked", str(tmp / f"{BOARD}.lock"),
                       cache=tmp_path / "empty-cache")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("fwgen: error:")]
    assert len(lines) == 1, result.stderr
    assert f"{BOARD}.lock:" in lines[0] and "tool 1.0-1 (feed openwrt-local) is on none of its mirrors" in lines[0]
    assert "tool_1.0-1_" in lines[0] and "404" in lines[0]
    assert not (tmp_path / "out").exists()


def test_the_fallback_mirror_serves_a_version_the_feed_dropped(locked, tmp_path):
    tmp, board, url, fallback, old, signer = locked
    write_feed(tmp / "fallback", [old], signer)
    loaded = load_board(board)
    lock = read_lock(tmp / f"{BOARD}.lock", loaded)
    [fetched] = fetch_locked(lock.packages, loaded.feeds, cache=Cache(tmp_path / "cache", attempts=1))
    assert fetched.package.url.startswith(f"{fallback}/openwrt/")
    assert fetched.path.read_bytes() == old[1]
    assert fetched.package.format == "ipk"


def test_a_lock_for_another_board_or_a_damaged_one_is_refused(locked, tmp_path):
    tmp, board, *_ = locked
    loaded = load_board(board)
    text = (tmp / f"{BOARD}.lock").read_text()
    other = tmp_path / "other.lock"
    other.write_text(text.replace(f"board: {BOARD}\n", "board: qemu-armv7\n"))
    with pytest.raises(ConfigError) as caught:
        read_lock(other, loaded)
    assert str(caught.value).startswith(f"{other}:5:8: board: the lock is for board qemu-armv7, not {BOARD}")
    damaged = tmp_path / "damaged.lock"
    damaged.write_text(text.replace("sha256: ", "sha256: x", 1))
    with pytest.raises(ConfigError) as caught:
        read_lock(damaged, loaded)
    assert "packages[0].sha256" in str(caught.value)
    with pytest.raises(UserError, match=r"locked\.lock:8:3: tool 1\.0-1 \(feed openwrt-local\): the board has no feed"):
        fetch_locked(read_lock(tmp / f"{BOARD}.lock", loaded).packages, (), cache=Cache(tmp_path / "c", attempts=1))


# -- fwgen diff -----------------------------------------------------------------------------------
@pytest.mark.network
def test_diff_of_two_builds_reports_the_one_package_and_the_one_file(locked, cache_dir):
    tmp, *_ = locked
    result = run_fwgen("diff", str(tmp / "out-a" / BOARD), str(tmp / "out-d" / BOARD), "--json", cache=cache_dir)
    assert result.returncode == 0, result.stderr
    changes = json.loads(result.stdout)
    assert changes["packages"] == {"added": [{"name": "extra", "version": "2-1", "feed": "openwrt-local"}],
                                   "removed": [], "changed": []}
    files = changes["files"]["initramfs"]
    extra_size = len(f"#!/bin/sh\necho extra 2-1 {'0' * 16}\n")
    # The package's file, and its entries in the image's opkg database (status, info/).
    assert files["added"] == [{"path": "/usr/bin/extra", "size": extra_size, "type": "file"},
                              {"path": "/usr/lib/opkg/info/extra.control", "size": ANY, "type": "file"},
                              {"path": "/usr/lib/opkg/info/extra.list", "size": ANY, "type": "file"}]
    assert files["removed"] == []
    assert [(f["path"], f["what"]) for f in files["changed"]] == [("/etc/acme.conf", ["content"]),
                                                                  ("/usr/lib/opkg/status", ["content"])]
    assert files["changed"][0]["from_size"] == files["changed"][0]["to_size"] == 4
    sizes = {row["output"]: (row["from_size"], row["to_size"], row["same"]) for row in changes["images"]}
    assert sizes["kernel"][2] and not sizes["initramfs"][2]
    # The feed's `License: MIT` for the new package; no licence of the others changed.
    assert changes["licenses"] == {"changed": [], "added": [{"name": "extra", "license": "MIT"}]}
    text = run_fwgen("diff", str(tmp / "out-a" / BOARD), str(tmp / "out-d" / BOARD), cache=cache_dir).stdout
    assert "  + extra 2-1 (openwrt-local)" in text and "  ~ /etc/acme.conf (content; 4 -> 4 bytes)" in text
    assert "licences: 0 changed\n  + extra: MIT" in text


@pytest.mark.network
def test_diff_of_manifests_and_a_version_change(locked, tmp_path):
    from fwgen.diff import diff_builds

    tmp, *_ = locked
    manifest = json.loads((tmp / "out-a" / BOARD / "manifest.json").read_text())
    upgraded = json.loads(json.dumps(manifest))
    upgraded["inputs"]["packages"][0].update(version="1.1-1", sha256="0" * 64)
    upgraded["inputs"]["packages"][0]["license"] = "MIT"
    manifest["inputs"]["packages"][0]["license"] = "GPL-2.0-only"
    upgraded["files"]["/etc/new"] = "overlay:acme"
    (tmp_path / "a.json").write_text(json.dumps(manifest))
    (tmp_path / "b.json").write_text(json.dumps(upgraded))
    changes = diff_builds(tmp_path / "a.json", tmp_path / "b.json")
    assert changes["packages"]["changed"] == [
        {"name": "tool", "feed": "openwrt-local", "from": "1.0-1", "to": "1.1-1", "change": "upgraded"}]
    assert changes["files"] == {"manifest": {"added": [{"path": "/etc/new", "from": "overlay:acme"}],
                                             "removed": [], "changed": []}}
    assert changes["licenses"]["changed"] == [{"name": "tool", "from": "GPL-2.0-only", "to": "MIT"}]
    for record in [*manifest["inputs"]["packages"], *upgraded["inputs"]["packages"], manifest["inputs"]["kernel"],
                   upgraded["inputs"]["kernel"]]:
        record.pop("license", None)
    (tmp_path / "a.json").write_text(json.dumps(manifest))
    (tmp_path / "b.json").write_text(json.dumps(upgraded))
    assert diff_builds(tmp_path / "a.json", tmp_path / "b.json")["licenses"] is None  # a manifest from before licences
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match=r"bad\.json:1:2: not a JSON manifest"):
        diff_builds(tmp_path / "bad.json", tmp_path / "b.json")
