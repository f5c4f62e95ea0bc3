"""A/B slots for boards with `update: {slots: ab}` booted by U-Boot from a disk (outputs disk
and fit): the partition layout, the boot-counting boot script and the state both sides keep.

Layout (GPT: seven partitions are more than an MBR holds)::

    1 boot    FAT32, boot.scr only (U-Boot's distro boot looks for it on a filesystem)
    2 state   raw; sector 0: U-Boot's boot counters, sector 8: the updater's slot records
    3 fit-A   raw; the FIT of slot A (kernel and boot initramfs), as U-Boot reads it
    4 fit-B
    5 root-A  the squashfs root of slot A
    6 root-B
    7 data    the overlay's upper layer, shared by both slots (kept across updates)

Why raw partitions rather than fit-a.itb/fit-b.itb files on the FAT partition: Linux writes
the inactive slot while the active one runs, and a power cut in the middle of that write can
only damage the partition being written. A FAT file system is one structure shared by both
files and boot.scr (one allocation table, one directory), so an interrupted write there can
take the running slot and the boot script with it; and Linux would need vfat for it. U-Boot
reads a raw partition by its GPT name (`part start virtio 0 fit-A`, `virtio read`); Debian's
qemu_arm64 U-Boot was measured doing so (docs/ab-slots.md).

Boot counting follows RAUC's U-Boot integration: BOOT_ORDER ("A B") and BOOT_A_LEFT /
BOOT_B_LEFT. The boot script imports them from the state partition's first sector, boots the
first slot of BOOT_ORDER with attempts left, decrements its counter and writes the sector back
(`env export -t`, `virtio write`) before the kernel starts; a slot at 0 is skipped. Linux (the
updater, overlays/update) resets the counter once the board's health check passes, and writes
the same sector to put a freshly written slot first. Sector 8 is the updater's own (each
slot's version and whether it is empty, being written, on trial, good or failed): U-Boot never
reads it, so what U-Boot writes back cannot drop it.
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .guest import SLOT_PARAMETER, SLOT_STATE_SECTOR, UPDATE_CONF, UPDATE_KEYS_DIR
from .images.disk import Partition, write_disk_image
from .images.fat import write_fat
from .images.sdcard import FAT32_LBA, LINUX, check_boot_size
from .progress import QUIET, Progress

if TYPE_CHECKING:
    from .board import Board
    from .rootfs import RootFS

SLOTS = ("A", "B")
SECTOR = 512
MIB = 1 << 20
STATE_SIZE = MIB
BOOT_PART, STATE_PART, DATA_PART = "boot", "state", "data"
# U-Boot's counters, as `env export -t` writes them: sorted by name, one per line.
BOOT_VARIABLES = ("BOOT_A_LEFT", "BOOT_B_LEFT", "BOOT_ORDER")


def fit_part(slot: str) -> str:
    return f"fit-{slot}"


def root_part(slot: str) -> str:
    return f"root-{slot}"


# GPT partition names in disk order: partition N is PARTITIONS[N - 1].
PARTITIONS = (BOOT_PART, STATE_PART, *map(fit_part, SLOTS), *map(root_part, SLOTS), DATA_PART)


def partition_number(name: str) -> int:
    return PARTITIONS.index(name) + 1


def has_ab_slots(board: Board) -> bool:
    """The board's disk has two slots and U-Boot counts boot attempts: `update.slots: ab`
    with the disk and fit outputs. Other boards with `update:` get a bundle but no slots."""
    return (board.update is not None and board.update.slots == "ab"
            and {"disk", "fit"} <= set(board.outputs))


@dataclass(frozen=True)
class SlotSizes:
    """Bytes of one FIT slot and one root slot (each exists twice)."""

    fit: int
    root: int


def plan_slot_sizes(board: Board, fit_size: int, root_size: int) -> SlotSizes:
    """Each slot's partition size: `update.fit_size` / `update.root_size` MiB when the board
    fixes them (so that later versions fit the partitions this one lays out), else the
    content rounded up to a MiB plus `disk.root_slack`. Refuses content larger than its slot."""
    assert board.update is not None
    slack = board.disk.root_slack * MIB
    sizes = {}
    for kind, content, fixed in (("fit", fit_size, board.update.fit_size),
                                 ("root", root_size, board.update.root_size)):
        if fixed is None:
            sizes[kind] = -(-content // MIB) * MIB + slack
        elif content > fixed * MIB:
            what = "FIT (kernel and boot initramfs)" if kind == "fit" else "squashfs root"
            raise UserError(f"{board.source}: the {what} is {content:,} bytes, more than update.{kind}_size "
                            f"({fixed} MiB): each of the two {kind} slots holds one",
                            f"raise update.{kind}_size (a device keeps the sizes it was first written with)")
        else:
            sizes[kind] = fixed * MIB
    return SlotSizes(sizes["fit"], sizes["root"])


def boot_state(order: str, left: dict[str, int]) -> bytes:
    """U-Boot's sector: what `env export -t` writes for BOOT_ORDER and the counters."""
    values = {"BOOT_ORDER": order, **{f"BOOT_{slot}_LEFT": str(n) for slot, n in left.items()}}
    text = "".join(f"{name}={values[name]}\n" for name in BOOT_VARIABLES)
    return text.encode().ljust(SECTOR, b"\0")


