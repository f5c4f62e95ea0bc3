"""The output table: each image fwgen can write is one entry saying what its writer also
writes, how it prepares the root filesystem, where /init finds the root, and how the result
boots under QEMU (its BootSpec). build.py and boot.py walk the table; a new output adds an
entry (and its writer under images/), never an `if output == ...` elsewhere.

The writers take the build's context (context.BuildContext, which build.py fills in); the
boot specs take the board, the build folder, its manifest and the device state.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import sysupgrade
from .bootloader import (
    FIRMWARE_OUTPUT,
    FIT_FILE,
    FIT_OUTPUT,
    FLASH_OUTPUT,
    UBOOT_OUTPUT,
    UIMAGE_OUTPUT,
    write_flash,
    write_uboot_files,
    write_uimage,
)
from .bootstate import BootState, data_partition, firmware_overlay
from .bundle import build_metadata, part_for, write_bundle
from .context import BuildContext
from .dtb import DeviceTree, apply_fixups
from .errors import UserError
from .guest import BOOT_INITRAMFS_PATHS, READY_MARKER, kernel_cmdline
from .images.cpio import write_initramfs
from .images.disk import Partition, write_disk_image
from .images.sdcard import (
    INITRAMFS_NAME,
    KERNEL_NAME,
    check_boot_size,
    config_txt,
    read_boot_files,
    write_sdcard,
)
from .images.squashfs import write_squashfs
from .publish import write_file
from .qemu import BootSpec
from .rootfs import EntryType, RootFS
from .slots import has_ab_slots, write_slot_disk

if TYPE_CHECKING:
    from .board import Board

INITRAMFS, SQUASHFS, DISK, SDCARD, FIT = "initramfs", "squashfs", "disk", "sdcard", "fit"
BUNDLE, BUNDLE_FILE = "bundle", "update.bundle"
SYSUPGRADE, SYSUPGRADE_FILE = "sysupgrade", "sysupgrade.bin"
INITRAMFS_FILE = "initramfs.cpio.gz"
SQUASHFS_FILE = "rootfs.squashfs"
DISK_FILE = "disk.img"
SDCARD_FILE = "sdcard.img"
MIB = 1 << 20
# The bottom of RAM an ARM zImage fills as it decompresses (Debian's rpi kernel: ~20 MiB with
# the relocated decompressor), which an initramfs placed by fwgen keeps clear of.
KERNEL_ROOM = 32 * MIB
# The board's disk as the emulated board has written it, in its device state folder beside the
# builds (fwgen/bootstate.py): the built image stays as the manifest describes it, and a
# rebuild keeps what the guest wrote to the data partition.
BOOT_DISK = "disk.img"
BOOT_SDCARD = "sdcard.img"
# A router's flash as the emulated board has written it: the part the machine maps as its boot
# flash, and the firmware partition (Linux's root and overlay).
BOOT_FLASH, BOOT_FIRMWARE = "flash-bios.img", "firmware.bin"
# What the Raspberry Pi firmware would have loaded, read out of the SD card's FAT partition.
FROM_SDCARD = "from-sdcard"

# boot_spec(board, build folder, manifest, device state): the QEMU invocation for a built board.
BootSpecFor = Callable[["Board", Path, dict, BootState], BootSpec]


@dataclass(frozen=True)
class Output:
    name: str
    # Writes the output's files into ctx.staging and records them in ctx.outputs; None when
    # another output's writer always writes it (the FIT goes with a disk or an initramfs).
    write: Callable[[BuildContext], None] | None
    # How the built result boots; None when QEMU cannot boot it (a squashfs alone).
    boot_spec: BootSpecFor | None = None
    # Outputs this one's writer writes too (its boot initramfs, the squashfs of its root
    # partition, the FIT on its boot partition) or stands in for (an SD card is the disk).
    covers: tuple[str, ...] = ()
    # The root is a squashfs partition /init mounts (a disk, an SD card, the firmware partition).
    root_on_disk: bool = False
    # The disk's first partition is a FAT boot partition: root and data come after it.
    boot_partition: bool = False
    # A step on the root filesystem before the ELF audit (an SD card's firmware moves out).
    prepare: Callable[[BuildContext], None] | None = None
    # Written for every board this says yes to, never listed in `outputs:` (the update bundle
    # follows from `update:`).
    implied_by: Callable[[Board], bool] | None = None


def outputs_of(board: Board) -> list[Output]:
    """The board's outputs as table entries, in the table's order."""
    return [output for output in OUTPUTS
            if output.name in board.outputs or (output.implied_by is not None and output.implied_by(board))]


def write_outputs(ctx: BuildContext) -> None:
    """Each output the board asks for, unless an earlier one's writer wrote it already."""
    written: set[str] = set()
    for output in outputs_of(ctx.board):
        if output.write is not None and output.name not in written:
            output.write(ctx)
            written.update((output.name, *output.covers))


