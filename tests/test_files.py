"""fwgen.files: the one atomic writer and the one file hash every module uses."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from fwgen.files import current_umask, hash_file, replacing


def test_replacing_puts_the_whole_new_file_in_place_with_the_umask_mode(tmp_path):
    path = tmp_path / "image.bin"
    path.write_bytes(b"old")
    old = os.umask(0o027)
    try:
        with replacing(path) as out:
            out.write(b"new " * 1000)
            out.seek(0)
            assert out.read(4) == b"new "  # writers that read back (FAT) get a read-write file
            assert path.read_bytes() == b"old"  # nothing shows before the block ends
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new " * 1000
    assert path.stat().st_mode & 0o7777 == 0o640
    assert os.listdir(tmp_path) == ["image.bin"]


def test_replacing_gives_the_mode_asked_for_and_its_suffix(tmp_path):
    path = tmp_path / "busybox"
    with replacing(path, mode=0o755, suffix=".part") as out:
        [tmp] = [name for name in os.listdir(tmp_path)]
        assert tmp.startswith(".busybox.") and tmp.endswith(".part")
        out.write(b"\x7fELF")
    assert path.stat().st_mode & 0o7777 == 0o755


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "initramfs.cpio.gz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="compressor died"), replacing(path) as out:
        out.write(b"half")
        raise RuntimeError("compressor died")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["initramfs.cpio.gz"]


def test_a_long_name_still_gets_a_temporary_file(tmp_path):
    path = tmp_path / ("x" * 250)  # the final name fits NAME_MAX, the temporary's must too
    with replacing(path) as out:
        out.write(b"data")
    assert path.read_bytes() == b"data" and os.listdir(tmp_path) == [path.name]


def test_hash_file_is_sha256sum(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 << 20 | 5))  # more than one 1 MiB chunk, and a tail
    expected = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert hash_file(path) == expected == hashlib.sha256(path.read_bytes()).hexdigest()


def test_current_umask_reads_without_changing_it():
    old = os.umask(0o037)
    try:
        assert current_umask() == 0o037
        assert current_umask() == 0o037
    finally:
        os.umask(old)
