"""`fwgen inspect` and `fwgen squashfs` on real images, against unsquashfs as the reader."""

from __future__ import annotations

import json
import os
import re
import subprocess

from click.testing import CliRunner

from fwgen.cli import main


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
