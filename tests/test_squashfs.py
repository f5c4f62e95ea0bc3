"""squashfs writer and reader, proven against squashfs-tools (unsquashfs, mksquashfs)."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import stat
import struct
import time
from pathlib import Path

import pytest

from fwgen.errors import FormatError, UserError
from fwgen.images import squashfs_layout as L
from fwgen.images.squashfs import read_squashfs, write_squashfs
from fwgen.rootfs import Entry, EntryType, RootFS, read_folder
from fwgen.run import run

MTIME = 1_700_000_000
DEEP = "/" + "/".join(f"level{i:02d}" for i in range(40)) + "/leaf.txt"
BLOCK_SIZES = [4096, 131072]
COMPRESSIONS = ["gzip", "xz", "zstd"]

needs_squashfs_tools = pytest.mark.skipif(
    shutil.which("unsquashfs") is None or shutil.which("mksquashfs") is None,
    reason="squashfs-tools is not installed (apt install squashfs-tools)",
)


def make_model(block_size: int) -> RootFS:
    """Every entry type and the awkward cases a squashfs writer must get right."""
    rnd = random.Random(4)
    rootfs = RootFS()
    rootfs.add_dir("/", 0o755, mtime=MTIME - 5)
    rootfs.add_file("/empty", b"")
    rootfs.add_file("/one-block", bytes(rnd.randrange(64) for _ in range(block_size)))
    text = b"".join(b"line %d of a compressible text file\n" % i for i in range(180_000))
    big = rnd.randbytes(2_000_000) + bytes(1 << 20) + text
    rootfs.add_file("/data/big.bin", big[: 10_000_000], mode=0o640, uid=1000, gid=1000)
    for i in range(1000):
        rootfs.add_file(f"/many/entry-{i:04d}-{'n' * (i % 40)}", b"%d\n" % i, uid=i % 7, gid=100 + i % 3)
    rootfs.add_file(DEEP, b"at the bottom\n")
    rootfs.add_device("/dev/console", EntryType.CHARDEV, 5, 1, 0o600)
    rootfs.add_device("/dev/sda1", EntryType.BLOCKDEV, 8, 1, 0o660, gid=6)
    rootfs.add_device("/dev/big-minor", EntryType.BLOCKDEV, 259, 300, 0o660)
    rootfs.add(Entry("/run/initctl", EntryType.FIFO, 0o600))
    rootfs.add(Entry("/run/socket", EntryType.SOCKET, 0o777, uid=33, gid=33))
    rootfs.add_symlink("/dangling", "../does/not/exist")
    rootfs.add_symlink("/bin/sh", "busybox")
    rootfs.add_file("/bin/busybox", b"\x7fELF" + rnd.randbytes(5000), mode=0o4755)
    rootfs.add_file("/bin/sgid-sticky", b"odd modes\n", mode=0o3751, mtime=12345)
    rootfs.add_dir("/tmp", 0o1777)
    rootfs.add_file("/copies/a", big[:300_000])
    rootfs.add_file("/copies/b", big[:300_000])
    rootfs.add_file("/copies/c", b"small duplicate\n")
    rootfs.add_file("/copies/d", b"small duplicate\n")
    rootfs.add_dir("/empty-dir", 0o700, uid=65534, gid=65534)
    rootfs.add_file("/name with spaces and \u00e9", b"unicode\n")
    return rootfs


@pytest.fixture(scope="module")
def models() -> dict[int, RootFS]:
    return {size: make_model(size) for size in BLOCK_SIZES}


def expected_mtime(entry: Entry) -> int:
    return MTIME if entry.mtime is None else entry.mtime


# -- parsing unsquashfs ---------------------------------------------------------------
LISTING = re.compile(
    r"^(?P<perm>\S{10}) (?P<uid>\d+)/(?P<gid>\d+) +(?P<size>\d+|\d+, +\d+) "
    r"(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d) squashfs-root(?P<path>.*?)(?: -> (?P<target>.*))?$"
)


def unsquashfs_listing(image: Path, *, dir_sizes: bool = True) -> dict[str, dict]:
    """`unsquashfs -lln` as {path: fields}. A directory's size is the length of its packed
    listing, a layout detail: compared only against mksquashfs (`dir_sizes`)."""
    out = run(["unsquashfs", "-lln", "-UTC", image]).stdout.decode()
    listing = {}
    for line in out.splitlines():
        m = LISTING.match(line)
        assert m, f"unparsed unsquashfs line: {line!r}"
        fields = m.groupdict()
        fields["size"] = re.sub(r", +", ",", fields["size"])
        if not dir_sizes and fields["perm"].startswith("d"):
            fields["size"] = "dir"
        listing[fields.pop("path") or "/"] = fields
    return listing


def unsquashfs_stats(image: Path) -> dict[str, str]:
    out = run(["unsquashfs", "-s", image]).stdout.decode()
    facts = {}
    for key, pattern in {
        "compression": r"^Compression (\w+)",
        "block_size": r"^Block size (\d+)",
        "inodes": r"^Number of inodes (\d+)",
        "ids": r"^Number of ids (\d+)",
        "fragments": r"^Number of fragments (\d+)",
        "duplicates": r"^(Duplicates are removed)",
        "exportable": r"^(Filesystem is exportable via NFS)",
    }.items():
        m = re.search(pattern, out, re.M)
        facts[key] = m.group(1) if m else None
    return facts


def expected_listing(rootfs: RootFS) -> dict[str, dict]:
    want = {}
    for e in rootfs:
        if e.type in (EntryType.CHARDEV, EntryType.BLOCKDEV):
            # unsquashfs -lls prints rdev >> 8 and rdev & 0xff of the kernel's encoding: it
            # shows minors above 255 wrong. Extraction below checks the real numbers.
            rdev = (e.rdev[1] & 0xFF) | (e.rdev[0] << 8) | ((e.rdev[1] & ~0xFF) << 12)
            size = f"{rdev >> 8},{rdev & 0xFF}"
        elif e.type is EntryType.DIR:
            size = "dir"
        else:
            size = str(e.size)
        want[e.path] = {
            "perm": stat.filemode(e.st_mode),
            "uid": str(e.uid),
            "gid": str(e.gid),
            "size": size,
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime(expected_mtime(e))),
            "target": e.target if e.type is EntryType.SYMLINK else None,
        }
    return want


def check_extracted(rootfs: RootFS, root: Path) -> None:
    """Every path of the model exists in `root` with the same type, bits and content."""
    found = {"/" + str(p.relative_to(root)) for p in root.rglob("*")} | {"/"}
    assert found == set(rootfs.entries)
    for e in rootfs:
        host = root / e.path.lstrip("/")
        st = os.lstat(host)
        assert stat.S_IFMT(st.st_mode) == e.type.format_bits, e.path
        assert (st.st_uid, st.st_gid) == (e.uid, e.gid), e.path
        if e.type is not EntryType.SYMLINK:
            assert stat.S_IMODE(st.st_mode) == e.mode, e.path
            assert int(st.st_mtime) == expected_mtime(e), e.path
        if e.type is EntryType.FILE:
            assert host.read_bytes() == e.data, e.path
        elif e.type is EntryType.SYMLINK:
            assert os.readlink(host) == e.target
        elif e.type in (EntryType.CHARDEV, EntryType.BLOCKDEV):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == e.rdev, e.path


def compare_reader(image: Path, rootfs: RootFS) -> None:
    img = read_squashfs(image)
    entries = img.entries()
    assert [e.path for e in entries] == [e.path for e in rootfs]
    for got in entries:
        want = rootfs[got.path]
        assert (got.type, got.mode, got.uid, got.gid, got.size, got.mtime, got.target, got.rdev) == (
            want.type, want.mode, want.uid, want.gid, want.size, expected_mtime(want), want.target, want.rdev
        ), got.path
        if got.type is EntryType.FILE:
            assert img.read_file(got.path) == want.data, got.path


# -- the writer, proven by unsquashfs ------------------------------------------------
@needs_squashfs_tools
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_unsquashfs_reads_every_entry(tmp_path, models, compression, block_size):
    rootfs = models[block_size]
    image = tmp_path / "root.sqfs"
    write_squashfs(rootfs, image, compression=compression, block_size=block_size, mtime=MTIME)

    assert image.stat().st_size % 4096 == 0
    assert unsquashfs_listing(image, dir_sizes=False) == expected_listing(rootfs)
    stats = unsquashfs_stats(image)
    ids = {e.uid for e in rootfs} | {e.gid for e in rootfs}
    assert stats == {
        "compression": compression, "block_size": str(block_size), "inodes": str(len(rootfs)),
        "ids": str(len(ids)), "fragments": stats["fragments"],
        "duplicates": "Duplicates are removed", "exportable": "Filesystem is exportable via NFS",
    }
    assert int(stats["fragments"]) >= 1

    out = tmp_path / "out"
    run(["unsquashfs", "-no-xattrs", "-d", out, image])
    check_extracted(rootfs, out)
    compare_reader(image, rootfs)


@needs_squashfs_tools
def test_duplicates_are_stored_once(tmp_path, models):
    rootfs = models[131072]
    image = tmp_path / "dups.sqfs"
    write_squashfs(rootfs, image, mtime=MTIME)
    without = RootFS({p: e for p, e in rootfs.entries.items() if p not in ("/copies/b", "/copies/d")})
    smaller = tmp_path / "nodups.sqfs"
    write_squashfs(without, smaller, mtime=MTIME)
    sb, sb_small = (L.SUPERBLOCK.parse(p.read_bytes()[:96]) for p in (image, smaller))
    # Two more inodes and directory entries, but no more data: well under 100 bytes each.
    assert 0 < sb.bytes_used - sb_small.bytes_used < 200


def test_rebuild_is_byte_identical_whatever_the_jobs(tmp_path, models):
    rootfs = models[4096]
    first, second = tmp_path / "a.sqfs", tmp_path / "b.sqfs"
    write_squashfs(rootfs, first, compression="zstd", block_size=4096, mtime=MTIME, jobs=2)
    write_squashfs(rootfs, second, compression="zstd", block_size=4096, mtime=MTIME, jobs=1)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sqfs", "b.sqfs"]  # no temp files left


def test_large_directory_index_finds_every_name(tmp_path, models):
    """The kernel's lookup jumps to the last index entry whose name is <= the wanted name
    (fs/squashfs/namei.c get_dir_index_using_name); every name must be found from there."""
    image = tmp_path / "index.sqfs"
    write_squashfs(models[131072], image, mtime=MTIME)
    img = read_squashfs(image)
    many = img._inode(_ref_of(img, "/many"))
    assert many.header.inode_type == L.LDIR and len(many.index) >= 2
    body = many.body
    start = img._dir_blocks[body.start_block] + body.offset
    for name in [c.rsplit("/", 1)[1].encode() for c in models[131072].entries if c.startswith("/many/")]:
        block, length = body.start_block, 0
        for item in many.index:
            if item.name > name:
                break
            length, block = item.index, item.start_block
        # The header the index points at must sit at that block and offset...
        pos = img._dir_blocks[block] + (body.offset + length) % L.METADATA_SIZE
        assert pos == start + length
        # ...and scanning from it must reach the name.
        names = _scan_listing(img._dirs, pos, start + body.file_size - 3)
        assert name in names


def _ref_of(img, path):
    root = img._inode(img.superblock.root_inode)
    return dict(img._listing("/", root))[path.strip("/").encode()]


def _scan_listing(table: bytes, pos: int, end: int) -> list[bytes]:
    names = []
    while pos < end:
        count = struct.unpack_from("<I", table, pos)[0] + 1
        pos += 12
        for _ in range(count):
            size = struct.unpack_from("<H", table, pos + 6)[0] + 1
            names.append(table[pos + 8: pos + 8 + size])
            pos += 8 + size
    return names


def test_write_is_atomic_and_refuses_bad_input(tmp_path):
    rootfs = RootFS()
    rootfs.add_file("/ok", b"fine")
    rootfs.add_file("/future", b"x", mtime=1 << 33)
    image = tmp_path / "out.sqfs"
    image.write_bytes(b"previous image")
    with pytest.raises(UserError, match="/future: mtime 8589934592 does not fit"):
        write_squashfs(rootfs, image, mtime=MTIME)
    assert image.read_bytes() == b"previous image"
    assert [p.name for p in tmp_path.iterdir()] == ["out.sqfs"]
    with pytest.raises(UserError, match="block size 1000"):
        write_squashfs(RootFS(), image, block_size=1000, mtime=MTIME)
    with pytest.raises(UserError, match="unknown squashfs compression 'lz5'"):
        write_squashfs(RootFS(), image, compression="lz5", mtime=MTIME)


# -- the reader: mksquashfs-made images and real samples -----------------------------
def make_host_tree(root: Path) -> None:
    rnd = random.Random(9)
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("fwgen\n")
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/libbig.so").write_bytes(rnd.randbytes(300_000) + bytes(200_000))
    (root / "usr/lib/libbig.so.1").symlink_to("libbig.so")
    (root / "escape").symlink_to("/etc")  # must be stored, never followed
    (root / "empty").write_bytes(b"")
    for i in range(300):
        (root / f"etc/conf-{i:03d}").write_text(f"value {i}\n" * (i % 5))
    os.mkfifo(root / "fifo")
    os.chmod(root / "etc/hostname", 0o4711)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
    if os.geteuid() == 0:
        os.mknod(root / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
        os.chown(root / "etc/hostname", 1000, 2000)
    os.utime(root / "etc/hostname", (1_600_000_000, 1_600_000_000))


@needs_squashfs_tools
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_reader_reads_mksquashfs_images(tmp_path, compression):
    src = tmp_path / "src"
    make_host_tree(src)
    model = read_folder(src, all_root=False)
    assert model["/escape"].type is EntryType.SYMLINK and model["/escape"].target == "/etc"
    image = tmp_path / "mk.sqfs"
    run(["mksquashfs", src, image, "-comp", compression, "-b", "65536", "-noappend", "-no-xattrs",
         "-processors", "2"])
    img = read_squashfs(image)
    assert img.compression == compression
    entries = img.entries()
    assert [e.path for e in entries] == [e.path for e in model]
    for got in entries:
        want = model[got.path]
        if got.path == "/":
            continue  # mksquashfs stamps the root with the source folder's times as we do, but
            # its owner and mode come from the folder: compare the rest
        assert (got.type, got.mode, got.uid, got.gid, got.size, got.mtime, got.target, got.rdev) == (
            want.type, want.mode, want.uid, want.gid, want.size, want.mtime, want.target, want.rdev
        ), got.path
        if got.type is EntryType.FILE:
            assert img.read_file(got.path) == want.data


@needs_squashfs_tools
def test_pack_directory_all_root_matches_mksquashfs(tmp_path):
    """Same host folder, both tools, -all-root: identical unsquashfs listings."""
    src = tmp_path / "src"
    make_host_tree(src)
    ours, theirs = tmp_path / "ours.sqfs", tmp_path / "theirs.sqfs"
    model = read_folder(src, all_root=True)
    assert {(e.uid, e.gid) for e in model} == {(0, 0)}
    write_squashfs(model, ours, mtime=MTIME)
    run(["mksquashfs", src, theirs, "-noappend", "-all-root", "-no-xattrs", "-processors", "2"])
    assert unsquashfs_listing(ours) == unsquashfs_listing(theirs)


def test_reader_reads_real_samples(samples):
    folder = samples / "squashfs"
    for name, compression in (("fact-gzip.sqfs", "gzip"), ("fact-xz.sqfs", "xz"), ("fact-zstd.sqfs", "zstd")):
        img = read_squashfs(folder / name)
        assert img.compression == compression
        assert [(e.path, e.type, e.size) for e in img.entries()] == [
            ("/", EntryType.DIR, 0),
            ("/generic folder", EntryType.DIR, 0),
            ("/generic folder/test file 3_.txt", EntryType.FILE, 20),
            ("/testfile1", EntryType.FILE, 62),
            ("/testfile2", EntryType.FILE, 28),
        ]
        assert img.read_file("/generic folder/test file 3_.txt") == b"The third test file!"
        assert img.read_file("/testfile2") == b"This is the second test file"
        assert {(e.uid, e.gid) for e in img.entries()} == {(1000, 1000)}
    img = read_squashfs(folder / "binwalk-squashfs.bin")
    lsb = img.read_file("/lsb-release")
    assert lsb.startswith(b"DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=22.04\n") and len(lsb) == 104


# -- binary errors say where ---------------------------------------------------------
@needs_squashfs_tools
def test_bad_inode_type_names_the_table_and_offset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("x")
    image = tmp_path / "plain.sqfs"
    # -noI keeps the inode table uncompressed, so one byte can be corrupted in place.
    run(["mksquashfs", src, image, "-noappend", "-noI", "-no-xattrs"])
    data = bytearray(image.read_bytes())
    sb = L.SUPERBLOCK.parse(data[:96])
    root = sb.root_inode
    at = sb.inode_table_start + (root >> 16) + 2 + (root & 0xFFFF)
    data[at:at + 2] = (9 + 15).to_bytes(2, "little")  # 24: no such inode type
    image.write_bytes(data)
    with pytest.raises(FormatError, match=rf"plain.sqfs: inode table at 0x{sb.inode_table_start:x}\+\d+: "
                                          r"bad inode type 24"):
        read_squashfs(image).entries()


def test_truncated_and_foreign_images_are_refused(tmp_path, samples):
    real = (samples / "squashfs/fact-gzip.sqfs").read_bytes()
    cut = tmp_path / "cut.sqfs"
    cut.write_bytes(real[:300])
    with pytest.raises(FormatError, match=r"cut.sqfs: superblock at 0x0: bytes_used \d+ beyond the end"):
        read_squashfs(cut)
    other = tmp_path / "other.bin"
    other.write_bytes(b"\x7fELF" + bytes(200))
    with pytest.raises(FormatError, match=r"other.bin: superblock at 0x0: bad magic"):
        read_squashfs(other)
    broken = tmp_path / "broken.sqfs"
    data = bytearray(real)
    sb = L.SUPERBLOCK.parse(real[:96])
    data[sb.inode_table_start + 2:sb.inode_table_start + 12] = b"\xff" * 10  # garbage deflate stream
    broken.write_bytes(data)
    with pytest.raises(FormatError, match=rf"broken.sqfs: inode table at 0x{sb.inode_table_start:x}: "
                                          r"cannot decompress gzip"):
        read_squashfs(broken)


@needs_squashfs_tools
def test_empty_tree_and_sparse_blocks(tmp_path, models):
    empty = tmp_path / "empty.sqfs"
    write_squashfs(RootFS(), empty, compression="xz", mtime=MTIME)
    assert unsquashfs_listing(empty, dir_sizes=False) == expected_listing(RootFS())
    assert [e.path for e in read_squashfs(empty).entries()] == ["/"]

    image = tmp_path / "sparse.sqfs"
    write_squashfs(models[131072], image, mtime=MTIME)
    big = read_squashfs(image)._lookup("/data/big.bin")
    # The 1 MiB of zeros after 2,000,000 random bytes covers blocks 16-22 entirely.
    assert [i for i, word in enumerate(big.blocks) if word == 0] == list(range(16, 23))
    # Random data does not compress: those blocks are stored raw (bit 24 set).
    assert all(word & L.DATA_UNCOMPRESSED for word in big.blocks[:15])


# -- the Linux kernel as the reader ----------------------------------------------------
# unsquashfs never reads a directory index and accepts any xz dictionary; the kernel relies
# on both. Boot the disk board with its root partition replaced by an image holding a
# 1,500-entry directory (a dozen index entries), sparse blocks, duplicates and odd nodes.
STRESS_NAMES = [f"{i:05d}-{'a long file name to fill metadata blocks'[: 10 + i % 30]}" for i in range(1500)]


@pytest.fixture(scope="module")
def disk_board(tmp_path_factory, cache_dir):
    from buildutil import run_fwgen

    from fwgen.config import load_board

    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed (apt install qemu-system-arm)")
    out = tmp_path_factory.mktemp("out")
    result = run_fwgen("build", "--board", "qemu-aarch64-disk", "--out", str(out), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return load_board("qemu-aarch64-disk"), out / "qemu-aarch64-disk"


def add_stress_tree(rootfs: RootFS) -> None:
    rnd = random.Random(11)
    for i, name in enumerate(STRESS_NAMES):
        rootfs.add_file(f"/stress/{name}", b"%d\n" % (i % 1200), mode=0o600 + i % 8, uid=i % 5, gid=i % 3)
    rootfs.add_file("/stress-big", rnd.randbytes(50_000) + bytes(40_000) + b"tail text\n" * 9000)
    rootfs.add_device("/stress-dev", EntryType.BLOCKDEV, 259, 300, 0o640)
    rootfs.add(Entry("/stress-fifo", EntryType.FIFO, 0o620))
    rootfs.add_symlink("/stress-link", f"stress/{STRESS_NAMES[7]}")


@pytest.mark.network
@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize(("compression", "block_size"), [("xz", 4096), ("zstd", 131072)])
def test_kernel_reads_our_image(disk_board, tmp_path, compression, block_size):
    import hashlib
    import json

    from fwgen.boot import READY_MARKER, boot_spec_for
    from fwgen.images.disk import Partition, write_disk_image
    from fwgen.qemu import Machine

    board, outdir = disk_board
    manifest = json.loads((outdir / "manifest.json").read_text())
    disk = outdir / manifest["outputs"]["disk"]["file"]
    table = json.loads(run(["sfdisk", "--json", disk]).stdout)["partitiontable"]["partitions"]
    built_root = tmp_path / "built.sqfs"
    with open(disk, "rb") as f:
        f.seek(table[0]["start"] * 512)
        built_root.write_bytes(f.read(table[0]["size"] * 512))
    rootfs = read_squashfs(built_root).to_rootfs()
    add_stress_tree(rootfs)
    image = tmp_path / "root.sqfs"
    write_squashfs(rootfs, image, compression=compression, block_size=block_size, mtime=MTIME)
    written = read_squashfs(image)
    stress = written._inode(_ref_of(written, "/stress"))
    assert stress.header.inode_type == L.LDIR and len(stress.index) >= 5
    write_disk_image(disk, [Partition("root", 0x83, image), Partition("data", 0x83, None, board.disk.data_size << 20)])

    with Machine(boot_spec_for(board, outdir, fresh_disk=True), tmp_path / "boot",
                 timeout_factor=float(os.environ.get("FWGEN_TIMEOUT_FACTOR", "1"))) as machine:
        machine.start()
        machine.wait_for(READY_MARKER, timeout=120)

        def guest(command: str) -> str:
            status, output = machine.run(command, timeout=60)
            assert status == 0, f"{command!r} exited {status}: {output}"
            return output

        assert "/rom squashfs ro" in guest("grep ' /rom ' /proc/mounts")
        assert guest("find /rom | wc -l") == str(len(rootfs))
        assert guest("ls /rom/stress | md5sum").split()[0] == hashlib.md5(
            "".join(n + "\n" for n in sorted(STRESS_NAMES)).encode()).hexdigest()
        # Lookups by name go through the directory index: every 37th name, both ends, misses.
        sample = STRESS_NAMES[::37] + [STRESS_NAMES[-1]]
        quoted = " ".join(f"'/rom/stress/{n}'" for n in sample)
        stats = guest(f"stat -c '%n|%s|%a|%u|%g' {quoted}").splitlines()
        assert stats == [
            f"/rom/stress/{n}|{rootfs['/stress/' + n].size}|{rootfs['/stress/' + n].mode:o}|"
            f"{rootfs['/stress/' + n].uid}|{rootfs['/stress/' + n].gid}" for n in sample
        ]
        sums = guest(f"cat {quoted} | md5sum").split()[0]
        assert sums == hashlib.md5(b"".join(rootfs["/stress/" + n].data for n in sample)).hexdigest()
        misses = " ".join(f"'/rom/stress/{n}x'" for n in STRESS_NAMES[::300])
        assert guest(f"for f in {misses}; do test -e \"$f\" && echo found; done; true") == ""
        assert guest("sha256sum /rom/stress-big").split()[0] == hashlib.sha256(rootfs["/stress-big"].data).hexdigest()
        assert guest("stat -c '%t:%T %a' /rom/stress-dev") == "103:12c 640"  # hex major:minor
        assert guest("stat -c '%F' /rom/stress-fifo") == "fifo"
        assert guest("cat /rom/stress-link") == "7"
        machine.poweroff()


@needs_squashfs_tools
def test_pack_directory_keeps_non_utf8_names_and_reports_unreadable_folders(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raw = b"caf\xe9-latin1"  # not UTF-8: must be stored as these bytes
    (src / os.fsdecode(raw)).write_bytes(b"latin\n")
    os.symlink(os.fsdecode(raw), os.path.join(src, "link"))
    image = tmp_path / "names.sqfs"
    write_squashfs(read_folder(src, all_root=True), image, mtime=MTIME)
    out = tmp_path / "out"
    run(["unsquashfs", "-d", out, image])
    assert sorted(os.listdir(os.fsencode(out))) == [raw, b"link"]
    assert os.readlink(os.path.join(os.fsencode(out), b"link")) == raw
    assert read_squashfs(image).read_file("/" + os.fsdecode(raw)) == b"latin\n"
    with pytest.raises(UserError, match=r"cannot read .*/missing: No such file or directory"):
        read_folder(tmp_path / "missing", all_root=True)
