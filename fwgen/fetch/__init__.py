"""Package feeds: verified indexes, dependency resolution, a download cache, extraction.

    index = load_index(board.feeds, board.arch)          # signatures and hashes verified
    fetched = fetch_packages(board.feeds, board.arch, ["busybox-static"], cache=Cache.default())
    for package in fetched:
        install_package(rootfs, package)

Formats live behind `fetch.backend.Backend` (deb now; apk and ipk register the same way);
nothing outside this package knows which format a package came from.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ..arch import Arch
from ..board import Feed
from ..errors import UserError
from ..progress import QUIET, Progress
from ..rootfs import Entry, EntryType, RootFS
from .backend import Backend, backend_for_file, get_backend, register_backend
from .cache import Cache
from .package import Package, PackageIndex, Relation
from .resolver import ExcludedDependency, Resolution, resolve

__all__ = [
    "Backend", "Cache", "ExcludedDependency", "FetchedPackage", "Package", "PackageIndex",
    "Relation", "Resolution", "fetch_packages", "install_package", "load_index",
    "read_package_entries", "register_backend", "resolve", "resolve_packages",
]


@dataclass(frozen=True)
class FetchedPackage:
    """A package whose file is in the cache, size and SHA-256 verified against its index."""

    package: Package
    path: Path


def load_index(
    feeds: Sequence[Feed], arch: Arch, *, cache: Cache | None = None, progress: Progress = QUIET
) -> PackageIndex:
    """Fetch and verify every feed's index for `arch` and merge them into one PackageIndex.

    All feeds must share one format (one version ordering); among equal versions the
    earlier feed wins.
    """
    if not feeds:
        raise UserError("no package feeds configured", "add a feed to the board's `feeds`")
    types = {feed.type for feed in feeds}
    if len(types) > 1:
        raise UserError(f"feeds mix package formats ({', '.join(sorted(types))}); use one per board")
    backend = get_backend(feeds[0].type)
    cache = cache or Cache.default()
    packages: list[Package] = []
    for feed in feeds:
        progress.step(f"index of {feed.name} ({feed.url} {feed.suite}, {backend.arch_name(arch)})")
        packages += backend.load_index(feed, arch, cache, progress)
    return PackageIndex(
        packages,
        satisfies=backend.satisfies,
        compare=backend.compare_versions,
        native_arch=backend.arch_name(arch),
        neutral_arch=backend.neutral_arch,
        feeds=tuple(feed.name for feed in feeds),
    )


def resolve_packages(
    feeds: Sequence[Feed],
    arch: Arch,
    names: Sequence[str],
    *,
    exclude: Collection[str] = (),
    nodeps: Collection[str] = (),
    cache: Cache | None = None,
    progress: Progress = QUIET,
) -> Resolution:
    """Resolve `names` with their dependencies over the feeds' verified indexes."""
    index = load_index(feeds, arch, cache=cache, progress=progress)
    resolution = resolve(index, names, exclude=exclude, nodeps=nodeps)
    for skipped in resolution.excluded:
        progress.info(f"excluded: {skipped} (not installed)")
    return resolution


def download_packages(
    packages: Sequence[Package], *, cache: Cache | None = None, progress: Progress = QUIET, jobs: int = 4
) -> list[FetchedPackage]:
    """Download `packages` in parallel into the cache, verified; same order as given."""
    cache = cache or Cache.default()
    total = sum(p.size for p in packages)
    progress.step(f"fetching {len(packages)} packages ({total / 1048576:.1f} MiB)")

    def fetch_one(package: Package) -> FetchedPackage:
        # A backend whose index carries no SHA-256 (APKINDEX) verifies packages its own way.
        custom = getattr(get_backend(package.format), "fetch_package", None)
        if custom is not None:
            return FetchedPackage(package, custom(package, cache, progress))
        path = cache.fetch(package.url, sha256=package.sha256, size=package.size, progress=progress)
        return FetchedPackage(package, path)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(fetch_one, packages))


def fetch_packages(
    feeds: Sequence[Feed],
    arch: Arch,
    names: Sequence[str],
    *,
    exclude: Collection[str] = (),
    nodeps: Collection[str] = (),
    cache: Cache | None = None,
    progress: Progress = QUIET,
    jobs: int = 4,
) -> list[FetchedPackage]:
    """Resolve `names` with their dependencies over the feeds' verified indexes, download
    every package in parallel into the cache, verify size+SHA-256, return them in install
    order (dependencies first)."""
    cache = cache or Cache.default()
    resolution = resolve_packages(
        feeds, arch, names, exclude=exclude, nodeps=nodeps, cache=cache, progress=progress
    )
    return download_packages(resolution.packages, cache=cache, progress=progress, jobs=jobs)


def read_package_entries(path: Path) -> Iterator[Entry]:
    """Every data entry of the package file at `path`, in archive order (format sniffed)."""
    return backend_for_file(Path(path)).read_entries(Path(path))


def install_package(rootfs: RootFS, fetched: FetchedPackage) -> None:
    """Extract the package's data into the in-memory rootfs, provenance f"deb:{name}".
    No maintainer scripts are run.

    Like dpkg, a directory the rootfs already has as a symlink to a directory (merged /usr:
    /bin -> usr/bin) is followed, not replaced.
    """
    provenance = f"{fetched.package.format}:{fetched.package.name}"
    for entry in read_package_entries(fetched.path):
        path = _follow_directory_links(rootfs, entry.path)
        existing = rootfs.get(path)
        if entry.type is EntryType.DIR and existing is not None:
            if existing.type is EntryType.SYMLINK:
                continue  # keep the layout's symlinked directory
        rootfs.add(replace(entry, path=path, provenance=provenance))


def _follow_directory_links(rootfs: RootFS, path: str) -> str:
    parent, name = posixpath.split(path)
    if parent == "/" or parent in rootfs.entries and rootfs.entries[parent].type is EntryType.DIR:
        return path
    resolved = rootfs.resolve(parent)
    if resolved is not None and resolved.type is EntryType.DIR:
        return posixpath.join(resolved.path, name)
    return path
