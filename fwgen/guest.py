"""The contract between fwgen and the guest's scripts, in one place.

fwgen writes files the guest's shell scripts read (the module list, boot.conf) and waits for
lines they print; the scripts live in overlays/base/files (init, etc/init.d/rcS,
sbin/factory-reset, sbin/fwgen-service). Each name here has a counterpart there, spelled out
in the script because a shell script cannot import it: tests/test_guest.py reads the scripts
and fails when one side is renamed without the other.

This module is a leaf: it imports nothing of fwgen, so every layer may use it.
"""

from __future__ import annotations

# The initramfs's entry point: the kernel runs it as PID 1 (`rdinit=/init`).
INIT = "/init"
RDINIT = f"rdinit={INIT}"
# Kernel modules /init loads with insmod, one path a line, dependencies first (kernel.py).
MODULE_LIST = "/etc/fwgen/modules"
# How /init finds the root: a shell fragment it sources (as does /sbin/factory-reset).
BOOT_CONF = "/etc/fwgen/boot.conf"
# The variables boot.conf sets for a disk or SD card, and for a router's flash.
DISK_CONF_KEYS = ("ROOT", "ROOT_TYPE", "DATA", "DATA_TYPE", "RESET_MARKER")
FLASH_CONF_KEYS = ("FIRMWARE", "ERASE_BLOCK", "ROOT_TYPE", "DATA_TYPE", "RESET_MARKER")
# The data partition's filesystem: BusyBox mke2fs writes ext2, which the ext4 driver mounts.
DATA_FS_TYPE = "ext4"
# A file at the top of the data partition, outside the overlay, asking /init for a wipe.
RESET_MARKER = "factory-reset"
# Where /init mounts the read-only squashfs root and the writable layer before switch_root.
ROOT_MOUNT, DATA_MOUNT = "/rom", "/overlay"
# Paths of the root filesystem that the boot initramfs of a disk board also carries.
BOOT_INITRAMFS_PATHS = (INIT, "/bin/busybox", MODULE_LIST, BOOT_CONF, "/dev/console", "/dev/null",
                        "/proc", "/sys", "/dev", "/tmp", ROOT_MOUNT, DATA_MOUNT)
# Boot scripts rcS runs in order (S*), and the supervised services' folders.
RC_DIR = "/etc/fwgen/rc.d"
SERVICE_DIR = "/etc/service"
# The guest side of supervised services: `need NAME...` and `as USER CMD...` (overlay.py).
SERVICE_HELPER = "/sbin/fwgen-service"
# Package scripts deferred to the first boot (fwgen/scripts.py): the scripts and their `list`
# (file and argument a line), which /sbin/fwgen-package-scripts runs once from rc.d.
PACKAGE_SCRIPTS = "/usr/lib/fwgen/package-scripts"
PACKAGE_SCRIPTS_RUNNER = "/sbin/fwgen-package-scripts"
# A/B updates (fwgen/slots.py, overlays/update): boot.conf of an A/B disk names both root
# slots and /init picks the one U-Boot's boot script booted (fwgen.slot=A on the kernel
# command line); the updater sources update.conf and trusts the keys in UPDATE_KEYS_DIR.
AB_CONF_KEYS = ("ROOT_A", "ROOT_B", "ROOT_TYPE", "DATA", "DATA_TYPE", "RESET_MARKER")
SLOT_PARAMETER = "fwgen.slot"
UPDATE_CONF = "/etc/fwgen/update.conf"
UPDATE_KEYS_DIR = "/etc/fwgen/update-keys"
# The state partition's sector holding the updater's slot records (U-Boot's counters are in 0).
SLOT_STATE_SECTOR = 8
# The line rcS prints last, once every service runs: `fwgen boot` waits for it.
READY_MARKER = "fwgen: ready"


def kernel_cmdline(cmdline: str) -> str:
    """The board's kernel command line with the initramfs's entry point."""
    return f"{cmdline} {RDINIT}".strip()


def disk_boot_conf(board: str, root: str, data: str) -> str:
    """boot.conf for a squashfs root partition and an optional data partition ("" for RAM)."""
    return (
        f"# How /init mounts the root of board {board}: written by fwgen.\n"
        f"ROOT={root}\nROOT_TYPE=squashfs\n"
        f"DATA={data}\nDATA_TYPE={DATA_FS_TYPE}\nRESET_MARKER={RESET_MARKER}\n"
    )


def ab_boot_conf(board: str, roots: tuple[str, str], data: str) -> str:
    """boot.conf for an A/B disk: the root partitions of slots A and B, and the data partition."""
    return (
        f"# How /init mounts the root of board {board}, slot A or B as U-Boot booted it: written by fwgen.\n"
        f"ROOT_A={roots[0]}\nROOT_B={roots[1]}\nROOT_TYPE=squashfs\n"
        f"DATA={data}\nDATA_TYPE={DATA_FS_TYPE}\nRESET_MARKER={RESET_MARKER}\n"
    )


def flash_boot_conf(board: str, firmware: str, erase_block: int) -> str:
    """boot.conf for a router's firmware partition, which /init splits into root and overlay."""
    return (
        f"# Where /init finds the root of board {board}: written by fwgen.\n"
        f"FIRMWARE={firmware}\nERASE_BLOCK={erase_block}\n"
        f"ROOT_TYPE=squashfs\nDATA_TYPE={DATA_FS_TYPE}\nRESET_MARKER={RESET_MARKER}\n"
    )
