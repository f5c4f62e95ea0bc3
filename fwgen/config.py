"""Board and QEMU-profile files: found in their folders, read as `fwgen.document`s (YAML
with positions, validated against their schema, defaults applied) and turned into the frozen
dataclasses of fwgen.board, with the board's overlays loaded by fwgen.overlay.

Every mistake names the file, line and column, the key path and, where one is close, a hint:

    boards/bad.yaml:14:7: overlays[2]: unknown overlay 'htpd' (did you mean 'httpd'?)
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fwgen

from .arch import Arch
from .board import (
    CONSOLE_PLACEHOLDERS,
    Board,
    BusyboxSpec,
    DiskSpec,
    Feed,
    FlashPartition,
    FlashSpec,
    KernelSpec,
    Limits,
    PackageFile,
    Policy,
    QemuProfile,
    QemuSpec,
    SdcardSpec,
    UbootSpec,
    UpdateSpec,
)
from .document import (
    Document,
    KeyPath,
    apply_defaults,
    did_you_mean,
    display_path,
    format_keypath,
    inherit,
    load_schema,
    read_yaml,
    schema_regex,
    validate,
)
from .dtb import Fixup
from .errors import ConfigError, UserError
from .overlay import (
    Overlay,
    check_checks,
    declared_variables,
    render_checks,
    render_overlay_checks,
    resolve_overlays,
    resolve_variables,
    variable_text,
)
from .project import active_projects

# ---------------------------------------------------------------------------------------------
# Folders


@dataclass(frozen=True)
class TreeDirs:
    """The folders of the fwgen tree itself (empty tuples for an installed package)."""

    boards: tuple[Path, ...]
    qemu: tuple[Path, ...]
    overlays: tuple[Path, ...]


def default_dirs() -> TreeDirs:
    """Where boards, QEMU profiles and overlays are found when no flag names a folder: the
    project's (fwgen.toml found from the working folder, then FWGEN_PATH's trees), then the
    tree's own boards/, qemu/ and overlays/ where they exist."""
    projects = active_projects()
    # In a checkout the package sits in <repo>/fwgen; an installed wheel has no such siblings.
    root = Path(fwgen.__file__).resolve().parents[1]

    def folders(name: str) -> tuple[Path, ...]:
        tree = root / name
        return (*(folder for project in projects for folder in getattr(project, name)),
                *((tree,) if tree.is_dir() else ()))

    return TreeDirs(boards=folders("boards"), qemu=folders("qemu"), overlays=folders("overlays"))


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: list[Path] = []
    for path in paths:
        resolved = Path(path).resolve()
        if resolved not in seen:
            seen.append(resolved)
    return seen


def _search_dirs(user: Sequence[Path], board_file: Path | None, sub: str, tree: Iterable[Path]):
    """User folders, then `<sub>/` beside the board file, then the tree's.

    A vendor keeps `product.yaml` with `overlays/` next to it, or a tree shaped like ours
    (`boards/product.yaml` beside `overlays/`); both load without extra flags.
    """
    beside: list[Path] = []
    if board_file is not None:
        beside = [board_file.parent / sub]
        if board_file.parent.name == "boards":
            beside.append(board_file.parent.parent / sub)
    return [d for d in _unique([*user, *beside, *tree]) if d.is_dir()]


# ---------------------------------------------------------------------------------------------
# Finding and listing boards


def _is_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return "/" in text or text.endswith((".yaml", ".yml"))


def _board_dirs(boards_dirs: Sequence[Path]) -> list[Path]:
    return [d for d in _unique([*boards_dirs, *default_dirs().boards]) if d.is_dir()]


def find_board(name_or_path: str | Path, boards_dirs: Sequence[Path] = ()) -> Path:
    """The board file for a name (`qemu-aarch64`) or a path (`./vendor/product.yaml`).

    Names are looked up as `<dir>/<name>.yaml` in `boards_dirs`, then in the tree's boards/.
    """
    if _is_path(name_or_path) and Path(name_or_path).is_file():
        return Path(name_or_path)
    if _is_path(name_or_path):
        raise ConfigError("file not found", file=str(name_or_path))
    for folder in _board_dirs(boards_dirs):
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    known = [name for name, _, _ in list_boards(boards_dirs)]
    raise UserError(f"unknown board '{name_or_path}'", did_you_mean(str(name_or_path), known, "boards"))


