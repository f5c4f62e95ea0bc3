"""Boards with a disk output boot from a squashfs root under a persistent writable overlay.

One build per board; the kernel itself is the independent reader of fwgen's squashfs and
sfdisk the reader of its partition table. A device's life in four boots of one disk image:
first boot formats the blank data partition; a file written under /etc survives a reboot;
garbage on the data partition gives a fresh overlay (and says so); `factory-reset` gives a
clean overlay on the next boot.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest
from buildutil import REPO, check_sboms, run_fwgen

from fwgen.board import Board
from fwgen.boot import BOOT_DISK, READY_MARKER, boot_spec_for, state_folder
from fwgen.checks import run_checks
from fwgen.config import load_board
from fwgen.images.cpio import read_cpio
from fwgen.qemu import Machine
from fwgen.slots import has_ab_slots

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]

# Every board of the tree that writes a disk. A board booted through U-Boot (output fit) has a
# FAT boot partition first, in the SD card's layout: root and data are its last two partitions.
# An A/B disk (qemu-aarch64-ab: GPT, two root slots) is booted by tests/test_updates.py; /init
# mounts its data partition as it does here.
DISK_BOARDS = sorted(
    path.stem for path in (REPO / "boards").glob("*.yaml")
    if "disk" in load_board(path).outputs and not has_ab_slots(load_board(path))
)


def root_and_data_numbers(board: Board) -> tuple[int, int]:
    first = 2 if "fit" in board.outputs else 1
    return first, first + 1


@pytest.fixture(scope="module", params=DISK_BOARDS)
def built(request, tmp_path_factory, cache_dir) -> tuple[Board, Path]:
    out = tmp_path_factory.mktemp("out")
    result = run_fwgen("build", "--board", request.param, "--out", str(out), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return load_board(request.param), out / request.param


def test_the_sboms_of_every_disk_board_validate_and_name_its_components(built):
    """The SBOM check (tests/buildutil.check_sboms) on this module's builds, so the disk boards
    need no build of their own for it."""
    board, outdir = built
    spdx, cdx = check_sboms(outdir)
    images = {p["name"] for p in spdx["packages"] if p["SPDXID"].startswith("SPDXRef-Image-")}
    assert "disk.img" in images
    print(f"{board.name}: {len(spdx['packages'])} SPDX packages, {len(cdx['components'])} CycloneDX components, "
          f"{(outdir / 'sbom.spdx.json').stat().st_size} + {(outdir / 'sbom.cdx.json').stat().st_size} bytes")


def root_and_data(disk: Path) -> list[dict]:
    """The root and data partitions: the last two (after a boot partition, if any)."""
    return read_partitions(disk)[-2:]


def read_partitions(disk: Path) -> list[dict]:
    """The partition table as sfdisk reads it: start and size in bytes, type."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "dos" and table["unit"] == "sectors"
    return [{"start": p["start"] * 512, "size": p["size"] * 512, "type": p["type"]} for p in table["partitions"]]


def read_partition(disk: Path, partition: dict) -> bytes:
    with open(disk, "rb") as f:
        f.seek(partition["start"])
        return f.read(partition["size"])


def test_disk_holds_the_squashfs_root_and_a_blank_data_partition(built, tmp_path):
    board, outdir = built
    manifest = json.loads((outdir / "manifest.json").read_text())
    disk = outdir / manifest["outputs"]["disk"]["file"]
    root, data = root_and_data(disk)
    assert (root["type"], data["type"]) == ("83", "83")
    if "fit" in board.outputs:  # the SD-card layout fills the disk up to a power of two
        assert data["size"] >= board.disk.data_size << 20
    else:
        assert data["size"] == board.disk.data_size << 20
    assert root["start"] + root["size"] <= data["start"]
    assert read_partition(disk, data).count(0) == data["size"], "the data partition starts blank"
    squashfs = tmp_path / "root.squashfs"
    squashfs.write_bytes(read_partition(disk, root))
    listing = subprocess.run(["unsquashfs", "-lls", "-d", "", str(squashfs)], capture_output=True,
                             text=True, check=True).stdout
    for path in ("/init", "/etc/inittab", "/etc/fwgen/boot.conf", "/sbin/factory-reset", "/rom", "/overlay"):
        assert f" {path}" in listing, path
    conf = subprocess.run(["unsquashfs", "-cat", str(squashfs), "etc/fwgen/boot.conf"], capture_output=True,
                          text=True, check=True).stdout
    root_number, data_number = root_and_data_numbers(board)
    assert f"ROOT={board.disk.partition(root_number)}\n" in conf
    assert f"DATA={board.disk.partition(data_number)}\n" in conf


def test_boot_initramfs_holds_only_what_init_needs(built):
    _, outdir = built
    archive = read_cpio(gzip.decompress((outdir / "initramfs.cpio.gz").read_bytes()))
    members = {m.name.lstrip("./"): m for m in archive}
    assert {"init", "bin/busybox", "sbin/switch_root", "sbin/mke2fs", "etc/fwgen/boot.conf"} <= set(members)
    loaded = members["etc/fwgen/modules"].data.decode().split()
    names = json.loads((outdir / "manifest.json").read_text())["inputs"]["kernel_modules"]
    assert [Path(p).stem for p in loaded] == names and "virtio_blk" in names
    assert {p.lstrip("/") for p in loaded} <= set(members)
    assert "etc/inittab" not in members and "etc/os-release" not in members


UPPER_LISTING = "cd /overlay/upper && find . | sort"


