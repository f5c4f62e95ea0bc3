"""The newc writer, checked against GNU cpio (the independent reader) and real archives."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import zstandard

from fwgen.errors import FormatError, UserError
from fwgen.images.cpio import read_cpio, read_initramfs, write_cpio, write_initramfs
from fwgen.rootfs import Entry, EntryType, RootFS

EPOCH = 1_700_000_000
needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed (apt install cpio)")

# path -> (type letter as `ls -l` shows it, permissions, uid, gid, size or "maj,min", target)
EXPECTED = {
    ".": ("d", 0o755, 0, 0, None, None),
    "bin": ("d", 0o755, 0, 0, None, None),
    "bin/busybox": ("-", 0o755, 0, 0, 5000, None),
    "bin/passwd": ("-", 0o4755, 0, 0, 3, None),
    "bin/sh": ("l", 0o777, 0, 0, 7, "busybox"),
    "dev": ("d", 0o755, 0, 0, None, None),
    "dev/console": ("c", 0o600, 0, 0, "5,1", None),
    "dev/initctl": ("p", 0o600, 0, 0, None, None),
    "dev/null": ("c", 0o666, 0, 0, "1,3", None),
    "dev/vda": ("b", 0o660, 0, 6, "254,0", None),
    "etc": ("d", 0o755, 0, 0, None, None),
    "etc/empty": ("-", 0o644, 0, 0, 0, None),
    "home": ("d", 0o755, 0, 0, None, None),
    "home/user": ("d", 0o700, 1000, 1000, None, None),
    "home/user/notes.txt": ("-", 0o600, 1000, 1000, 6, None),
    "init": ("l", 0o777, 0, 0, 12, "/bin/busybox"),
}


def build_model(order: int = 1) -> RootFS:
    """A model holding every entry type; `order` -1 adds the same entries in reverse."""
    adds = [
        lambda fs: fs.add_file("/bin/busybox", bytes(range(256)) * 19 + b"x" * 136, 0o755),
        lambda fs: fs.add_file("/bin/passwd", b"pw\n", 0o4755),
        lambda fs: fs.add_symlink("/bin/sh", "busybox"),
        lambda fs: fs.add_symlink("/init", "/bin/busybox"),
        lambda fs: fs.add_device("/dev/console", EntryType.CHARDEV, 5, 1, 0o600),
        lambda fs: fs.add_device("/dev/null", EntryType.CHARDEV, 1, 3, 0o666),
        lambda fs: fs.add_device("/dev/vda", EntryType.BLOCKDEV, 254, 0, 0o660, gid=6),
        lambda fs: fs.add(Entry("/dev/initctl", EntryType.FIFO, 0o600)),
        lambda fs: fs.add_file("/etc/empty", b""),
        lambda fs: fs.add_dir("/home/user", 0o700, uid=1000, gid=1000),
        lambda fs: fs.add_file("/home/user/notes.txt", b"hello\n", 0o600, uid=1000, gid=1000),
    ]
    fs = RootFS()
    fs.add_dir("/bin")
    fs.add_dir("/dev")
    fs.add_dir("/etc")
    fs.add_dir("/home")
    for add in adds[::order]:
        add(fs)
    return fs


def archive_of(fs: RootFS, mtime: int = EPOCH) -> bytes:
    out = io.BytesIO()
    write_cpio(fs, out, mtime=mtime)
    return out.getvalue()


def gnu_cpio(args: list[str], data: bytes, cwd: Path | None = None) -> str:
    proc = subprocess.run(["cpio", *args], input=data, capture_output=True, cwd=cwd, check=True)
    return proc.stdout.decode()


LISTING = re.compile(
    r"^(?P<mode>\S{10})\s+(?P<nlink>\d+)\s+(?P<uid>\d+)\s+(?P<gid>\d+)\s+"
    r"(?:(?P<major>\d+),\s*(?P<minor>\d+)|(?P<size>\d+))\s+\w{3}\s+\d+\s+[\d:]+\s+"
    r"(?P<name>.+?)(?: -> (?P<target>.*))?$"
)


@needs_cpio
def test_gnu_cpio_lists_every_type_with_modes_owners_and_devices():
    listing = gnu_cpio(["-itvn", "--quiet"], archive_of(build_model()))
    seen = {}
    for line in listing.splitlines():
        m = LISTING.match(line)
        assert m, f"unexpected cpio -itv line: {line!r}"
        seen[m["name"]] = m
    assert list(seen) == list(EXPECTED), "order must be the model's: directories before contents"
    for name, (kind, perms, uid, gid, size, target) in EXPECTED.items():
        m = seen[name]
        assert m["mode"] == stat.filemode(_format_bits(kind) | perms), name
        assert (int(m["uid"]), int(m["gid"])) == (uid, gid), name
        if isinstance(size, str):
            assert f"{m['major']},{m['minor']}" == size, name
        elif size is not None:
            assert int(m["size"]) == size, name
        assert m["target"] == target, name


def _format_bits(kind: str) -> int:
    return {"d": stat.S_IFDIR, "-": stat.S_IFREG, "l": stat.S_IFLNK, "c": stat.S_IFCHR,
            "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]


@needs_cpio
def test_gnu_cpio_extracts_the_same_bytes_modes_and_times(tmp_path):
    fs = build_model()
    as_root = os.geteuid() == 0
    # Without root, mknod fails: leave the device nodes out of the extraction then.
    args = ["-idm", "--quiet", "--no-absolute-filenames"] + ([] if as_root else ["-f", "dev/console", "dev/null", "dev/vda"])
    gnu_cpio(args, archive_of(fs), cwd=tmp_path)
    for entry in fs:
        if entry.path == "/" or (entry.type in (EntryType.CHARDEV, EntryType.BLOCKDEV) and not as_root):
            continue
        host = tmp_path / entry.path.lstrip("/")
        st = host.lstat()
        assert stat.S_IFMT(st.st_mode) == entry.type.format_bits, entry.path
        if entry.type is EntryType.SYMLINK:
            assert os.readlink(host) == entry.target
            continue
        assert stat.S_IMODE(st.st_mode) == entry.mode, entry.path
        if entry.type is EntryType.FILE:
            assert host.read_bytes() == entry.data, entry.path
        if entry.type in (EntryType.CHARDEV, EntryType.BLOCKDEV):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == entry.rdev, entry.path
        if as_root:
            assert (st.st_uid, st.st_gid) == (entry.uid, entry.gid), entry.path
        if entry.type is not EntryType.DIR:  # a directory's mtime changes as cpio fills it
            assert st.st_mtime == EPOCH, entry.path


def test_members_follow_the_kernel_conventions():
    fs = build_model()
    fs.add_file("/etc/stamp", b"x", mtime=1234)
    members = read_cpio(archive_of(fs))
    assert members[0].name == "." and members[0].type is EntryType.DIR
    assert all(not m.name.startswith("/") for m in members)
    assert [m.ino for m in members] == list(range(1, len(members) + 1))
    assert all(m.nlink == (2 if m.type is EntryType.DIR else 1) for m in members)
    assert {m.name: m.mtime for m in members}["etc/stamp"] == 1234
    assert {m.mtime for m in members if m.name != "etc/stamp"} == {EPOCH}
    by_name = {m.name: m for m in members}
    assert by_name["dev/console"].rdev == (5, 1) and by_name["dev/null"].rdev == (1, 3)
    assert by_name["bin/passwd"].permissions == 0o4755
    assert by_name["init"].target == "/bin/busybox"
    assert by_name["home/user/notes.txt"].uid == 1000


def test_same_model_gives_identical_bytes_whatever_the_insertion_order():
    first = archive_of(build_model())
    assert archive_of(build_model()) == first
    assert archive_of(build_model(order=-1)) == first
    assert archive_of(build_model(), mtime=EPOCH + 1) != first


def test_layout_is_aligned_and_ends_with_the_trailer():
    data = archive_of(build_model())
    assert data.startswith(b"070701") and len(data) % 4 == 0
    trailer = data.rindex(b"070701")
    assert data[trailer + 110 : trailer + 121] == b"TRAILER!!!\0"
    for m in read_cpio(data):
        assert m.offset % 4 == 0
        assert data[m.offset : m.offset + 6] == b"070701"


DECOMPRESS = {"gzip": ["gzip", "-dc"], "xz": ["xz", "-dc"], "zstd": ["zstd", "-dc"], "none": ["cat"]}


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "none"])
def test_initramfs_decompresses_with_the_system_tools(tmp_path, compression):
    tool = DECOMPRESS[compression][0]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    fs = build_model()
    path = tmp_path / "initrd.img"
    write_initramfs(fs, path, compression=compression, mtime=EPOCH)
    plain = subprocess.run([*DECOMPRESS[compression], str(path)], capture_output=True, check=True).stdout
    assert plain == archive_of(fs)
    assert [m.name for m in read_initramfs(path)] == list(EXPECTED)
    again = tmp_path / "again.img"
    write_initramfs(build_model(order=-1), again, compression=compression, mtime=EPOCH)
    assert again.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.img", "initrd.img"]


def test_gzip_header_has_no_time_and_no_name(tmp_path):
    path = tmp_path / "initrd.img"
    write_initramfs(build_model(), path, mtime=EPOCH)
    header = path.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] == 0, "no FNAME (or other) flag"
    assert header[4:8] == b"\0\0\0\0", "gzip mtime must be 0"
    assert gzip.decompress(path.read_bytes()) == archive_of(build_model())


def test_xz_uses_the_crc32_check_the_kernel_supports(tmp_path):
    path = tmp_path / "initrd.img"
    write_initramfs(build_model(), path, compression="xz", mtime=EPOCH)
    data = path.read_bytes()
    assert data[6:8] == b"\x00\x01", "xz stream flags: check type 1 = CRC32"
    assert lzma.decompress(data) == archive_of(build_model())


def test_zstd_reads_back_through_python(tmp_path):
    path = tmp_path / "initrd.img"
    write_initramfs(build_model(), path, compression="zstd", mtime=EPOCH)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes()))
    assert reader.read() == archive_of(build_model())


def test_reader_handles_concatenated_plain_and_compressed_segments(tmp_path):
    early = RootFS()
    early.add_file("/kernel/x86/microcode/GenuineIntel.bin", b"ucode")
    path = tmp_path / "initrd.img"
    path.write_bytes(archive_of(early) + b"\0" * 8 + gzip.compress(archive_of(build_model()), mtime=0))
    names = [m.name for m in read_initramfs(path)]
    assert names[:4] == [".", "kernel", "kernel/x86", "kernel/x86/microcode"]
    assert names[5:] == list(EXPECTED)


def test_reads_real_gnu_cpio_archives(samples):
    for name in ("test_svr4.cpio", "test_svr4_crc.cpio"):
        members = read_cpio((samples / "cpio" / name).read_bytes())
        by_name = {m.name: m for m in members}
        assert list(by_name) == ["gophers.txt", "readme.txt", "todo.txt", "checklist.txt"]
        assert by_name["gophers.txt"].data == b"Gopher names:\nGeorge\nGeoffrey\nGonzo\n"
        assert by_name["todo.txt"].data == b"Get animal handling license.\n"
        assert by_name["checklist.txt"].type is EntryType.SYMLINK
        assert by_name["checklist.txt"].target == "todo.txt"
        assert by_name["readme.txt"].mtime == 1500199532
        assert by_name["gophers.txt"].permissions == 0o644


def test_crc_variant_checksum_mismatch_is_reported(samples):
    data = bytearray((samples / "cpio" / "test_svr4_crc.cpio").read_bytes())
    at = data.index(b"Gopher")
    data[at] = ord("g")
    with pytest.raises(FormatError, match=r"member gophers.txt at 0x0: checksum"):
        read_cpio(bytes(data))


def test_corrupt_header_reports_the_offset():
    data = bytearray(archive_of(build_model()))
    second = read_cpio(bytes(data))[1].offset
    data[second + 20] = ord("z")  # inside c_mode
    with pytest.raises(FormatError, match=rf"member at 0x{second:x}: .*hex digits"):
        read_cpio(bytes(data))
    with pytest.raises(FormatError, match=r"offset 0x0: not a newc cpio archive"):
        read_cpio(b"070707" + bytes(200))


def test_truncated_archive_and_stream_are_reported(tmp_path):
    data = archive_of(build_model())
    with pytest.raises(FormatError, match="member at 0x"):
        read_cpio(data[:-60])
    path = tmp_path / "cut.img"
    path.write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(FormatError, match="gzip stream is truncated"):
        read_initramfs(path)


def test_unencodable_entries_are_refused(tmp_path, monkeypatch):
    too_late = RootFS()
    too_late.add_file("/etc/future", b"", mtime=2**32)
    with pytest.raises(FormatError, match=r"/etc/future: c_mtime 4294967296"):
        archive_of(too_late)
    long_name = RootFS()
    long_name.add_file("/" + "/".join(["a" * 200] * 21), b"")  # each name fits NAME_MAX, the path not
    with pytest.raises(FormatError, match="name longer than 4096"):
        archive_of(long_name)
    monkeypatch.setattr(Entry, "size", property(lambda self: 2**32 if self.path == "/big" else 0))
    big = RootFS()
    big.add_file("/big", b"")
    out = tmp_path / "initrd.img"
    out.write_bytes(b"old")
    with pytest.raises(FormatError, match=r"/big: file size \(over 4 GiB\) 4294967296"):
        write_initramfs(big, out, mtime=EPOCH)
    assert out.read_bytes() == b"old", "a failed write leaves the previous image alone"
    assert [p.name for p in tmp_path.iterdir()] == ["initrd.img"], "and no temporary file"


def test_unknown_compression_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown initramfs compression 'lz5'"):
        write_initramfs(build_model(), tmp_path / "x", compression="lz5", mtime=EPOCH)
