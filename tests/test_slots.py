"""The A/B layout of fwgen/slots.py without QEMU: the GPT disk, the state partition in the
bytes U-Boot's `env export -t` writes, the boot script, update.conf and the names the guest's
scripts (overlays/base init, overlays/update fwupdate) read. tests/test_updates.py boots it."""

from __future__ import annotations

import re
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from buildutil import REPO
from construct import Array

from fwgen import guest, slots
from fwgen.config import load_board
from fwgen.errors import UserError
from fwgen.images.disk import GPT_ENTRY, GPT_TYPE_OF_MBR, SECTOR
from fwgen.images.fat import FatVolume
from fwgen.rootfs import RootFS

MIB = 1 << 20
FWUPDATE = (REPO / "overlays" / "update" / "files" / "usr" / "sbin" / "fwupdate").read_text()
INIT = (REPO / "overlays" / "base" / "files" / "init").read_text()


@pytest.fixture
def board():
    return load_board("qemu-aarch64-ab")


def gpt(path: Path) -> list[tuple[str, str, int, int]]:
    """(name, type GUID, start, size in bytes) of each partition, from the primary GPT."""
    with open(path, "rb") as f:
        f.seek(2 * SECTOR)
        entries = Array(128, GPT_ENTRY).parse(f.read(32 * SECTOR))
    return [(e.partition_name.decode("utf-16-le").rstrip("\0"), str(_guid(e.partition_type_guid)),
             e.starting_lba * SECTOR, (e.ending_lba - e.starting_lba + 1) * SECTOR)
            for e in entries if e.starting_lba]


def _guid(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=raw)


def test_the_state_sector_is_what_uboots_env_export_writes(board):
    # Measured under QEMU: `env export -t -s 0x200` of these three variables wrote exactly this
    # (sorted names, one per line, NUL-padded), which `env import -t addr 0x200` reads back.
    measured = b"BOOT_A_LEFT=3\nBOOT_B_LEFT=0\nBOOT_ORDER=B A\n".ljust(512, b"\0")
    assert slots.boot_state("B A", {"A": 3, "B": 0}) == measured
    state = slots.initial_state(board)
    assert len(state) == slots.STATE_SIZE
    assert state[:SECTOR] == slots.boot_state("A B", {"A": 3, "B": 0})
    records = state[guest.SLOT_STATE_SECTOR * SECTOR:][:SECTOR].rstrip(b"\0").decode()
    assert records == "A_STATE=good\nA_VERSION=1\nB_STATE=empty\nB_VERSION=\n"


def test_the_ab_disk_holds_boot_scr_alone_on_fat_and_slot_a_written(board, tmp_path):
    root = tmp_path / "rootfs.squashfs"
    root.write_bytes(b"hsqs" + bytes(3 * MIB))
    fit = b"\xd0\x0d\xfe\xed" + bytes(5 * MIB)
    disk = tmp_path / "disk.img"
    sizes = slots.write_slot_disk(disk, board, boot_files={"boot.scr": b"script"}, fit=fit, root=root, mtime=0)
    assert (sizes.fit, sizes.root) == (16 * MIB, 16 * MIB)  # the board's update.fit_size and root_size
    table = gpt(disk)
    assert [name for name, *_ in table] == list(slots.PARTITIONS)
    places = {name: (start, size) for name, _, start, size in table}
    assert table[0][1] == GPT_TYPE_OF_MBR[0x0C] and all(t == GPT_TYPE_OF_MBR[0x83] for _, t, *_ in table[1:])
    data = disk.read_bytes()
    with open(disk, "rb") as f:
        volume = FatVolume(f, places["boot"][0])
        assert volume.listdir("/") == ["boot.scr"] and volume.read("boot.scr") == b"script"

    def content(name: str) -> bytes:
        start, size = places[name]
        return data[start:start + size]

    assert content("state") == slots.initial_state(board)
    assert content("fit-A")[:len(fit)] == fit and content("root-A")[:4 + 3 * MIB] == root.read_bytes()
    assert content("fit-B").count(0) == sizes.fit and content("root-B").count(0) == sizes.root
    assert places["data"][1] == board.disk.data_size * MIB
    assert places["fit-A"][1] == places["fit-B"][1] and places["root-A"][1] == places["root-B"][1]


