"""A guest that cannot get going fails its boot early, with the console tail, instead of
after the whole ready timeout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from buildutil import REPO, run_fwgen

from fwgen.errors import EXIT_BOOT_FAILED
from fwgen.images.squashfs_reader import SquashfsImage

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]

BOARD = "qemu-aarch64-disk-reread"
BLOB = "/usr/share/reread/blob"
# Started by /etc/init.d/rcS before the ready line, as a respawning program would, it reads
# a file of the squashfs root again and again.
REREAD = f"""#!/bin/sh
case "$1" in
start) while :; do cat {BLOB} >/dev/null 2>&1; sleep 0.2; done ;;
esac
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory, cache_dir) -> Path:
    """qemu-aarch64-disk (the cheapest disk board) with an overlay that rereads a file."""
    root = tmp_path_factory.mktemp("reread")
    overlay = root / "overlays" / "reread"
    script = overlay / "files" / "etc" / "fwgen" / "rc.d" / "S90reread"
    script.parent.mkdir(parents=True)
    script.write_text(REREAD)
    script.chmod(0o755)
    blob = overlay / "files" / BLOB.lstrip("/")
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"fwgen squashfs block\n" * 40_000)  # compressible: stored compressed
    (overlay / "overlay.yaml").write_text("description: rereads a file of the root\ndepends: [base]\n")
    board = (REPO / "boards" / "qemu-aarch64-disk.yaml").read_text()
    board = board.replace("name: qemu-aarch64-disk", f"name: {BOARD}").replace(
        "overlays: [base, httpd]", "overlays: [base, httpd, reread]")
    (root / "boards").mkdir()
    (root / "boards" / f"{BOARD}.yaml").write_text(board)
    out = root / "out"
    result = run_fwgen("build", "--board", str(root / "boards" / f"{BOARD}.yaml"), "--overlays-dir",
                       str(root / "overlays"), "--out", str(out), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return root


def _damage_blob(disk: Path) -> int:
    """Flip bytes inside every compressed data block of BLOB in partition 1 (the squashfs)."""
    start = 1 << 20  # partition 1 begins at sector 2048
    raw = bytearray(disk.read_bytes())
    squashfs = disk.with_name("root.squashfs")
    squashfs.write_bytes(raw[start:])
    with SquashfsImage(squashfs) as image:
        blocks = image.data_blocks(BLOB)
    squashfs.unlink()
    for at, size in blocks:
        for i in range(start + at + 8, start + at + size, 97):
            raw[i] ^= 0xFF
    disk.write_bytes(bytes(raw))
    return len(blocks)


def test_corrupt_squashfs_fails_the_boot_early_with_the_tail(built, cache_dir):
    out = built / "out" / BOARD
    disk = out / json.loads((out / "manifest.json").read_text())["outputs"]["disk"]["file"]
    assert _damage_blob(disk) >= 2
    started = time.monotonic()
    result = run_fwgen("boot", "--board", str(built / "boards" / f"{BOARD}.yaml"), "--overlays-dir",
                       str(built / "overlays"), "--out", str(built / "out"), "--timeout-factor", "4",
                       cache=cache_dir)
    seconds = time.monotonic() - started
    assert result.returncode == EXIT_BOOT_FAILED, result.stderr
    lines = result.stderr.strip().splitlines()
    [error] = [line for line in lines if line.startswith("fwgen: error: ")]
    assert "the console repeats I/O or filesystem errors (10 before 'fwgen: ready' appeared; last: " \
           "SQUASHFS error" in error, error
    tail = lines[lines.index("--- console tail ---") + 1:]
    assert sum("SQUASHFS error" in line for line in tail) >= 10, tail
    ready_timeout = 120 * 4  # the board's qemu.timeout (default) times the factor
    assert seconds < 120, f"failed after {seconds:.0f} s; the ready timeout is {ready_timeout} s"
