"""`fwgen inspect` and `fwgen squashfs` on real images, against unsquashfs as the reader."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from click.testing import CliRunner

from fwgen.cli import main
from fwgen.images.cpio import write_initramfs
from fwgen.rootfs import RootFS


def test_inspect_lists_a_real_mksquashfs_sample_and_extracts_a_file(samples):
    image = samples / "squashfs" / "fact-gzip.sqfs"
    result = CliRunner().invoke(main, ["inspect", str(image), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["path"]: r for r in json.loads(result.output)["entries"]}
    listing = subprocess.run(["unsquashfs", "-lln", "-d", "", str(image)], capture_output=True,
                             text=True, check=True).stdout
    # "drwxr-xr-x 1000/1000   39 2024-07-23 08:53 /generic folder": the name may hold spaces.
    listed = {m.group(1) for m in re.finditer(r"^\S+ \S+ +\d+ \S+ \d\d:\d\d (/.*)$", listing, re.M)}
    assert len(listed) == 4
    assert set(rows) - {"/"} == listed
    files = [p for p, r in rows.items() if r["type"] == "file"]
    extracted = CliRunner().invoke(main, ["inspect", str(image), "--extract", files[0]])
    assert extracted.exit_code == 0
    assert len(extracted.stdout_bytes) == rows[files[0]]["size"]


def test_squashfs_command_packs_a_folder_unsquashfs_agrees(tmp_path):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "motd").write_text("hello\n")
    os.symlink("/etc/motd", src / "motd")
    out = tmp_path / "out.sqfs"
    result = CliRunner().invoke(main, ["squashfs", str(src), str(out), "--comp", "zstd", "--all-root"])
    assert result.exit_code == 0, result.output
    listing = subprocess.run(["unsquashfs", "-lls", str(out)], capture_output=True, text=True,
                             check=True).stdout
    assert "squashfs-root/motd -> /etc/motd" in listing
    assert "root/root" in listing and "squashfs-root/etc/motd" in listing
    info = subprocess.run(["unsquashfs", "-s", str(out)], capture_output=True, text=True,
                          check=True).stdout
    assert "Compression zstd" in info


def _cpio_listing(archive: bytes) -> dict[str, str]:
    """GNU cpio's `-tv` lines by path: "-rw-r--r--   1 root root   36 ... gophers.txt"."""
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True).stdout
    lines = {}
    for line in listing.decode().splitlines():
        name = line.split()[8]
        lines["/" + name.lstrip("./")] = line
    return lines


@pytest.mark.parametrize("name", ["test_svr4.cpio", "test_svr4_crc.cpio"])
def test_inspect_shows_link_targets_only_for_symlinks_in_a_real_cpio(samples, name):
    archive = samples / "cpio" / name
    result = CliRunner().invoke(main, ["inspect", str(archive), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["path"]: r for r in json.loads(result.output)["entries"]}
    gnu = _cpio_listing(archive.read_bytes())
    assert set(rows) == set(gnu)
    for path, row in rows.items():
        if gnu[path].startswith("l"):
            assert row["type"] == "symlink" and gnu[path].endswith(f" -> {row['target']}")
        else:
            assert row["target"] == "", f"{path}: {row['target']!r}"
    assert rows["/checklist.txt"]["target"] == "todo.txt"
    text = CliRunner().invoke(main, ["inspect", str(archive)]).output
    assert len(text.splitlines()) == len(rows)  # file contents would add lines
    assert [line for line in text.splitlines() if " -> " in line] == [
        next(line for line in text.splitlines() if line.endswith("/checklist.txt -> todo.txt"))]


def test_inspect_of_an_initramfs_prints_no_file_content(tmp_path):
    rootfs = RootFS()
    rootfs.add_dir("/bin", 0o755)
    rootfs.add_file("/bin/busybox", b"\x7fELF\x01\x01\x01" + bytes(range(256)) * 40, 0o755)
    rootfs.add_symlink("/bin/sh", "busybox")
    rootfs.add_file("/etc/motd", b"welcome\n-> not a link\n", 0o644)
    image = tmp_path / "initramfs.cpio.gz"
    write_initramfs(rootfs, image, compression="gzip", mtime=0)
    rows = {r["path"]: r for r in json.loads(CliRunner().invoke(main, ["inspect", str(image), "--json"]).output)["entries"]}
    assert {p: r["target"] for p, r in rows.items() if r["target"]} == {"/bin/sh": "busybox"}
    assert rows["/bin/busybox"]["size"] == 7 + 256 * 40
    text = CliRunner().invoke(main, ["inspect", str(image)]).output
    assert "ELF" not in text and "welcome" not in text and len(text.splitlines()) == len(rows)
    assert [line.split()[-1] for line in text.splitlines() if "/etc/motd" in line] == ["/etc/motd"]
