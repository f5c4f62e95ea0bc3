"""ELF audit: does every binary in an image fit the board, and is it linked as we think?

For every ELF file: machine, class and endianness; float ABI (ARM: EABI version and
hard/soft float from e_flags and the build attributes, including Tag_CPU_arch, so ARMv7 code
on an ARMv6 board is caught; MIPS: ISA and ABI flags); static or dynamic with the
interpreter; libc (musl, glibc or none); DT_NEEDED resolved inside the image; hardening
(PIE, RELRO, BIND_NOW, NX stack, stack protector). A file whose machine, endianness, float
ABI or CPU architecture does not fit the board is an error, as is a DT_NEEDED that the image
does not hold or that has another float ABI than its user.

"Fits" means "runs there": soft-float ARM code runs on a hard-float board (its libraries
must be soft-float too); hard-float ARM code on a soft-float board does not (the CPU may
lack VFP). On MIPS the kernel emulates a missing FPU, so hard-float code on a soft-float
board is a note, not an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection, DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import ARMAttributesSection, SymbolTableSection

from .arch import EM_AARCH64, EM_ARM, EM_MIPS, Arch
from .cache import Cache, discard_damaged
from .errors import UserError
from .images.read import read_image
from .policy import SpecialFile, find_special_files
from .progress import QUIET, Progress
from .rootfs import EntryType, RootFS, read_folder

ELF_MAGIC = b"\x7fELF"
MACHINES = {EM_ARM: "arm", EM_AARCH64: "aarch64", EM_MIPS: "mips", 3: "x86", 62: "x86_64", 243: "riscv"}
MACHINE_NAMES = {"EM_ARM": "arm", "EM_AARCH64": "aarch64", "EM_MIPS": "mips", "EM_386": "x86",
                 "EM_X86_64": "x86_64", "EM_RISCV": "riscv"}

# ARM ELF ABI (IHI 0044) e_flags: "EF_ARM_EABIMASK 0xFF000000 ... EF_ARM_ABI_FLOAT_HARD
# 0x00000400, EF_ARM_ABI_FLOAT_SOFT 0x00000200 (EABI version 5 only)".
EF_ARM_EABIMASK = 0xFF000000
EF_ARM_ABI_FLOAT_HARD = 0x400
EF_ARM_ABI_FLOAT_SOFT = 0x200

# ARM build attributes (IHI 0045), Tag_CPU_arch values.
ARM_CPU_ARCH = {
    0: "pre-v4", 1: "v4", 2: "v4T", 3: "v5T", 4: "v5TE", 5: "v5TEJ", 6: "v6", 7: "v6KZ",
    8: "v6T2", 9: "v6K", 10: "v7", 11: "v6-M", 12: "v6S-M", 13: "v7E-M", 14: "v8",
    15: "v8-R", 16: "v8-M.base", 17: "v8-M.main", 18: "v8.1-M.main", 19: "v9",
}
# What a board's CPU runs. The numbering is not an order: v6T2 (Thumb-2) and the M profiles
# do not run on an ARM1176 (ARMv6KZ), although v6K (9) does.
ARM_CPU_ARCH_FITS = {
    "v6": {0, 1, 2, 3, 4, 5, 6, 7, 9},
    "v7": {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10},
}
# Tag_ABI_VFP_args: 0 base (core registers), 1 VFP registers, 2 toolchain-specific,
# 3 "code is compatible with both" (no float arguments at all).
VFP_ARGS = {0: "soft", 1: "hard", 2: "custom", 3: "any"}
# Tag_FP_arch: 2 is VFPv2, the ARM1176's unit; 3 and up (VFPv3, v4, ARMv8 FP) do not run there.
ARMV6_MAX_FP_ARCH = 2

# MIPS e_flags (SysV MIPS supplement; binutils include/elf/mips.h).
EF_MIPS_ARCH = 0xF0000000
MIPS_ISA = {0x0: "mips1", 0x1: "mips2", 0x2: "mips3", 0x3: "mips4", 0x4: "mips5", 0x5: "mips32",
            0x6: "mips64", 0x7: "mips32r2", 0x8: "mips64r2", 0x9: "mips32r6", 0xA: "mips64r6"}
EF_MIPS_ABI = 0x0000F000
MIPS_ABI = {0x0000: "none", 0x1000: "o32", 0x2000: "o64", 0x3000: "eabi32", 0x4000: "eabi64"}
EF_MIPS_ABI2 = 0x20  # n32
# .MIPS.abiflags fp_abi (Val_GNU_MIPS_ABI_FP_*): 0 any, 1 double, 2 single, 3 soft, 4 old-64,
# 5 xx, 6 64, 7 64a.
MIPS_FP_ABI = {0: "any", 1: "hard", 2: "hard", 3: "soft", 4: "hard", 5: "hard", 6: "hard", 7: "hard"}
TAG_GNU_MIPS_ABI_FP = 4

DF_BIND_NOW = 0x8
DF_1_NOW = 0x1
DF_1_PIE = 0x08000000
PF_X = 0x1

# Files that run on another processor (GPU firmware such as the Raspberry Pi's start.elf,
# Wi-Fi firmware): audited and reported, never held against the board's CPU.
FOREIGN_PREFIXES = ("/boot/", "/lib/firmware/", "/usr/lib/firmware/")


@dataclass
class ElfInfo:
    """What the audit found in one ELF file."""

    path: str
    machine: str
    elf_class: int
    endian: str
    type: str  # executable, pie, shared-library, relocatable, core
    float_abi: str | None = None  # ARM/MIPS: hard, soft, any; None: not applicable
    arm_eabi: int | None = None
    cpu_arch: str | None = None  # ARM Tag_CPU_arch name; MIPS ISA
    fp_arch: int | None = None  # ARM Tag_FP_arch (2 = VFPv2)
    neon: bool = False  # ARM Tag_Advanced_SIMD_arch present
    mips_abi: str | None = None
    static: bool = True
    interpreter: str | None = None
    libc: str = "none"  # musl, glibc, none, unknown
    needed: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)  # DT_RUNPATH, else DT_RPATH
    missing: list[str] = field(default_factory=list)
    pie: bool = False
    relro: bool = False
    bind_now: bool = False
    nx_stack: bool = False
    stack_protector: bool | None = None  # None: cannot tell (no symbols)
    foreign: bool = False  # firmware for another processor
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not failing the build


@dataclass
class AuditReport:
    """Every ELF file audited, and the errors (each names the file and the mismatch)."""

    files: list[ElfInfo] = field(default_factory=list)
    special: list[SpecialFile] = field(default_factory=list)  # device nodes, setuid, world-writable

    @property
    def errors(self) -> list[str]:
        return [f"{f.path}: {e}" for f in self.files for e in f.errors]

    def to_text(self) -> str:
        """One line per file (what `fwgen audit` prints), then the errors."""
        lines = []
        for f in self.files:
            link = "static" if f.static else f"dynamic ({f.interpreter or 'no interpreter'})"
            cpu = f" {f.cpu_arch}" if f.cpu_arch else ""
            flt = f" {f.float_abi}-float" if f.float_abi else ""
            hardening = ",".join(n for n, on in (("pie", f.pie), ("relro", f.relro), ("now", f.bind_now), ("nx", f.nx_stack)) if on)
            lines.append(f"{f.path}: {f.machine}{cpu} ELF{f.elf_class} {f.endian}{flt} {f.type} {link} libc={f.libc} [{hardening}]")
        lines += [f"special: {s.describe()}" for s in self.special]
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"files": [asdict(f) for f in self.files], "special": [s.to_dict() for s in self.special],
                           "errors": self.errors}, indent=2)


# -- entry points -----------------------------------------------------------------------------


def audit_rootfs(
    rootfs: RootFS, arch: Arch | None, *, cache: Cache | None = None, progress: Progress = QUIET
) -> AuditReport:
    """Audit every ELF file of `rootfs` against `arch` (None: report only, no fit checks).

    With a `cache`, what `inspect_elf` reads from a file is kept by the file's SHA-256, so a
    rebuild only parses the ELF files that changed (`progress` hears of damaged entries)."""
    report = AuditReport()
    for entry in rootfs:
        if entry.type is EntryType.FILE and entry.data[:4] == ELF_MAGIC:
            info = _inspect_cached(entry.path, entry.data, cache, progress)
            if info.foreign is False and arch is not None:
                info.errors += fit_errors(info, arch)
            report.files.append(info)
    _check_libraries(rootfs, report)
    report.special = find_special_files(rootfs)
    return report


def _check_libraries(rootfs: RootFS, report: AuditReport) -> None:
    """Resolve every DT_NEEDED inside the image; a library must share its user's float ABI
    (an armel program cannot load an armhf libc)."""
    search = _library_dirs(rootfs)
    by_path = {f.path: f for f in report.files}
    for info in report.files:
        if info.static or info.foreign:
            continue
        for name in info.needed:
            found = _find_library(rootfs, name, search, info)
            if found is None:
                info.missing.append(name)
                info.errors.append(f"needs {name}, which the image does not hold")
                continue
            lib = by_path.get(found)
            if lib and {info.float_abi, lib.float_abi} == {"hard", "soft"}:
                info.errors.append(f"{info.float_abi}-float, but {name} ({found}) is {lib.float_abi}-float")


def runtime_files(rootfs: RootFS, path: str) -> dict[str, bytes]:
    """What running the image's program at `path` on the host needs beside it: its ELF
    interpreter and the libraries it loads (transitively), each under the path the loader
    asks for, with the bytes of the file that path resolves to in the image. A qemu-user
    sysroot (`-L`) of these runs a dynamically linked package binary at build time."""
    search = _library_dirs(rootfs)
    files: dict[str, bytes] = {}
    pending = [path]
    while pending:
        info = inspect_elf(pending[0], rootfs[pending.pop(0)].data)
        wanted = [(info.interpreter, info.interpreter)] if info.interpreter else []
        wanted += [(posixpath.join(posixpath.dirname(found), name), found) for name in info.needed
                   if (found := _find_library(rootfs, name, search, info)) is not None]
        for asked, found in wanted:
            resolved = _resolved_file(rootfs, found)
            if asked in files or resolved is None:
                continue
            files[asked] = rootfs[resolved].data
            pending.append(resolved)
    return files


def audit_paths(paths: Iterable[Path | str], arch: Arch | None) -> AuditReport:
    """Audit files and folders on the host. A folder is treated as a root filesystem (its
    DT_NEEDED are resolved inside it); a single file's DT_NEEDED are listed, not resolved."""
    report = AuditReport()
    for path in map(Path, paths):
        if path.is_dir():
            _add(report, audit_rootfs(read_folder(path), arch))
        elif path.is_file():
            data = path.read_bytes()
            if data[:4] == ELF_MAGIC:
                info = inspect_elf(str(path), data)
                info.foreign = False  # asked for by name: it must fit
                if arch is not None:
                    info.errors += fit_errors(info, arch)
                report.files.append(info)
            else:
                _add(report, audit_rootfs(read_image(path), arch))
        else:
            raise UserError(f"{path}: no such file or folder")
    return report


