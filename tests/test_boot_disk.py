"""Fast checks of the disk-root plumbing: partition names, the board's disk section, the
writable working copy of a disk image and how QEMU attaches it. The boots themselves are in
test_squashfs_boot.py."""

from __future__ import annotations

import os

import pytest
from buildutil import REPO

from fwgen.board import DiskSpec
from fwgen.bootstate import BootState
from fwgen.config import load_board, load_qemu_profile
from fwgen.errors import ConfigError
from fwgen.qemu import BootSpec, qemu_argv


@pytest.mark.parametrize(("device", "number", "partition"), [
    ("/dev/vda", 1, "/dev/vda1"),
    ("/dev/sda", 2, "/dev/sda2"),
    ("/dev/mmcblk0", 2, "/dev/mmcblk0p2"),
    ("/dev/nvme0n1", 1, "/dev/nvme0n1p1"),
])
def test_partition_device_names_follow_the_kernel(device, number, partition):
    assert DiskSpec(device=device).partition(number) == partition


def test_disk_board_loads_its_disk_section():
    board = load_board("qemu-aarch64-disk")
    assert "disk" in board.outputs
    assert board.disk == DiskSpec(device="/dev/vda", data_size=32, root_slack=0)
    assert "virtio_blk" in board.kernel.modules


def test_a_disk_device_outside_dev_is_a_config_error_with_its_position(tmp_path):
    text = (REPO / "boards" / "qemu-aarch64-disk.yaml").read_text()
    board = tmp_path / "bad.yaml"
    board.write_text(text.replace("device: /dev/vda", "device: vda"))
    with pytest.raises(ConfigError) as raised:
        load_board(board)
    message = str(raised.value)
    line = text.splitlines().index("  device: /dev/vda") + 1
    assert f"bad.yaml:{line}:" in message and "disk.device" in message


def test_boot_disk_is_a_sparse_copy_kept_across_boots_until_fresh(tmp_path):
    built = tmp_path / "disk.img"
    payload = os.urandom(4096)
    with open(built, "wb") as f:  # data, 8 MiB of zeros, data: the shape of a fresh disk
        f.write(payload)
        f.seek(8 << 20, os.SEEK_CUR)
        f.write(payload)
    state = tmp_path / "state"
    copy = state / "disk.img"
    assert BootState(state).copy(built, "disk.img") == copy
    assert copy.read_bytes() == built.read_bytes()
    assert copy.stat().st_blocks * 512 < 1 << 20, "the zeros were not written"
    with open(copy, "r+b") as f:  # the guest writes
        f.write(b"guest")
    BootState(state).copy(built, "disk.img")
    assert copy.read_bytes().startswith(b"guest"), "a later boot sees what the guest wrote"
    BootState(state, fresh=True).copy(built, "disk.img")
    assert copy.read_bytes() == built.read_bytes()
    assert sorted(p.name for p in state.iterdir()) == ["disk.img", "disk.img.built"], "no temporary file left"


def test_persistent_drives_are_attached_writable(tmp_path):
    profile = load_qemu_profile("virt-aarch64")
    disk = tmp_path / "a,b.img"
    spec = BootSpec(profile=profile, kernel=tmp_path / "kernel", drives=(disk,))
    assert f"file={tmp_path}/a,,b.img,if=none,id=d0,format=raw,snapshot=on" in qemu_argv(spec)
    writable = qemu_argv(BootSpec(profile=profile, kernel=tmp_path / "kernel", drives=(disk,), persistent=True))
    drive = writable[writable.index("-drive") + 1]
    assert drive == f"file={tmp_path}/a,,b.img,if=none,id=d0,format=raw"
    assert writable[writable.index("-device", writable.index("-drive")) + 1] == "virtio-blk-device,drive=d0"
