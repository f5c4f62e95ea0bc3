"""Every per-architecture fact in one table.

Adding an architecture is one row here. Names come from the distributions (Debian, Alpine,
OpenWrt), the ELF specification (e_machine, class, data encoding), QEMU and Zig.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import UserError

EM_ARM = 40
EM_AARCH64 = 183
EM_MIPS = 8


@dataclass(frozen=True)
class ArchFacts:
    debian: str | None  # Debian port name; None where Debian has no such port
    alpine: str | None  # Alpine arch name; None where Alpine never had a port
    openwrt: str | None  # OpenWrt package arch (<arch>_<cpu>[_<fpu>])
    elf_machine: int  # e_machine
    elf_class: int  # 32 or 64
    endian: str  # "little" or "big"
    float_abi: str  # "hard", "soft" or "n/a" (aarch64 has one ABI)
    cpu_arch: str | None  # ARM Tag_CPU_arch the board's CPU supports at most (v6, v7); None elsewhere
    qemu_system: str  # qemu-system-* binary
    qemu_user: str  # qemu-*-static binary for running userland binaries
    qemu_user_cpu: str | None  # -cpu for qemu-user, where the default CPU is too new
    zig_target: str  # zig cc -target
    zig_cpu: tuple[str, ...]  # extra compiler flags selecting the CPU
    uname_m: str  # what `uname -m` prints on this arch
    linux_arch: str  # kernel ARCH= / U-Boot arch family
    host_triplet: str  # autotools' --host (config.sub knows it; zig's mips ABI suffixes it does not)


class Arch(enum.Enum):
    """The architectures fwgen builds for. `Arch.from_name("armv6")` parses user input."""

    ARMV6 = "armv6"
    ARMV7 = "armv7"
    AARCH64 = "aarch64"
    MIPS = "mips"
    MIPSEL = "mipsel"
    MIPS64EL = "mips64el"

    @property
    def facts(self) -> ArchFacts:
        return _FACTS[self]

    def __getattr__(self, name: str):  # arch.debian, arch.qemu_system, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(_FACTS[self], name)

    @classmethod
    def from_name(cls, name: str) -> Arch:
        for arch in cls:
            if arch.value == name:
                return arch
        raise UserError(f"unknown architecture '{name}'", cls.hint_for(name))

    @classmethod
    def hint_for(cls, name: str) -> str:
        """What to write instead of `name`: fwgen's name for an arch other tools call `name`,
        a word that fwgen does not build for it, else the closest fwgen name."""
        known = ", ".join(a.value for a in cls)
        if name.lower() in _OTHER_NAMES:
            arch, what = _OTHER_NAMES[name.lower()]
            if arch is None:
                return f"{what} is not an architecture fwgen builds for; it builds for {known}"
            return f"fwgen calls it '{arch.value}' ('{name}' is {what})"
        import difflib

        close = difflib.get_close_matches(name, [a.value for a in cls], n=1)
        return f"did you mean '{close[0]}'?" if close else f"known: {known}"

    @classmethod
    def from_debian(cls, name: str) -> Arch:
        """The arch whose Debian port is `name` (armel maps to armv6: ARMv5TE code runs there)."""
        for arch in cls:
            if arch.debian == name:
                return arch
        raise UserError(f"no fwgen architecture uses the Debian port '{name}'")


# Names that other tools (Debian ports, Go/Docker, uname -m, Alpine, OpenWrt, LLVM triples)
# give an architecture -> fwgen's arch, or None where fwgen does not build for it; then what
# the name means, for the message.
_OTHER_NAMES: dict[str, tuple[Arch | None, str]] = {
    "arm64": (Arch.AARCH64, "the Debian, Go and Docker name"),
    "armhf": (Arch.ARMV7, "Debian's ARMv7 hard-float port; Alpine's armhf is fwgen's armv6"),
    "armv7l": (Arch.ARMV7, "what uname -m prints"),
    "armv7hf": (Arch.ARMV7, "ARMv7 hard-float"),
    "armv7a": (Arch.ARMV7, "the ARM architecture profile"),
    "armel": (Arch.ARMV6, "Debian's soft-float ARM EABI port, which fwgen's armv6 boards install"),
    "armv6l": (Arch.ARMV6, "what uname -m prints"),
    "armv6hf": (Arch.ARMV6, "ARMv6 hard-float"),
    "armeb": (None, "big-endian 32-bit ARM"),
    "aarch64_be": (None, "big-endian 64-bit ARM"),
    "mipsle": (Arch.MIPSEL, "the Go name"),
    "mipsel_24kc": (Arch.MIPSEL, "an OpenWrt package arch"),
    "mipseb": (Arch.MIPS, "big-endian MIPS"),
    "mips_24kc": (Arch.MIPS, "an OpenWrt package arch"),
    "mips64le": (Arch.MIPS64EL, "the Go name"),
    "mips64": (None, "big-endian 64-bit MIPS"),
    "amd64": (None, "x86-64"),
    "x86_64": (None, "x86-64"),
    "x64": (None, "x86-64"),
    "i386": (None, "32-bit x86"),
    "i686": (None, "32-bit x86"),
    "x86": (None, "32-bit x86"),
    "powerpc": (None, "32-bit PowerPC"),
    "ppc": (None, "32-bit PowerPC"),
    "ppc64": (None, "64-bit PowerPC"),
    "ppc64le": (None, "little-endian 64-bit PowerPC"),
    "ppc64el": (None, "little-endian 64-bit PowerPC"),
    "riscv64": (None, "64-bit RISC-V"),
    "riscv32": (None, "32-bit RISC-V"),
    "s390x": (None, "IBM Z"),
    "loongarch64": (None, "LoongArch"),
    "loong64": (None, "LoongArch"),
}


#            debian      alpine     openwrt                      machine     cls end       float   cpu   qemu-system             qemu-user              ucpu       zig target               zig cpu flags                  uname -m   linux    --host
_FACTS: dict[Arch, ArchFacts] = {
    Arch.ARMV6: ArchFacts("armel", "armhf", "arm_arm1176jzf-s_vfp", EM_ARM, 32, "little", "hard", "v6", "qemu-system-arm", "qemu-arm-static", "arm1176", "arm-linux-musleabihf", ("-mcpu=arm1176jzf_s",), "armv6l", "arm", "arm-linux-musleabihf"),
    Arch.ARMV7: ArchFacts("armhf", "armv7", "arm_cortex-a7_neon-vfpv4", EM_ARM, 32, "little", "hard", "v7", "qemu-system-arm", "qemu-arm-static", None, "arm-linux-musleabihf", ("-mcpu=cortex_a7",), "armv7l", "arm", "arm-linux-musleabihf"),
    Arch.AARCH64: ArchFacts("arm64", "aarch64", "aarch64_cortex-a53", EM_AARCH64, 64, "little", "n/a", None, "qemu-system-aarch64", "qemu-aarch64-static", None, "aarch64-linux-musl", (), "aarch64", "arm64", "aarch64-linux-musl"),
    Arch.MIPS: ArchFacts(None, None, "mips_24kc", EM_MIPS, 32, "big", "soft", None, "qemu-system-mips", "qemu-mips-static", None, "mips-linux-musleabi", ("-fPIC",), "mips", "mips", "mips-linux-musl"),
    Arch.MIPSEL: ArchFacts("mipsel", None, "mipsel_24kc", EM_MIPS, 32, "little", "soft", None, "qemu-system-mipsel", "qemu-mipsel-static", None, "mipsel-linux-musleabi", ("-fPIC",), "mips", "mips", "mipsel-linux-musl"),
    Arch.MIPS64EL: ArchFacts("mips64el", None, "mips64el_mips64r2", EM_MIPS, 64, "little", "hard", None, "qemu-system-mips64el", "qemu-mips64el-static", None, "mips64el-linux-muslabi64", ("-mcpu=mips64r2", "-fPIC"), "mips64", "mips", "mips64el-linux-musl"),
}
