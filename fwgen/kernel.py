"""The kernel of an image and the modules it must load at boot.

The kernel comes from a distribution package or from a vendor's files. Debian's kernel
packages ship no modules.dep (depmod runs at install time), so dependencies are read from
each module's `.modinfo` section: NUL-separated `key=value` strings such as
`depends=virtio_ring,virtio`, `alias=fs-squashfs`, `name=squashfs` and
`vermagic=6.1.0-50-cloud-arm64 SMP mod_unload modversions aarch64`. The kernel refuses a
module whose vermagic differs from its own, so fwgen checks that before building an image
that would only fail at boot.
"""

from __future__ import annotations

import collections
import difflib
import io
import posixpath
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from construct import ConstructError
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .compression import BOOT_COMPRESSIONS, by_suffix
from .compression import ERRORS as DECOMPRESSION_ERRORS
from .errors import FormatError, UserError, parse_error
from .guest import MODULE_LIST
from .rootfs import Entry, EntryType, RootFS

# /lib/modules/<release>/... (Debian up to bookworm) or /usr/lib/modules/<release>/... (merged /usr).
MODULE_TREE = re.compile(r"^/(?:usr/)?lib/modules/(?P<release>[^/]+)/(?P<path>.+)$")
IMAGE_NAME = re.compile(r"^(?:vmlinuz|vmlinux|Image|zImage|Image\.gz)(?:-(?P<release>.+))?$")
# linux_banner in init/version.c: "Linux version " UTS_RELEASE " (" LINUX_COMPILE_BY "@" ...
# The "(" tells it from the "%s version %s" format strings elsewhere in the image.
BANNER = re.compile(rb"Linux version (?P<release>[^\s%\0]+) \(")


@dataclass(frozen=True)
class Module:
    """A loadable kernel module. `path` is relative to /lib/modules/<release>/ and ends in .ko."""

    name: str
    path: str
    data: bytes = field(repr=False)
    depends: tuple[str, ...]
    vermagic: str
    aliases: tuple[str, ...]

    @property
    def release(self) -> str:
        """The kernel release the module was built for: the first word of its vermagic."""
        return self.vermagic.split(" ", 1)[0]


@dataclass(frozen=True)
class Kernel:
    """A kernel image and its modules, all for one release (`uname -r`)."""

    release: str
    image: bytes = field(repr=False)
    image_path: str
    modules: Mapping[str, Module] = field(repr=False)
    source: str
    builtin: frozenset[str] = field(default=frozenset(), repr=False)  # from modules.builtin
    vermagic: str | None = None  # the image's own, where it could be read


# -- loading ---------------------------------------------------------------------------


def load_kernel(entries: Iterable[Entry], *, source: str) -> Kernel:
    """Find the kernel image and the modules among the files of a package or vendor tree.

    The image is /boot/vmlinuz-<release> (or vmlinux-, Image, zImage); modules are
    /lib/modules/<release>/**.ko (also /usr/lib/modules, and .ko.xz/.zst/.gz, which are
    decompressed so that a plain insmod loads them). The release named by the file, the
    "Linux version" banner inside the image and the modules folder must agree.
    """
    images: list[Entry] = []
    module_files: list[tuple[str, str, Entry]] = []
    builtin_lists: dict[str, bytes] = {}
    for entry in entries:
        if entry.type is not EntryType.FILE:
            continue
        tree = MODULE_TREE.match(entry.path)
        if tree and _is_module_path(tree["path"]):
            module_files.append((tree["release"], tree["path"], entry))
        elif tree and tree["path"] == "modules.builtin":
            builtin_lists[tree["release"]] = entry.data
        elif not tree and IMAGE_NAME.match(posixpath.basename(entry.path)):
            images.append(entry)
    image = _choose_image(images, source)
    banner, vermagic = read_image_facts(image.data)
    release = _find_release(image, banner, {r for r, _, _ in module_files}, source)
    modules = _read_modules(
        [(path, entry) for r, path, entry in module_files if r == release], f"{source}: /lib/modules/{release}"
    )
    builtin = {_module_name(line) for line in builtin_lists.get(release, b"").decode().split()}
    if banner != release or not any(m.vermagic == vermagic for m in modules.values()):
        vermagic = None  # not trusted: a string that only looks like a vermagic
    return Kernel(release, image.data, image.path, modules, source, frozenset(builtin), vermagic)


def _is_module_path(path: str) -> bool:
    return path.endswith((".ko", ".ko.xz", ".ko.zst", ".ko.gz"))


