"""Service overlays: a folder with `overlay.yaml` and a `files/` tree, applied onto the rootfs.

The file tree is read from the host without following symlinks: a symlink in an overlay
becomes a symlink in the image. Owners and modes come from `overlay.yaml` (a git checkout
cannot carry them); anything not listed is root-owned, 0755 if executable in the checkout,
else 0644.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError
from .rootfs import Entry, EntryType, RootFS, normalize_path


@dataclass(frozen=True)
class FileAttributes:
    mode: int | None = None
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Overlay:
    name: str
    path: Path
    description: str = ""
    depends: tuple[str, ...] = ()
    files: dict[str, FileAttributes] = field(default_factory=dict)


def load_overlay(path: Path) -> Overlay:
    """Read `<path>/overlay.yaml`."""
    meta_path = path / "overlay.yaml"
    try:
        meta = yaml.safe_load(meta_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read overlay: {e}", file=str(meta_path)) from e
    if not isinstance(meta, dict):
        raise ConfigError("overlay.yaml must be a mapping", file=str(meta_path), line=1, column=1)
    attributes = {}
    for image_path, attrs in (meta.get("files") or {}).items():
        attrs = attrs or {}
        mode = attrs.get("mode")
        attributes[normalize_path(image_path)] = FileAttributes(
            mode=int(str(mode), 8) if mode is not None else None,
            uid=int(attrs.get("uid", 0)),
            gid=int(attrs.get("gid", 0)),
        )
    return Overlay(
        name=path.name,
        path=path,
        description=str(meta.get("description", "")).strip(),
        depends=tuple(meta.get("depends") or ()),
        files=attributes,
    )


def apply_overlay(rootfs: RootFS, overlay: Overlay) -> int:
    """Add the overlay's files/ tree to the rootfs (later overlays win). Returns the count."""
    top = overlay.path / "files"
    provenance = f"overlay:{overlay.name}"
    count = 0
    if not top.is_dir():
        return 0
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            host = Path(dirpath) / name
            image_path = "/" + host.relative_to(top).as_posix()
            rootfs.add(_entry_from_host(host, image_path, overlay, provenance))
            count += 1
    return count


def _entry_from_host(host: Path, image_path: str, overlay: Overlay, provenance: str) -> Entry:
    st = os.lstat(host)
    attrs = overlay.files.get(image_path, FileAttributes())
    if stat.S_ISLNK(st.st_mode):
        return Entry(image_path, EntryType.SYMLINK, 0o777, target=os.readlink(host),
                     uid=attrs.uid, gid=attrs.gid, provenance=provenance)
    if stat.S_ISDIR(st.st_mode):
        return Entry(image_path, EntryType.DIR, attrs.mode if attrs.mode is not None else 0o755,
                     uid=attrs.uid, gid=attrs.gid, provenance=provenance)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{host}: only files, folders and symlinks may live in an overlay")
    default_mode = 0o755 if st.st_mode & 0o111 else 0o644
    return Entry(image_path, EntryType.FILE, attrs.mode if attrs.mode is not None else default_mode,
                 uid=attrs.uid, gid=attrs.gid, data=host.read_bytes(), provenance=provenance)


def collect_overlays(folders: Sequence[str], overlay_dirs: Sequence[Path], board_file: Path) -> list[Overlay]:
    """The board's overlays in application order, each after the overlays it depends on.

    `folders` are the board's overlays as config resolved them (folder paths); dependencies
    in overlay.yaml are names looked up like the board's own.
    """
    from .config import find_overlays

    available = find_overlays(overlay_dirs, board_file)
    ordered: list[Overlay] = []
    done: set[Path] = set()

    def visit(folder: Path, chain: tuple[str, ...]) -> None:
        if folder in done:
            return
        if folder.name in chain:
            raise ConfigError("overlay dependency cycle: " + " -> ".join(chain + (folder.name,)))
        overlay = load_overlay(folder)
        for name in overlay.depends:
            if name not in available:
                raise ConfigError(f"depends on unknown overlay '{name}'", file=str(folder / "overlay.yaml"),
                                  keypath="depends")
            visit(available[name], chain + (folder.name,))
        done.add(folder)
        ordered.append(overlay)

    for folder in folders:
        visit(Path(folder), ())
    return ordered
