"""Package feeds: verified indexes, dependency resolution, a download cache, extraction.

    index = load_index(board.feeds, board.arch)          # signatures and hashes verified
    fetched = fetch_packages(board.feeds, board.arch, ["busybox-static"], cache=Cache.default())
    for package in fetched:
        install_package(rootfs, package)

Formats extend `fetch.backend.Backend` (deb, apk, ipk), found by name in `fetch.backends`;
nothing outside this package
knows which format a package came from. One board may mix feeds of several formats: each
requested package comes from the first feed that has it and its dependencies from feeds of
the same format (`resolve_packages`).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ..arch import Arch
from ..board import Feed, PackageFile
from ..cache import Cache
from ..errors import FetchError, FormatError, IntegrityError, LimitError, ResolveError, UserError
from ..progress import QUIET, Progress
from ..rootfs import Entry, EntryType, RootFS
from .archive import UnpackBudget
from .backend import Backend, feed_arch
from .backends import backend_for_file, get_backend, register_backend
from .package import Package, PackageIndex, PackageSet, PackageSource, Relation
from .resolver import ExcludedDependency, Resolution, name_matches, resolve

__all__ = [
    "Backend", "Cache", "ExcludedDependency", "FetchedPackage", "Package", "PackageIndex",
    "Relation", "Resolution", "download_resolution", "fetch_packages", "group_feeds", "install_package", "load_index",
    "license_file_of", "package_label", "provenance_of", "purl_of", "read_control_files", "read_package_file",
    "write_package_state",
    "read_fetched_entries", "read_package_entries", "register_backend", "resolve", "resolve_packages",
    "UnpackBudget",
]


@dataclass(frozen=True)
class FetchedPackage:
    """A package whose file is in the cache, size and SHA-256 verified against its index."""

    package: Package
    path: Path
    depends: tuple[str, ...] = ()  # the packages its dependencies resolved to, by name


def load_index(
    feeds: Sequence[Feed], arch: Arch, *, cache: Cache | None = None, progress: Progress = QUIET,
    extra: Sequence[Package] = (),
) -> PackageIndex:
    """Fetch and verify every feed's index for `arch` and merge them into one PackageIndex,
    with `extra` packages (the board's package files, already verified), each replacing any
    package of its name the feeds list: the board brought it on purpose.

    All feeds must share one format (one version ordering) and one package arch name; among
    equal versions the earlier feed wins. A board mixing formats resolves through
    `resolve_packages`, which loads one index per format.
    """
    if not feeds:
        raise UserError("no package feeds configured", "add a feed to the board's `feeds`")
    types = {feed.type for feed in feeds}
    if len(types) > 1:
        raise UserError(f"feeds mix package formats ({', '.join(sorted(types))}): one index holds one format",
                        "resolve_packages resolves mixed feeds format by format")
    backend = get_backend(feeds[0].type)
    arch_names = {feed.name: feed_arch(backend, feed, arch) for feed in feeds}
    if len(set(arch_names.values())) > 1:
        named = ", ".join(f"{name} {arch_name}" for name, arch_name in arch_names.items())
        raise UserError(f"{backend.name} feeds name different package architectures ({named})",
                        "the feeds of one format in a board share one arch")
    cache = cache or Cache.default()
    parts: list[Sequence[Package] | PackageSource] = []
    for feed in feeds:
        progress.step(f"index of {feed.name} ({feed.url} {feed.suite}, {arch_names[feed.name]})")
        with naming_feed(feed):
            parts.append(backend.load_index(feed, arch, cache, progress))
    return PackageIndex(
        PackageSet([*parts, list(extra)], hidden={p.name for p in extra}),
        satisfies=backend.satisfies,
        compare=backend.compare_versions,
        native_arch=arch_names[feeds[0].name],
        neutral_arch=backend.neutral_arch,
        feeds=tuple(feed.name for feed in feeds),
        bare_provides_need_priority=backend.bare_provides_need_priority,
    )


def group_feeds(feeds: Sequence[Feed]) -> list[list[Feed]]:
    """The feeds grouped by format, each group in feed order, groups in order of their first feed."""
    groups: dict[str, list[Feed]] = {}
    for feed in feeds:
        groups.setdefault(feed.type, []).append(feed)
    return list(groups.values())


def resolve_packages(
    feeds: Sequence[Feed],
    arch: Arch,
    names: Sequence[str],
    *,
    exclude: Collection[str] = (),
    nodeps: Collection[str] = (),
    pins: Mapping[str, str] | None = None,
    versions: Mapping[str, str] | None = None,
    files: Sequence[PackageFile] = (),
    provided: Mapping[str, str | None] | None = None,
    cache: Cache | None = None,
    progress: Progress = QUIET,
) -> Resolution:
    """Resolve `names` with their dependencies over the feeds' verified indexes.

    Feeds of several formats can be mixed. Each requested name comes from the first feed, in
    feed order, that has it (or from the feed `pins` names for it), and its dependencies are
    resolved among the feeds of that feed's format only: a Debian glibc binary is never
    satisfied by an Alpine musl library. `versions` pins packages to exact versions
    (see `resolve`). Indexes are loaded format by format, only as far as
    needed to place every name. With one format, every name is resolved in it.

    For formats with `install_if` (Alpine), packages whose conditions the resolution meets
    are added with their dependencies, as apk does; packages taken without dependencies
    (`nodeps`) trigger none.

    `files` are package files the board pins by SHA-256 (`read_package_file`): each joins
    the index of the feeds of its format. `provided` names what the board supplies itself
    (see `resolve`).
    """
    if not feeds:
        raise UserError("no package feeds configured", "add a feed to the board's `feeds`")
    pins = dict(pins or {})
    feed_type = {feed.name: feed.type for feed in feeds}
    cache = cache or Cache.default()
    _check_pinned_feeds(pins, feed_type)
    local = _read_board_files(files, set(feed_type.values()), cache, progress)
    groups = group_feeds(feeds)
    unplaced = list(dict.fromkeys(names))
    parts: list[Resolution] = []
    for group in groups:
        if not unplaced:
            break
        own_files = [(file, package) for file, package in local if package.format == group[0].type]
        index = load_index(group, arch, cache=cache, progress=progress, extra=[p for _, p in own_files])
        _check_file_arches(own_files, index)
        if len(groups) == 1:
            placed = unplaced
        else:
            placed = [n for n in unplaced if feed_type.get(pins.get(n, ""), group[0].type) == group[0].type
                      and (n in pins or index.offers(n))]
        unplaced = [n for n in unplaced if n not in placed]
        if placed:
            group_pins = {n: pins[n] for n in placed if n in pins}
            parts.append(_resolve_with_install_if(index, group[0].type, placed, exclude, nodeps, group_pins,
                                                  provided or {}, versions or {}))
    if unplaced:
        raise ResolveError(f"cannot install {unplaced[0]}: no package {unplaced[0]} in "
                           f"{', '.join(f.name for f in feeds)}")
    resolution = _joined(parts)
    for skipped in resolution.excluded:
        progress.info(f"excluded: {skipped} (not installed)")
    for supplied in resolution.provided:
        progress.info(f"provided by the board: {supplied}")
    return resolution


def _check_pinned_feeds(pins: Mapping[str, str], feed_type: Mapping[str, str]) -> None:
    """Every feed a package is pinned to is one of the board's."""
    for name, feed_name in pins.items():
        if feed_name not in feed_type:
            raise UserError(f"package {name} is pinned to feed '{feed_name}', which the board does not have",
                            f"feeds: {', '.join(feed_type)}")


def _read_board_files(files: Sequence[PackageFile], formats: Collection[str], cache: Cache,
                      progress: Progress) -> list[tuple[PackageFile, Package]]:
    """The package files the board pins, read and checked; each must have a feed of its format
    to be resolved with."""
    local = [(file, read_package_file(file, cache=cache, progress=progress)) for file in files]
    for file, package in local:
        if package.format not in formats:
            raise UserError(f"{file.where}: {file.path.name} is a {package.format} package, but the board has "
                            f"no {package.format} feed to resolve it with")
    return local


def _joined(parts: Sequence[Resolution]) -> Resolution:
    """One resolution of the parts resolved feed group by feed group, in order."""
    return Resolution(
        [p for part in parts for p in part.packages],
        [e for part in parts for e in part.excluded],
        [n for part in parts for n in part.nodeps],
        [e for part in parts for e in part.provided],
        {name: names for part in parts for name, names in part.depends.items()},
    )


def read_package_file(file: PackageFile, *, cache: Cache, progress: Progress = QUIET) -> Package:
    """The package in a file the board brings, as an index would list it (feed
    "package_files"). The file enters the cache only when its SHA-256 is the pinned one, and
    only that verified copy is read: its format sniffed, its own control data parsed."""
    url = file.path.as_uri()
    try:
        path = cache.fetch(url, sha256=file.sha256, size=None, progress=progress)
    except IntegrityError as e:
        raise IntegrityError(f"{file.where}: {e.message.replace(url, file.path.name)}", e.hint) from e
    try:
        return backend_for_file(path).read_package(path, feed="package_files", base_url=file.path.parent.as_uri(),
                                                   filename=file.path.name)
    except UserError as e:
        raise type(e)(f"{file.where}: {e.message.replace(str(path), file.path.name)}", e.hint) from e


def _check_file_arches(files: Sequence[tuple[PackageFile, Package]], index: PackageIndex) -> None:
    """A package file must be for the package arch of the feeds it joins, or arch-independent."""
    for file, package in files:
        if package.arch not in (index.native_arch, index.neutral_arch):
            raise UserError(f"{file.where}: {file.path.name} is package {package.name} for {package.arch}, "
                            f"but the board's {package.format} feeds are for {index.native_arch}")


def _resolve_with_install_if(
    index: PackageIndex, feed_type: str, names: list[str], exclude: Collection[str],
    nodeps: Collection[str], pins: Mapping[str, str], provided: Mapping[str, str | None],
    versions: Mapping[str, str],
) -> Resolution:
    resolution = resolve(index, names, exclude=exclude, nodeps=nodeps, pins=pins, provided=provided,
                         versions=versions)
    backend = get_backend(feed_type)
    while True:
        # apk: install_if "triggers the installation of the package once all the listed
        # dependencies are installed"; a package taken without dependencies triggers nothing.
        chosen = [p for p in resolution.packages if p.name not in resolution.nodeps]
        present = {p.name for p in resolution.packages}
        added = [p.name for p in backend.install_if_additions(index.packages, chosen)
                 if p.name not in present and not name_matches(p.name, exclude)]
        if not added:
            return resolution
        names = [*names, *added]
        resolution = resolve(index, names, exclude=exclude, nodeps=nodeps, pins=pins, provided=provided,
                             versions=versions)


@contextlib.contextmanager
def naming_feed(feed: Feed | None, package: Package | None = None) -> Iterator[None]:
    """A FetchError inside names the feed (and its place in the board file) and the package,
    not only the URL: a mirror's 404 says which `feeds:` entry to look at."""
    try:
        yield
    except FetchError as e:
        where = f"{feed.where}: " if feed is not None and feed.where else ""
        name = feed.name if feed is not None else package.feed if package is not None else None
        what = f"feed {name}: " if name else ""
        if package is not None:
            what += f"package {package.name} {package.version}: "
        raise FetchError(f"{where}{what}{e.message}", e.hint) from e


def download_packages(
    packages: Sequence[Package], *, feeds: Sequence[Feed] = (), cache: Cache | None = None,
    progress: Progress = QUIET, jobs: int = 4, extracting: bool = True,
) -> list[FetchedPackage]:
    """Download `packages` in parallel into the cache, verified; same order as given.
    `feeds` (those the packages came from) only make errors name the feed's place.
    `extracting`: the packages will be extracted, and each download thread does ahead
    what that needs (Backend.prepare_package) while other packages download."""
    cache = cache or Cache.default()
    by_name = {feed.name: feed for feed in feeds}
    total = sum(p.size for p in packages)
    progress.step(f"fetching {len(packages)} packages ({total / 1048576:.1f} MiB)")

    def fetch_one(package: Package) -> FetchedPackage:
        backend = get_backend(package.format)
        with naming_feed(by_name.get(package.feed), package):
            path = backend.fetch_package(package, cache, progress)
        if extracting:
            backend.prepare_package(path)
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
    pins: Mapping[str, str] | None = None,
    versions: Mapping[str, str] | None = None,
    files: Sequence[PackageFile] = (),
    provided: Mapping[str, str | None] | None = None,
    cache: Cache | None = None,
    progress: Progress = QUIET,
    jobs: int = 4,
    extracting: bool = True,
) -> list[FetchedPackage]:
    """Resolve `names` with their dependencies over the feeds' verified indexes (feeds of
    several formats mix as `resolve_packages` says, Alpine's install_if included), download
    every package in parallel into the cache, verify it, return them in install order
    (dependencies first). `files` and `provided` as `resolve_packages` takes them,
    `extracting` as `download_packages`."""
    cache = cache or Cache.default()
    resolution = resolve_packages(
        feeds, arch, names, exclude=exclude, nodeps=nodeps, pins=pins, versions=versions, files=files,
        provided=provided, cache=cache, progress=progress,
    )
    return download_resolution(resolution, feeds=feeds, cache=cache, progress=progress, jobs=jobs,
                               extracting=extracting)


