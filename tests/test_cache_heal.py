"""A cache that heals: one flipped byte (or a half-deleted folder) in any kind of cache entry
is noticed when the entry is read, discarded with a one-line warning naming it, and computed
again; the result is what an undamaged cache gives, and the next read finds a good entry."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import test_perf_caches as perf
from buildutil import run_fwgen
from test_audit_cache import tiny_elf_rootfs
from test_fetch_repo import LocalRepo
from test_perf_caches import entry_facts, in_cache, publish_repo, transcoded_file

from fwgen import busybox
from fwgen.arch import Arch
from fwgen.audit import INSPECT_VERSION, audit_rootfs
from fwgen.busybox import DEFAULT_SOURCE, build_busybox
from fwgen.busybox_download import download_source
from fwgen.busybox_toolchain import LINK_INPUTS_RECORD, checked_zig_cache
from fwgen.cache import Cache
from fwgen.errors import FwgenError
from fwgen.fetch import deb, load_index
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


def test_warning_is_one_line_on_stderr_even_when_progress_is_off(capsys):
    # --json turns progress off; a healed cache entry still explains the time it cost.
    Progress(enabled=False).warn("damaged cache entry /c/x: bad; discarded, computing it again")
    assert capsys.readouterr() == ("", "warning: damaged cache entry /c/x: bad; discarded, computing it again\n")


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
    deb.forget_opened_indexes()
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
    deb.forget_opened_indexes()
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
    return busybox._prepare_tree(tarball, root, DEFAULT_SOURCE, busybox.patches_for(DEFAULT_SOURCE), progress)


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
        locks.enter_context(busybox.locked(shared / "busybox" / f"{entry.name}.lock"))
        locks.enter_context(busybox.locked(trees / f"{tree_key}.lock"))
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
    patches = busybox.patches_for(DEFAULT_SOURCE)
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
    tree_key = busybox.tree_key(arch, DEFAULT_SOURCE, busybox.patches_for(DEFAULT_SOURCE), toolchain)
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


# -- zig's global cache ----------------------------------------------------------------------


def fake_zig_cache(root: Path) -> Path:
    """The shape of zig's global cache: o/<digest>/ folders holding musl's link inputs."""
    zig = root / "zig"
    for digest, name, data in (("a1", "libc.a", b"!<arch>\nmusl"), ("b2", "crt1.o", b"\x7fELF crt1"),
                               ("c3", "libcompiler_rt.a", b"!<arch>\nrt"), ("d4", "strlen.o", b"\x7fELF obj")):
        (zig / "o" / digest).mkdir(parents=True)
        (zig / "o" / digest / name).write_bytes(data)
    (zig / "h").mkdir()
    (zig / "h" / "index.txt").write_text("zig's own index\n")
    return zig


def use_zig_cache(zig: Path) -> str:
    progress, said = recorder()
    with checked_zig_cache(zig, progress):
        pass
    return said.getvalue()


@pytest.mark.parametrize("damage, problem", [
    (lambda zig: flip(zig / "o" / "a1" / "libc.a"), "o/a1/libc.a does not match its recorded SHA-256"),
    (lambda zig: shutil.rmtree(zig / "o" / "b2"), "o/b2/crt1.o is missing"),
    (lambda zig: flip(zig / LINK_INPUTS_RECORD, 0), f"{LINK_INPUTS_RECORD} unreadable"),
], ids=["flipped-byte", "deleted", "damaged-record"])
def test_damaged_zig_cache_is_wiped_with_a_warning(tmp_path, damage, problem):
    zig = fake_zig_cache(tmp_path)
    assert use_zig_cache(zig) == ""
    recorded = json.loads((zig / LINK_INPUTS_RECORD).read_text())
    assert sorted(recorded) == ["o/a1/libc.a", "o/b2/crt1.o", "o/c3/libcompiler_rt.a"]  # not strlen.o
    damage(zig)
    said = use_zig_cache(zig)
    assert_one_warning(said, zig, "zig builds musl again")
    assert problem in said
    assert zig.is_dir() and sorted(p.name for p in zig.iterdir()) == [LINK_INPUTS_RECORD]
    assert json.loads((zig / LINK_INPUTS_RECORD).read_text()) == {}


def test_zig_cache_is_not_recorded_while_another_build_compiles(tmp_path):
    zig = fake_zig_cache(tmp_path)
    with open(tmp_path / "zig.lock", "a+b") as other:
        fcntl.flock(other, fcntl.LOCK_SH)  # another target's compile may be writing its files
        assert use_zig_cache(zig) == ""
    assert not (zig / LINK_INPUTS_RECORD).exists()
    assert use_zig_cache(zig) == "" and (zig / LINK_INPUTS_RECORD).exists()


# -- a whole build -----------------------------------------------------------------------------


def linked_cache(shared: Path, root: Path) -> None:
    """A private cache whose files are hard links to the shared one's (no copy, no damage to
    it: fwgen only ever replaces cache files by rename, and `break_and_flip` unlinks first).
    Kept trees, overlay builds' work folders and zig's cache are left out: nothing compiles here."""
    for top in ("sha256", "url", "url-sha256", "derived", "busybox", "builds"):
        for path in sorted((shared / top).rglob("*")) if (shared / top).is_dir() else []:
            rel = path.relative_to(shared)
            if rel.parts[:2] in (("busybox", "trees"), ("builds", "work"), ("builds", "failed")) or path.name.endswith((".lock", ".part")) or not path.is_file():
                continue
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, root / rel)


def break_and_flip(path: Path) -> None:
    """Flip a byte of a private copy of `path` (its hard link to the shared cache is cut first)."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    flip(path)