def test_a_slot_too_small_for_the_build_is_refused_naming_the_setting(board):
    small = replace(board, update=replace(board.update, root_size=2))
    with pytest.raises(UserError, match=r"the squashfs root is 3,145,728 bytes, more than update\.root_size "
                                        r"\(2 MiB\): each of the two root slots holds one"):
        slots.plan_slot_sizes(small, MIB, 3 * MIB)
    default = replace(board, update=replace(board.update, fit_size=None, root_size=None),
                      disk=replace(board.disk, root_slack=4))
    assert slots.plan_slot_sizes(default, 10 * MIB + 1, MIB) == slots.SlotSizes(15 * MIB, 5 * MIB)


def test_the_boot_script_counts_the_attempt_on_disk_before_it_boots(board):
    script = slots.boot_script(board, "console=ttyAMA0 rdinit=/init", "0x50000000", "conf-1")
    lines = script.splitlines()
    save = next(i for i, line in enumerate(lines) if line.startswith("mw.b 0x50000000 0 0x200; env export"))
    boot = next(i for i, line in enumerate(lines) if line.startswith("bootm "))
    assert save < boot and "virtio write 0x50000000 ${fwgen_state} 1" in lines[save]
    assert "env import -t 0x50000000 0x200 BOOT_A_LEFT BOOT_B_LEFT BOOT_ORDER" in lines
    assert f"part start virtio 0 {slots.STATE_PART} fwgen_state" in lines
    # A slot is taken only with attempts left, and its counter goes down before it is tried.
    for slot in slots.SLOTS:
        assert (f'test "${{BOOT_{slot}_LEFT}}" -gt 0; then setexpr BOOT_{slot}_LEFT ${{BOOT_{slot}_LEFT}} - 1; '
                f"setenv fwgen_slot {slot}; fi") in script
    # The FIT comes from the slot's raw partition, found by its GPT name.
    assert {f"fit-{s}" for s in slots.SLOTS} <= set(slots.PARTITIONS)
    assert "part start virtio 0 fit-${fwgen_slot} fwgen_fit_start" in lines
    assert f'setenv bootargs "${{fwgen_cmdline}} {guest.SLOT_PARAMETER}=${{fwgen_slot}}"' in lines
    assert lines[-1] == "reset"  # a slot that did not start: try again, counted


def test_init_mounts_the_root_of_the_slot_uboot_booted():
    conf = guest.ab_boot_conf("b", ("/dev/vda5", "/dev/vda6"), "/dev/vda7")
    assert tuple(line.split("=", 1)[0] for line in conf.splitlines()[1:]) == guest.AB_CONF_KEYS
    for slot in slots.SLOTS:
        assert f"{guest.SLOT_PARAMETER}={slot}) ROOT=$ROOT_{slot}" in INIT


def test_update_conf_sets_what_fwupdate_reads(board):
    rootfs = RootFS()
    slots.add_update_files(rootfs, board)
    conf = rootfs.get(guest.UPDATE_CONF).data.decode()
    values = dict(line.split("=", 1) for line in conf.splitlines() if not line.startswith("#"))
    assert values["VERSION"] == "1" and values["SLOTS"] == "ab" and values["TRIALS"] == "3"
    assert (values["STATE"], values["FIT_B"], values["ROOT_A"]) == ("/dev/vda2", "/dev/vda4", "/dev/vda5")
    assert values["KEYS"] == guest.UPDATE_KEYS_DIR
    for name in values:
        if name[-2:] in ("_A", "_B"):  # a slot's partition, read by a name built from the slot
            assert f'get "{name[:-1]}$INACTIVE"' in FWUPDATE, name
        else:
            assert re.search(rf"\$\{{?{name}\b", FWUPDATE), f"fwupdate never reads {name}"
    [key] = board.update.keys
    assert rootfs.get(f"{guest.UPDATE_KEYS_DIR}/{key.name}").data == key.read_bytes()
    assert f'CONF=/rom{guest.UPDATE_CONF}' in FWUPDATE


def test_update_conf_quotes_a_health_command_for_the_shell(board):
    health = "test \"$(cat /run/ok)\" = 'yes'"
    conf = slots.update_conf(replace(board, update=replace(board.update, health=health)))
    shown = subprocess.run(["sh", "-c", conf + 'printf %s "$HEALTH"'], capture_output=True, text=True, check=True)
    assert shown.stdout == health


def test_only_a_board_with_disk_and_fit_gets_slots(board):
    assert slots.has_ab_slots(board)
    assert not slots.has_ab_slots(replace(board, outputs=("disk",)))
    assert not slots.has_ab_slots(replace(board, update=replace(board.update, slots="single")))
    assert not slots.has_ab_slots(replace(board, update=None))