def list_boards(boards_dirs: Sequence[Path] = ()) -> list[tuple[str, Path, str]]:
    """(name, path, description) of every board; earlier folders hide later ones' namesakes."""
    found: dict[str, tuple[str, Path, str]] = {}
    for folder in _board_dirs(boards_dirs):
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            if path.stem not in found:
                found[path.stem] = (path.stem, path, _peek_description(path))
    return sorted(found.values())


def _peek_description(path: Path) -> str:
    """The description without validating: `fwgen boards` lists broken boards too."""
    try:
        data = read_yaml(path).data
    except ConfigError:
        return "(unreadable: run `fwgen show` on it)"
    if isinstance(data, dict) and isinstance(data.get("description"), str):
        return data["description"]
    return ""


def board_digest(board: Board) -> str:
    """SHA-256 (hex) of the board file's bytes (and, for a board that extends others, of theirs
    after it), for the manifest."""
    digest = hashlib.sha256(board.source.read_bytes())
    for parent in board.inherits:
        digest.update(hashlib.sha256(parent.read_bytes()).digest())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# QEMU profiles


def list_qemu_profiles(qemu_dirs: Sequence[Path] = (), board_file: Path | None = None) -> dict[str, Path]:
    """Profile name -> file; a name in an earlier folder hides the same name in later ones."""
    found: dict[str, Path] = {}
    for folder in _search_dirs(qemu_dirs, board_file, "qemu", default_dirs().qemu):
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def load_qemu_profile(name: str, qemu_dirs: Sequence[Path] = ()) -> QemuProfile:
    """Load qemu/<name>.yaml from `qemu_dirs` (then the tree's qemu/), validated."""
    profiles = list_qemu_profiles(qemu_dirs)
    if name not in profiles:
        raise UserError(f"unknown qemu profile '{name}'", did_you_mean(name, list(profiles), "profiles"))
    return read_qemu_profile(profiles[name])


def read_qemu_profile(path: Path) -> QemuProfile:
    """Load one QEMU profile file, validated against qemu.schema.json."""
    doc = read_yaml(path)
    validate(doc, "qemu")
    data = apply_defaults(doc.data, load_schema("qemu"))
    arch = Arch.from_name(data["arch"])
    return QemuProfile(
        name=data.get("name", path.stem),
        arch=arch,
        binary=data.get("binary", arch.qemu_system),
        machine=data["machine"],
        console=data["console"],
        memory=int(data["memory"]),  # JSON Schema's integer also admits 256.0
        fixed_memory=data["fixed_memory"],
        cpu=data["cpu"],
        disk=data["disk"],
        nic=data["nic"],
        args=tuple(data["args"]),
        firmware=tuple(data["firmware"]),
        bios_size=data["bios_size"],
        source=path,
        dtb_fixups=tuple(
            Fixup(f["node"], set=tuple((k, tuple(v)) for k, v in f.get("set", {}).items()),
                  delete=tuple(f.get("delete", ())))
            for f in data["dtb_fixups"]
        ),
    )


# ---------------------------------------------------------------------------------------------
# Boards


def read_board_document(path: Path, boards_dirs: Sequence[Path] = (),
                        _children: tuple[Path, ...] = ()) -> tuple[Document, tuple[Path, ...]]:
    """A board file with what it `extends:` applied beneath it, and the files it inherits from
    (nearest first). The parent is a board name (found as any board is) or a path relative to
    the child; its own `name:` is never inherited."""
    doc = read_yaml(display_path(path))
    if not isinstance(doc.data, dict) or "extends" not in doc.data:
        return doc, ()
    parent_name = doc.data["extends"]
    if not isinstance(parent_name, str) or not parent_name:
        raise doc.error(("extends",), "extends names one board (a name or a path)")
    parent_path = _parent_board(doc, parent_name, path, boards_dirs)
    if parent_path in (path, *_children):
        raise doc.error(("extends",), f"boards extend each other in a circle through {parent_name}")
    parent, grandparents = read_board_document(parent_path, boards_dirs, (*_children, path))
    child = dataclasses.replace(doc, data={k: v for k, v in doc.data.items() if k != "extends"})
    return inherit(parent, child, not_inherited=("name", "extends")), (parent_path, *grandparents)


