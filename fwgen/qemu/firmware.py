"""The firmware files (BIOS and option ROMs) a QEMU profile declares: where QEMU finds them,
and a QEMU confined to finding those alone, as on a minimal install."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from ..board import QemuProfile
from ..errors import BootError, ToolMissingError
from ..run import PACKAGE_OF, run

# Which Debian package ships QEMU's own ROM files, by name prefix (for the "missing" hint).
FIRMWARE_PACKAGES = (("vgabios-", "seabios"), ("bios", "seabios"), ("efi-", "ipxe-qemu"), ("pxe-", "ipxe-qemu"))


def firmware_search_path(binary: str, args: tuple[str, ...] = ()) -> list[Path]:
    """The folders `binary` searches for firmware, in order, with the `-L` folders in `args`
    first (what `-L help` prints)."""
    given = [arg for option, arg in zip(args, args[1:], strict=False) if option == "-L"]
    listed = run([binary, *(part for folder in given for part in ("-L", folder)), "-L", "help"]).stdout.decode()
    return [Path(line) for line in listed.splitlines() if line.strip()]


def locate_firmware(profile: QemuProfile) -> dict[str, Path]:
    """Where QEMU finds each firmware file `profile` declares.

    Raises ToolMissingError naming the files it lacks and the packages that ship them, before
    QEMU would stop with `failed to find romfile`."""
    if not profile.firmware:
        return {}
    folders = firmware_search_path(profile.binary, profile.args)
    found: dict[str, Path] = {}
    for name in profile.firmware:
        hits = [folder / name for folder in folders if (folder / name).is_file()]
        if hits:
            found[name] = hits[0]
    missing = [name for name in profile.firmware if name not in found]
    if missing:
        packages = sorted({next((pkg for prefix, pkg in FIRMWARE_PACKAGES if name.startswith(prefix)),
                                "the package that ships it") for name in missing})
        raise ToolMissingError(
            f"{profile.source or profile.name}: firmware {', '.join(missing)} not found in "
            f"{profile.binary}'s search path ({', '.join(map(str, folders))})",
            f"install {', '.join(packages)}")
    return found


def confine_firmware(profile: QemuProfile, folder: Path) -> QemuProfile:
    """`profile` changed so that its QEMU finds the firmware the profile declares and nothing
    else: what a minimal QEMU install (no seabios, no ipxe-qemu) offers a profile that
    declares what it needs.

    QEMU searches the `-L` folders, then folders relative to its own executable (Debian's
    `<bin>/../share/qemu`, `../share/seabios`, `../lib/ipxe/qemu`). A copy of the binary in
    `folder/bin` (a copy: QEMU finds itself through /proc/self/exe, which resolves symlinks)
    has none of those, and `-L folder/firmware` holds copies of the declared files only. A
    ROM the profile uses without declaring it then stops QEMU at start, whatever firmware
    the host has installed. Raises BootError when this QEMU searches fixed folders that exist.
    """
    found = locate_firmware(profile)
    binary = shutil.which(profile.binary)
    if binary is None:
        raise ToolMissingError(f"{profile.binary} not found", f"install {PACKAGE_OF.get(profile.binary, profile.binary)}")
    bindir, firmware_dir = folder / "bin", folder / "firmware"
    bindir.mkdir(parents=True, exist_ok=True)
    firmware_dir.mkdir(parents=True, exist_ok=True)
    private = bindir / Path(binary).name
    shutil.copy2(binary, private)
    for name, path in found.items():
        shutil.copyfile(path, firmware_dir / name)
    confined = replace(profile, binary=str(private), args=("-L", str(firmware_dir), *_without_search_folders(profile.args)))
    leaks = [p for p in firmware_search_path(confined.binary, confined.args) if p != firmware_dir and p.exists()]
    if leaks:
        raise BootError(f"{binary} searches {', '.join(map(str, leaks))} wherever it runs from: "
                        "its firmware cannot be confined to what the profile declares")
    return confined


def _without_search_folders(args: tuple[str, ...]) -> tuple[str, ...]:
    kept: list[str] = []
    for arg in args:
        if kept and kept[-1] == "-L":
            kept.pop()
        else:
            kept.append(arg)
    return tuple(kept)
