"""Output folders: each build in a folder of its own, published by replacing one symlink.

    out/<board>              a symlink to the current build, replaced with rename(2)
    out/.<board>.v-<id>/     a complete build (kernel, images, manifest.json), never
                             written by `fwgen boot`
    out/.state/<board>/      the emulated device's state, outside every build (bootstate.py)
    out/.<board>.tmp-<id>/   a build in progress

A reader of out/<board>/... sees one whole build, old or new, never a mix or nothing: the
link is replaced in one step. Builds that lose the race both complete; the last one to
publish wins. Folders are locked with flock(2) while in use (exclusively by their builder,
shared by `fwgen boot`), so clean-up (under a lock on out/ itself) removes exactly the
folders of builds that were killed and the versions no longer linked and no longer in use,
but the last one replaced, which a reader may still be opening.

Permissions honour the umask, for every output alike: files 0666 and folders 0777 minus
the umask (0644/0755 under the usual 022, 0600/0700 under 077). A firmware image holds
/etc/shadow and keys; a user whose umask keeps new files private gets private images.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import current_umask, replacing

# mkdtemp's suffixes: lower-case letters, digits and '_' (never '.', which board names allow).
_LEFTOVER = r"\.{board}\.(?P<kind>v|tmp|link|old)-(?P<id>[a-z0-9_]+)"


@dataclass
class Staging:
    """A build's folder while it is written: locked until it is published or removed."""

    path: Path
    lock: int  # a descriptor of the folder, holding its flock

    def remove(self) -> None:
        """Throw the unpublished build away."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.close()

    def close(self) -> None:
        if self.lock >= 0:
            os.close(self.lock)
            self.lock = -1


def create_staging(outdir: Path) -> Staging:
    """A new locked folder beside `outdir` for a build; removes leftovers of killed builds."""
    outdir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(outdir.parent, fcntl.LOCK_EX):
        remove_unused(outdir)
        path = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
        return Staging(path, lock_folder(path, fcntl.LOCK_EX))


def publish(staging: Staging, outdir: Path) -> Path:
    """Make the staged build the one `outdir` shows, atomically; returns its folder."""
    apply_umask(staging.path)
    build_id = staging.path.name.rsplit(".tmp-", 1)[1]
    version = outdir.with_name(f".{outdir.name}.v-{build_id}")
    link = outdir.with_name(f".{outdir.name}.link-{build_id}")
    with _locked(outdir.parent, fcntl.LOCK_EX):
        # A folder from before versioning is retired first: remove_unused keeps the version
        # renamed last (by ctime), which must be the one the link showed until now, not it.
        _retire_folder(outdir)
        os.rename(staging.path, version)
        staging.path = version
        os.symlink(version.name, link)
        os.replace(link, outdir)
        staging.close()
        remove_unused(outdir)
    return version


def _retire_folder(outdir: Path) -> None:
    """An out/<board> folder written before builds were versioned becomes an unlinked version
    (removed unless in use): the one moment out/<board> is missing, once per output folder."""
    if outdir.is_dir() and not outdir.is_symlink():
        os.rename(outdir, outdir.with_name(f".{outdir.name}.old-{os.getpid()}"))


def remove_unused(outdir: Path) -> list[Path]:
    """Remove what killed builds left beside `outdir` and the versions it no longer links to,
    but the one replaced last (a reader may have followed the link to it a moment ago) and
    any folder someone holds a lock on. Call with out/ locked. Returns what went."""
    pattern = re.compile(_LEFTOVER.format(board=re.escape(outdir.name)))
    current = os.readlink(outdir) if outdir.is_symlink() else None
    found = [(path, match["kind"]) for path in sorted(outdir.parent.iterdir())
             if (match := pattern.fullmatch(path.name)) and path.name != current]
    versions = [p for p, kind in found if kind in ("v", "old") and p.is_dir() and not p.is_symlink()]
    keep = sorted(versions, key=lambda p: p.stat().st_ctime_ns)[-1:]  # rename(2) sets the ctime
    removed = []
    for path, kind in found:
        if path in keep:
            continue
        if kind == "link" or not path.is_dir() or path.is_symlink():
            path.unlink()  # a temporary link a killed build did not get to rename
        elif not _remove_if_unlocked(path):
            continue
        removed.append(path)
    return removed


def _remove_if_unlocked(folder: Path) -> bool:
    try:
        fd = lock_folder(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a build writing it, or a boot using it
    except FileNotFoundError:
        return True
    try:
        shutil.rmtree(folder)
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def use_build(outdir: Path) -> Iterator[Path]:
    """The folder of the build `outdir` shows, kept from clean-up while the block runs (a
    shared lock). A rebuild meanwhile publishes beside it; the caller keeps its build."""
    if not outdir.is_dir():
        yield outdir  # no build: the caller says so
        return
    for _ in range(10):
        folder = outdir.resolve()
        try:
            fd = lock_folder(folder, fcntl.LOCK_SH)
        except FileNotFoundError:
            continue  # removed between resolving and locking: resolve the new one
        if _same_folder(fd, folder):
            try:
                yield folder
            finally:
                os.close(fd)
            return
        os.close(fd)
    raise UserError(f"{outdir}: its build keeps being replaced; try again")


def _same_folder(fd: int, folder: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(folder))
    except FileNotFoundError:
        return False


def lock_folder(folder: Path, how: int) -> int:
    """A descriptor of `folder` holding its flock (`how`); closing it releases the lock."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, how)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _locked(folder: Path, how: int) -> Iterator[None]:
    fd = lock_folder(folder, how)
    try:
        yield
    finally:
        os.close(fd)


def apply_umask(root: Path) -> None:
    """Give `root` and everything in it the modes the umask asks for (files 0666, folders
    0777, minus the umask): writers that use mkstemp would otherwise leave 0600."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask, follow_symlinks=False)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def write_file(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (`files.replacing`), with the mode outputs get."""
    with replacing(path) as out:
        out.write(data)
    return path