def _add(report: AuditReport, part: AuditReport) -> None:
    report.files += part.files
    report.special += part.special


# -- one file ---------------------------------------------------------------------------------


# Bump when inspect_elf learns something new, or the stored form changes: older cached
# readings are then not used (v2: stored with a SHA-256 header, Cache.store_checked).
INSPECT_VERSION = 2


def _inspect_cached(path: str, data: bytes, cache: Cache | None, progress: Progress) -> ElfInfo:
    """inspect_elf, remembered in the cache by content. A reading depends on the bytes and on
    whether the path is firmware's; a damaged or foreign-shaped cache file is discarded with
    a warning and the file read again."""
    if cache is None:
        return inspect_elf(path, data)
    digest = hashlib.sha256(data).hexdigest()
    kind = f"elf-audit.v{INSPECT_VERSION}{'.foreign' if path.startswith(FOREIGN_PREFIXES) else ''}.json"
    stored = cache.derived_path(digest, kind)
    blob = cache.read_checked(stored, progress)
    if blob is not None:
        try:
            fields = json.loads(blob)
            if fields.pop("sha256") == digest:
                return ElfInfo(**dict(fields, path=path))
            problem = "a reading of another file"
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            problem = f"not a reading ({e})"
        discard_damaged(stored, problem, "reading the ELF file again", progress)
    info = inspect_elf(path, data)
    cache.store_checked(stored, json.dumps(dict(asdict(info), sha256=digest)).encode())
    return info