def download_resolution(
    resolution: Resolution, *, feeds: Sequence[Feed] = (), cache: Cache | None = None,
    progress: Progress = QUIET, jobs: int = 4, extracting: bool = True,
) -> list[FetchedPackage]:
    """Download a resolution's packages (`download_packages`), in install order, each with
    the names its dependencies resolved to."""
    fetched = download_packages(resolution.packages, feeds=feeds, cache=cache, progress=progress, jobs=jobs,
                                extracting=extracting)
    return [replace(f, depends=tuple(resolution.depends.get(f.package.name, ()))) for f in fetched]


def read_package_entries(path: Path, budget: UnpackBudget | None = None) -> Iterator[Entry]:
    """Every data entry of the package file at `path`, in archive order (format sniffed),
    refused (LimitError) once it unpacks to more than `budget` (default: 1 GiB)."""
    return backend_for_file(Path(path)).read_entries(Path(path), budget)


def read_fetched_entries(fetched: FetchedPackage, budget: UnpackBudget | None = None) -> list[Entry]:
    """Every data entry of a fetched package, read by the backend of the format its index
    gave it. An error names the package, its feed and its file, not the cache's hash name."""
    package = fetched.package
    named = f"package {package_label(package)}"
    try:
        return list(get_backend(package.format).read_entries(fetched.path, budget))
    except LimitError as e:
        raise LimitError(f"{named}: {_own_name(e.where, fetched)}", e.bound) from e
    except (FormatError, IntegrityError) as e:
        raise type(e)(f"{named}: {_own_name(e.message, fetched)}", e.hint) from e


