"""exclude_paths: package documentation and charset modules left out, nothing else."""

from __future__ import annotations

from fwgen.build import prune_package_files
from fwgen.config import load_board
from fwgen.rootfs import RootFS

DOC = "/usr/share/doc/libc6"


def sample_rootfs() -> RootFS:
    rootfs = RootFS()
    for path in (f"{DOC}/changelog.Debian.gz", f"{DOC}/NEWS.gz", f"{DOC}/copyright",
                 "/usr/share/man/man1/ls.1.gz", "/usr/lib/aarch64-linux-gnu/gconv/UTF-16.so",
                 "/usr/lib/aarch64-linux-gnu/gconv/gconv-modules.d/a.conf",
                 "/usr/lib/aarch64-linux-gnu/libc.so.6", "/usr/bin/dropbear"):
        rootfs.add_file(path, b"x", provenance="deb:test")
    return rootfs


def test_defaults_keep_programs_libraries_and_copyright_files():
    patterns = load_board("qemu-aarch64").exclude_paths
    rootfs = sample_rootfs()
    removed = prune_package_files(rootfs, patterns)
    kept = {e.path for e in rootfs}
    assert {f"{DOC}/copyright", "/usr/lib/aarch64-linux-gnu/libc.so.6", "/usr/bin/dropbear"} <= kept
    assert not {p for p in kept if "/gconv/" in p or "/man/" in p or "changelog" in p or "NEWS" in p}
    assert "/usr/lib/aarch64-linux-gnu" in kept  # the folder of kept files stays
    assert removed["/usr/lib/*/gconv/*"] == 3  # two files, then the emptied gconv-modules.d/
    assert removed["/usr/share/man/*"] == 2


def test_no_patterns_remove_nothing():
    rootfs = sample_rootfs()
    before = {e.path for e in rootfs}
    assert prune_package_files(rootfs, ()) == {}
    assert {e.path for e in rootfs} == before