def inspect_elf(path: str, data: bytes) -> ElfInfo:
    """Read what the audit needs from one ELF file (never raises for a malformed file)."""
    try:
        elf = ELFFile(io.BytesIO(data))
        info = ElfInfo(
            path=path,
            machine=MACHINE_NAMES.get(elf["e_machine"], str(elf["e_machine"])),
            elf_class=elf.elfclass,
            endian="little" if elf.little_endian else "big",
            type=_elf_type(elf),
            foreign=path.startswith(FOREIGN_PREFIXES),
        )
        _read_float_abi(elf, info)
        _read_linking(elf, info, data)
        _read_hardening(elf, info)
    except (ELFError, ValueError, KeyError, AssertionError) as e:
        return ElfInfo(path=path, machine="?", elf_class=0, endian="?", type="?",
                       errors=[f"malformed ELF file: {e}"])
    return info


def _elf_type(elf: ELFFile) -> str:
    e_type = elf["e_type"]
    if e_type == "ET_EXEC":
        return "executable"
    if e_type == "ET_REL":
        return "relocatable"
    if e_type == "ET_DYN":
        flags_1 = _dynamic_value(elf, "DT_FLAGS_1") or 0
        has_interp = any(s["p_type"] == "PT_INTERP" for s in elf.iter_segments())
        return "pie" if flags_1 & DF_1_PIE or has_interp else "shared-library"
    return str(e_type).removeprefix("ET_").lower()