def board_origins(path: Path, boards_dirs: Sequence[Path] = ()) -> list[tuple[str, Any, str]]:
    """(key path, value, file:line) of every value the board file and those it extends set,
    after inheritance: where each setting of the merged board was written."""
    doc, _ = read_board_document(path, boards_dirs)
    rows: list[tuple[str, Any, str]] = []

    def walk(value: Any, keypath: KeyPath) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, (*keypath, key))
        elif isinstance(value, list) and any(isinstance(item, (dict, list)) or
                                             doc.file_of((*keypath, i)) != doc.file_of(keypath)
                                             for i, item in enumerate(value)):
            for i, item in enumerate(value):
                walk(item, (*keypath, i))
        else:
            line, _ = doc.position(keypath)
            rows.append((format_keypath(keypath), value, f"{doc.file_of(keypath)}:{line}"))

    walk(doc.data, ())
    return rows


def _parent_board(doc: Document, name: str, child: Path, boards_dirs: Sequence[Path]) -> Path:
    if _is_path(name):
        candidate = (child.parent / name).resolve()
        if not candidate.is_file():
            raise doc.error(("extends",), f"{name} not found", f"looked for {candidate}")
        return candidate
    try:
        return find_board(name, [child.parent, *boards_dirs]).resolve()
    except UserError as e:
        raise doc.error(("extends",), e.message, e.hint) from None


def load_board(
    name_or_path: str | Path,
    *,
    boards_dirs: Sequence[Path] = (),
    qemu_dirs: Sequence[Path] = (),
    overlay_dirs: Sequence[Path] = (),
) -> Board:
    """Find, parse, validate and resolve a board into a `Board`.

    The overlays, with those they depend on, are loaded here once, in application order, with
    their checks rendered; `overlay_dirs` is searched for them and not needed after this.
    kernel.image, kernel.modules_from and feed keys become absolute paths, read relative to
    the board file.
    """
    path = find_board(name_or_path, boards_dirs).resolve()
    doc, parents = read_board_document(path, boards_dirs)
    validate(doc, "board")
    check_checks(doc)
    data = apply_defaults(doc.data, load_schema("board"))
    check_persist_storage(doc, has_persistent_storage(data))
    qemu = _with_declared_ram(doc, _resolve_qemu(doc, data.get("qemu"), path, qemu_dirs), data["limits"])
    _check_fit_outputs(doc, data["outputs"])
    stack = _resolve_overlay_stack(doc, data, path, overlay_dirs)
    board = Board(
        name=_board_name(doc, data, path),
        arch=Arch.from_name(data["arch"]),
        source=path,
        description=data["description"],
        hostname=data["hostname"],
        feeds=tuple(_build_feed(doc, i, feed, path) for i, feed in enumerate(data["feeds"])),
        kernel=_build_kernel(doc, data["kernel"], path),
        busybox=_build_busybox(doc, data["busybox"], path),
        packages=tuple(_package_name(p) for p in data["packages"]),
        package_feeds=_pinned_feeds(doc, data),
        package_versions=_pinned_versions(data["packages"]),
        exclude=tuple(data["exclude"]),
        nodeps=tuple(data["nodeps"]),
        skip_package_scripts=dict(data["skip_package_scripts"]),
        package_files=_build_package_files(doc, data["package_files"], path),
        provides=dict(_split_provided(item) for item in data["provides"]),
        exclude_paths=tuple(data["exclude_paths"]),
        overlays=(),  # below, with their checks rendered
        variables={k: variable_text(v) for k, v in data["variables"].items()},
        outputs=tuple(data["outputs"]),
        disk=DiskSpec(**data["disk"]),
        sdcard=SdcardSpec(**dict(data["sdcard"], firmware=tuple(data["sdcard"]["firmware"]))),
        uboot=_build_uboot(doc, data["uboot"], path),
        flash=_build_flash(doc, data),
        version=data["version"],
        update=_build_update(doc, data, path),
        qemu=qemu,
        checks=(),  # rendered below, once the variables are known
        limits=_build_limits(data["limits"], data["outputs"], qemu),
        inherits=parents,
        policy=Policy(**dict(data["policy"], setuid_allowed=tuple(data["policy"]["setuid_allowed"]))),
    )
    return _with_variables(board, doc, data["checks"], stack)