def slot_records(records: dict[str, tuple[str, str]]) -> bytes:
    """The updater's sector: for each slot its state and version."""
    text = "".join(f"{slot}_STATE={state}\n{slot}_VERSION={version}\n" for slot, (state, version) in records.items())
    return text.encode().ljust(SECTOR, b"\0")


def initial_state(board: Board) -> bytes:
    """The state partition as the factory image holds it: slot A written and good, slot B
    empty and never tried."""
    assert board.update is not None
    state = bytearray(STATE_SIZE)
    state[:SECTOR] = boot_state("A B", {"A": board.update.trials, "B": 0})
    at = SLOT_STATE_SECTOR * SECTOR
    state[at:at + SECTOR] = slot_records({"A": ("good", board.version), "B": ("empty", "")})
    return bytes(state)


def update_conf(board: Board) -> str:
    """/etc/fwgen/update.conf, which the updater sources: what this firmware is and which
    partitions hold the slots and their state."""
    assert board.update is not None
    spec, disk = board.update, board.disk
    values = {
        "BOARD": board.name, "VERSION": board.version, "COMPATIBLE": " ".join(spec.compatible),
        "SLOTS": spec.slots if has_ab_slots(board) else "none", "TRIALS": str(spec.trials),
        "HEALTH": spec.health or "", "HEALTH_TIMEOUT": str(spec.health_timeout),
        "STATE": disk.partition(partition_number(STATE_PART)), "KEYS": UPDATE_KEYS_DIR,
        **{f"FIT_{s}": disk.partition(partition_number(fit_part(s))) for s in SLOTS},
        **{f"ROOT_{s}": disk.partition(partition_number(root_part(s))) for s in SLOTS},
    }
    lines = [f"# What the updater (fwupdate) needs to know about board {board.name}: written by fwgen."]
    lines += [f"{name}={shlex.quote(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def boot_script(board: Board, cmdline: str, fit_address: str, config: str) -> str:
    """boot.scr's text for an A/B board (U-Boot hush): pick a slot by BOOT_ORDER and the
    counters, count the attempt on disk, load that slot's FIT and start it with
    fwgen.slot=<slot> on the kernel command line."""
    assert board.update is not None
    trials, buffer = board.update.trials, fit_address
    device = board.uboot.device.split(":")[0]  # "virtio 0" of "virtio 0:1"
    interface, number = device.split()
    save = (f"mw.b {buffer} 0 0x{SECTOR:x}; env export -t -s 0x{SECTOR:x} {buffer} {' '.join(BOOT_VARIABLES)}; "
            f"{interface} write {buffer} ${{fwgen_state}} 1")
    pick = "".join(
        f"    if test \"${{slot}}\" = {s} && test \"${{fwgen_slot}}\" = \"\" && test \"${{BOOT_{s}_LEFT}}\" -gt 0; then "
        f"setexpr BOOT_{s}_LEFT ${{BOOT_{s}_LEFT}} - 1; setenv fwgen_slot {s}; fi\n" for s in SLOTS)
    return (
        f"# A/B boot script of board {board.name}, written by fwgen (fwgen/slots.py): boot counting\n"
        f"# as RAUC does it, the counters in the first sector of partition {STATE_PART}.\n"
        f"setenv fwgen_cmdline '{cmdline}'\n"
        # The raw reads and writes below address blocks of the interface's current device.
        f"{interface} dev {number}\n"
        f"part start {device} {STATE_PART} fwgen_state\n"
        f"{interface} read {buffer} ${{fwgen_state}} 1\n"
        f"env import -t {buffer} 0x{SECTOR:x} {' '.join(BOOT_VARIABLES)}\n"
        "if test \"${BOOT_ORDER}\" = \"\"; then\n"
        f"    echo \"fwgen: no boot state in partition {STATE_PART}: order A B, {trials} attempts each\"\n"
        f"    setenv BOOT_ORDER 'A B'; setenv BOOT_A_LEFT {trials}; setenv BOOT_B_LEFT {trials}\n"
        "fi\n"
        "setenv fwgen_slot\n"
        "for slot in ${BOOT_ORDER}; do\n"
        f"{pick}"
        "done\n"
        "if test \"${fwgen_slot}\" = \"\"; then\n"
        f"    echo \"fwgen: no slot has boot attempts left: {trials} each again, resetting\"\n"
        f"    setenv BOOT_A_LEFT {trials}; setenv BOOT_B_LEFT {trials}; {save}; reset\n"
        "fi\n"
        f"{save}\n"
        "echo \"fwgen: booting slot ${fwgen_slot} (order ${BOOT_ORDER}; attempts left: "
        "A ${BOOT_A_LEFT}, B ${BOOT_B_LEFT})\"\n"
        f"part start {device} fit-${{fwgen_slot}} fwgen_fit_start\n"
        f"part size {device} fit-${{fwgen_slot}} fwgen_fit_size\n"
        f"{interface} read {fit_address} ${{fwgen_fit_start}} ${{fwgen_fit_size}}\n"
        f"setenv bootargs \"${{fwgen_cmdline}} {SLOT_PARAMETER}=${{fwgen_slot}}\"\n"
        f"bootm {fit_address}#{config} {fit_address}#{config} ${{fdtcontroladdr}}\n"
        "echo \"fwgen: slot ${fwgen_slot} did not boot; resetting to try again\"\n"
        "reset\n"
    )


def add_update_files(rootfs: RootFS, board: Board) -> None:
    """What the updater reads in the image: the public keys of `update.keys` in
    /etc/fwgen/update-keys/ and, on an A/B disk, /etc/fwgen/update.conf."""
    assert board.update is not None
    generated = {"provenance": "fwgen"}
    rootfs.add_dir(UPDATE_KEYS_DIR, 0o755, **generated)
    names: dict[str, Path] = {}
    for key in board.update.keys:
        if key.name in names:
            raise UserError(f"{board.source}: update.keys: {key} and {names[key.name]} have the same file name, "
                            f"and both would be {UPDATE_KEYS_DIR}/{key.name} on the device", "rename one of them")
        names[key.name] = key
        rootfs.add_file(f"{UPDATE_KEYS_DIR}/{key.name}", key.read_bytes(), 0o644, **generated)
    if has_ab_slots(board):
        rootfs.add_file(UPDATE_CONF, update_conf(board).encode(), 0o644, **generated)


def write_slot_disk(path: Path, board: Board, *, boot_files: dict[str, bytes], fit: bytes, root: Path,
                    mtime: int, progress: Progress = QUIET) -> SlotSizes:
    """The A/B disk image at `path` (atomically): boot.scr on the FAT partition, the factory
    state, the FIT and the squashfs in slot A, slot B left empty (zeros, sparse in the file),
    then the data partition that /init formats on first boot. Returns the slot sizes."""
    sizes = plan_slot_sizes(board, len(fit), root.stat().st_size)
    boot_size = board.uboot.boot_size * MIB
    check_boot_size(board.uboot.boot_size, boot_files, "uboot.boot_size")
    contents: dict[str, tuple[bytes | Path | None, int]] = {
        STATE_PART: (initial_state(board), STATE_SIZE),
        fit_part("A"): (fit, sizes.fit), fit_part("B"): (None, sizes.fit),
        root_part("A"): (root, sizes.root), root_part("B"): (None, sizes.root),
        DATA_PART: (None, board.disk.data_size * MIB),
    }
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".boot.", suffix=".vfat") as fat:
        # The partition table below puts the first partition at 1 MiB (its alignment).
        write_fat(boot_files, fat, size=boot_size, mtime=mtime, label="BOOT", hidden_sectors=MIB // SECTOR)
        fat.flush()
        contents[BOOT_PART] = (Path(fat.name), boot_size)
        partitions = [Partition(name, FAT32_LBA if name == BOOT_PART else LINUX, *contents[name],
                                bootable=name == BOOT_PART)
                      for name in PARTITIONS if contents[name][1]]
        write_disk_image(path, partitions, table="gpt", align=MIB, progress=progress)
    return sizes
