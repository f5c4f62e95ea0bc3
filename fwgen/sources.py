"""The corresponding source of a board's image, as Buildroot's legal-info gathers it.

    index = fetch_sources(board, Path("sources"), cache=Cache.default(), max_size=100 * MIB)

Debian packages: each binary package's source package (its `Source:` field) is looked up in
the feed's `Sources` index, itself checked against the InRelease fwgen verifies; the .dsc
and every file it names are downloaded through the cache, each checked against the SHA-256
and size that index gives. fwgen's BusyBox: the pinned tarball, fwgen's patches and the
Kconfig fragments. Alpine and OpenWrt feeds publish no sources beside their packages
(aports and the OpenWrt tree name upstream URLs instead): those packages are listed as not
found, with the reason. A source package above `max_size`, or named in `skip`, is listed
as skipped with its size. The folder gets `sources.json` (every package, what was fetched,
skipped or not found) and `SHA256SUMS` over every file; it appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

from .board import Board, Feed
from .build import resolve_inputs  # the pipeline's own resolution, as a build would take it
from .busybox import BusyboxSource, patches_for
from .busybox_download import download_source
from .cache import Cache
from .errors import FetchError, UserError
from .fetch import FetchedPackage
from .fetch.deb import DebBackend, SourcePackage, source_of
from .files import hash_file
from .progress import QUIET, Progress

MIB = 1 << 20
INDEX_FILE = "sources.json"
SUMS_FILE = "SHA256SUMS"


def fetch_sources(board: Board, dest: Path, *, cache: Cache, progress: Progress = QUIET,
                  max_size: int = 100 * MIB, skip: Collection[str] = ()) -> dict:
    """Fetch the sources of everything `board`'s image holds into `dest` (which must not
    exist, or be empty); return the index written as sources.json."""
    _check_dest(dest)
    inputs = resolve_inputs(board, cache=cache, progress=progress)
    packages = [*inputs.packages, *(p for p in (inputs.kernel, inputs.uboot) if p is not None)]
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        records = _fetch_package_sources(packages, board.feeds, staging, cache, progress, max_size, set(skip))
        busybox = None
        if inputs.busybox_source is not None and inputs.busybox is not None:
            busybox = _copy_busybox(inputs.busybox_source, inputs.busybox, board, staging, cache, progress)
        index = {"board": board.name, "arch": board.arch.value, "packages": records, "busybox": busybox}
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        _write_sums(staging)
        if dest.exists():
            dest.rmdir()  # empty, as checked
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return index


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest}: exists and is not an empty folder", "give a new folder: fwgen sources writes it whole")
    dest.parent.mkdir(parents=True, exist_ok=True)


def _fetch_package_sources(packages: list[FetchedPackage], feeds: tuple[Feed, ...], staging: Path, cache: Cache,
                           progress: Progress, max_size: int, skip: set[str]) -> list[dict]:
    """One record per binary package: its source and what became of it."""
    wanted = {source_of(f.package) for f in packages if f.package.format == "deb"}
    available: dict[tuple[str, str], SourcePackage] = {}
    versions: dict[str, list[str]] = {}
    for feed in feeds:
        if feed.type == "deb" and any(f.package.feed == feed.name for f in packages):
            for found in DebBackend().load_sources(feed, {name for name, _ in wanted}, cache, progress):
                available.setdefault((found.name, found.version), found)
                versions.setdefault(found.name, []).append(found.version)
    done: dict[tuple[str, str], dict] = {}
    records = []
    for fetched in packages:
        package = fetched.package
        record = {"package": package.name, "version": package.version, "feed": package.feed}
        if package.format != "deb":
            record.update(status="not found", reason=f"{package.format} feeds publish no sources beside their packages")
        else:
            key = source_of(package)
            if key not in done:
                done[key] = _fetch_one_source(key, available.get(key), versions.get(key[0], []), staging, cache,
                                              progress, max_size, skip)
            record.update(done[key])
        records.append(record)
    return records


def _fetch_one_source(key: tuple[str, str], source: SourcePackage | None, versions: list[str], staging: Path,
                      cache: Cache, progress: Progress, max_size: int, skip: set[str]) -> dict:
    name, version = key
    record: dict = {"source": name, "source_version": version}
    if source is None:
        have = ", ".join(versions) or "no version"
        return {**record, "status": "not found", "reason": f"the feed's Sources index has {have} of {name}"}
    record["size"] = source.size
    if name in skip:
        return {**record, "status": "skipped", "reason": "--skip"}
    if source.size > max_size:
        return {**record, "status": "skipped",
                "reason": f"{source.size / MIB:.1f} MiB is more than --max-size {max_size / MIB:.0f} MiB"}
    progress.step(f"source {name} {version} ({len(source.files)} files, {source.size / MIB:.1f} MiB)")
    folder = staging / "debian" / f"{name}_{version.partition(':')[2] or version}"  # named as Debian's files: no epoch
    folder.mkdir(parents=True)
    for file in source.files:
        try:
            path = cache.fetch(source.url(file), sha256=file.sha256, size=file.size, progress=progress)
        except FetchError as e:  # listed, yet gone from the mirror: say so, fetch the rest
            shutil.rmtree(folder)
            return {**record, "status": "not found", "reason": e.message}
        shutil.copyfile(path, folder / file.path)
    return {**record, "status": "fetched", "files": [f"debian/{folder.name}/{f.path}" for f in source.files],
            "url": f"{source.base_url}/{source.directory}/"}


def _copy_busybox(source: BusyboxSource, inputs: dict, board: Board, staging: Path, cache: Cache, progress: Progress) -> dict:
    """fwgen's BusyBox: the verified release tarball, fwgen's patches, the Kconfig fragments."""
    folder = staging / "busybox"
    folder.mkdir()
    tarball = download_source(source, cache.root, progress)
    shutil.copyfile(tarball, folder / source.filename)
    files = [source.filename]
    for patch in patches_for(source):
        shutil.copyfile(patch, folder / patch.name)
        files.append(patch.name)
    for i, fragment in enumerate(inputs["config"]):
        name = f"config-{i + 1}-{Path(fragment['path']).parent.name}.config"
        shutil.copyfile(board.source.parent / fragment["path"], folder / name)
        files.append(name)
    return {"version": source.version, "sha256": source.sha256, "urls": list(source.urls), "status": "fetched",
            "files": [f"busybox/{name}" for name in files]}


def _write_sums(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS_FILE)
    (folder / SUMS_FILE).write_text("".join(f"SHA256 ({p.relative_to(folder)}) = {hash_file(p)}\n" for p in files))