def _with_variables(board: Board, doc: Document, checks: list[dict], stack: list[tuple[Overlay, Document]]) -> Board:
    """The board with its variables resolved (references resolve, or fail now), its own
    checks and its overlays' rendered with them, and the overlays in place."""
    values = resolve_variables(board, [overlay for overlay, _ in stack], doc)
    forward = board.qemu.forward if board.qemu else ()
    overlays = tuple(dataclasses.replace(overlay, checks=render_overlay_checks(overlay_doc, values, forward))
                     for overlay, overlay_doc in stack)
    return dataclasses.replace(board, checks=tuple(render_checks(doc, checks, values)), overlays=overlays,
                               values=values)


def _check_fit_outputs(doc: Document, outputs: list[str]) -> None:
    """The FIT carries the kernel with an initramfs: the whole root, or a disk's boot one."""
    if "fit" in outputs and ("sdcard" in outputs or not {"disk", "initramfs"} & set(outputs)):
        raise doc.error(("outputs",), "output fit needs disk or initramfs beside it (and no sdcard)",
                        "a FIT holds the kernel and the initramfs: the whole root, or the boot one of a disk")


def _build_uboot(doc: Document, uboot: dict, board: Path) -> UbootSpec:
    """U-Boot's settings; the console commands may use only the placeholders fwgen fills in."""
    for i, command in enumerate(uboot["commands"]):
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(command) if name is not None}
        except ValueError as e:
            raise doc.error(("uboot", "commands", i), f"{command!r}: {e}", "write a literal brace as {{ or }}") from e
        unknown = names - set(CONSOLE_PLACEHOLDERS)
        if unknown:
            raise doc.error(("uboot", "commands", i), f"unknown placeholder {{{sorted(unknown)[0]}}}",
                            f"known: {', '.join('{' + n + '}' for n in CONSOLE_PLACEHOLDERS)}")
    if uboot["commands"] and not uboot.get("prompt"):
        raise doc.error(("uboot", "commands"), "commands need the prompt U-Boot shows (uboot.prompt)")
    key = _relative_file(doc, ("uboot", "signing_key"), uboot.get("signing_key"), board)
    return UbootSpec(**dict(uboot, commands=tuple(uboot["commands"]), signing_key=key))


def _build_update(doc: Document, data: dict, board: Path) -> UpdateSpec | None:
    """The board's `update:`, its keys read relative to the board file."""
    if "update" not in data:
        return None
    update = data["update"]
    if not {"disk", "sdcard", "flash"} & set(data["outputs"]):
        raise doc.error(("update",), "an update bundle carries a root partition: the board has none",
                        "add disk, sdcard or flash to outputs", at_key=True)
    keys = tuple(_existing_file(doc, ("update", "keys", i), key, board) for i, key in enumerate(update["keys"]))
    compatible = tuple(update.get("compatible") or [_board_name(doc, data, board)])
    return UpdateSpec(slots=update["slots"], keys=keys, compatible=compatible, trials=update["trials"],
                      health=update.get("health"), health_timeout=update["health_timeout"],
                      fit_size=update.get("fit_size"), root_size=update.get("root_size"))


def _build_flash(doc: Document, data: dict) -> FlashSpec | None:
    """The flash layout, checked: partitions in order on erase-block boundaries, inside the
    flash, exactly one firmware partition; the flash output and the layout come together."""
    flash = data.get("flash")
    if ("flash" in data["outputs"]) != (flash is not None):
        if flash is None:
            raise doc.error(("outputs",), "output flash needs a flash section (size, partitions)")
        raise doc.error(("flash",), "a flash section without the flash output in outputs", at_key=True)
    if flash is None:
        return None
    if "uimage" not in data["outputs"] or not {"disk", "initramfs", "fit", "sdcard"}.isdisjoint(data["outputs"]):
        raise doc.error(("outputs",), "output flash goes with uimage (the kernel in the firmware partition) "
                        "and none of initramfs, disk, fit, sdcard")
    block, at, partitions = flash["erase_block"], 0, []
    for i, part in enumerate(flash["partitions"]):
        where = ("flash", "partitions", i)
        offset = part.get("offset", at)
        if offset < at:
            raise doc.error((*where, "offset"), f"partition {part['name']} at {offset:#x} overlaps the one before, "
                            f"which ends at {at:#x}")
        for key, value in (("offset", offset), ("size", part["size"])):
            if value % block:
                raise doc.error((*where, key), f"partition {part['name']} {key} {value:#x} is not a multiple of "
                                f"the {block:#x}-byte erase block")
        if offset + part["size"] > flash["size"]:
            raise doc.error((*where, "size"), f"partition {part['name']} ends at {offset + part['size']:#x}, "
                            f"past the {flash['size']:#x}-byte flash")
        partitions.append(FlashPartition(part["name"], offset, part["size"], part["content"]))
        at = offset + part["size"]
    names = [p.name for p in partitions]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise doc.error(("flash", "partitions", i, "name"), f"partition {name} is declared twice")
    firmware = [i for i, p in enumerate(partitions) if p.content == "firmware"]
    if len(firmware) != 1:
        raise doc.error(("flash", "partitions"), f"{len(firmware)} partitions hold the firmware, give exactly one "
                        "content: firmware")
    return FlashSpec(flash["size"], block, tuple(partitions), dict(flash["environment"]), flash["swap_words_below"])


