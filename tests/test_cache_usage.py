"""`fwgen cache` and `fwgen cache prune` (fwgen/cache_usage.py): sizes by kind, told apart by
content for downloads (real package and index files from the samples); pruning by last use
and by a size budget that never removes what a running build uses or another process holds."""

from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fwgen.cache import Cache
from fwgen.cache_usage import KINDS, prune, scan, usage
from fwgen.cli import main

DAY = 86400


def put_download(cache: Cache, data: bytes) -> Path:
    path = cache.path_for(hashlib.sha256(data).hexdigest())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def put_by_url(cache: Cache, url: str, data: bytes) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()
    path = cache.root / "url" / key[:2] / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    record = cache.root / "url-sha256" / key[:2] / key
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(hashlib.sha256(data).hexdigest() + "\n")
    return path


def put_folder(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "data").write_bytes(b"x" * size)
    return folder


def used(path: Path, seconds_ago: float) -> None:
    """Date the last use of an entry (for a download by URL, its recorded hash too)."""
    when = time.time() - seconds_ago
    record = path.parents[2] / "url-sha256" / path.parent.name / path.name
    for p in (path, record) if path.parent.parent.name == "url" else (path,):
        os.utime(p, (when, when))


@pytest.fixture
def filled(tmp_path, samples) -> tuple[Cache, dict[str, Path]]:
    cache = Cache(tmp_path / "cache")
    openwrt, alpine = samples / "openwrt-core-mvebu", samples / "alpine"
    entries = {
        "deb": put_download(cache, (samples / "debian" / "fact-test.deb").read_bytes()),
        "ipk": put_download(cache, (openwrt / "libc_1.2.4-4_arm_cortex-a9_vfpv3-d16.ipk").read_bytes()),
        "Packages.xz": put_download(cache, lzma.compress((openwrt / "Packages").read_bytes())),
        "source": put_download(cache, lzma.compress(b"not an index") + b"tarball"),
        "apk": put_by_url(cache, "https://a/curl.apk", (alpine / "curl-7.83.1-r1.x86_64.apk").read_bytes()),
        "APKINDEX": put_by_url(cache, "https://a/APKINDEX.tar.gz", (alpine / "APKINDEX-v3.16-main-x86_64.tar.gz").read_bytes()),
        "Packages.sig": put_by_url(cache, "https://o/Packages.sig", (openwrt / "Packages.sig").read_bytes()),
        "Packages.gz": put_by_url(cache, "https://o/Packages.gz", (openwrt / "Packages.gz").read_bytes()),
        "InRelease": put_by_url(cache, "https://d/InRelease", b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n"),
    }
    parsed = cache.root / "derived" / "ab" / f"{'ab' * 32}.deb-index.v2.json.zst"  # not derived_path: no use recorded
    Cache.store_derived(parsed, b"p" * 1000)
    entries["parsed"] = parsed
    entries["busybox"] = put_folder(cache.root / "busybox" / "1.35.0-aarch64-0123456789abcdef", 5000)
    entries["tree"] = put_folder(cache.root / "busybox" / "trees" / "1.35.0-aarch64-fedcba9876543210", 7000)
    entries["build"] = put_folder(cache.root / "builds" / "hello-aarch64-0011223344556677", 300)
    entries["zig"] = put_folder(cache.root / "zig", 900)
    return cache, entries


def test_sizes_by_kind(filled):
    cache, entries = filled
    kinds = {e.path: e.kind for e in scan(cache.root)}
    assert {name: kinds[path] for name, path in entries.items()} == {
        "deb": "packages", "ipk": "packages", "apk": "packages",
        "Packages.xz": "indexes", "APKINDEX": "indexes", "Packages.sig": "indexes",
        "Packages.gz": "indexes", "InRelease": "indexes", "source": "others",
        "parsed": "parsed indexes", "busybox": "BusyBox builds", "tree": "BusyBox trees",
        "build": "overlay builds", "zig": "zig cache",
    }
    totals = usage(cache.root)
    assert list(totals) == list(KINDS)
    assert totals["BusyBox trees"] == (1, 7000) and totals["zig cache"] == (1, 900)
    assert totals["packages"][1] == sum(entries[k].stat().st_size for k in ("deb", "ipk", "apk")) + 65  # + the apk's recorded hash


def test_fwgen_cache_prints_the_kinds(filled, monkeypatch):
    cache, _ = filled
    monkeypatch.setenv("FWGEN_CACHE", str(cache.root))
    result = CliRunner().invoke(main, ["cache", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["kinds"]["BusyBox builds"] == {"entries": 1, "bytes": 5000}
    assert shown["bytes"] == sum(k["bytes"] for k in shown["kinds"].values())


def test_prune_older_than_removes_only_what_was_not_used_since(filled):
    cache, entries = filled
    for name, path in entries.items():
        used(path, 10 * DAY if name in ("deb", "busybox", "apk", "parsed") else DAY / 2)
    result = prune(cache.root, older_than=2 * DAY)
    assert sorted(e.path for e in result.removed) == sorted(entries[k] for k in ("deb", "busybox", "apk", "parsed"))
    assert not any(entries[k].exists() for k in ("deb", "busybox", "apk", "parsed"))
    assert not (cache.root / "url-sha256" / entries["apk"].parent.name / entries["apk"].name).exists()
    assert all(path.exists() for name, path in entries.items() if name not in ("deb", "busybox", "apk", "parsed"))


def test_prune_max_size_removes_the_least_recently_used_first(filled):
    cache, entries = filled
    order = list(entries)  # from the least to the most recently used
    for i, name in enumerate(order):
        used(entries[name], (len(order) - i) * DAY)
    sizes = {e.path: e.size for e in scan(cache.root)}
    budget = sum(sizes.values()) - sizes[entries[order[0]]] - sizes[entries[order[1]]]
    result = prune(cache.root, max_size=budget)
    assert [e.path for e in result.removed] == [entries[order[0]], entries[order[1]]]
    assert sum(e.size for e in scan(cache.root)) == budget
    assert all(entries[name].exists() for name in order[2:])


def test_prune_skips_an_entry_another_process_holds(filled):
    cache, entries = filled
    for path in entries.values():
        used(path, 10 * DAY)
    lock = entries["busybox"].with_name(entries["busybox"].name + ".lock")
    with open(lock, "a+b") as held:  # as a build of that key holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        result = prune(cache.root, older_than=DAY)
    assert entries["busybox"].exists() and [e.path for e in result.in_use] == [entries["busybox"]]
    assert not entries["tree"].exists()


def test_prune_keeps_what_a_running_build_uses(filled, tmp_path):
    """A build that started before the prune and used an entry keeps it, however old the
    prune's limit: its use is recorded, and no entry used since it started is removed."""
    cache, entries = filled
    for path in entries.values():
        used(path, 10 * DAY)
    ready = tmp_path / "ready"
    build = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib\n"
        "from fwgen.cache import Cache\n"
        f"Cache({str(cache.root)!r}).fetch('http://unused.invalid/x', sha256={entries['deb'].name!r}, size=None)\n"
        f"pathlib.Path({str(ready)!r}).write_text('used')\n"
        "time.sleep(60)\n")], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert build.poll() is None and time.monotonic() < deadline, "the build process failed"
            time.sleep(0.1)
        used(entries["ipk"], 0)  # used after the build started (by anyone): kept as well
        result = prune(cache.root, older_than=0)
        assert entries["deb"].exists() and entries["ipk"].exists()
        assert not entries["apk"].exists() and not entries["busybox"].exists()
        assert len(list((cache.root / "locks" / "users").iterdir())) == 1
    finally:
        build.kill()
        build.wait()
    # The build has ended: its registration is removed, and its entries may go.
    result = prune(cache.root, older_than=0)
    assert entries["deb"] in [e.path for e in result.removed]
    assert list((cache.root / "locks" / "users").iterdir()) == []


def test_prune_needs_a_limit(monkeypatch, tmp_path):
    monkeypatch.setenv("FWGEN_CACHE", str(tmp_path))
    result = CliRunner().invoke(main, ["cache", "prune"])
    assert result.exit_code == 2
    assert result.stderr == "fwgen: error: cache prune: say what to remove (give --older-than DAYS and/or --max-size MB)\n"


def test_a_process_that_ends_leaves_no_registration(tmp_path):
    root = tmp_path / "cache"
    subprocess.run([sys.executable, "-c", f"from fwgen.cache import Cache; Cache({str(root)!r}).derived_path('ab' * 32, 'x')"],
                   check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), timeout=120)
    assert (root / "locks" / "users").is_dir() and list((root / "locks" / "users").iterdir()) == []
