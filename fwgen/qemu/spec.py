"""What one QEMU run boots (BootSpec) and the command line that boots it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..board import QemuProfile
from ..errors import UserError


@dataclass(frozen=True)
class BootSpec:
    """Everything one QEMU run needs besides the profile's machine facts."""

    profile: QemuProfile
    kernel: Path | None  # None: `bios` (a bootloader) loads the kernel itself
    initrd: Path | None = None
    dtb: Path | None = None
    append: str = ""
    memory: int | None = None
    drives: tuple[Path, ...] = ()  # raw disk images, attached with the profile's disk device
    persistent: bool = False  # the guest writes into `drives` (else snapshot=on keeps them as they are)
    sd_card: Path | None = None  # raspi0 style (-drive if=sd)
    forward: tuple[int, ...] = ()  # guest TCP ports -> free ports on 127.0.0.1
    extra_args: tuple[str, ...] = ()
    ready_marker: str | None = None  # the line that says the guest is up (what reboot() waits for)
    ready_timeout: float = 120.0
    bios: Path | None = None  # a bootloader started instead of -kernel (U-Boot's u-boot.bin)
    bootloader_prompt: str | None = None  # the bootloader's prompt, where bootloader_commands are typed
    bootloader_commands: tuple[str, ...] = ()  # typed at that prompt, one at a time, as a test lab does
    tftp: Path | None = None  # a folder QEMU's user network serves by TFTP


def qemu_argv(spec: BootSpec, host_ports: Mapping[int, int] | None = None) -> list[str]:
    """The QEMU command line for `spec`, serial console on stdio.

    `host_ports` maps each forwarded guest TCP port to its port on 127.0.0.1. Disk images are
    attached with `snapshot=on` unless `spec.persistent`: the guest may write, the image files
    stay as built.
    """
    profile = spec.profile
    argv = [profile.binary, "-M", profile.machine]
    if profile.cpu:
        argv += ["-cpu", profile.cpu]
    argv += ["-m", str(spec.memory or profile.memory)]
    argv += ["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"]
    argv += _boot_args(spec)
    argv += _drive_args(spec)
    argv += _network_args(spec, host_ports or {})
    return argv + list(profile.args) + list(spec.extra_args)


def _boot_args(spec: BootSpec) -> list[str]:
    """-bios for a bootloader (which finds kernel, initramfs and command line on its own), or
    QEMU's own loader."""
    if spec.bios is not None:
        return ["-bios", str(spec.bios)]
    if spec.kernel is None:
        raise UserError(f"QEMU profile {spec.profile.name}: nothing to boot (no kernel, no bios)")
    args = ["-kernel", str(spec.kernel)]
    if spec.initrd:
        args += ["-initrd", str(spec.initrd)]
    if spec.dtb:
        args += ["-dtb", str(spec.dtb)]
    return args + ["-append", kernel_cmdline(spec)]


def kernel_cmdline(spec: BootSpec) -> str:
    """The boot arguments, with the profile's console added unless the caller chose one."""
    if "console=" in spec.append:
        return spec.append
    return f"console={spec.profile.console} {spec.append}".strip()


def _drive_args(spec: BootSpec) -> list[str]:
    args: list[str] = []
    if spec.drives and not spec.profile.disk:
        raise UserError(f"QEMU profile {spec.profile.name} has no disk device for {spec.drives[0]}")
    snapshot = "" if spec.persistent else ",snapshot=on"
    for index, drive in enumerate(spec.drives):
        args += ["-drive", f"file={_drive_path(drive)},if=none,id=d{index},format=raw{snapshot}",
                 "-device", f"{spec.profile.disk},drive=d{index}"]
    if spec.sd_card:
        args += ["-drive", f"file={_drive_path(spec.sd_card)},if=sd,format=raw{snapshot}"]
    return args


def _drive_path(path: Path) -> str:
    # QEMU's option parser splits on ',': a literal comma is written twice.
    return str(path).replace(",", ",,")


def _network_args(spec: BootSpec, host_ports: Mapping[int, int]) -> list[str]:
    nic = spec.profile.nic
    if not nic:
        if spec.forward:
            raise UserError(f"QEMU profile {spec.profile.name} has no network device to forward ports through")
        # Without any network option some machines add a default NIC (malta: pcnet, whose
        # option ROM efi-pcnet.rom a minimal QEMU install lacks).
        return ["-nic", "none"]
    tftp = f",tftp={_drive_path(spec.tftp)}" if spec.tftp else ""
    netdev = "user,id=n0" + tftp + "".join(
        f",hostfwd=tcp:127.0.0.1:{host_ports[port]}-:{port}" for port in spec.forward
    )
    return ["-netdev", netdev, "-device", f"{nic},netdev=n0"]