def _build_limits(limits: dict, outputs: list[str], qemu: QemuSpec | None) -> Limits:
    """The board's limits, the image bound defaulting to the guest RAM of an initramfs root."""
    image_size = limits.get("image_size")
    if image_size is None:
        disk_root = "disk" in outputs or "sdcard" in outputs
        ram = limits.get("ram") or ((qemu.memory or qemu.profile.memory) if qemu is not None else None)
        image_size = ram if ram and not disk_root else Limits.image_size
    return Limits(package_size=limits["package_size"], image_size=image_size, ram=limits.get("ram"))


def _with_declared_ram(doc: Document, qemu: QemuSpec | None, limits: dict) -> QemuSpec | None:
    """The QEMU guest gets the RAM the board declares in limits.ram: the board is booted, and
    tested, with what the device has. A different qemu.memory beside it is a contradiction."""
    ram = limits.get("ram")
    if qemu is None or ram is None:
        return qemu
    if qemu.memory is not None and qemu.memory != ram:
        raise doc.error(("limits", "ram"), f"ram {ram} MiB, but qemu.memory says {qemu.memory} MiB",
                        "keep one: limits.ram is the device's RAM and what fwgen boot gives the guest")
    if qemu.profile.fixed_memory and ram > qemu.profile.memory:
        raise doc.error(("limits", "ram"), f"ram {ram} MiB, but QEMU's {qemu.profile.machine} machine has "
                        f"{qemu.profile.memory} MiB and takes no other size", "declare at most that much")
    return dataclasses.replace(qemu, memory=int(ram))


def _board_name(doc: Document, data: dict, path: Path) -> str:
    """`name:`, else the file's name, which must then be a name too (it reaches os-release)."""
    if "name" in data:
        return data["name"]
    rule = load_schema("board")["properties"]["name"]
    if not schema_regex(rule["pattern"]).search(path.stem):
        raise doc.error((), f"the file name {path.stem!r} is not {rule['x-pattern-help']}",
                        "rename the file or set name:")
    return path.stem


def _relative_file(doc: Document, keypath: KeyPath, value: str | None, board: Path) -> Path | None:
    return None if value is None else _existing_file(doc, keypath, value, board)


def _written_beside(doc: Document, keypath: KeyPath, board: Path) -> Path:
    """The folder a relative path at `keypath` is read from: the board file's, or for a value
    inherited through `extends:`, the parent's that wrote it."""
    written = doc.file_of(keypath)
    return board.parent if written == doc.file else Path(written).resolve().parent


def _existing_file(doc: Document, keypath: KeyPath, value: str, board: Path) -> Path:
    resolved = (_written_beside(doc, keypath, board) / value).resolve()
    if not resolved.exists():
        raise doc.error(keypath, f"{value} not found", f"looked for {resolved}")
    return resolved


def _build_feed(doc: Document, index: int, feed: dict, board: Path) -> Feed:
    keys = tuple(
        _existing_file(doc, ("feeds", index, "keys", k), key, board) for k, key in enumerate(feed["keys"])
    )
    line, column = doc.position(("feeds", index))
    return Feed(name=feed["name"], type=feed["type"], url=feed["url"], suite=feed["suite"],
                components=tuple(feed["components"]), keys=keys, arch=feed.get("arch"),
                device_url=feed.get("device_url"), fallback=tuple(feed["fallback"]),
                where=f"{doc.file_of(('feeds', index))}:{line}:{column}")


