"""Whether a board's published build is up to date: a rebuild of an unchanged board is skipped.

A build records, inside its output folder (`.fwgen/inputs.json`, published with the build
in the same rename), a SHA-256 for each of its inputs:

    fwgen       fwgen's version and the bytes of its own code and data files
    files       every file the board refers to: the board file, its overlays' folders, the
                QEMU profile, package files, vendor kernels, BusyBox patches and fragments, keys
    image_files the same with the board files' `checks:` left out (and their comments): what
                `fwgen boot` compares to refuse a build of other board files, since it runs
                the checks of the board as it is now and they change no byte of the image
    packages    the resolved package set (name, version, SHA-256), feeds' indexes re-read
    kernel      the kernel package and the linux-image packages it leads to
    busybox     the BusyBox spec and the Zig toolchain's version
    settings    SOURCE_DATE_EPOCH, the initramfs compression, the arch, the signing key's id
and the SHA-256 of the manifest it wrote and of every file beside it. The build is up to date
when every input digest is the recorded one, the manifest is the recorded one, and every
output the manifest lists and every other file written (SBOMs ...) is present with its
recorded size and SHA-256. Anything else (a changed input, a missing or
damaged output, no record) rebuilds, and so does `fwgen build --force`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from . import __version__
from .board import Board
from .context import BoardResolution
from .document import APPEND, read_yaml
from .errors import ConfigError
from .fetch.resolver import Resolution
from .files import hash_file

RECORD = Path(".fwgen") / "inputs.json"
CODE_ROOT = Path(__file__).resolve().parent


def input_digests(board: Board, resolved: BoardResolution, *, source_date_epoch: int | None,
                  compression: str, signing: str | None = None) -> dict[str, str]:
    """A SHA-256 per input of the build of `board` (see the module docstring). `resolved` is
    the build's resolution of its packages and kernel (`build.resolve_board`); `signing` the
    key id of the key that signs its update bundle (Ed25519 signs deterministically)."""
    return {
        "fwgen": _digest([__version__, *_tree_digests(CODE_ROOT)]),
        "files": files_digest(board),
        "image_files": image_files_digest(board),
        "packages": _digest(_package_rows(resolved.packages)),
        "kernel": _digest(_kernel_rows(resolved.kernel)),
        "busybox": _digest([repr(board.busybox), _version_of("ziglang")]),
        "settings": _digest([source_date_epoch, compression, board.arch.value, signing]),
    }


def files_digest(board: Board) -> str:
    """The digest of every file the board refers to (its file, its overlays' folders, the QEMU
    profile, package files, keys ...): what the user edits, known without the network."""
    return _digest(sorted({str(p): _path_digest(p) for p in _board_paths(board)}.items()))


def image_files_digest(board: Board) -> str:
    """`files_digest` with the board files (the board's and those it extends) read as YAML
    without their `checks:`, so an edit of the checks alone leaves it as it was."""
    board_files = {board.source, *board.inherits}
    return _digest(sorted({str(p): _board_file_digest(p) if p in board_files else _path_digest(p)
                           for p in _board_paths(board)}.items()))


def stale_files(outdir: Path, board: Board) -> bool:
    """Whether the build in `outdir` was made from other board or overlay files than the
    board's now, checks aside (image_files; `files` in a record written before it). A build
    without a record (older fwgen) cannot tell and counts as current."""
    try:
        inputs = json.loads((outdir / RECORD).read_text())["inputs"]
        if "image_files" in inputs:
            return inputs["image_files"] != image_files_digest(board)
        return inputs["files"] != files_digest(board)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def changed_since(outdir: Path, inputs: dict[str, str]) -> str | None:
    """Why the build in `outdir` is not up to date for `inputs`, or None when it is."""
    try:
        record = json.loads((outdir / RECORD).read_text())
        manifest_text = (outdir / "manifest.json").read_bytes()
    except FileNotFoundError:
        return "no earlier build"
    except (OSError, ValueError) as e:
        return f"the earlier build's record is unreadable ({e})"
    if not isinstance(record, dict) or not isinstance(record.get("inputs"), dict):
        return "the earlier build's record is not one"
    changed = [name for name in inputs if record["inputs"].get(name) != inputs[name]]
    if changed:
        return f"changed: {', '.join(changed)}"
    if hashlib.sha256(manifest_text).hexdigest() != record.get("manifest"):
        return "manifest.json differs from the one built"
    try:
        outputs = json.loads(manifest_text)["outputs"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json lists no outputs"
    for name, info in outputs.items():
        problem = _output_problem(outdir / info["file"], info)
        if problem:
            return f"output {name} ({info['file']}) {problem}"
    for name, (size, sha256) in record.get("files", {}).items():  # SBOMs and the like, beside the outputs
        problem = _output_problem(outdir / name, {"size": size, "sha256": sha256})
        if problem:
            return f"{name} {problem}"
    return None


def record_inputs(folder: Path, inputs: dict[str, str]) -> None:
    """Write the record of a build whose files are all in `folder` (before it is published)."""
    manifest = hash_file(folder / "manifest.json")
    files = {p.name: [p.stat().st_size, hash_file(p)] for p in sorted(folder.iterdir())
             if p.is_file() and p.name != "manifest.json"}
    (folder / RECORD).parent.mkdir(exist_ok=True)
    (folder / RECORD).write_text(json.dumps({"inputs": inputs, "manifest": manifest, "files": files}, indent=2) + "\n")


def _output_problem(path: Path, info: dict) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size != info["size"]:
        return f"is {size} bytes, {info['size']} were built"
    if hash_file(path) != info["sha256"]:
        return "does not match its recorded SHA-256"
    return None


def _package_rows(resolution: Resolution) -> list[list[str]]:
    return [[p.name, p.version, p.sha256, p.url] for p in resolution.packages]


def _kernel_rows(chain: tuple[Resolution, ...]) -> list[list[str]]:
    """The kernel package and the linux-image packages it leads to (reading the index is
    enough to know they are unchanged)."""
    return [[p.name, p.version, p.sha256] for hop in chain for p in hop.packages]


def _board_paths(board: object) -> Iterator[Path]:
    """Every Path in the board's dataclasses (its file, overlays, profile, package files ...)."""
    if isinstance(board, Path):
        yield board
    elif dataclasses.is_dataclass(board) and not isinstance(board, type):
        for item in dataclasses.fields(board):
            yield from _board_paths(getattr(board, item.name))
    elif isinstance(board, (list, tuple)):
        for item in board:
            yield from _board_paths(item)
    elif isinstance(board, dict):
        for item in board.values():
            yield from _board_paths(item)


def _board_file_digest(path: Path) -> str:
    try:
        data = read_yaml(path).data
    except ConfigError:
        return "missing or unreadable"  # as good as a changed file: the board loads it no more
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if key not in ("checks", f"checks{APPEND}")}
    return _digest(data)


def _path_digest(path: Path) -> str:
    if path.is_dir():
        return _digest(list(_tree_digests(path)))
    try:
        return hash_file(path)
    except FileNotFoundError:
        return "missing"


def _tree_digests(root: Path) -> Iterator[str]:
    """`relative path sha256` of every file under `root` (bytecode caches left out), sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [Path(folder) / name for name in files]
    for path in sorted(found):
        yield f"{path.relative_to(root)} {hash_file(path)}"


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