class Device:
    """Boots of one disk image, each with its own console log."""

    def __init__(self, board: Board, outdir: Path, workdir: Path) -> None:
        self.board, self.outdir, self.workdir = board, outdir, workdir
        self.boots = 0
        self.ready_seconds: list[float] = []

    def boot(self, *, fresh: bool = False) -> Machine:
        self.boots += 1
        spec = boot_spec_for(self.board, self.outdir, fresh_disk=fresh)
        machine = Machine(spec, self.workdir / f"boot{self.boots}",
                          timeout_factor=float(os.environ.get("FWGEN_TIMEOUT_FACTOR", "1")))
        machine.start()
        self.ready_seconds.append(machine.wait_for(READY_MARKER, timeout=120))
        return machine

    @property
    def disk(self) -> Path:
        return state_folder(self.outdir) / BOOT_DISK

    def console(self) -> str:
        return (self.workdir / f"boot{self.boots}" / "console.log").read_text(errors="replace")


def run_ok(machine: Machine, command: str) -> str:
    status, output = machine.run(command)
    assert status == 0, f"{command!r} exited {status}: {output}"
    return output


def test_overlay_persists_across_reboots_survives_garbage_and_factory_resets(built, tmp_path):
    board, outdir = built
    device = Device(board, outdir, tmp_path)
    root_dev, data_dev = (board.disk.partition(n) for n in root_and_data_numbers(board))
    token = secrets.token_hex(8)

    # 1. First boot: the blank data partition is formatted; / is the overlay over /rom.
    with device.boot(fresh=True) as machine:
        mounts = run_ok(machine, "cat /proc/mounts").splitlines()
        assert f"{root_dev} /rom squashfs ro" in "\n".join(mounts), mounts
        [overlay] = [m for m in mounts if m.split()[1] == "/"]
        assert overlay.split()[0:3] == ["overlay", "/", "overlay"], overlay
        assert "lowerdir=/rom," in overlay and "upperdir=/overlay/upper" in overlay
        assert any(m.startswith(f"{data_dev} /overlay ext4 rw") for m in mounts), mounts
        check_kernel_reads_our_squashfs(machine, device.disk, tmp_path)
        # What a boot itself writes (resolv.conf, /var...): the mark of a clean overlay.
        fresh_upper = run_ok(machine, UPPER_LISTING)
        assert "persist-test" not in fresh_upper
        results = run_checks(machine, board.checks)
        assert all(r.passed for r in results), [r for r in results if not r.passed]
        run_ok(machine, f"echo {token} > /etc/persist-test && sync")
        machine.poweroff()
    assert f"data partition {data_dev} blank (first boot), formatted a fresh overlay" in device.console()

    # 2. Reboot of the same disk: the file is still there, in the upper layer on the data partition.
    with device.boot() as machine:
        assert run_ok(machine, "cat /etc/persist-test") == token
        assert run_ok(machine, "cat /overlay/upper/etc/persist-test") == token
        assert run_ok(machine, "test -e /rom/etc/persist-test || echo absent") == "absent"
        machine.poweroff()
    assert "keeping the overlay of earlier boots" in device.console()

    # 3. Garbage over the whole data partition: still boots, on a fresh overlay, and says so.
    _, data = root_and_data(device.disk)
    with open(device.disk, "r+b") as f:
        f.seek(data["start"])
        f.write(os.urandom(data["size"]))
    with device.boot() as machine:
        assert run_ok(machine, "test -e /etc/persist-test || echo gone") == "gone"
        run_ok(machine, f"echo {token} > /etc/persist-test && sync")
        output = run_ok(machine, "factory-reset")
        assert "formatted on the next boot" in output
        machine.poweroff()
    assert f"data partition {data_dev} unreadable, formatted a fresh overlay" in device.console()

    # 4. After factory-reset: a clean overlay, nothing of the earlier changes left.
    with device.boot() as machine:
        assert run_ok(machine, "test -e /etc/persist-test || echo gone") == "gone"
        assert run_ok(machine, UPPER_LISTING) == fresh_upper
        assert run_ok(machine, "test -e /overlay/factory-reset || echo clear") == "clear"
        machine.poweroff()
    assert "factory reset requested, formatted a fresh overlay" in device.console()
    print(f"{board.name}: boot-to-ready seconds {[round(s, 1) for s in device.ready_seconds]}")


def check_kernel_reads_our_squashfs(machine: Machine, disk: Path, tmp_path: Path) -> None:
    """The kernel's squashfs driver and unsquashfs agree on every path and file content."""
    root, _ = root_and_data(disk)
    image = tmp_path / "root.squashfs"
    image.write_bytes(read_partition(disk, root))
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", str(image)], capture_output=True, text=True,
                             check=True).stdout
    host_paths = sorted(line for line in listing.splitlines() if line.startswith("/"))
    guest_paths = sorted(run_ok(machine, "cd /rom && find . -mindepth 1 | sed 's,^\\.,,'").splitlines())
    assert guest_paths == host_paths
    # Regular files only: unsquashfs cannot create device nodes without root, and says so.
    unpacked = tmp_path / "unpacked"
    subprocess.run(["unsquashfs", "-no-xattrs", "-d", str(unpacked), str(image)], capture_output=True)
    guest_sums = dict(line.split()[::-1] for line in run_ok(
        machine, "cd /rom && find . -type f | xargs sha256sum | sed 's,  \\./,  /,'").splitlines())
    host_sums = {"/" + str(p.relative_to(unpacked)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in unpacked.rglob("*") if p.is_file() and not p.is_symlink()}
    assert guest_sums == host_sums