def _choose_image(images: list[Entry], source: str) -> Entry:
    if not images:
        raise UserError(
            f"{source}: no kernel image found", "expected /boot/vmlinuz-<release>, vmlinux-<release>, Image or zImage"
        )
    in_boot = [e for e in images if e.path.startswith("/boot/")] or images
    if len(in_boot) > 1:
        raise UserError(f"{source}: several kernel images: {', '.join(sorted(e.path for e in in_boot))}")
    return in_boot[0]


def _find_release(image: Entry, banner: str | None, module_releases: set[str], source: str) -> str:
    match = IMAGE_NAME.match(posixpath.basename(image.path))
    named = match["release"] if match else None
    if named and banner and named != banner:
        raise UserError(f"{source}: {image.path} is named for release {named} but its banner says {banner}")
    release = named or banner
    if release is None:
        if len(module_releases) != 1:
            raise UserError(f"{source}: cannot tell the release of {image.path}: no version in its name or banner")
        release = next(iter(module_releases))
    if module_releases and release not in module_releases:
        raise UserError(
            f"{source}: the kernel image {image.path} is release {release} "
            f"but the modules are for {', '.join(sorted(module_releases))}"
        )
    return release


def read_banner_release(image: bytes) -> str | None:
    """The release in the image's "Linux version <release> (" banner, or None if not found.

    Looks in the image itself (arm64 Image, MIPS vmlinux ELF), then in a gzip, xz or zstd
    payload (vmlinuz.gz, arm zImage, MIPS vmlinuz) at the start or embedded in a decompressor.
    """
    return read_image_facts(image)[0]


def read_image_facts(image: bytes) -> tuple[str | None, str | None]:
    """(release, vermagic) as the kernel image itself states them; None where not found.

    The vermagic is the kernel's own `vermagic[]` (kernel/module/main.c), the string it
    compares every module's against, e.g. "6.1.0-50-cloud-arm64 SMP mod_unload modversions
    aarch64" (NUL-terminated).
    """
    for text in _image_texts(image):
        banner = BANNER.search(text)
        if banner:
            release = banner["release"]
            found = re.search(re.escape(release) + rb" [A-Za-z0-9_. -]+(?=\0)", text)
            vermagic = found[0].decode() if found else None
            return release.decode(errors="replace"), vermagic
    return None, None


def _image_texts(image: bytes) -> Iterable[bytes]:
    yield image
    yield from _embedded_payloads(image)


def _embedded_payloads(image: bytes, tries: int = 4) -> Iterable[bytes]:
    # The magic bytes can also occur by chance; try the first few hits of each.
    for kind in BOOT_COMPRESSIONS:
        start = image.find(kind.magic)
        for _ in range(tries):
            if start < 0:
                break
            try:
                yield kind.decompressobj().decompress(image[start:])
            except DECOMPRESSION_ERRORS:
                pass
            start = image.find(kind.magic, start + 1)


def _read_modules(files: list[tuple[str, Entry]], where: str) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    # Like depmod, a module under updates/ wins over the one the kernel shipped.
    for path, entry in sorted(files, key=lambda f: (not f[0].startswith("updates/"), f[0])):
        module = read_module(path, entry.data, where=f"{where}/{path}")
        modules.setdefault(module.name, module)
    return dict(sorted(modules.items()))


def read_module(path: str, data: bytes, *, where: str | None = None) -> Module:
    """Read one module (a .ko file, or .ko.xz/.zst/.gz) from its `.modinfo` section."""
    where = where or path
    data, path = _decompress_module(path, data, where)
    info = read_modinfo(data, where=where)
    vermagic = info.get("vermagic", [""])[0]
    if not vermagic:
        raise FormatError(f"{where}: .modinfo has no vermagic")
    name = info.get("name", [_module_name(path)])[0]
    depends = tuple(_module_name(d) for d in ",".join(info.get("depends", [])).split(",") if d)
    return Module(_module_name(name), path, data, depends, vermagic, tuple(info.get("alias", [])))


_MODULE_SUFFIXES = ("xz", "zst", "gz")  # .ko.xz and the like, as kmod reads them


def _decompress_module(path: str, data: bytes, where: str) -> tuple[bytes, str]:
    stem, _, suffix = path.rpartition(".")
    kind = by_suffix(suffix) if stem.endswith(".ko") and suffix in _MODULE_SUFFIXES else None
    if kind is None:
        return data, path
    try:
        return kind.open_reader(io.BytesIO(data)).read(), stem
    except DECOMPRESSION_ERRORS as e:
        raise FormatError(f"{where}: cannot decompress: {e}") from e


