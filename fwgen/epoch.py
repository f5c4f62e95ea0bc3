"""The default SOURCE_DATE_EPOCH: the time of the newest input, so that the same inputs give
the same images and a board without packages is not dated 1970.

The inputs a board brings itself are its file (and those it extends) and its overlays'
files. A file in a git checkout counts with the time of the last commit that touched it, not
its mtime, which a fresh clone sets to the moment of cloning; a file outside git, or one with
uncommitted changes, counts with its mtime.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .board import Board
from .errors import ToolMissingError
from .run import run


def board_input_files(board: Board) -> list[Path]:
    """The files a board brings itself: its file, its parents', every file of its overlays."""
    files = [board.source, *board.inherits]
    for overlay in board.overlays:
        for dirpath, dirnames, filenames in os.walk(overlay.path):
            dirnames.sort()
            files += [Path(dirpath) / name for name in sorted(filenames)]
    return files


def newest_input_time(files: Iterable[Path]) -> int:
    """Seconds since the epoch of the newest file: commit time in git, else mtime."""
    newest = 0
    for repo, group in _by_repository(files).items():
        changed = _uncommitted(repo, group) if repo is not None else set(group)
        clean = [f for f in group if f not in changed]
        if clean:
            newest = max(newest, _last_commit_time(repo, clean))  # type: ignore[arg-type]
        newest = max([newest, *(int(f.lstat().st_mtime) for f in changed)])
    return newest


def _by_repository(files: Iterable[Path]) -> dict[Path | None, list[Path]]:
    groups: dict[Path | None, list[Path]] = {}
    roots: dict[Path, Path | None] = {}
    for file in files:
        file = file.resolve()
        if file.parent not in roots:
            roots[file.parent] = _git_root(file.parent)
        groups.setdefault(roots[file.parent], []).append(file)
    return groups


def _git_root(folder: Path) -> Path | None:
    try:
        done = run(["git", "-C", folder, "rev-parse", "--show-toplevel"], check=False, timeout=30)
    except ToolMissingError:
        return None
    return Path(done.stdout.decode().strip()).resolve() if done.returncode == 0 else None


def _uncommitted(repo: Path, files: list[Path]) -> set[Path]:
    """Files git does not hold as committed: modified or staged, untracked or ignored."""
    done = _git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=no", "--")
    changed = {(repo / entry[3:]).resolve() for entry in done.split("\0") if len(entry) > 3}
    tracked = set(_git(repo, "ls-files", "-z", "--").split("\0"))
    return {f for f in files if f in changed or str(f.relative_to(repo)) not in tracked}


def _last_commit_time(repo: Path, files: list[Path]) -> int:
    relative = [str(f.relative_to(repo)) for f in files]
    text = _git(repo, "log", "-1", "--format=%ct", "--", *relative).strip()
    return int(text) if text else 0


def _git(repo: Path, *args: str) -> str:
    return run(["git", "-C", repo, *args], timeout=60).stdout.decode()