def _own_name(detail: str, fetched: FetchedPackage) -> str:
    # The backends name the file they read, here the cache's content-addressed path;
    # the offsets after it still hold for the package's own file name.
    return detail.replace(str(fetched.path), posixpath.basename(fetched.package.filename))


def package_label(package: Package) -> str:
    """How messages name a package: "busybox 1:1.35.0-4 (feed debian)"."""
    return f"{package.name} {package.version} (feed {package.feed})"


def license_file_of(package: Package) -> str | None:
    """The path in the package's data of the file that states its licence (Debian's
    copyright file), or None where the format keeps the licence in its index."""
    template = get_backend(package.format).license_file
    return template.format(name=package.name) if template else None


def purl_of(package: Package) -> str:
    """The package URL (purl-spec) naming the package: "pkg:deb/debian/busybox@1:1.35.0-4?arch=arm64"."""
    from packageurl import PackageURL

    kind, namespace = get_backend(package.format).purl
    return PackageURL(kind, namespace, package.name, package.version, {"arch": package.arch}).to_string()


def provenance_of(package: Package) -> str:
    """What the files a package installs record as their origin: "deb:busybox-static"."""
    return f"{package.format}:{package.name}"


def install_package(rootfs: RootFS, fetched: FetchedPackage, budget: UnpackBudget | None = None) -> list[Entry]:
    """Extract the package's data into the in-memory rootfs, provenance f"deb:{name}", and
    return its entries as the package holds them (for the package manager's database).
    No maintainer scripts are run here (fwgen.scripts decides what becomes of them). What it
    unpacks to is charged to `budget` (a package budget whose parent is the image's, say);
    beyond it, LimitError naming the package.

    Like dpkg, a directory the rootfs already has as a symlink to a directory (merged /usr:
    /bin -> usr/bin) is followed, not replaced.
    """
    provenance = provenance_of(fetched.package)
    entries = read_fetched_entries(fetched, budget)
    for entry in entries:
        path = _follow_directory_links(rootfs, entry.path)
        existing = rootfs.get(path)
        if entry.type is EntryType.DIR and existing is not None:
            if existing.type is EntryType.SYMLINK:
                continue  # keep the layout's symlinked directory
        rootfs.add(replace(entry, path=path, provenance=provenance))
    return entries


