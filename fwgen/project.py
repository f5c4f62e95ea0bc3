"""A vendor's project: where its boards, overlays and QEMU profiles live, found without flags.

A vendor keeps `fwgen.toml` (or a `[tool.fwgen]` table in `pyproject.toml`) at the root of its
repository; any command run inside that repository finds it by walking up from the current
folder, as git finds `.git`:

    boards = ["boards", "products/boards"]   # folders of board files, searched in this order
    overlays = ["overlays"]
    qemu = ["qemu"]
    out = "out"                              # where `build` writes and `boot` reads

    [cache]
    dir = "/var/cache/fwgen"                 # FWGEN_CACHE wins over it
    remote = "oci://registry.example:5000/fwgen-cache"

Folders are relative to the file. `FWGEN_PATH` (folders separated by `:`) names more vendor
trees, each shaped like fwgen's own (`boards/`, `overlays/`, `qemu/` inside) or holding a
`fwgen.toml` of its own. Order of search: command-line folders, the project file's, those of
FWGEN_PATH, then fwgen's own tree.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

PROJECT_FILE = "fwgen.toml"
FOLDER_KEYS = ("boards", "overlays", "qemu")
KEYS = (*FOLDER_KEYS, "out", "cache")
CACHE_KEYS = ("dir", "remote")


@dataclass(frozen=True)
class Project:
    """What a project file (or an FWGEN_PATH tree) says, its paths made absolute."""

    source: Path  # the fwgen.toml or pyproject.toml, or the FWGEN_PATH folder
    boards: tuple[Path, ...] = ()
    overlays: tuple[Path, ...] = ()
    qemu: tuple[Path, ...] = ()
    out: Path | None = None
    cache_dir: Path | None = None
    remote_cache: str | None = None


def find_project_file(start: Path) -> Path | None:
    """The nearest fwgen.toml, or pyproject.toml with a [tool.fwgen] table, from `start` up."""
    for folder in (start, *start.parents):
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and _has_tool_table(pyproject):
            return pyproject
    return None


def _has_tool_table(pyproject: Path) -> bool:
    # A cheap look before parsing: most pyproject.toml files met on the way up are not ours.
    return re.search(r"^\[tool\.fwgen(\.|\])", pyproject.read_text(errors="replace"), re.MULTILINE) is not None


def load_project(path: Path) -> Project:
    """Read and check a project file; errors name the file, the line where TOML says, and the key."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        # Python 3.11 keeps the position only in the message: "... (at line 3, column 5)".
        found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", str(e))
        message = str(e)[: found.start()] if found else str(e)
        raise ConfigError(message, file=_display(path), line=int(found[1]) if found else None,
                          column=int(found[2]) if found else None) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", file=_display(path)) from None
    where = ""
    if path.name == "pyproject.toml":
        data, where = data.get("tool", {}).get("fwgen", {}), "tool.fwgen."
    return _project_from(path, data, where)


def _project_from(path: Path, data: dict, where: str) -> Project:
    base = path.parent
    _refuse_unknown(path, data, KEYS, where)
    folders = {key: tuple(_folders(path, data, key, where)) for key in FOLDER_KEYS}
    out = _string(path, data, "out", where)
    cache = data.get("cache", {})
    if not isinstance(cache, dict):
        raise ConfigError(f"{where}cache: expected a table ([cache])", file=_display(path))
    _refuse_unknown(path, cache, CACHE_KEYS, f"{where}cache.")
    cache_dir = _string(path, cache, "dir", f"{where}cache.")
    remote = _string(path, cache, "remote", f"{where}cache.")
    if remote is not None and not remote.startswith("oci://"):
        raise ConfigError(f"{where}cache.remote: {remote!r} is not an oci://HOST/REPO address", file=_display(path))
    return Project(
        source=path,
        boards=folders["boards"],
        overlays=folders["overlays"],
        qemu=folders["qemu"],
        out=(base / out) if out is not None else None,
        cache_dir=(base / cache_dir) if cache_dir is not None else None,
        remote_cache=remote,
    )


def _folders(path: Path, data: dict, key: str, where: str) -> list[Path]:
    value = data.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}{key}: expected a folder or a list of folders", file=_display(path))
    folders = []
    for item in value:
        folder = (path.parent / item).resolve()
        if not folder.is_dir():
            raise ConfigError(f"{where}{key}: folder {item!r} not found", file=_display(path),
                              hint=f"looked for {folder}")
        folders.append(folder)
    return folders


def _string(path: Path, data: dict, key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}{key}: expected a non-empty string", file=_display(path))
    return value


def _refuse_unknown(path: Path, data: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key", file=_display(path),
                          hint=f"known keys: {', '.join(known)}")


def tree_project(folder: Path) -> Project:
    """An FWGEN_PATH entry: its own project file, else its boards/, overlays/, qemu/ folders."""
    own = folder / PROJECT_FILE
    if own.is_file():
        return load_project(own)
    if not folder.is_dir():
        raise ConfigError("FWGEN_PATH names a folder that does not exist", file=str(folder))
    def kind(name: str) -> tuple[Path, ...]:
        return (folder / name,) if (folder / name).is_dir() else ()

    return Project(source=folder, boards=kind("boards"), overlays=kind("overlays"), qemu=kind("qemu"))


def active_projects(cwd: Path | None = None, env: Mapping[str, str] | None = None) -> list[Project]:
    """The project found from `cwd` upwards, then every FWGEN_PATH tree, in search order."""
    env = os.environ if env is None else env
    projects = []
    found = find_project_file((cwd or Path.cwd()).resolve())
    if found is not None:
        projects.append(load_project(found))
    for entry in env.get("FWGEN_PATH", "").split(os.pathsep):
        if entry:
            projects.append(tree_project(Path(entry).resolve()))
    return projects


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
