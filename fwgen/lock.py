"""The lock file: every input of a board's build pinned, so a release can be built again later.

    lock:
    board: qemu-aarch64
    arch: aarch64
    packages:            # install order (dependencies first: a later package's file wins)
    - feed: debian
      name: libc6
      version: 2.36-9+deb12u9
      arch: arm64
      size: 2325284
      sha256: 0c1c...
      url: http://deb.debian.org/debian/pool/main/g/glibc/libc6_2.36-9+deb12u9_arm64.deb
      depends: [libgcc-s1]   # what its dependencies resolved to
      license: MIT           # only where the index states it (Alpine, OpenWrt)
    kernel: {feed, name, version, ...}       # or {vendor_image, sha256}
    uboot: {feed, name, version, ...}        # boards booted through U-Boot
    busybox: {version, sha256, urls, patches: [{name, sha256}], config: [{path, sha256}]}

YAML, one key per line in a fixed order: a version bump shows in `git diff` as its version,
sha256, size and url lines, and the file is read back with positions (errors name its
line). `fwgen build --locked` installs exactly these packages, each fetched by its URL (or
the feed's `fallback` mirrors when the URL is gone) and checked against the lock's SHA-256:
the lock, written from verified indexes, is the trust root, as a package file's pin is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from .board import Board, Feed
from .cache import Cache
from .document import Document, read_yaml, validate
from .errors import FetchError, IntegrityError, UserError
from .fetch import FetchedPackage, Package, fetch_packages
from .fetch.backends import backend_for_file
from .files import hash_file
from .progress import QUIET, Progress
from .publish import write_file

LOCK_FORMAT = 1
PACKAGE_KEYS = ("feed", "name", "version", "arch", "size", "sha256", "url")


@dataclass(frozen=True)
class LockedPackage:
    feed: str
    name: str
    version: str
    arch: str
    size: int
    sha256: str
    url: str
    where: str  # "qemu-aarch64.lock:12:3", for errors
    depends: tuple[str, ...] = ()  # the packages its dependencies resolved to (manifest and SBOM edges)
    license: str | None = None  # the licence its index states (Alpine, OpenWrt); Debian's is in the package

    def __str__(self) -> str:
        return f"{self.name} {self.version} (feed {self.feed})"


@dataclass(frozen=True)
class Lock:
    path: Path
    board: str
    arch: str
    packages: tuple[LockedPackage, ...]
    kernel: LockedPackage | dict
    uboot: LockedPackage | None
    busybox: dict | None
    doc: Document

    def role(self, role: str) -> LockedPackage:
        """The one package the lock records for "kernel" or "uboot"."""
        locked = getattr(self, role)
        if not isinstance(locked, LockedPackage):
            raise UserError(f"{self.path}: the lock records no {role} package", "run fwgen lock again")
        return locked


def default_lock_path(board: Board) -> Path:
    """`<board>.lock` in the current folder, beside `out/`: a lock is an input to keep in
    version control with the board, not an output a build replaces."""
    return Path(f"{board.name}.lock")


def package_entry(fetched: FetchedPackage) -> dict:
    """A fetched package as the lock records it."""
    p = fetched.package
    # An APKINDEX lists no file hash (its identity was checked): the verified file's hash.
    sha256 = p.sha256 or hash_file(fetched.path)
    entry = dict(zip(PACKAGE_KEYS, (p.feed, p.name, p.version, p.arch, p.size, sha256, p.url), strict=True))
    return {**entry, "depends": list(fetched.depends), **({"license": p.license} if p.license else {})}


def busybox_inputs(version: str, sha256: str, urls: Sequence[str], patches: Sequence[Path],
                   fragments: Sequence[Path], board: Board) -> dict:
    """What decides fwgen's BusyBox apart from the target: the source, patches and config
    (fragments named relative to the board file, so a lock reads the same in every checkout)."""
    return {
        "version": version, "sha256": sha256, "urls": list(urls),
        "patches": [{"name": p.name, "sha256": hash_file(p)} for p in patches],
        "config": [{"path": os.path.relpath(f, board.source.parent), "sha256": hash_file(f)} for f in fragments],
    }


def write_lock(path: Path, board: Board, record: dict) -> Path:
    """Write the lock atomically: the header comment, then `record` in its fixed key order."""
    header = (f"# fwgen lock of board {board.name} ({board.source.name}): every package by feed, version and\n"
              "# SHA-256, and the BusyBox and U-Boot inputs. `fwgen build --locked` builds exactly this;\n"
              "# `fwgen lock` writes it again from the feeds. Packages are in install order.\n")
    data = {"lock": LOCK_FORMAT, "board": board.name, "arch": board.arch.value, **record}
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1 << 16)
    return write_file(path, text.encode())


def read_lock(path: Path, board: Board) -> Lock:
    """The lock at `path`, checked against its schema and against `board` (name and arch)."""
    if not path.is_file():
        raise UserError(f"{path}: no such lock file", f"write it with: fwgen lock {board.name}")
    doc = read_yaml(path)
    validate(doc, "lock")
    data = doc.data
    for key, wanted in (("board", board.name), ("arch", board.arch.value)):
        if data[key] != wanted:
            raise doc.error((key,), f"the lock is for {key} {data[key]}, not {wanted}")

    def locked(keypath: tuple, entry: dict) -> LockedPackage:
        line, column = doc.position(keypath)
        return LockedPackage(**{k: entry[k] for k in PACKAGE_KEYS}, where=f"{doc.file}:{line}:{column}",
                             depends=tuple(entry.get("depends", ())), license=entry.get("license"))

    kernel = data["kernel"]
    uboot = data.get("uboot")
    return Lock(
        path=path, board=data["board"], arch=data["arch"],
        packages=tuple(locked(("packages", i), e) for i, e in enumerate(data["packages"])),
        kernel=locked(("kernel",), kernel) if "url" in kernel else kernel,
        uboot=locked(("uboot",), uboot) if uboot else None,
        busybox=data.get("busybox"), doc=doc,
    )


def check_locked_inputs(lock: Lock, key: str, actual: dict | None) -> None:
    """The board's BusyBox (or vendor kernel) inputs are the lock's, or a one-line error at
    the lock's line naming the first input that differs."""
    recorded = getattr(lock, key)
    if recorded == actual:
        return
    if recorded is None or actual is None:
        have = "none" if actual is None else "some"
        raise lock.doc.error((key,), f"the board has {have} {key} inputs but the lock says otherwise",
                             "run fwgen lock again")
    differs = next(k for k in sorted({*recorded, *actual}) if recorded.get(k) != actual.get(k))
    raise lock.doc.error((key, differs), f"{key} {differs} is {actual.get(differs)!r} in the board, "
                         f"{recorded.get(differs)!r} in the lock", "run fwgen lock again to lock the board's")