def read_control_files(fetched: FetchedPackage) -> dict[str, bytes]:
    """The files of a fetched package's control part (.PKGINFO or control, the scripts),
    by name without a leading "./" or "/"."""
    return get_backend(fetched.package.format).read_control_files(fetched.path)


def write_package_state(rootfs: RootFS, installed: Sequence[tuple[FetchedPackage, list[Entry]]], *,
                        feeds: Sequence[Feed], world: Collection[str], arch: Arch, epoch: int) -> None:
    """The device's package manager state for `installed` (install order): apk's for Alpine
    packages, opkg's for OpenWrt ones. `world` names the packages asked for."""
    write_apk_state(rootfs, installed, feeds=feeds, world=world, arch=arch, epoch=epoch)
    write_opkg_state(rootfs, installed, world=world, epoch=epoch)


def write_opkg_state(rootfs: RootFS, installed: Sequence[tuple[FetchedPackage, list[Entry]]], *,
                     world: Collection[str], epoch: int) -> None:
    """opkg's status and info files for the OpenWrt packages of `installed`, as the image
    builder leaves them: what was asked for is `user`, the rest auto-installed."""
    from .opkgdb import InstalledIpk, write_opkg_database

    packages = [InstalledIpk(read_control_files(f), entries) for f, entries in installed if f.package.format == "ipk"]
    if packages:
        write_opkg_database(rootfs, packages, requested=set(world), installed_time=epoch)