def boot_spec(board: Board, outdir: Path, manifest: dict, state: BootState) -> BootSpec | None:
    """The first built output (in table order) that boots; None when none does."""
    for output in OUTPUTS:
        if output.name in manifest["outputs"] and output.boot_spec is not None:
            return output.boot_spec(board, outdir, manifest, state)
    return None


# What an output file holds, for the SBOM's CONTAINS relationships: "root" the whole root
# filesystem, "boot" what a boot initramfs holds (BusyBox, the kernel's modules, /init),
# "kernel" the kernel, "bootloader" U-Boot.
ROOT, BOOT, KERNEL, BOOTLOADER = "root", "boot", "kernel", "bootloader"


def image_contents(board: Board, written: Collection[str]) -> dict[str, tuple[str, ...]]:
    """What each of the `written` outputs (the manifest's names) holds."""
    initramfs = BOOT if any(o.root_on_disk for o in outputs_of(board)) else ROOT
    holds = {
        "kernel": (KERNEL,), INITRAMFS: (initramfs,), SQUASHFS: (ROOT,), SDCARD: (ROOT, KERNEL),
        DISK: (ROOT, KERNEL) if FIT_OUTPUT in written else (ROOT,),  # the FIT on its boot partition
        FIT_OUTPUT: (KERNEL, initramfs), UIMAGE_OUTPUT: (KERNEL, initramfs),
        FLASH_OUTPUT: (BOOTLOADER, KERNEL, ROOT), FIRMWARE_OUTPUT: (KERNEL, ROOT), UBOOT_OUTPUT: (BOOTLOADER,),
    }
    return {name: holds.get(name, ()) for name in written}


def write_full_initramfs(ctx: BuildContext) -> None:
    """The whole root filesystem as the initramfs, and the FIT holding it when asked for."""
    assert ctx.staging is not None
    path = ctx.staging / INITRAMFS_FILE
    write_initramfs(ctx.rootfs, path, compression=ctx.compression, mtime=ctx.epoch)
    ctx.outputs[INITRAMFS] = path
    write_uboot_files(ctx)


def write_disk_output(ctx: BuildContext) -> None:
    write_boot_initramfs(ctx)
    write_disk(ctx)


def write_squashfs_output(ctx: BuildContext) -> None:
    write_root_squashfs(ctx)


def write_uimage_output(ctx: BuildContext) -> None:
    write_uimage(ctx)


def write_flash_images(ctx: BuildContext) -> None:
    """A router's flash: the uImage (kernel and boot initramfs) and the squashfs root in the
    firmware partition; the squashfs file is kept only when asked for as an output."""
    write_boot_initramfs(ctx)
    squashfs = write_root_squashfs(ctx)
    write_flash(ctx, squashfs)
    _drop_unless_asked(ctx, squashfs)


def write_root_squashfs(ctx: BuildContext) -> Path:
    """The whole root filesystem as squashfs: an output of its own when the board asks for
    one, else only the content of a disk's or SD card's root partition."""
    assert ctx.staging is not None
    path = ctx.staging / SQUASHFS_FILE
    write_squashfs(ctx.rootfs, path, compression=ctx.compression, mtime=ctx.epoch, progress=ctx.progress)
    if SQUASHFS in ctx.board.outputs:
        ctx.outputs[SQUASHFS] = path
    return path