def _read_float_abi(elf: ELFFile, info: ElfInfo) -> None:
    flags = elf["e_flags"]
    if elf["e_machine"] == "EM_ARM":
        info.arm_eabi = (flags & EF_ARM_EABIMASK) >> 24
        attrs = _arm_attributes(elf)
        if "TAG_CPU_ARCH" in attrs:
            info.cpu_arch = ARM_CPU_ARCH.get(attrs["TAG_CPU_ARCH"], f"arch#{attrs['TAG_CPU_ARCH']}")
        if "TAG_ABI_VFP_ARGS" in attrs:
            info.float_abi = VFP_ARGS.get(attrs["TAG_ABI_VFP_ARGS"], "custom")
        elif flags & EF_ARM_ABI_FLOAT_HARD:
            info.float_abi = "hard"
        else:
            info.float_abi = "soft"  # the EABI default: "base" procedure call standard
        info.fp_arch = attrs.get("TAG_FP_ARCH")
        info.neon = bool(attrs.get("TAG_ADVANCED_SIMD_ARCH"))
        if not attrs and elf.num_sections() == 0:
            info.notes.append("no section headers (sstrip), so no ARM build attributes: the CPU architecture "
                              "and FPU it needs are unknown; the float ABI comes from e_flags")
    elif elf["e_machine"] == "EM_MIPS":
        info.cpu_arch = MIPS_ISA.get((flags & EF_MIPS_ARCH) >> 28, "mips?")
        info.mips_abi = "n32" if flags & EF_MIPS_ABI2 else MIPS_ABI.get(flags & EF_MIPS_ABI, "?")
        if elf.elfclass == 64 and info.mips_abi == "none":
            info.mips_abi = "n64"
        info.float_abi = _mips_fp_abi(elf)


def _arm_attributes(elf: ELFFile) -> dict[str, int]:
    """The "aeabi" public build attributes of the whole file (File scope, tag 1)."""
    found: dict[str, int] = {}
    for section in elf.iter_sections():
        if not isinstance(section, ARMAttributesSection):
            continue
        for sub in section.iter_subsections():
            if sub.header["vendor_name"] != "aeabi":
                continue
            for subsub in sub.iter_subsubsections():
                if subsub.header.tag != "TAG_FILE":
                    continue
                for attr in subsub.iter_attributes():
                    if isinstance(attr.value, int):
                        found[attr.tag] = attr.value
    return found


def _mips_fp_abi(elf: ELFFile) -> str | None:
    section = elf.get_section_by_name(".MIPS.abiflags")
    if section is not None and section.data_size >= 24:
        # Elf_MIPS_ABIFlags_v0: version u16, isa_level u8, isa_rev u8, gpr_size u8,
        # cpr1_size u8, cpr2_size u8, fp_abi u8, ...
        return MIPS_FP_ABI.get(section.data()[7], "hard")
    section = elf.get_section_by_name(".gnu.attributes")
    if section is not None:
        # Older binaries: "gnu" vendor subsection, Tag_GNU_MIPS_ABI_FP (4) followed by a ULEB.
        data = section.data()
        at = data.find(bytes([TAG_GNU_MIPS_ABI_FP]), data.find(b"gnu\0") + 4)
        if at > 0 and at + 1 < len(data):
            return MIPS_FP_ABI.get(data[at + 1], "hard")
    return None


