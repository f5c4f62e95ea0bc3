"""Reading .deb files: the real sample against dpkg-deb, crafted archives for the odd cases."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from fwgen.errors import FormatError
from fwgen.fetch import FetchedPackage, Package, install_package, read_package_entries
from fwgen.rootfs import EntryType, RootFS


def build_ar(members: list[tuple[str, bytes]]) -> bytes:
    """An ar archive as deb(5) describes it (independent of the reader under test)."""
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def build_tar(add) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add(tar)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, kind=tarfile.REGTYPE, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = fields.pop("mode", 0o644)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def build_deb(data_tar: bytes, compression: str = "xz") -> bytes:
    import lzma

    import zstandard

    compress = {
        "xz": lzma.compress,
        "zst": lambda d: zstandard.ZstdCompressor().compress(d),
        "gz": __import__("gzip").compress,
        "bz2": __import__("bz2").compress,
        "": lambda d: d,
    }[compression]
    suffix = f".{compression}" if compression else ""
    control = build_tar(lambda t: add_member(t, "./control", data=b"Package: crafted\nVersion: 1\n"))
    return build_ar([
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", __import__("gzip").compress(control)),
        (f"data.tar{suffix}", compress(data_tar)),
    ])


def test_sample_deb_matches_dpkg_deb(samples):
    deb = samples / "debian" / "fact-test.deb"
    entries = list(read_package_entries(deb))
    ours = [(e.path, e.type, e.mode, e.size, e.mtime) for e in entries]
    assert ours[0] == ("/..deb", EntryType.FILE, 0o644, 456, 1532954661)
    assert ("/usr/bin/test_elf_sfx", EntryType.FILE, 0o775, 397334, 1532954227) in ours
    if shutil.which("dpkg-deb"):
        listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True)
        theirs = []
        for line in listing.stdout.splitlines():
            perms, _owner, size, *_date, name = line.split()
            if name == "./":
                continue
            theirs.append(("/" + name.removeprefix("./").rstrip("/"), int(size), perms[0]))
        assert [(p, s, "d" if t is EntryType.DIR else "-") for p, t, _m, s, _ in ours] == theirs


def test_sample_deb_content_matches_dpkg_deb_extract(samples, tmp_path):
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed (independent reader)")
    deb = samples / "debian" / "fact-test.deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    for entry in read_package_entries(deb):
        if entry.type is EntryType.FILE:
            assert (tmp_path / entry.path.lstrip("/")).read_bytes() == entry.data, entry.path


@pytest.mark.parametrize("compression", ["xz", "zst", "gz", "bz2", ""])
def test_every_compression_and_entry_type(tmp_path, compression):
    def add(tar):
        add_member(tar, "./", tarfile.DIRTYPE, mode=0o755)
        add_member(tar, "./bin/", tarfile.DIRTYPE, mode=0o755)
        add_member(tar, "./bin/tool", data=b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0, mtime=1700000000)
        add_member(tar, "./bin/alias", tarfile.LNKTYPE, linkname="./bin/tool", mode=0o755)
        add_member(tar, "./bin/sh", tarfile.SYMTYPE, linkname="/bin/tool", mode=0o777)
        add_member(tar, "./dev/console", tarfile.CHRTYPE, devmajor=5, devminor=1, mode=0o600)
        add_member(tar, "./dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660, gid=6)
        add_member(tar, "./run/fifo", tarfile.FIFOTYPE, mode=0o644)

    path = tmp_path / "crafted.deb"
    path.write_bytes(build_deb(build_tar(add), compression))
    entries = {e.path: e for e in read_package_entries(path)}
    assert "/" not in entries
    assert entries["/bin/tool"].mode == 0o4755 and entries["/bin/tool"].mtime == 1700000000
    assert entries["/bin/alias"].type is EntryType.FILE and entries["/bin/alias"].data == b"#!/bin/sh\n"
    assert entries["/bin/sh"].type is EntryType.SYMLINK and entries["/bin/sh"].target == "/bin/tool"
    assert entries["/dev/console"].type is EntryType.CHARDEV and entries["/dev/console"].rdev == (5, 1)
    assert entries["/dev/sda"].type is EntryType.BLOCKDEV and entries["/dev/sda"].gid == 6
    assert entries["/run/fifo"].type is EntryType.FIFO


def test_gnu_ar_member_names_are_read(tmp_path):
    """GNU ar (binutils) ends member names with '/'; dpkg does not. Both must work."""
    if not shutil.which("ar"):
        pytest.skip("binutils ar not installed")
    data = build_tar(lambda t: add_member(t, "./etc/motd", data=b"hi\n"))
    for name, content in [("debian-binary", b"2.0\n"), ("control.tar", build_tar(lambda t: None)), ("data.tar", data)]:
        (tmp_path / name).write_bytes(content)
    subprocess.run(["ar", "qcD", "pkg.deb", "debian-binary", "control.tar", "data.tar"], cwd=tmp_path, check=True)
    assert [(e.path, e.data) for e in read_package_entries(tmp_path / "pkg.deb")] == [("/etc/motd", b"hi\n")]


def test_path_escaping_the_root_is_a_format_error(tmp_path):
    path = tmp_path / "evil.deb"
    path.write_bytes(build_deb(build_tar(lambda t: add_member(t, "./../../etc/passwd", data=b"x"))))
    with pytest.raises(FormatError, match=r"evil.deb: data.tar.xz at 0x[0-9a-f]+: offset 0x0: .*escapes the root"):
        list(read_package_entries(path))


@pytest.mark.parametrize("cut", [30, 200, 600, 20000])
def test_truncated_deb_names_file_and_offset(samples, tmp_path, cut):
    data = (samples / "debian" / "fact-test.deb").read_bytes()
    path = tmp_path / "cut.deb"
    path.write_bytes(data[:cut])
    with pytest.raises(FormatError, match=r"cut.deb: .*(offset|at) 0x[0-9a-f]+") as caught:
        list(read_package_entries(path))
    assert "\n" not in str(caught.value)


def test_corrupt_header_and_garbage(tmp_path):
    good = build_deb(build_tar(lambda t: add_member(t, "./a", data=b"a")))
    broken = good[:8 + 58] + b"XX" + good[8 + 60:]  # the header's `\n terminator
    (tmp_path / "bad.deb").write_bytes(broken)
    with pytest.raises(FormatError, match=r"bad.deb: offset 0x8: bad ar member header"):
        list(read_package_entries(tmp_path / "bad.deb"))
    (tmp_path / "junk.deb").write_bytes(b"\x00" * 100)
    with pytest.raises(FormatError, match=r"junk.deb: offset 0x0: not a package of any known format"):
        list(read_package_entries(tmp_path / "junk.deb"))
    corrupt = bytearray(good)
    corrupt[-40:-20] = b"\xff" * 20  # inside the xz stream
    (tmp_path / "corrupt.deb").write_bytes(bytes(corrupt))
    with pytest.raises(FormatError, match=r"corrupt.deb: data.tar.xz at 0x[0-9a-f]+: cannot decompress"):
        list(read_package_entries(tmp_path / "corrupt.deb"))


def test_install_package_records_provenance_and_follows_merged_usr(tmp_path):
    def add(tar):
        add_member(tar, "./bin/", tarfile.DIRTYPE, mode=0o755)
        add_member(tar, "./bin/busybox", data=b"\x7fELF", mode=0o755)
        add_member(tar, "./etc/", tarfile.DIRTYPE, mode=0o755)
        add_member(tar, "./etc/conf", data=b"x=1\n")

    path = tmp_path / "bb.deb"
    path.write_bytes(build_deb(build_tar(add)))
    package = Package("busybox-static", "1", "arm64", "debian", "deb", "http://x", "bb.deb", 1, "0" * 64)
    rootfs = RootFS()
    rootfs.add_dir("/usr/bin")
    rootfs.add_symlink("/bin", "usr/bin", provenance="layout")
    install_package(rootfs, FetchedPackage(package, Path(path)))
    assert rootfs["/bin"].type is EntryType.SYMLINK  # kept, like dpkg does
    assert rootfs["/usr/bin/busybox"].provenance == "deb:busybox-static"
    assert rootfs["/usr/bin/busybox"].mode == 0o755
    assert rootfs["/etc/conf"].data == b"x=1\n" and rootfs["/etc/conf"].provenance == "deb:busybox-static"


def test_damaged_tar_header_inside_data_is_not_silently_dropped(tmp_path):
    def add(tar):
        for name in ("a", "b", "c"):
            add_member(tar, f"./{name}", data=b"x" * 700)

    data = bytearray(build_tar(add))
    data[1536 + 148 : 1536 + 156] = b"garbage!"  # checksum field of the second header
    path = tmp_path / "damaged.deb"
    path.write_bytes(build_deb(bytes(data), compression=""))
    with pytest.raises(FormatError, match=r"damaged.deb: data.tar at 0x[0-9a-f]+: tar offset 0x600: damaged"):
        list(read_package_entries(path))