def write_disk(ctx: BuildContext) -> None:
    """The whole root filesystem as squashfs in partition 1, an empty data partition 2 that
    /init formats on first boot. The squashfs file is kept only when asked for as an output.
    A board booted through U-Boot gets a FAT boot partition first, with the FIT and boot.scr."""
    assert ctx.staging is not None
    disk = ctx.board.disk
    squashfs = write_root_squashfs(ctx)
    boot_files = write_uboot_files(ctx)
    if boot_files and has_ab_slots(ctx.board):
        write_ab_disk(ctx, boot_files, squashfs)
        return
    if boot_files:
        write_boot_partition_disk(ctx, boot_files, squashfs)
        return
    root_size = _round_up(squashfs.stat().st_size + disk.root_slack * MIB, MIB)
    partitions = [Partition("root", 0x83, squashfs, root_size)]
    if disk.data_size:
        partitions.append(Partition("data", 0x83, None, disk.data_size * MIB))
    path = ctx.staging / DISK_FILE
    write_disk_image(path, partitions, progress=ctx.progress)
    ctx.outputs[DISK] = path
    _drop_unless_asked(ctx, squashfs)
    ctx.progress.info(f"disk {path.stat().st_size // MIB} MiB: root {root_size // MIB} MiB, data {disk.data_size} MiB")


def write_boot_partition_disk(ctx: BuildContext, boot_files: dict[str, bytes], squashfs: Path) -> None:
    """FAT32 boot partition, squashfs root, data partition: the SD card's layout (a power of
    two in size), which suits a virtio disk as well."""
    assert ctx.staging is not None
    boot_size = ctx.board.uboot.boot_size
    check_boot_size(boot_size, boot_files, "uboot.boot_size")
    path = ctx.staging / DISK_FILE
    size = write_sdcard(path, boot_files=boot_files, root=squashfs, boot_size=boot_size * MIB,
                        data_size=ctx.board.disk.data_size * MIB, mtime=ctx.epoch, progress=ctx.progress)
    ctx.outputs[DISK] = path
    _drop_unless_asked(ctx, squashfs)
    ctx.progress.info(f"disk {size // MIB} MiB: boot {boot_size} MiB ({', '.join(boot_files)}), root, "
                      f"data {ctx.board.disk.data_size} MiB")


def write_ab_disk(ctx: BuildContext, boot_files: dict[str, bytes], squashfs: Path) -> None:
    """Two slots of FIT and root, U-Boot's boot counters and the shared data partition
    (fwgen/slots.py); the FAT boot partition holds boot.scr alone."""
    assert ctx.staging is not None
    path = ctx.staging / DISK_FILE
    script = {name: data for name, data in boot_files.items() if name != FIT_FILE}
    sizes = write_slot_disk(path, ctx.board, boot_files=script, fit=boot_files[FIT_FILE], root=squashfs,
                            mtime=ctx.epoch, progress=ctx.progress)
    ctx.outputs[DISK] = path
    fit, root = len(boot_files[FIT_FILE]), squashfs.stat().st_size
    _drop_unless_asked(ctx, squashfs)
    ctx.progress.info(f"A/B disk {path.stat().st_size // MIB} MiB: FIT slots 2 x {sizes.fit // MIB} MiB "
                      f"({fit / MIB:.1f} used), root slots 2 x {sizes.root // MIB} MiB ({root / MIB:.1f} used), "
                      f"data {ctx.board.disk.data_size} MiB")


