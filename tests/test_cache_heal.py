"""A cache that heals: one flipped byte (or a half-deleted folder) in any kind of cache entry
is noticed when the entry is read, discarded with a one-line warning naming it, and computed
again; the result is what an undamaged cache gives, and the next read finds a good entry."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import test_perf_caches as perf
from test_audit_cache import tiny_elf_rootfs
from test_fetch_repo import LocalRepo
from test_perf_caches import entry_facts, in_cache, publish_repo, transcoded_file

from fwgen.arch import Arch
from fwgen.audit import INSPECT_VERSION, audit_rootfs
from fwgen.fetch import deb, load_index
from fwgen.fetch.cache import Cache
from fwgen.progress import Progress

# The fixtures too: a private cache, a big .deb, and no parsed index remembered across tests.
cache, big_deb, forget_parsed_indexes = perf.cache, perf.big_deb, perf.forget_parsed_indexes

PAYLOAD = b"fwgen payload " * 5000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def flip(path: Path, at: int | None = None) -> None:
    """Flip one bit of one byte of `path` (the middle one unless `at` is given)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


def recorder() -> tuple[Progress, io.StringIO]:
    stream = io.StringIO()
    return Progress(stream), stream


def damage_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning: damaged cache entry ")]


def assert_one_warning(text: str, entry: Path, remedy: str) -> None:
    warnings = damage_warnings(text)
    assert len(warnings) == 1, text
    assert warnings[0].startswith(f"warning: damaged cache entry {entry}: ") and remedy in warnings[0], warnings[0]


# -- downloads -----------------------------------------------------------------------------------


def test_damaged_download_is_fetched_again_with_a_warning(server, cache):
    url = f"{server.url}/pkg.deb"
    server.serve("/pkg.deb", PAYLOAD)
    path = cache.fetch(url, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    flip(path)
    progress, said = recorder()
    assert cache.fetch(url, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=progress).read_bytes() == PAYLOAD
    assert_one_warning(said.getvalue(), path, "downloading it again")
    assert f"expected {PAYLOAD_SHA}" in said.getvalue()
    assert server.hits["/pkg.deb"] == 2
    progress, said = recorder()
    cache.fetch(url, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=progress)
    assert damage_warnings(said.getvalue()) == [] and server.hits["/pkg.deb"] == 2


def test_damaged_download_without_a_known_hash_is_fetched_again(server, cache):
    # InRelease, APKINDEX, opkg's Packages.gz, .apk files: kept by URL, their SHA-256 recorded.
    url = f"{server.url}/InRelease"
    server.serve("/InRelease", PAYLOAD)
    path = cache.fetch(url, sha256=None, size=None)
    flip(path)
    progress, said = recorder()
    assert cache.fetch(url, sha256=None, size=None, progress=progress).read_bytes() == PAYLOAD
    assert_one_warning(said.getvalue(), path, "downloading it again")
    assert server.hits["/InRelease"] == 2
    progress, said = recorder()
    cache.fetch(url, sha256=None, size=None, progress=progress)
    assert damage_warnings(said.getvalue()) == [] and server.hits["/InRelease"] == 2  # reused: good again


def test_download_without_a_record_is_fetched_again_quietly(server, cache):
    url = f"{server.url}/InRelease"
    server.serve("/InRelease", PAYLOAD)
    path = cache.fetch(url, sha256=None, size=None)
    for record in (cache.root / "url-sha256").rglob("*"):
        record.unlink() if record.is_file() else None
    progress, said = recorder()
    assert cache.fetch(url, sha256=None, size=None, progress=progress) == path
    assert damage_warnings(said.getvalue()) == [] and server.hits["/InRelease"] == 2


def test_damaged_cached_release_file_costs_no_build(server, cache, tmp_path, capsys):
    """A flipped byte in the cached InRelease used to fail the build as a bad signature."""
    repo = LocalRepo(server, tmp_path)
    repo.add("tiny", "1.0-1", {"usr/bin/tiny": b"bin"})
    repo.publish()
    first = load_index([repo.feed()], Arch.AARCH64, cache=cache).packages
    key = hashlib.sha256(f"{server.url}/dists/test/InRelease".encode()).hexdigest()
    entry = cache.root / "url" / key[:2] / key
    flip(entry)
    deb._read_packages_file.cache_clear()
    capsys.readouterr()
    assert load_index([repo.feed()], Arch.AARCH64, cache=cache).packages == first
    assert_one_warning(capsys.readouterr().err, entry, "downloading it again")
    assert server.hits["/dists/test/InRelease"] == 2


# -- derived files ---------------------------------------------------------------------------


def test_damaged_parsed_index_is_parsed_again_with_a_warning(server, cache, tmp_path, capsys):
    repo, index = publish_repo(server, tmp_path)
    expected = load_index([repo.feed()], Arch.AARCH64, cache=cache).packages
    parsed = cache.derived_path(hashlib.sha256(index).hexdigest(), deb.PARSED_INDEX_KIND)
    good = parsed.read_bytes()
    flip(parsed)
    deb._read_packages_file.cache_clear()
    capsys.readouterr()
    assert load_index([repo.feed()], Arch.AARCH64, cache=cache).packages == expected
    assert_one_warning(capsys.readouterr().err, parsed, "parsing the index again")
    assert parsed.read_bytes() == good


def test_damaged_transcoded_data_tar_is_decompressed_again_with_a_warning(cache, big_deb, capsys):
    cached = in_cache(cache, big_deb)
    expected = entry_facts(cached)
    copy = transcoded_file(cache, big_deb)
    good = copy.read_bytes()
    flip(copy)
    capsys.readouterr()
    assert entry_facts(cached) == expected
    assert_one_warning(capsys.readouterr().err, copy, "decompressing the package again")
    assert copy.read_bytes() == good


def test_damaged_elf_reading_is_read_again_with_a_warning(tmp_path):
    """"aarch64" -> "aarch65" in a kept reading used to fail every later build's audit."""
    cache = Cache(tmp_path)
    assert audit_rootfs(tiny_elf_rootfs(), Arch.AARCH64, cache=cache).errors == []
    [stored] = (tmp_path / "derived").rglob(f"*.elf-audit.v{INSPECT_VERSION}.json")
    good = stored.read_bytes()
    flip(stored, good.index(b'"aarch64"') + 7)
    assert b'"aarch65"' in stored.read_bytes()
    progress, said = recorder()
    report = audit_rootfs(tiny_elf_rootfs(), Arch.AARCH64, cache=cache, progress=progress)
    assert [f.machine for f in report.files] == ["aarch64"] and report.errors == []
    assert_one_warning(said.getvalue(), stored, "computing it again")
    assert stored.read_bytes() == good
