"""A cache that heals: one flipped byte (or a half-deleted folder) in any kind of cache entry
is noticed when the entry is read, discarded with a one-line warning naming it, and computed
again; the result is what an undamaged cache gives, and the next read finds a good entry."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import test_perf_caches as perf
from test_audit_cache import tiny_elf_rootfs
from test_fetch_repo import LocalRepo
from test_perf_caches import entry_facts, in_cache, publish_repo, transcoded_file

from fwgen import busybox
from fwgen.arch import Arch
from fwgen.audit import INSPECT_VERSION, audit_rootfs
from fwgen.busybox import DEFAULT_SOURCE, build_busybox
from fwgen.busybox_download import download_source
from fwgen.errors import FwgenError
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


# -- BusyBox: the kept source tree -----------------------------------------------------------


@pytest.fixture(scope="module")
def tarball(cache_dir) -> Path:
    return download_source(DEFAULT_SOURCE, cache_dir, Progress(enabled=False))


def prepare(tarball: Path, root: Path, progress: Progress) -> Path:
    return busybox._prepare_tree(tarball, root, DEFAULT_SOURCE, busybox._patches_for(DEFAULT_SOURCE), progress)


def half_delete(tree: Path) -> None:
    # What the sweep did: the "ready" marker survived, every build then failed in defconfig.
    shutil.rmtree(tree / "scripts" / "kconfig")
    shutil.rmtree(tree / "archival")


TREE_DAMAGES = {
    "half-deleted": (half_delete, r"\d+ file\(s\) missing, first src/busybox-1.35.0/archival/"),
    "flipped-byte": (lambda tree: flip(tree / "libbb" / "appletlib.c"), r"1 file\(s\) changed, first src/busybox-1.35.0/libbb/appletlib.c"),
    "extra-file": (lambda tree: (tree / "shell" / "stray.c").write_text("int x;\n"), r"1 file\(s\) not in the manifest"),
    "interrupted-build": (lambda tree: (tree.parents[1] / "manifest.json").unlink(), r"no manifest \(an interrupted build"),
}


@pytest.mark.parametrize("damage, problem", TREE_DAMAGES.values(), ids=TREE_DAMAGES.keys())
def test_damaged_kept_tree_is_unpacked_again_with_a_warning(tarball, tmp_path, damage, problem):
    root = tmp_path / "trees" / "1.35.0-test"
    root.parent.mkdir()
    tree = prepare(tarball, root, Progress(enabled=False))
    good = busybox._tree_files(root)
    assert len(good) > 1500 and all(re.fullmatch(r"[0-9a-f]{64}|-> .+", v) for v in good.values())
    damage(tree)
    progress, said = recorder()
    assert prepare(tarball, root, progress) == tree
    assert_one_warning(said.getvalue(), root, "unpacking the source again")
    assert re.search(problem, said.getvalue()), said.getvalue()
    assert busybox._tree_files(root) == good
    progress, said = recorder()
    prepare(tarball, root, progress)
    assert said.getvalue() == ""


def test_tree_check_costs_little(tarball, tmp_path):
    root = tmp_path / "trees" / "1.35.0-test"
    root.parent.mkdir()
    prepare(tarball, root, Progress(enabled=False))
    start = time.monotonic()
    assert busybox._tree_damage(root) is None
    took = time.monotonic() - start
    print(f"\nchecked {len(busybox._tree_files(root))} files in {took:.2f} s")
    assert took < 5.0


def test_make_runs_without_a_manifest_and_leaves_a_new_one(tmp_path):
    root = tmp_path / "tree"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main;\n")
    busybox._write_manifest(root)
    with busybox._changing(root):
        assert not (root / "manifest.json").exists()  # killed here: the next build starts over
        (root / "src" / "main.o").write_bytes(b"object")
    assert busybox._tree_damage(root) is None and "src/main.o" in busybox._tree_files(root)
    with pytest.raises(FwgenError), busybox._changing(root):  # a failed compile keeps its objects
        (root / "src" / "half.o").write_bytes(b"object")
        raise FwgenError("compile failed")
    assert busybox._tree_damage(root) is None
    with pytest.raises(KeyboardInterrupt), busybox._changing(root):
        raise KeyboardInterrupt
    assert not root.exists()


# -- BusyBox: the published binary -----------------------------------------------------------


def copy_busybox_cache(shared: Path, root: Path, entry: Path, tree_key: str, tarball: Path) -> Path:
    """Copy one published build and its kept tree into a private cache (the shared one is never
    damaged), under the shared cache's locks; zig's cache is shared through a link."""
    trees = shared / "busybox" / "trees"
    (root / "busybox" / "trees").mkdir(parents=True)
    with ExitStack() as locks:
        locks.enter_context(busybox._locked(shared / "busybox" / f"{entry.name}.lock"))
        locks.enter_context(busybox._locked(trees / f"{tree_key}.lock"))
        shutil.copytree(entry, root / "busybox" / entry.name)
        tree = root / "busybox" / "trees" / tree_key
        if (trees / tree_key).is_dir():
            shutil.copytree(trees / tree_key, tree, symlinks=True)
            if not (tree / "manifest.json").exists():
                busybox._write_manifest(tree)  # kept by an older fwgen: its tree was good
    (root / "zig").symlink_to(shared / "zig")
    copy = Cache(root).path_for(DEFAULT_SOURCE.sha256)
    copy.parent.mkdir(parents=True)
    shutil.copyfile(tarball, copy)
    return root / "busybox" / entry.name


def cheapest_arch(shared: Path) -> Arch:
    """An arch whose default build is kept and whose kept tree was last configured for it, so
    rebuilding it compiles next to nothing (else armv7, which may recompile a few hundred)."""
    patches = busybox._patches_for(DEFAULT_SOURCE)
    base = busybox._read_fragment(busybox.BASE_FRAGMENT)
    toolchain = busybox.find_toolchain()
    for arch in (Arch.ARMV7, Arch.AARCH64, Arch.ARMV6, Arch.MIPSEL, Arch.MIPS):
        entry = shared / "busybox" / busybox.cache_key(arch, DEFAULT_SOURCE, patches, [base], toolchain)
        tree = shared / "busybox" / "trees" / busybox.tree_key(arch, DEFAULT_SOURCE, patches, toolchain)
        config = tree / "src" / f"busybox-{DEFAULT_SOURCE.version}" / ".config"
        if (entry / "busybox").is_file() and config.is_file() and config.read_bytes() == (entry / "config").read_bytes():
            return arch
    return Arch.ARMV7


@pytest.mark.slow
def test_damaged_busybox_binary_is_rebuilt_byte_identical(cache_dir, tmp_path, tarball):
    """The sweep's "BtsyBox": one flipped byte in the cached binary used to reach the image."""
    arch = cheapest_arch(cache_dir)
    good = build_busybox(arch, cache_root=cache_dir)  # cached in a kept cache, else minutes
    good_bytes = good.read_bytes()
    toolchain = busybox.find_toolchain()
    tree_key = busybox.tree_key(arch, DEFAULT_SOURCE, busybox._patches_for(DEFAULT_SOURCE), toolchain)
    entry = copy_busybox_cache(cache_dir, tmp_path / "cache", good.parent, tree_key, tarball)
    damaged = entry / "busybox"
    flip(damaged, good_bytes.index(b"BusyBox v1.35.0") + 1)  # "BtsyBox"
    assert b"BtsyBox v1.35.0" in damaged.read_bytes()

    progress, said = recorder()
    start = time.monotonic()
    rebuilt = build_busybox(arch, cache_root=tmp_path / "cache", progress=progress)
    took = time.monotonic() - start
    assert rebuilt == damaged
    assert_one_warning(said.getvalue(), entry, "building it again")
    assert "does not match the SHA-256 in build.json" in said.getvalue()
    assert rebuilt.read_bytes() == good_bytes
    compiled = (entry / "build.log").read_text().count("\n  CC ")
    print(f"\n{arch.value}: healed the damaged binary in {took:.1f} s ({compiled} files recompiled)")

    progress, said = recorder()
    assert build_busybox(arch, cache_root=tmp_path / "cache", progress=progress).read_bytes() == good_bytes
    assert damage_warnings(said.getvalue()) == [] and "cached" in said.getvalue()