def write_sdcard_image(ctx: BuildContext) -> None:
    """The Raspberry Pi SD card: the boot firmware moves out of the root filesystem into the
    FAT boot partition, with config.txt, cmdline.txt, kernel, DTB and boot initramfs; then
    the squashfs root and the data partition."""
    assert ctx.staging is not None and ctx.kernel is not None
    board, spec = ctx.board, ctx.board.sdcard
    boot_files = dict(ctx.boot_firmware)
    squashfs = write_root_squashfs(ctx)
    write_boot_initramfs(ctx)
    boot_files[KERNEL_NAME] = ctx.kernel.image
    boot_files[INITRAMFS_NAME] = ctx.outputs[INITRAMFS].read_bytes()
    if spec.dtb:
        boot_files[spec.dtb] = _read_dtb(ctx, spec.dtb)
    boot_files["config.txt"] = config_txt(board.name, dtb=spec.dtb, extra=spec.config).encode()
    boot_files["cmdline.txt"] = kernel_cmdline(board.kernel.cmdline).encode() + b"\n"
    check_boot_size(spec.boot_size, boot_files, "sdcard.boot_size")
    path = ctx.staging / SDCARD_FILE
    size = write_sdcard(path, boot_files=boot_files, root=squashfs, boot_size=spec.boot_size * MIB,
                        data_size=board.disk.data_size * MIB, mtime=ctx.epoch, progress=ctx.progress)
    ctx.outputs[SDCARD] = path
    _drop_unless_asked(ctx, squashfs)
    ctx.progress.info(f"sdcard {size // MIB} MiB: boot {spec.boot_size} MiB ({len(boot_files)} files), "
                      f"root {squashfs.name if squashfs.exists() else 'squashfs'}")


def take_boot_firmware(ctx: BuildContext) -> None:
    """An SD-card board's boot firmware (VideoCore code, not the board's CPU's) moves out of
    the root filesystem, before the ELF audit, into the files of the FAT boot partition."""
    spec = ctx.board.sdcard
    files = {}
    for name in spec.firmware:
        entry = ctx.rootfs.resolve(f"{spec.firmware_dir}/{name}")
        if entry is None or entry.type is not EntryType.FILE:
            raise UserError(f"{ctx.board.source}: sdcard firmware {spec.firmware_dir}/{name} is in no package",
                            "add the firmware package (raspi-firmware) to packages and nodeps")
        files[name] = entry.data
    ctx.rootfs.remove(spec.firmware_dir)
    ctx.boot_firmware = files
    ctx.progress.info(f"boot firmware: {', '.join(files)} from {spec.firmware_dir}")


def _read_dtb(ctx: BuildContext, name: str) -> bytes:
    """The DTB from the kernel package: /usr/lib/linux-image-<release>/ (Debian) or /boot/dtbs/."""
    assert ctx.kernel is not None
    places = (f"/usr/lib/linux-image-{ctx.kernel.release}/", "/boot/dtbs/", "/boot/")
    for entry in ctx.kernel_entries:
        if entry.type is EntryType.FILE and entry.path.startswith(places) and entry.path.endswith("/" + name):
            return entry.data
    raise UserError(f"{ctx.board.source}: sdcard.dtb {name} is not in the kernel package",
                    f"looked in {', '.join(places)}")


def write_boot_initramfs(ctx: BuildContext) -> None:
    """The initramfs of a disk board holds only what /init needs: BusyBox, the boot
    modules, /init and its configuration."""
    assert ctx.staging is not None and ctx.kernel is not None
    wanted = set(BOOT_INITRAMFS_PATHS)
    wanted.update(f"/lib/modules/{ctx.kernel.release}/{m.path}" for m in ctx.modules)
    busybox = ctx.rootfs.get("/bin/busybox")
    wanted.update(e.path for e in ctx.rootfs
                  if e.type is EntryType.SYMLINK and ctx.rootfs.resolve(e.path) is busybox)
    wanted.update(parent for path in list(wanted) for parent in _parents(path))
    boot = RootFS()
    for entry in ctx.rootfs:  # parents come first, so they keep their modes and owners
        if entry.path in wanted:
            boot.add(entry)
    path = ctx.staging / INITRAMFS_FILE
    write_initramfs(boot, path, compression=ctx.compression, mtime=ctx.epoch)
    ctx.outputs[INITRAMFS] = path


def _parents(path: str) -> list[str]:
    parents = []
    while path != "/":
        path = posixpath.dirname(path)
        parents.append(path)
    return parents


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit




