"""A device's life across a rebuild, booted for real (qemu-aarch64-disk, the cheapest board with
a data partition): `fwgen boot` keeps the device in out/.state/<board>/, outside the build; the
persist check's token written in boot 1 is still there after a rebuild of a different image;
a layout change starts the data partition empty with a warning; --fresh-disk resets the disk.
debugfs is the independent reader of the guest's ext4 overlay."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from buildutil import REPO, run_fwgen

from fwgen.boot import READY_MARKER, boot_spec_for
from fwgen.bootstate import BootState, data_partition, state_folder
from fwgen.config import load_board
from fwgen.images.disk import MiB, Partition, write_disk_image
from fwgen.qemu import Machine

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]

TEMPLATE, NAME = "qemu-aarch64-disk", "state-disk"
PERSIST = "/etc/fwgen-persist-check"


def read_upper(disk: Path, path: str, tmp_path: Path) -> str:
    """A file of the guest's overlay (upper/ on the ext4 data partition), read by debugfs."""
    kept = data_partition(disk)
    assert kept is not None
    image = tmp_path / "data.ext4"
    with open(disk, "rb") as f:
        f.seek(kept.start)
        image.write_bytes(f.read(kept.size))
    return subprocess.run(["debugfs", "-R", f"cat /upper{path}", str(image)], capture_output=True, text=True,
                          check=True).stdout.strip()


def build(board: Path, out: Path, epoch: str, cache: Path) -> str:
    """Build the board; the SHA-256 of its disk image."""
    result = run_fwgen("build", str(board), "--out", str(out), "--force", cache=cache, env={"SOURCE_DATE_EPOCH": epoch})
    assert result.returncode == 0, result.stderr
    return built_sha256(out)


def test_the_devices_data_outlives_a_rebuild_and_fresh_disk_resets_it(tmp_path, cache_dir, capsys):
    board = tmp_path / f"{NAME}.yaml"
    board.write_text((REPO / "boards" / f"{TEMPLATE}.yaml").read_text().replace(f"name: {TEMPLATE}\n", f"name: {NAME}\n"))
    out = tmp_path / "out"
    first = build(board, out, "1700000000", cache_dir)

    # Boot 1, as a user boots: every check passes; the persist check leaves its token.
    booted = run_fwgen("boot", str(board), "--out", str(out), "--json", cache=cache_dir)
    assert booted.returncode == 0, booted.stdout + booted.stderr
    state = state_folder(out / NAME)
    assert json.loads(booted.stdout)["console_log"] == str(state / "console.log")
    assert not (out / NAME / "boot").exists(), "the build folder holds the build alone"
    token = read_upper(state / "disk.img", PERSIST, tmp_path)
    assert token.startswith("fwgen-persist-")

    # A rebuild of another image (another SOURCE_DATE_EPOCH): the build folder is replaced.
    assert build(board, out, "1700000001", cache_dir) != first
    spec = boot_spec_for(load_board(board), out / NAME)
    assert "warning" not in capsys.readouterr().err
    with Machine(spec, tmp_path / "boot2", timeout_factor=float(os.environ.get("FWGEN_TIMEOUT_FACTOR", "1"))) as m:
        m.start()
        m.wait_for(READY_MARKER, timeout=spec.ready_timeout)
        status, seen = m.run(f"cat {PERSIST}")
        assert (status, seen.strip()) == (0, token), "boot 2 sees what boot 1 wrote"
        m.poweroff()
    built = out / NAME / "disk.img"
    disk = state / "disk.img"
    rest = data_partition(disk).start
    with open(built, "rb") as a, open(disk, "rb") as b:
        assert a.read(rest) == b.read(rest), "the root is the rebuild's"

    # The real disk against a layout whose data partition is half as large: empty, and said once.
    root = data_partition(built).start - MiB
    with open(built, "rb") as f:
        f.seek(MiB)
        squashfs = f.read(root)
    smaller = tmp_path / "smaller.img"
    write_disk_image(smaller, [Partition("root", 0x83, squashfs, root), Partition("data", 0x83, None, 16 * MiB)])
    copy = BootState(tmp_path / "layout")
    copy.copy(disk, "disk.img", keep=data_partition)
    copy.copy(smaller, "disk.img", keep=data_partition)
    assert (tmp_path / "layout" / "disk.img").read_bytes() == smaller.read_bytes()
    assert "partition 2 changed in the rebuild" in capsys.readouterr().err

    # --fresh-disk: the built image again.
    boot_spec_for(load_board(board), out / NAME, fresh_disk=True)
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == built_sha256(out)


def built_sha256(out: Path) -> str:
    return json.loads((out / NAME / "manifest.json").read_text())["outputs"]["disk"]["sha256"]