def write_apk_state(rootfs: RootFS, installed: Sequence[tuple[FetchedPackage, list[Entry]]], *,
                    feeds: Sequence[Feed], world: Collection[str], arch: Arch, epoch: int) -> list[str]:
    """apk's installed database, world, repositories and keys for the Alpine packages of
    `installed` (install order), so that apk on the device knows what is installed and
    where to get more; returns the repository lines written (none without an apk feed)."""
    from .apk import ApkBackend
    from .apkdb import InstalledApk, write_apk_database

    backend = get_backend("apk")
    assert isinstance(backend, ApkBackend)
    packages = [InstalledApk(backend.verified(f.path), f.path.stat().st_size, entries)
                for f, entries in installed if f.package.format == "apk"]
    if not packages:
        return []
    apk_feeds = [feed for feed in feeds if feed.type == "apk"]
    repositories = [f"{(feed.device_url or feed.url).rstrip('/')}/{component.strip('/')}"
                    for feed in apk_feeds for component in feed.components]
    keys = {p.apk.key.name: p.apk.key.source.read_bytes() for p in packages}
    names = {p.name for p in packages}
    write_apk_database(rootfs, packages, world=[n for n in world if n in names], repositories=repositories,
                       arch=feed_arch(backend, apk_feeds[0], arch), keys=keys, epoch=epoch)
    return repositories


def _follow_directory_links(rootfs: RootFS, path: str) -> str:
    parent, name = posixpath.split(path)
    if parent == "/" or parent in rootfs.entries and rootfs.entries[parent].type is EntryType.DIR:
        return path
    resolved = rootfs.resolve(parent)
    if resolved is not None and resolved.type is EntryType.DIR:
        return posixpath.join(resolved.path, name)
    return path