def write_update_bundle(ctx: BuildContext) -> None:
    """The update bundle (fwgen/bundle.py) of a board with `update:`: the FIT (or the kernel,
    or a router's uImage) and the squashfs root a slot receives, signed when the build has a
    key. The squashfs was kept for it; it goes now unless asked for as an output."""
    board, update = ctx.board, ctx.board.update
    assert ctx.staging is not None and update is not None
    squashfs = ctx.staging / SQUASHFS_FILE
    kernel = next(part_for(name, ctx.outputs[output]) for name, output in
                  (("fit", FIT_OUTPUT), ("kernel", UIMAGE_OUTPUT), ("kernel", "kernel")) if output in ctx.outputs)
    parts = [kernel, part_for("rootfs", squashfs)]
    metadata = build_metadata(board=board.name, compatible=update.compatible, version=board.version,
                              build_id=str(ctx.epoch), slots=update.slots, parts=parts)
    path = ctx.staging / BUNDLE_FILE
    write_bundle(path, metadata, parts, mtime=ctx.epoch, key=ctx.signing_key)
    ctx.outputs[BUNDLE] = path
    if any(output.name == SYSUPGRADE for output in outputs_of(board)):
        write_sysupgrade_image(ctx, kernel.path, squashfs)
    _drop_unless_asked(ctx, squashfs, bundled=True)
    signed = f"signed by key {ctx.signing_key.key_id}" if ctx.signing_key else "unsigned"
    ctx.progress.info(f"update bundle {path.stat().st_size // 1024:,} KiB ({signed}): "
                      f"{', '.join(p.name for p in parts)}, version {board.version}")


def write_sysupgrade_image(ctx: BuildContext, kernel: Path, squashfs: Path) -> None:
    """A router's update in OpenWrt's sysupgrade form (fwgen/sysupgrade.py): the uImage and
    the squashfs root in sysupgrade-<board>/, the metadata fwtool reads, the signature."""
    board, update = ctx.board, ctx.board.update
    assert ctx.staging is not None and update is not None
    metadata = sysupgrade.build_metadata(board=board.name, compatible=update.compatible, version=board.version,
                                         build_id=str(ctx.epoch), target=board.arch.value)
    path = ctx.staging / SYSUPGRADE_FILE
    sysupgrade.write_sysupgrade(path, board=board.name, kernel=kernel, root=squashfs, metadata=metadata,
                                mtime=ctx.epoch, key=ctx.signing_key)
    ctx.outputs[SYSUPGRADE] = path
    ctx.progress.info(f"sysupgrade image {path.stat().st_size // 1024:,} KiB")


def _drop_unless_asked(ctx: BuildContext, squashfs: Path, *, bundled: bool = False) -> None:
    """The squashfs of a root partition is kept as a file only when asked for as an output;
    a board with `update:` keeps it until its bundle is written."""
    if SQUASHFS not in ctx.board.outputs and (bundled or ctx.board.update is None):
        squashfs.unlink()


def kernel_boot_spec(board: Board, outdir: Path, manifest: dict, state: BootState) -> BootSpec:
    """QEMU starts the kernel with the initramfs (-kernel, -initrd); a disk board's boot
    initramfs mounts the root from the device's copy of the disk (BootState.copy)."""
    assert board.qemu is not None
    outputs = manifest["outputs"]
    initrd = outdir / outputs[INITRAMFS]["file"] if INITRAMFS in outputs else None
    memory, append = guest_ram(board, kernel_cmdline(board.kernel.cmdline))
    if initrd is not None and memory != board.qemu.memory:
        raise UserError(f"{board.source}: limits.ram {board.qemu.memory} MiB on QEMU's fixed-RAM "
                        f"{board.qemu.profile.machine}: its -initrd lands beyond mem=, and without a DTB "
                        "fwgen cannot place it", f"declare ram: {board.qemu.profile.memory}")
    drives: tuple[Path, ...] = ()
    if DISK in outputs:
        drives = (_device_disk(outdir, outputs[DISK], state, BOOT_DISK),)
    return BootSpec(
        profile=board.qemu.profile,
        kernel=outdir / outputs["kernel"]["file"],
        initrd=initrd,
        append=append,
        memory=memory,
        forward=board.qemu.forward,
        drives=drives,
        persistent=True,
        ready_marker=READY_MARKER,
        ready_timeout=board.qemu.timeout,
    )