def _read_linking(elf: ELFFile, info: ElfInfo, data: bytes) -> None:
    for segment in elf.iter_segments():
        if segment["p_type"] == "PT_INTERP":
            info.interpreter = segment.get_interp_name()
    dynamic = _dynamic_section(elf)
    if dynamic is not None:
        tags = list(dynamic.iter_tags())
        info.needed = [t.needed for t in tags if t.entry.d_tag == "DT_NEEDED"]
        runpath = [t.runpath for t in tags if t.entry.d_tag == "DT_RUNPATH"]
        runpath = runpath or [t.rpath for t in tags if t.entry.d_tag == "DT_RPATH"]
        info.runpath = [d for value in runpath for d in value.split(":") if d]
    info.static = info.interpreter is None and not info.needed
    info.libc = _libc(info, data)


def _libc(info: ElfInfo, data: bytes) -> str:
    interp = posixpath.basename(info.interpreter or "")
    if interp.startswith("ld-musl") or "libc.musl" in " ".join(info.needed):
        return "musl"
    if interp.startswith(("ld-linux", "ld.so", "ld64.so")) or "libc.so.6" in info.needed:
        return "glibc"
    if not info.static:
        return "musl" if "libc.so" in info.needed else "unknown"
    if info.type == "relocatable":
        return "none"
    # Static: libc leaves its strings. glibc: symbol versions and its kernel check; musl:
    # strerror's message for errno 0 ("No error information"; glibc says "Success").
    if b"GLIBC_" in data or b"FATAL: kernel too old" in data:
        return "glibc"
    if b"No error information" in data:
        return "musl"
    return "none"


def _read_hardening(elf: ELFFile, info: ElfInfo) -> None:
    segments = {s["p_type"]: s for s in elf.iter_segments()}
    info.pie = info.type == "pie"
    info.relro = "PT_GNU_RELRO" in segments
    flags = _dynamic_value(elf, "DT_FLAGS") or 0
    flags_1 = _dynamic_value(elf, "DT_FLAGS_1") or 0
    info.bind_now = bool(flags & DF_BIND_NOW or flags_1 & DF_1_NOW or _dynamic_value(elf, "DT_BIND_NOW") is not None)
    stack = segments.get("PT_GNU_STACK")
    info.nx_stack = stack is not None and not stack["p_flags"] & PF_X
    names = _symbol_names(elf)
    if names:
        info.stack_protector = bool(names & {"__stack_chk_fail", "__stack_chk_guard"})


def _dynamic_section(elf: ELFFile) -> DynamicSection | DynamicSegment | None:
    """The dynamic table: from the section headers, else from the PT_DYNAMIC segment. OpenWrt
    strips the section headers off its binaries (sstrip); the loader reads the segment anyway."""
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            return section
    for segment in elf.iter_segments():
        if isinstance(segment, DynamicSegment):
            return segment
    return None


def _dynamic_value(elf: ELFFile, tag: str) -> int | None:
    dynamic = _dynamic_section(elf)
    if dynamic is None:
        return None
    for t in dynamic.iter_tags():
        if t.entry.d_tag == tag:
            return t.entry.d_val
    return None


def _symbol_names(elf: ELFFile) -> set[str]:
    names: set[str] = set()
    for section in elf.iter_sections():
        if isinstance(section, SymbolTableSection):
            names.update(s.name for s in section.iter_symbols())
    return names


# -- fitting the board ------------------------------------------------------------------------


def fit_errors(info: ElfInfo, arch: Arch) -> list[str]:
    """Why `info` cannot run on `arch`: machine, class, endianness, float ABI, CPU arch."""
    want = MACHINES.get(arch.elf_machine, str(arch.elf_machine))
    if info.machine != want:
        return [f"machine {info.machine}, but the board is {arch.value} ({want})"]
    errors = []
    if info.elf_class != arch.elf_class:
        errors.append(f"ELF{info.elf_class}, but the board is {arch.elf_class}-bit")
    if info.endian != arch.endian:
        errors.append(f"{info.endian}-endian, but the board is {arch.endian}-endian")
    if arch.elf_machine == EM_ARM:
        errors += _arm_cpu_errors(info, arch)
    if info.type == "relocatable":
        return errors  # objects and kernel modules make no float-ABI promise worth checking
    if info.float_abi == "hard" and arch.float_abi == "soft":
        if arch.elf_machine == EM_MIPS:
            # MIPS kernels emulate the FPU (MIPS_FP_SUPPORT): slow, but it runs.
            info.notes.append("hard-float code on a soft-float board: relies on the kernel's FPU emulation")
        else:
            errors.append("hard-float ABI (VFP registers), but the board is soft-float")
    # Soft-float code runs on a hard-float board (Debian's armel on an ARMv6 with VFP); what
    # cannot mix is a program and its libraries, checked in _check_libraries.
    return errors


