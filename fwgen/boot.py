"""`fwgen boot`: start a built board under QEMU, wait until it is ready, run its checks."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .board import Board
from .bootloader import FIRMWARE_OUTPUT, FLASH_OUTPUT, UBOOT_OUTPUT
from .checks import CheckResult, run_checks
from .dtb import DeviceTree, apply_fixups
from .errors import UserError, writing
from .guest import READY_MARKER, kernel_cmdline
from .images.sdcard import read_boot_files
from .progress import QUIET, Progress
from .publish import set_file_mode, use_build
from .qemu import BootSpec, Machine

# The board's disk as the emulated board has written it, beside the console log: the built
# image stays as the manifest describes it, and a rebuild (which replaces the output folder)
# starts from a fresh copy.
BOOT_DISK = "boot/disk.img"
BOOT_SDCARD = "boot/sdcard.img"
# A squashfs output alone is a root for flashing: the kernel has nothing to mount it from.
BOOTABLE_OUTPUTS = frozenset({"initramfs", "disk", "sdcard", "flash"})
# A router's flash as the emulated board has written it: the part the machine maps as its boot
# flash, and the firmware partition (Linux's root and overlay).
BOOT_FLASH, BOOT_FIRMWARE = "boot/flash-bios.img", "boot/firmware.bin"
# What the Raspberry Pi firmware would have loaded, read out of the SD card's FAT partition.
FROM_SDCARD = "boot/from-sdcard"


@dataclass(frozen=True)
class BootResult:
    board: str
    ready_seconds: float
    checks: list[CheckResult]
    console_log: Path
    # Why QEMU was gone before the checks ended (a crash, a check that took the guest down);
    # "" when it ran to the end. The checks after that fail; the boot failed, not just them.
    died: str = ""

    @property
    def passed(self) -> bool:
        return not self.died and all(c.passed for c in self.checks)


def boot_spec_for(board: Board, outdir: Path, *, fresh_disk: bool = False) -> BootSpec:
    """The QEMU invocation for a built board, from its manifest and QEMU profile.

    A board with a disk output boots from a writable copy of its disk image
    (`outdir/boot/disk.img`), made on the first boot and kept, so what the guest writes
    survives into the next boot; `fresh_disk` starts again from the built image.
    """
    manifest_path = outdir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{outdir}: no build found", hint=f"run 'fwgen build --board {board.name}' first")
    if board.qemu is None:
        raise UserError(f"{board.source}: board has no qemu section, it cannot be booted under QEMU")
    manifest = json.loads(manifest_path.read_text())
    outputs = manifest["outputs"]
    if not BOOTABLE_OUTPUTS & set(outputs):
        raise UserError(f"{board.source}: outputs {', '.join(board.outputs)}: nothing QEMU can boot",
                        f"add one of {', '.join(sorted(BOOTABLE_OUTPUTS))} to outputs")
    if "sdcard" in outputs:
        return sdcard_boot_spec(board, outdir, outdir / outputs["sdcard"]["file"], fresh=fresh_disk)
    if FLASH_OUTPUT in outputs:
        return flash_boot_spec(board, outdir, manifest, fresh=fresh_disk)
    if UBOOT_OUTPUT in outputs:
        return uboot_boot_spec(board, outdir, outputs, fresh=fresh_disk)
    initrd = outdir / outputs["initramfs"]["file"] if "initramfs" in outputs else None
    drives: tuple[Path, ...] = ()
    if "disk" in outputs:
        drives = (prepare_boot_disk(outdir / outputs["disk"]["file"], outdir / BOOT_DISK, fresh=fresh_disk),)
    return BootSpec(
        profile=board.qemu.profile,
        kernel=outdir / outputs["kernel"]["file"],
        initrd=initrd,
        append=kernel_cmdline(board.kernel.cmdline),
        memory=board.qemu.memory,
        forward=board.qemu.forward,
        drives=drives,
        persistent=True,
        ready_marker=READY_MARKER,
        ready_timeout=board.qemu.timeout,
    )


def uboot_boot_spec(board: Board, outdir: Path, outputs: dict, *, fresh: bool = False) -> BootSpec:
    """Boot through U-Boot as the board would: QEMU starts u-boot.bin, whose distro boot finds
    boot.scr on the disk's FAT partition, loads the FIT, checks its hashes and starts Linux."""
    assert board.qemu is not None
    if "disk" not in outputs:
        raise UserError(f"{board.source}: output fit without disk: U-Boot has no disk to load the FIT from",
                        "add disk to outputs")
    disk = prepare_boot_disk(outdir / outputs["disk"]["file"], outdir / BOOT_DISK, fresh=fresh)
    return _bios_boot_spec(board, outdir / outputs[UBOOT_OUTPUT]["file"], disk)


def _bios_boot_spec(board: Board, bios: Path, drive: Path, **bootloader) -> BootSpec:
    """A bootloader started as -bios with the board's writable drive and its QEMU settings."""
    assert board.qemu is not None
    return BootSpec(profile=board.qemu.profile, kernel=None, bios=bios, memory=board.qemu.memory,
                    forward=board.qemu.forward, drives=(drive,), persistent=True, ready_marker=READY_MARKER,
                    ready_timeout=board.qemu.timeout, **bootloader)