def guest_ram(board: Board, cmdline: str) -> tuple[int | None, str]:
    """The -m and kernel command line that give the guest the board's RAM. A machine with
    fixed RAM (raspi0: 512 MiB) takes no other -m, so a board declaring less gets all of it
    and `mem=` tells the kernel to use only what the board declares: the firmware is proven
    in the RAM the board says it needs, not in what the emulated machine happens to have."""
    assert board.qemu is not None
    memory, profile = board.qemu.memory, board.qemu.profile
    if profile.fixed_memory and memory is not None and memory < profile.memory:
        return profile.memory, f"{cmdline} mem={memory}M".strip()
    return memory, cmdline


def uboot_boot_spec(board: Board, outdir: Path, manifest: dict, state: BootState) -> BootSpec:
    """Boot through U-Boot as the board would: QEMU starts u-boot.bin, whose distro boot finds
    boot.scr on the disk's FAT partition, loads the FIT, checks its hashes and starts Linux."""
    assert board.qemu is not None
    outputs = manifest["outputs"]
    if DISK not in outputs:
        raise UserError(f"{board.source}: output fit without disk: U-Boot has no disk to load the FIT from",
                        "add disk to outputs")
    disk = _device_disk(outdir, outputs[DISK], state, BOOT_DISK)
    return _bios_boot_spec(board, outdir / outputs[UBOOT_OUTPUT]["file"], disk)


def _bios_boot_spec(board: Board, bios: Path, drive: Path, **bootloader) -> BootSpec:
    """A bootloader started as -bios with the board's writable drive and its QEMU settings."""
    assert board.qemu is not None
    if board.qemu.profile.fixed_memory and board.qemu.memory != board.qemu.profile.memory:
        raise UserError(f"{board.source}: limits.ram {board.qemu.memory} MiB, but a bootloader on QEMU's "
                        f"{board.qemu.profile.machine} gets all {board.qemu.profile.memory} MiB and fwgen cannot "
                        "give its kernel mem=", f"declare ram: {board.qemu.profile.memory}")
    return BootSpec(profile=board.qemu.profile, kernel=None, bios=bios, memory=board.qemu.memory,
                    forward=board.qemu.forward, drives=(drive,), persistent=True, ready_marker=READY_MARKER,
                    ready_timeout=board.qemu.timeout, **bootloader)


def flash_boot_spec(board: Board, outdir: Path, manifest: dict, state: BootState) -> BootSpec:
    """Boot a router as a test lab does: U-Boot starts from the part of the flash image the
    machine maps as its boot flash (the profile's bios_size), fwgen types the board's U-Boot
    commands at its prompt (the uImage comes over TFTP from the build folder), and Linux finds
    its squashfs root and overlay in the firmware partition, attached as a virtio disk."""
    assert board.qemu is not None
    profile, outputs = board.qemu.profile, manifest["outputs"]
    if not profile.bios_size:
        raise UserError(f"{profile.source or profile.name}: a flash board's profile needs bios_size "
                        "(the bytes of the flash the machine maps)")
    flash = outputs[FLASH_OUTPUT]
    bios = state.copy(outdir / flash["file"], BOOT_FLASH, sha256=flash["sha256"], length=profile.bios_size)
    firmware = state.copy(outdir / outputs[FIRMWARE_OUTPUT]["file"], BOOT_FIRMWARE,
                          sha256=outputs[FIRMWARE_OUTPUT]["sha256"],
                          keep=firmware_overlay(manifest["flash"]["erase_block"]))
    return _bios_boot_spec(board, bios, firmware, bootloader_prompt=board.uboot.prompt,
                           bootloader_commands=tuple(manifest["flash"]["console_commands"]), tftp=outdir)