def _arm_cpu_errors(info: ElfInfo, arch: Arch) -> list[str]:
    errors = []
    if info.arm_eabi != 5:
        errors.append(f"ARM EABI version {info.arm_eabi}, but the board runs EABI 5")
    fits = ARM_CPU_ARCH_FITS.get(arch.cpu_arch or "")
    code = {v: k for k, v in ARM_CPU_ARCH.items()}.get(info.cpu_arch or "")
    if fits is not None and code is not None and code not in fits:
        errors.append(f"built for ARM {info.cpu_arch} (Tag_CPU_arch), but the board's CPU is ARM {arch.cpu_arch}")
    if arch.cpu_arch == "v6":
        if info.neon:
            errors.append("uses NEON (Tag_Advanced_SIMD_arch), which the board's ARMv6 CPU lacks")
        if (info.fp_arch or 0) > ARMV6_MAX_FP_ARCH:
            errors.append("needs VFPv3 or later (Tag_FP_arch), but the board's ARMv6 CPU has VFPv2")
    return errors


# -- resolving DT_NEEDED inside the image -------------------------------------------------------

DEFAULT_LIBRARY_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib")
MULTIARCH = ("arm-linux-gnueabihf", "arm-linux-gnueabi", "aarch64-linux-gnu", "mipsel-linux-gnu",
             "mips-linux-gnu", "mips64el-linux-gnuabi64")


def _library_dirs(rootfs: RootFS) -> list[str]:
    """The dynamic linkers' search path: /etc/ld.so.conf (with includes), musl's
    /etc/ld-musl-*.path, Debian's multiarch folders, then the defaults."""
    dirs: list[str] = []
    for conf in ["/etc/ld.so.conf"] + [e.path for e in rootfs.children("/etc") if e.path.startswith("/etc/ld-musl-")]:
        dirs += _read_ld_conf(rootfs, conf, depth=0)
    dirs += [f"{base}/{triplet}" for triplet in MULTIARCH for base in ("/lib", "/usr/lib")]
    return dirs + list(DEFAULT_LIBRARY_DIRS)


def _read_ld_conf(rootfs: RootFS, path: str, depth: int) -> list[str]:
    entry = rootfs.resolve(path)
    if entry is None or entry.type is not EntryType.FILE or depth > 4:
        return []
    dirs: list[str] = []
    for line in entry.data.decode(errors="replace").replace(":", "\n").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("include "):
            pattern = line.split(None, 1)[1]
            folder = posixpath.dirname(pattern)
            suffix = posixpath.basename(pattern).replace("*", "")
            for child in rootfs.children(folder) if folder in rootfs else []:
                if child.path.endswith(suffix):
                    dirs += _read_ld_conf(rootfs, child.path, depth + 1)
        elif line.startswith("/"):
            dirs.append(line)
    return dirs


def _find_library(rootfs: RootFS, name: str, search: list[str], info: ElfInfo) -> str | None:
    """The path of the file `name` resolves to, as the dynamic linker would search."""
    if "/" in name:
        return _resolved_file(rootfs, name)
    # ld.so: "$ORIGIN ... expands to the directory containing the program or shared object".
    origin = posixpath.dirname(info.path)
    dirs = [d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin) for d in info.runpath]
    if info.interpreter:
        dirs.append(posixpath.dirname(info.interpreter))
    for folder in dirs + search:
        found = _resolved_file(rootfs, posixpath.join(folder, name))
        if found:
            return found
    return None


def _resolved_file(rootfs: RootFS, path: str) -> str | None:
    entry = rootfs.resolve(path)
    return entry.path if entry is not None and entry.type is EntryType.FILE else None