def flash_boot_spec(board: Board, outdir: Path, manifest: dict, *, fresh: bool = False) -> BootSpec:
    """Boot a router as a test lab does: U-Boot starts from the part of the flash image the
    machine maps as its boot flash (the profile's bios_size), fwgen types the board's U-Boot
    commands at its prompt (the uImage comes over TFTP from the build folder), and Linux finds
    its squashfs root and overlay in the firmware partition, attached as a virtio disk."""
    assert board.qemu is not None
    profile, outputs = board.qemu.profile, manifest["outputs"]
    if not profile.bios_size:
        raise UserError(f"{profile.source or profile.name}: a flash board's profile needs bios_size "
                        "(the bytes of the flash the machine maps)")
    bios = outdir / BOOT_FLASH
    if fresh or not bios.exists():
        bios.parent.mkdir(parents=True, exist_ok=True)
        with open(outdir / outputs[FLASH_OUTPUT]["file"], "rb") as f:
            _write_file(bios, f.read(profile.bios_size))
    firmware = prepare_boot_disk(outdir / outputs[FIRMWARE_OUTPUT]["file"], outdir / BOOT_FIRMWARE, fresh=fresh)
    return _bios_boot_spec(board, bios, firmware, bootloader_prompt=board.uboot.prompt,
                           bootloader_commands=tuple(manifest["flash"]["console_commands"]), tftp=outdir)


def sdcard_boot_spec(board: Board, outdir: Path, built: Path, *, fresh: bool = False) -> BootSpec:
    """Boot an SD-card board as its firmware would: kernel, initramfs, DTB and command line
    come out of the card's FAT partition (config.txt says which files), not from the build
    folder. The profile's DTB fix-ups change a copy, for emulation only."""
    assert board.qemu is not None
    card = prepare_boot_disk(built, outdir / BOOT_SDCARD, fresh=fresh)
    files = read_boot_files(card)
    folder = outdir / FROM_SDCARD
    folder.mkdir(parents=True, exist_ok=True)
    kernel = _write_file(folder / "kernel.img", files.kernel)
    initrd = _write_file(folder / "initramfs", files.initramfs) if files.initramfs else None
    dtb = None
    if files.dtb is not None:
        tree = DeviceTree.parse(files.dtb, where=f"{card}: {files.dtb_name}")
        apply_fixups(tree, board.qemu.profile.dtb_fixups)
        dtb = _write_file(folder / (files.dtb_name or "board.dtb"), tree.to_bytes())
    return BootSpec(
        profile=board.qemu.profile,
        kernel=kernel,
        initrd=initrd,
        dtb=dtb,
        append=files.cmdline,
        memory=board.qemu.memory,
        forward=board.qemu.forward,
        sd_card=card,
        persistent=True,
        ready_marker=READY_MARKER,
        ready_timeout=board.qemu.timeout,
    )


def _write_file(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    set_file_mode(Path(tmp))
    os.replace(tmp, path)
    return path


def prepare_boot_disk(built: Path, disk: Path, *, fresh: bool = False) -> Path:
    """Copy the built disk image to `disk` unless a copy is there already (or `fresh`).

    The copy is sparse (runs of zeros, such as the unformatted data partition, are skipped)
    and appears atomically."""
    if disk.exists() and not fresh:
        return disk
    disk.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=disk.parent, prefix=f".{disk.name}.", suffix=".tmp")
    try:
        with open(built, "rb") as src, os.fdopen(fd, "wb") as dst:
            for chunk in iter(lambda: src.read(64 << 10), b""):
                if chunk.count(0) == len(chunk):
                    dst.seek(len(chunk), os.SEEK_CUR)
                else:
                    dst.write(chunk)
            dst.truncate()
        set_file_mode(Path(tmp))
        os.replace(tmp, disk)
    except BaseException:
        os.unlink(tmp)
        raise
    return disk


def boot(
    board: Board,
    outdir: Path,
    *,
    timeout_factor: float = 1.0,
    progress: Progress = QUIET,
    fresh_disk: bool = False,
) -> BootResult:
    """Boot the board's build, wait for the ready line, run every check, power off.

    `fresh_disk`: forget what earlier boots wrote to the board's disk (see `boot_spec_for`).
    The build `outdir` shows when the boot starts is used throughout: a rebuild meanwhile
    publishes beside it and leaves it (and its boot/ state) alone until the boot ends."""
    with use_build(outdir) as folder:
        return _boot_build(board, folder, timeout_factor=timeout_factor, progress=progress, fresh_disk=fresh_disk)


def _boot_build(board: Board, outdir: Path, *, timeout_factor: float, progress: Progress,
                fresh_disk: bool) -> BootResult:
    with writing(outdir / "boot", f"the boot copy of {board.name}'s disk"):
        spec = boot_spec_for(board, outdir, fresh_disk=fresh_disk)
    workdir = outdir / "boot"
    workdir.mkdir(exist_ok=True)
    progress.step(f"booting {board.name} in {spec.profile.binary}")
    started = time.monotonic()
    with Machine(spec, workdir, timeout_factor=timeout_factor, progress=progress) as machine:
        assert board.qemu is not None
        machine.start()
        machine.wait_for(READY_MARKER, timeout=board.qemu.timeout)
        ready = time.monotonic() - started
        progress.info(f"ready after {ready:.1f} s")
        results = run_checks(machine, board.all_checks, progress=progress)
        code = machine.returncode
        died = "" if code is None else f"QEMU exited with code {code} during the checks"
        if all(r.passed for r in results):
            machine.poweroff()
        return BootResult(board.name, ready, results, machine.console_log, died)


__all__ = ["BootResult", "boot", "boot_spec_for", "prepare_boot_disk", "READY_MARKER"]