def _build_package_files(doc: Document, items: list[dict], board: Path) -> tuple[PackageFile, ...]:
    files = []
    for i, item in enumerate(items):
        keypath = ("package_files", i, "path")
        path = _relative_file(doc, keypath, item["path"], board)
        assert path is not None
        if not path.is_file():
            raise doc.error(keypath, f"{item['path']} is not a file", f"looked at {path}")
        line, column = doc.position(keypath)
        files.append(PackageFile(path, item["sha256"], f"{doc.file_of(keypath)}:{line}:{column}: {format_keypath(keypath[:2])}"))
    return tuple(files)


def _split_provided(item: str) -> tuple[str, str | None]:
    """'kernel=5.15.137-1' -> ('kernel', '5.15.137-1'); 'libc' -> ('libc', None)."""
    name, _, version = item.partition("=")
    return name, version or None


def _package_name(item: str | dict) -> str:
    """A `packages` item's name: 'jq', 'jq=1.6-2.1' and {name: jq, ...} all name jq."""
    return item.partition("=")[0] if isinstance(item, str) else item["name"]


def _pinned_versions(items: list[str | dict]) -> dict[str, str]:
    """`packages` items written 'name=version' or {name, version}: package name -> version."""
    pinned = {}
    for item in items:
        name, _, version = item.partition("=") if isinstance(item, str) else (item["name"], "", item.get("version", ""))
        if version:
            pinned[name] = version
    return pinned


def _pinned_feeds(doc: Document, data: dict) -> dict[str, str]:
    """`packages` items written `{name, feed}`: package name -> feed name, checked."""
    feeds = [feed["name"] for feed in data["feeds"]]
    pinned: dict[str, str] = {}
    for i, item in enumerate(data["packages"]):
        if isinstance(item, str) or "feed" not in item:
            continue
        if item["feed"] not in feeds:
            raise doc.error(("packages", i, "feed"), f"unknown feed '{item['feed']}'",
                            did_you_mean(item["feed"], feeds, "feeds") or f"feeds: {', '.join(feeds) or 'none'}")
        pinned[item["name"]] = item["feed"]
    return pinned


def _build_busybox(doc: Document, busybox: dict, board: Path) -> BusyboxSpec:
    config = tuple(_relative_file(doc, ("busybox", "config", i), name, board)
                   for i, name in enumerate(busybox["config"]))
    return BusyboxSpec(
        package=busybox["package"],
        version=busybox.get("version"),
        sha256=busybox.get("sha256"),
        urls=tuple(busybox.get("urls", ())),
        config=tuple(p for p in config if p is not None),
    )


def _build_kernel(doc: Document, kernel: dict, board: Path) -> KernelSpec:
    return KernelSpec(
        package=kernel["package"],
        cmdline=kernel["cmdline"],
        modules=tuple(kernel["modules"]),
        image=_relative_file(doc, ("kernel", "image"), kernel["image"], board),
        modules_from=_relative_file(doc, ("kernel", "modules_from"), kernel["modules_from"], board),
    )


def _resolve_qemu(doc: Document, qemu: dict | None, board: Path, qemu_dirs) -> QemuSpec | None:
    if qemu is None:
        return None
    name = qemu["profile"]
    profiles = list_qemu_profiles(qemu_dirs, board)
    if name not in profiles:
        raise doc.error(("qemu", "profile"), f"unknown qemu profile '{name}'",
                        did_you_mean(name, list(profiles), "profiles"))
    memory = int(qemu["memory"]) if "memory" in qemu else None
    profile = read_qemu_profile(profiles[name])
    if profile.arch.value != doc.data["arch"]:
        raise doc.error(("qemu", "profile"), f"qemu profile '{profile.name}' emulates {profile.arch.value} "
                        f"but the board is {doc.data['arch']}", "pick a profile for the board's arch")
    return QemuSpec(profile=profile, memory=memory,
                    forward=tuple(qemu["forward"]), timeout=float(qemu["timeout"]))