@pytest.mark.slow
@pytest.mark.network
def test_build_with_one_damaged_entry_of_each_kind_gives_the_same_image(cache_dir, tmp_path):
    """One flipped byte in each kind of entry a warm qemu-aarch64 build reads: the release
    file, a package, the parsed index, a transcoded data.tar, an ELF reading. The build
    warns once per entry, heals each, and writes the same images byte for byte."""
    cache = tmp_path / "cache"
    linked_cache(cache_dir, cache)
    first = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(tmp_path / "good"), cache=cache)
    assert first.returncode == 0, first.stderr
    assert damage_warnings(first.stderr) == []
    manifest = json.loads((tmp_path / "good" / "qemu-aarch64" / "manifest.json").read_text())
    kernel = manifest["inputs"]["kernel"]["sha256"]
    held = Cache(cache)
    release_key = hashlib.sha256(b"http://deb.debian.org/debian/dists/bookworm/InRelease").hexdigest()
    release = cache / "url" / release_key[:2] / release_key
    index_sha = re.search(r"^ ([0-9a-f]{64}) +\d+ main/binary-arm64/Packages\.xz$", release.read_text(), re.M).group(1)
    busybox_sha = manifest["inputs"]["busybox"]["sha256"]
    damaged = [
        release,
        held.path_for(kernel),  # the kernel's .deb (qemu-aarch64 installs no other package)
        held.derived_path(index_sha, deb.PARSED_INDEX_KIND),
        held.derived_path(kernel, deb._TRANSCODED_KIND),
        held.derived_path(busybox_sha, f"elf-audit.v{INSPECT_VERSION}.json"),
    ]
    for path in damaged:
        break_and_flip(path)

    again = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(tmp_path / "healed"), cache=cache)
    assert again.returncode == 0, again.stderr
    warnings = damage_warnings(again.stderr)
    named = sorted(re.match(r"warning: damaged cache entry (\S+): ", w).group(1) for w in warnings)
    assert named == sorted(map(str, damaged)), again.stderr
    for name in ("initramfs.cpio.gz", "kernel"):
        assert (tmp_path / "healed" / "qemu-aarch64" / name).read_bytes() == (tmp_path / "good" / "qemu-aarch64" / name).read_bytes()
    print(f"\n{len(warnings)} damaged entries healed in one build")