def sdcard_boot_spec(board: Board, outdir: Path, manifest: dict, state: BootState) -> BootSpec:
    """Boot an SD-card board as its firmware would: kernel, initramfs, DTB and command line
    come out of the card's FAT partition (config.txt says which files), not from the build
    folder. The profile's DTB fix-ups change a copy, for emulation only."""
    assert board.qemu is not None
    card = _device_disk(outdir, manifest["outputs"][SDCARD], state, BOOT_SDCARD)
    files = read_boot_files(card)
    folder = state.folder / FROM_SDCARD
    folder.mkdir(parents=True, exist_ok=True)
    kernel = write_file(folder / "kernel.img", files.kernel)
    initrd = write_file(folder / "initramfs", files.initramfs) if files.initramfs else None
    memory, append = guest_ram(board, files.cmdline)
    dtb = None
    loaded: tuple[str, ...] = ()  # QEMU arguments that load the initramfs where -initrd cannot
    if files.dtb is not None:
        tree = DeviceTree.parse(files.dtb, where=f"{card}: {files.dtb_name}")
        apply_fixups(tree, board.qemu.profile.dtb_fixups)
        if initrd is not None and memory != board.qemu.memory:
            loaded, initrd = _initrd_below(board, tree, initrd), None
        dtb = write_file(folder / (files.dtb_name or "board.dtb"), tree.to_bytes())
    return BootSpec(
        profile=board.qemu.profile,
        kernel=kernel,
        initrd=initrd,
        dtb=dtb,
        append=append,
        memory=memory,
        extra_args=loaded,
        forward=board.qemu.forward,
        sd_card=card,
        persistent=True,
        ready_marker=READY_MARKER,
        ready_timeout=board.qemu.timeout,
    )


def _initrd_below(board: Board, tree: DeviceTree, initrd: Path) -> tuple[str, ...]:
    """The QEMU arguments that load the initramfs inside the board's declared RAM, with its
    place written into the DTB's /chosen as the Pi's firmware writes it.

    QEMU's own -initrd goes to 128 MiB on a 512 MiB machine, beyond a kernel held to 64 MiB
    by mem=, which then drops it. Placed instead at the top of the declared RAM (U-Boot's
    habit), it stays clear of the kernel, which decompresses itself upwards from the bottom.
    RAM starts at address 0 on the fixed-RAM machines (raspi0)."""
    assert board.qemu is not None and board.qemu.memory is not None
    size = initrd.stat().st_size
    start = (board.qemu.memory * MIB - size) & ~(MIB - 1)
    if start < KERNEL_ROOM:
        raise UserError(f"{board.source}: the initramfs ({size} bytes) does not fit in limits.ram "
                        f"{board.qemu.memory} MiB beside the kernel's {KERNEL_ROOM // MIB} MiB",
                        "declare more RAM or make the initramfs smaller")
    chosen = tree.find("/chosen")
    chosen.set_cells("linux,initrd-start", [start])
    chosen.set_cells("linux,initrd-end", [start + size])
    return ("-device", f"loader,file={initrd},addr={start:#x},force-raw=on")


def _device_disk(outdir: Path, built: dict, state: BootState, name: str) -> Path:
    """The device's copy of a built disk or SD card (as the manifest lists it), its data
    partition kept across rebuilds."""
    return state.copy(outdir / built["file"], name, sha256=built["sha256"], keep=data_partition)


# In order of precedence: the first bootable output a build has is how it boots, and an
# output an earlier writer covers is not written again.
OUTPUTS = (
    Output(SDCARD, write_sdcard_image, sdcard_boot_spec, covers=(DISK, INITRAMFS, SQUASHFS),
           root_on_disk=True, boot_partition=True, prepare=take_boot_firmware),
    Output(FLASH_OUTPUT, write_flash_images, flash_boot_spec, covers=(INITRAMFS, SQUASHFS, UIMAGE_OUTPUT),
           root_on_disk=True),
    Output(FIT, None, uboot_boot_spec, boot_partition=True),
    Output(DISK, write_disk_output, kernel_boot_spec, covers=(INITRAMFS, SQUASHFS, FIT), root_on_disk=True),
    Output(INITRAMFS, write_full_initramfs, kernel_boot_spec, covers=(FIT,)),
    Output(SQUASHFS, write_squashfs_output),
    Output(UIMAGE_OUTPUT, write_uimage_output),
    # Last: it packs what the writers above wrote.
    Output(BUNDLE, write_update_bundle, covers=(SYSUPGRADE,), implied_by=lambda board: board.update is not None),
    Output(SYSUPGRADE, None, implied_by=lambda board: board.update is not None and board.flash is not None),
)
# A squashfs output alone is a root for flashing: the kernel has nothing to mount it from.
# The FIT boots only beside a disk or an initramfs, which is what a board names.
BOOTABLE_OUTPUTS = frozenset(o.name for o in OUTPUTS if o.boot_spec is not None and o.write is not None)