def find_overlays(overlay_dirs: Sequence[Path] = (), board_file: Path | None = None) -> dict[str, Path]:
    """Overlay name -> folder: every folder holding an overlay.yaml, earlier folders first."""
    found: dict[str, Path] = {}
    for folder in _search_dirs(overlay_dirs, board_file, "overlays", default_dirs().overlays):
        for meta in sorted(folder.glob("*/overlay.yaml")):
            found.setdefault(meta.parent.name, meta.parent)
    return found


def _resolve_overlays(doc: Document, names: list[str], board: Path, available: Mapping[str, Path]) -> tuple[str, ...]:
    resolved = []
    for i, name in enumerate(names):
        if _is_path(name) or name.startswith("."):
            folder = (_written_beside(doc, ("overlays", i), board) / name).resolve()
            if not (folder / "overlay.yaml").is_file():
                raise doc.error(("overlays", i), f"no overlay at '{name}'",
                                f"{folder} has no overlay.yaml")
        elif name in available:
            folder = available[name]
        else:
            raise doc.error(("overlays", i), f"unknown overlay '{name}'",
                            did_you_mean(name, list(available), "overlays"))
        resolved.append(str(folder))
    return tuple(resolved)


def _resolve_overlay_stack(doc: Document, data: dict, board: Path, overlay_dirs) -> list[tuple[Overlay, Document]]:
    """The board's overlays and their dependencies in application order, each overlay.yaml
    read once and validated; the board's variables must be ones its overlays declare."""
    available = find_overlays(overlay_dirs, board)
    folders = _resolve_overlays(doc, data["overlays"], board, available)
    stack = resolve_overlays(folders, available)
    known = declared_variables([overlay for overlay, _ in stack])
    for name in data["variables"]:
        if name not in known:
            raise doc.error(("variables", name), f"no overlay of the board declares variable '{name}'",
                            did_you_mean(name, sorted(known), "variables"), at_key=True)
    for _, overlay_doc in stack:
        check_persist_storage(overlay_doc, has_persistent_storage(data))
    return stack


def has_persistent_storage(data: dict) -> bool:
    """Whether a board (validated, defaults applied) keeps what its guest writes across a
    reboot: a disk or SD card with a data partition, or a router's flash, whose firmware
    partition keeps the overlay after the squashfs."""
    if "flash" in data["outputs"]:
        return True
    return bool({"disk", "sdcard"} & set(data["outputs"])) and data["disk"]["data_size"] > 0


def check_persist_storage(doc: Document, persistent: bool) -> None:
    """A persist check needs storage that survives a reboot: refused on a board without it
    when the board is loaded, not after a build and a boot."""
    if persistent:
        return
    for i, item in enumerate(doc.data.get("checks", [])):
        if "persist" in item:
            raise doc.error(("checks", i, "persist"), "a persist check needs storage that survives a reboot, "
                            "and this board has none (no disk or sdcard output with a data partition)",
                            "add a disk or sdcard output (disk.data_size above 0) or drop the check",
                            at_key=True)


# The settings sections each output reads; `fwgen show` leaves out the sections (all
# defaults) that none of the board's outputs reads, so a board without an SD card shows none.
OUTPUT_SECTIONS = {
    "disk": ("disk",),
    "sdcard": ("sdcard", "disk"),
    "flash": ("flash", "disk", "uboot"),
    "fit": ("uboot",),
    "uimage": ("uboot",),
}


def board_to_dict(board: Board) -> dict:
    """The fully resolved board as JSON-ready data (paths and arches as strings): the overlays
    in layer order with their variables (default and value), services and rendered checks;
    `fwgen show --files` lists the files they supply."""
    data = _plain(dataclasses.replace(board, overlays=()))
    used = {section for output in board.outputs for section in OUTPUT_SECTIONS.get(output, ())}
    for section in {section for sections in OUTPUT_SECTIONS.values() for section in sections} - used:
        data.pop(section, None)
    for optional in ("update",):
        if data.get(optional) is None:
            data.pop(optional, None)
    data["overlays"] = [_overlay_to_dict(overlay, board.values) for overlay in board.overlays]
    return data


def _overlay_to_dict(overlay: Overlay, values: Mapping[str, str]) -> dict:
    shown = {f.name: _plain(getattr(overlay, f.name)) for f in dataclasses.fields(overlay)
             if f.name not in ("positions", "variables")}
    shown["variables"] = {name: {"default": _plain(variable.default), "value": values.get(name),
                                 "description": variable.description}
                          for name, variable in overlay.variables.items()}
    return shown


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
