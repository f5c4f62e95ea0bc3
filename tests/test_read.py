"""The one folder reader (rootfs.read_folder) and the one image reader (images.read.read_image)
against real images: what unsquashfs and GNU cpio unpack from a sample, read back as a folder,
is the model read_image makes of the sample itself."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fwgen.errors import FormatError, UserError
from fwgen.images.cpio import read_cpio, write_cpio, write_initramfs
from fwgen.images.inspect import list_image
from fwgen.images.read import read_image
from fwgen.rootfs import EntryType, RootFS, read_folder

SQUASHFS = ["squashfs/fact-gzip.sqfs", "squashfs/fact-xz.sqfs", "squashfs/fact-zstd.sqfs",
            "squashfs/binwalk-squashfs.bin"]
CPIO = ["cpio/test_svr4.cpio", "cpio/test_svr4_crc.cpio"]


def _model(rootfs: RootFS) -> dict[str, tuple]:
    """What both readers must agree on; "/" left out (an unpacked folder's top is the host's),
    a symlink's mode (Linux makes every link 0777; an archive may record 0755), and owners
    unless root unpacked them (only root's unpacking keeps them)."""
    return {e.path: (e.type, None if e.type is EntryType.SYMLINK else e.mode, e.data, e.target,
                     (e.uid, e.gid) if os.geteuid() == 0 else None)
            for e in rootfs if e.path != "/"}


@pytest.mark.parametrize("sample", SQUASHFS)
def test_a_squashfs_sample_reads_as_unsquashfs_unpacks_it(samples, tmp_path, sample):
    if shutil.which("unsquashfs") is None:
        pytest.skip("unsquashfs (squashfs-tools) is not installed")
    image = samples / sample
    unpacked = tmp_path / "root"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(unpacked), str(image)], check=True, capture_output=True)
    model = read_image(image)
    assert _model(model) == _model(read_folder(unpacked))
    assert any(e.type is EntryType.FILE and e.data for e in model)


@pytest.mark.parametrize("sample", CPIO)
def test_a_cpio_sample_reads_as_gnu_cpio_unpacks_it(samples, tmp_path, sample):
    archive = samples / sample
    unpacked = tmp_path / "root"
    unpacked.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=archive.read_bytes(),
                   cwd=unpacked, check=True, capture_output=True)
    model = read_image(archive)
    assert _model(model) == _model(read_folder(unpacked))
    assert model["/checklist.txt"].target == "todo.txt" and model["/checklist.txt"].provenance == f"initramfs:{archive}"
    assert model["/readme.txt"].mtime == 1500199532  # the member's own time, kept


def test_read_folder_keeps_types_modes_and_never_follows_a_link(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd").write_text("hello\n")
    (tmp_path / "etc" / "motd").chmod(0o640)
    (tmp_path / "host-passwd").symlink_to("/etc/passwd")  # a link out of the folder stays a link
    model = read_folder(tmp_path, all_root=True)
    assert model["/etc/motd"].data == b"hello\n" and model["/etc/motd"].mode == 0o640
    assert (model["/host-passwd"].type, model["/host-passwd"].target) == (EntryType.SYMLINK, "/etc/passwd")
    assert {(e.uid, e.gid) for e in model} == {(0, 0)}
    with pytest.raises(UserError, match="not a directory"):
        read_folder(tmp_path / "etc" / "motd")


def test_a_member_climbing_out_of_the_root_is_a_format_error_naming_it(tmp_path):
    rootfs = RootFS()
    rootfs.add_file("/aaaaaaa", b"x")
    archive = tmp_path / "evil.cpio"
    with open(archive, "wb") as out:
        write_cpio(rootfs, out, mtime=0)
    archive.write_bytes(archive.read_bytes().replace(b"aaaaaaa\0", b"../evil\0"))
    assert [m.name for m in read_cpio(archive.read_bytes())][-1] == "../evil"
    with pytest.raises(FormatError, match=r"evil.cpio: cpio member '\.\./evil' at 0x[0-9a-f]+: .*escapes"):
        read_image(archive)
    with pytest.raises(FormatError, match="escapes"):
        list_image(archive)


def test_an_initramfs_listing_keeps_dot_files(tmp_path):
    rootfs = RootFS()
    rootfs.add_file("/.profile", b"export PS1='# '\n")
    rootfs.add_file("/etc/.hidden", b"")
    image = tmp_path / "initramfs.cpio.gz"
    write_initramfs(rootfs, image, mtime=0)
    paths = [row["path"] for row in list_image(image)[1]]
    assert {"/.profile", "/etc/.hidden"} <= set(paths) and "/profile" not in paths