def fetch_locked(locked: Sequence[LockedPackage], feeds: Sequence[Feed], *, cache: Cache,
                 progress: Progress = QUIET) -> list[FetchedPackage]:
    """Every locked package from the cache, its URL or its feed's fallback mirrors, checked
    against the lock's SHA-256; in the lock's order. When some are on no mirror, one error
    names the first (its lock line, every URL tried) and how many more."""
    by_name = {feed.name: feed for feed in feeds}
    progress.step(f"fetching {len(locked)} locked package(s) ({sum(p.size for p in locked) / 1048576:.1f} MiB)")
    fetched: list[FetchedPackage] = []
    missing: list[str] = []
    for package in locked:
        try:
            fetched.append(_fetch_one(package, by_name, cache, progress))
        except FetchError as e:
            missing.append(f"{package.where}: {package} is on none of its mirrors: {e.message}")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FetchError(missing[0] + more,
                         "a mirror dropped it: give the feed a fallback mirror that keeps old versions "
                         "(https://snapshot.debian.org/archive/debian/<timestamp> for Debian), or lock again")
    return fetched


def _fetch_one(locked: LockedPackage, feeds: dict[str, Feed], cache: Cache, progress: Progress) -> FetchedPackage:
    failures = []
    for url in _mirror_urls(locked, feeds):
        try:
            path = cache.fetch(url, sha256=locked.sha256, size=locked.size, progress=progress)
        except FetchError as e:
            failures.append(e.message)
            continue
        except IntegrityError as e:
            raise IntegrityError(f"{locked.where}: {locked}: {e.message}", e.hint) from e
        base_url, _, filename = url.rpartition("/")
        package = Package(locked.name, locked.version, locked.arch, locked.feed, backend_for_file(path).name,
                          base_url, filename, locked.size, locked.sha256, license=locked.license)
        return FetchedPackage(package, path, locked.depends)
    raise FetchError("; ".join(failures))


def _mirror_urls(locked: LockedPackage, feeds: dict[str, Feed]) -> list[str]:
    """The lock's URL, then the same path under each fallback of the feed it came from."""
    feed = feeds.get(locked.feed)
    if feed is None:
        if locked.feed == "package_files":
            return [locked.url]
        raise UserError(f"{locked.where}: {locked}: the board has no feed {locked.feed}", "lock again")
    base = feed.url.rstrip("/")
    if not locked.url.startswith(base + "/"):
        return [locked.url]
    return [locked.url, *(fallback.rstrip("/") + locked.url[len(base):] for fallback in feed.fallback)]


def fetch_alone(board: Board, name: str, *, role: str, lock: Lock | None, cache: Cache,
                progress: Progress = QUIET) -> FetchedPackage:
    """One package without its dependencies (the kernel, U-Boot: host tooling they depend on
    is not wanted): the one the lock records for `role` under a lock, else `name` resolved."""
    if lock is not None:
        [fetched] = fetch_locked([lock.role(role)], board.feeds, cache=cache, progress=progress)
    else:
        [fetched] = fetch_packages(board.feeds, board.arch, [name], nodeps=[name], cache=cache, progress=progress)
    return fetched