def read_modinfo(data: bytes, *, where: str = "module") -> dict[str, list[str]]:
    """The `.modinfo` section of an ELF module as key -> values (keys such as alias repeat)."""
    raw = find_modinfo_section(data)
    if raw is None:
        raw = read_modinfo_section(data, where=where)
    info: dict[str, list[str]] = collections.defaultdict(list)
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info[key].append(value)
    return dict(info)


def read_modinfo_section(data: bytes, *, where: str = "module") -> bytes:
    """The raw `.modinfo` section as pyelftools reads it, the reader of record: it is used
    wherever the fast path below declines, and it words the errors."""
    try:
        section = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
        raw = section.data() if section is not None else None
    except (ELFError, ConstructError, ValueError) as e:
        raise parse_error(where, "not an ELF kernel module", e) from e
    if raw is None:
        raise FormatError(f"{where}: no .modinfo section (not a kernel module?)")
    return raw


# The ELF header fields after e_ident, from e_type to e_shstrndx (elf(5)); Elf32 and Elf64
# differ only in the width of e_entry, e_phoff and e_shoff.
_ELF_HEADER = {1: "HHIIIIIHHHHHH", 2: "HHIQQQIHHHHHH"}
# Section headers, sh_name .. sh_entsize; sh_name, sh_type, sh_offset and sh_size are read.
_SECTION_HEADER = {1: "IIIIIIIIII", 2: "IIQQQQIIQQ"}
_SHT_NOBITS = 8
_SHN_LORESERVE = 0xFF00  # e_shnum 0 and e_shstrndx SHN_XINDEX mean "look in section 0"
_MODINFO = b".modinfo\0"  # a section name in .shstrtab, NUL-terminated


def find_modinfo_section(data: bytes) -> bytes | None:
    """The raw `.modinfo` section found by reading the ELF section headers directly, or
    None whenever the file is anything but a plain, well-formed ELF object.

    pyelftools builds an object per section to look one up by name, which costs about 3 ms
    a module, 3 s for a distribution kernel's ~1000 modules; this reads one table with
    `struct` and leaves every unusual case (and every error message) to pyelftools.
    """
    if len(data) < 16 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    elf_class, order = data[4], "<" if data[5] == 1 else ">"
    header = struct.Struct(order + _ELF_HEADER[elf_class])
    section = struct.Struct(order + _SECTION_HEADER[elf_class])
    if len(data) < 16 + header.size:
        return None
    *_, shoff, _flags, _ehsize, _phentsize, _phnum, shentsize, shnum, shstrndx = header.unpack_from(data, 16)
    end = shoff + shnum * section.size
    if shentsize != section.size or not 0 < shnum < _SHN_LORESERVE or shstrndx >= shnum or end > len(data):
        return None
    sections = [(s[0], s[1], s[4], s[5]) for s in section.iter_unpack(memoryview(data)[shoff:end])]
    _, strtab_type, strtab_offset, strtab_size = sections[shstrndx]
    if strtab_type == _SHT_NOBITS or strtab_offset + strtab_size > len(data):
        return None
    names = data[strtab_offset : strtab_offset + strtab_size]
    for name, kind, offset, size in sections:
        if names[name : name + len(_MODINFO)] == _MODINFO:
            if kind == _SHT_NOBITS or offset + size > len(data):
                return None
            return data[offset : offset + size]
    return None


def _module_name(path_or_name: str) -> str:
    # The kernel treats '-' and '_' in module names as the same character.
    base = posixpath.basename(path_or_name)
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


# -- resolving -------------------------------------------------------------------------


def resolve_modules(kernel: Kernel, names: Sequence[str]) -> list[Module]:
    """The modules to load for `names`, dependencies first, each once, in a fixed order.

    A name may also be an exact alias ("fs-squashfs"). A module built into the kernel is
    skipped. Raises UserError for an unknown module (with a did-you-mean), a missing
    dependency, a cycle, or a module whose vermagic does not match the kernel.
    """
    order: list[Module] = []
    state: dict[str, str] = {}

    def visit(module: Module, chain: tuple[str, ...]) -> None:
        if state.get(module.name) == "done":
            return
        if state.get(module.name) == "visiting":
            raise UserError(f"{kernel.source}: module dependency cycle: {' -> '.join((*chain, module.name))}")
        state[module.name] = "visiting"
        for dep in module.depends:
            if dep in kernel.modules:
                visit(kernel.modules[dep], (*chain, module.name))
            elif dep not in kernel.builtin:
                raise UserError(f"{kernel.source}: module {module.name} depends on {dep}, which is not there")
        state[module.name] = "done"
        order.append(module)

    for name in names:
        module = _find_module(kernel, name)
        if module is not None:
            visit(module, ())
    _check_vermagic(kernel, order)
    return order


def _find_module(kernel: Kernel, name: str) -> Module | None:
    wanted = _module_name(name)
    if wanted in kernel.modules:
        return kernel.modules[wanted]
    if wanted in kernel.builtin:
        return None
    for module in kernel.modules.values():
        if name in module.aliases:
            return module
    close = difflib.get_close_matches(wanted, [*kernel.modules, *kernel.builtin], n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else None
    if not kernel.modules:
        hint = "this kernel has no loadable modules"
    raise UserError(f"{kernel.source}: no module '{name}' in kernel {kernel.release}", hint)


def _check_vermagic(kernel: Kernel, modules: Sequence[Module]) -> None:
    # Prefer the image's own vermagic; where it cannot be read (an unknown compression), take
    # the one nearly all modules share, so a single foreign or tampered module stands out.
    if kernel.vermagic:
        usual, whose = kernel.vermagic, "the kernel's is"
    else:
        counts = collections.Counter(m.vermagic for m in kernel.modules.values())
        usual, whose = max(sorted(counts), key=lambda v: counts[v]), "the kernel's modules have"
    for module in modules:
        if module.release != kernel.release:
            raise UserError(
                f"{kernel.source}: module {module.name} ({module.path}) was built for kernel "
                f"{module.release!r}, not {kernel.release!r} (vermagic {module.vermagic!r})"
            )
        if module.vermagic != usual:
            raise UserError(
                f"{kernel.source}: module {module.name} ({module.path}) has vermagic "
                f"{module.vermagic!r} but {whose} {usual!r}"
            )


# -- installing ------------------------------------------------------------------------


def install_modules(rootfs: RootFS, kernel: Kernel, modules: Sequence[Module], *, provenance: str) -> None:
    """Put `modules` at /lib/modules/<release>/<path> and list them, in load order, one
    absolute path a line, in /etc/fwgen/modules (read by /init, which insmods each)."""
    paths = []
    for module in modules:
        path = f"/lib/modules/{kernel.release}/{module.path}"
        rootfs.add_file(path, module.data, 0o644, provenance=provenance)
        paths.append(path)
    rootfs.add_file(MODULE_LIST, "".join(p + "\n" for p in paths).encode(), 0o644, provenance=provenance)


@dataclass(frozen=True)
class LoadImage:
    """A kernel as a bootloader copies it: flat bytes to put at `load`, jumped to at `entry`."""

    data: bytes
    load: int
    entry: int


PT_LOAD = "PT_LOAD"


def flatten_elf(data: bytes, *, where: str = "vmlinux") -> LoadImage:
    """An ELF kernel (vmlinux) as the flat binary a uImage or FIT carries: every PT_LOAD
    segment's file bytes at its virtual address relative to the lowest one, gaps zero-filled
    (`objcopy -O binary`; the bss past the last segment's file bytes is left out, the kernel
    clears it). Load address and entry point are the ELF's own; on MIPS they are the KSEG0
    addresses U-Boot jumps to."""
    try:
        elf = ELFFile(io.BytesIO(data))
        segments = [(s["p_vaddr"], s.data()) for s in elf.iter_segments()
                    if s["p_type"] == PT_LOAD and s["p_filesz"] > 0]
        entry = elf.header["e_entry"]
    except (ELFError, ConstructError, struct.error) as e:
        raise parse_error(where, "not a readable ELF kernel", e) from e
    if not segments:
        raise FormatError(f"{where}: no PT_LOAD segment with data, nothing to boot")
    base = min(addr for addr, _ in segments)
    end = max(addr + len(body) for addr, body in segments)
    if end - base > 1 << 30:
        raise FormatError(f"{where}: PT_LOAD segments span {end - base:,} bytes ({base:#x}..{end:#x}), "
                          "more than a kernel image can")
    flat = bytearray(end - base)
    for addr, body in sorted(segments):
        flat[addr - base : addr - base + len(body)] = body
    return LoadImage(bytes(flat), base, entry)


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"
