"""The build pipeline: a flat list of named steps over one context object.

    resolve_board -> fetch_board_packages -> fetch_kernel -> assemble_rootfs
      -> select_kernel_modules -> write_images -> write_manifest

Outputs are written into a staging folder beside `out/<board>/` and published at the end by
replacing the `out/<board>` link (fwgen/publish.py), so a failed build never leaves a
half-written output folder and a concurrent reader always sees one whole build.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .audit import audit_rootfs, runtime_files
from .board import Board
from .bootloader import boots_through_uboot, fetch_uboot
from .bundle import check_signing_key
from .busybox import DEFAULT_SOURCE, BusyboxSource, build_busybox, install_busybox, patches_for
from .cache import Cache
from .compile import compile_build, install_build
from .compression import ZSTD
from .config import board_digest
from .context import BoardResolution, BuildContext, BuiltBusybox
from .epoch import board_input_files, newest_input_time
from .errors import UserError, writing
from .fetch import (
    FetchedPackage,
    Package,
    Resolution,
    UnpackBudget,
    download_resolution,
    install_package,
    package_label,
    provenance_of,
    purl_of,
    read_fetched_entries,
    resolve_packages,
    write_package_state,
)
from .files import hash_file
from .guest import (
    BOOT_CONF,
    DATA_FS_TYPE,
    DATA_MOUNT,
    ROOT_MOUNT,
    ab_boot_conf,
    disk_boot_conf,
    flash_boot_conf,
)
from .kernel import (
    IMAGE_NAME,
    MODULE_TREE,
    install_modules,
    load_kernel,
    resolve_modules,
)
from .licenses import (
    BUSYBOX_LICENSE,
    NOASSERTION,
    License,
    entries_reader,
    package_license,
    rootfs_reader,
)
from .lock import (
    Lock,
    busybox_inputs,
    check_locked_inputs,
    fetch_alone,
    fetch_locked,
    package_entry,
)
from .outputs import MIB, image_contents, outputs_of, write_outputs
from .overlay import apply_layers, plan_layers
from .policy import apply_policy, find_special_files
from .progress import QUIET, Progress
from .publish import create_staging, publish
from .rebuild import changed_since, input_digests, record_inputs
from .rootfs import Entry, EntryType, RootFS, read_folder
from .sbom import write_sboms
from .scripts import handle_package_scripts
from .slots import DATA_PART, SLOTS, add_update_files, has_ab_slots, partition_number, root_part
from .sums import write_signed_sums
from .usign import UsignSecretKey

KERNEL_FILE = "kernel"
MANIFEST_FILE = "manifest.json"
KERNEL_HOPS = 4  # how far a kernel metapackage is followed to the package holding the image


@dataclass(frozen=True)
class BuildResult:
    board: str
    outdir: Path
    manifest: dict
    seconds: float
    up_to_date: bool = False  # nothing was built: the published build has these very inputs


def build(
    board: Board,
    *,
    outdir: Path,
    cache: Cache,
    progress: Progress = QUIET,
    source_date_epoch: int | None = None,
    compression: str = "gzip",
    signing_key: UsignSecretKey | None = None,
    force: bool = False,
    lock: Lock | None = None,
) -> BuildResult:
    """Build `board` into `outdir` (replaced atomically). Returns the manifest. A
    `signing_key` signs the update bundle of a board with `update:`; it must be one the
    board's update.keys lists. A board whose published build has the same inputs and intact
    outputs is not built again unless `force` (fwgen/rebuild.py). With `lock`, exactly the
    locked packages and inputs are built (or the build fails naming what is missing)."""
    started = time.monotonic()
    if signing_key is not None and board.update is not None:
        check_signing_key(signing_key, board.update.keys, str(board.source))
    ctx = BuildContext(
        board=board,
        outdir=outdir,
        cache=cache,
        progress=progress,
        source_date_epoch=source_date_epoch,
        compression=compression,
        signing_key=signing_key,
        lock=lock,
    )
    # The whole overlay stack is validated (templates, conflicts, owners) before anything is written.
    ctx.layers = plan_layers(board.overlays, board.values, board.arch)
    check_output_path(outdir)
    resolved = resolve_board(ctx)
    inputs = input_digests(board, resolved, source_date_epoch=source_date_epoch, compression=compression,
                           signing=signing_key.key_id if signing_key else None)
    reason = "--force" if force else changed_since(outdir, inputs)
    if reason is None:
        progress.info(f"{board.name} is up to date")
        manifest = json.loads((outdir / MANIFEST_FILE).read_text())
        return BuildResult(board.name, outdir, manifest, time.monotonic() - started, up_to_date=True)
    progress.info(f"building {board.name}: {reason}")
    manifest = build_and_publish(ctx, inputs)
    return BuildResult(board.name, outdir, manifest, time.monotonic() - started)


def build_and_publish(ctx: BuildContext, inputs: dict[str, str]) -> dict:
    """Run the build's steps into a staging folder beside `ctx.outdir` and publish it there
    (fwgen/publish.py). Returns the manifest. A failed build leaves no trace, not even an
    empty out/."""
    board = ctx.board
    created = make_folders(ctx.outdir.parent)
    staging = create_staging(ctx.outdir)
    ctx.staging = staging.path
    published = False
    try:
        with writing(ctx.cache.root, f"the package and BusyBox cache for board {board.name}"):
            fetch_board_packages(ctx)
            fetch_kernel(ctx)
            build_board_busybox(ctx)
            compile_overlay_builds(ctx)
            assemble_rootfs(ctx)
            prepare_outputs(ctx)
            audit_elf_files(ctx)
        select_kernel_modules(ctx)
        enforce_policy(ctx)
        with writing(ctx.staging, f"the outputs of board {board.name}"):
            manifest = write_results(ctx, inputs)
            publish(staging, ctx.outdir)
            published = True
    finally:
        if not published:
            staging.remove()
            remove_empty_folders(created)
    return manifest


def write_results(ctx: BuildContext, inputs: dict[str, str]) -> dict:
    """Write the images, the manifest (returned), the SBOMs and the record of the inputs into
    the staging folder; with a signing key, last, the signed sums of them all."""
    assert ctx.staging is not None
    write_images(ctx)
    find_bootloader_license(ctx)
    warn_unstated_licenses(ctx)
    manifest = write_manifest(ctx)
    write_sboms(ctx.staging, manifest, rootfs=ctx.rootfs, licenses=ctx.licenses,
                contents=image_contents(ctx.board, manifest["outputs"]))
    record_inputs(ctx.staging, inputs)
    if ctx.signing_key is not None:
        write_signed_sums(ctx.staging, ctx.signing_key)
    return manifest


def check_output_path(outdir: Path) -> None:
    """Fail before any fetching when the system refuses the output path itself (a name too
    long): the OSError is what the CLI reports as one line naming the path."""
    try:
        os.stat(outdir)
    except (FileNotFoundError, NotADirectoryError):
        pass  # not there yet: the build makes it


def make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) as long as they are empty: another build may share them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@dataclass(frozen=True)
class BoardInputs:
    """What a build of a board takes from outside: its packages (install order), the kernel
    package (None for a vendor kernel), U-Boot's package, and BusyBox's inputs."""

    packages: list[FetchedPackage]
    kernel: FetchedPackage | None
    kernel_record: dict
    uboot: FetchedPackage | None
    busybox: dict | None  # None: BusyBox comes from a package
    busybox_source: BusyboxSource | None


def resolve_inputs(board: Board, *, cache: Cache, progress: Progress = QUIET) -> BoardInputs:
    """The inputs a build of `board` would take from the feeds now: resolved, downloaded and
    verified (`fwgen lock` records them, `fwgen sources` fetches their sources)."""
    ctx = BuildContext(board=board, outdir=Path(), cache=cache, progress=progress)
    ctx.layers = plan_layers(board.overlays, board.values)
    resolve_board(ctx)
    with writing(cache.root, f"the package cache for board {board.name}"):
        fetch_board_packages(ctx)
        fetch_kernel(ctx)
        uboot = fetch_uboot(ctx)[0] if boots_through_uboot(board) else None
    own_busybox = board.busybox.package is None
    return BoardInputs(ctx.packages, ctx.kernel_package, _kernel_record(ctx), uboot,
                       _busybox_inputs(ctx) if own_busybox else None, _busybox_source(ctx) if own_busybox else None)


def lock_board(board: Board, *, cache: Cache, progress: Progress = QUIET) -> dict:
    """What `fwgen lock` records: the packages, kernel and U-Boot a build of `board` would
    take from the feeds now, and its BusyBox inputs."""
    inputs = resolve_inputs(board, cache=cache, progress=progress)
    return {
        "packages": [package_entry(p) for p in inputs.packages],
        "kernel": package_entry(inputs.kernel) if inputs.kernel else inputs.kernel_record,
        **({"uboot": package_entry(inputs.uboot)} if inputs.uboot else {}),
        **({"busybox": inputs.busybox} if inputs.busybox is not None else {}),
    }


def package_names(ctx: BuildContext) -> list[str]:
    """The packages the board asks for: its own, its overlays', BusyBox's when packaged."""
    board = ctx.board
    names = list(board.packages) + [p for p in ctx.layers.packages if p not in board.packages]
    if board.busybox.package:
        names.append(board.busybox.package)
    return names


def resolve_board(ctx: BuildContext) -> BoardResolution:
    """Resolve the board's packages and its kernel package over its feeds, once: the
    up-to-date check digests the result, the fetch steps download it.

    Under a lock the packages come from the lock; their resolution only tells the up-to-date
    check whether the feeds moved on, so it leaves the board's `package_versions` out, as a
    pinned version the mirror has since dropped must not fail a locked build."""
    board = ctx.board
    names = package_names(ctx)
    ctx.progress.step(f"resolving {len(names)} package(s) for {board.arch.value}")
    packages = resolve_packages(
        board.feeds, board.arch, names, exclude=board.exclude, nodeps=board.nodeps,
        pins=board.package_feeds, versions=board.package_versions if ctx.lock is None else None,
        files=board.package_files, provided=board.provides, cache=ctx.cache, progress=ctx.progress,
    )
    ctx.resolved = BoardResolution(packages, resolve_kernel_chain(board, cache=ctx.cache, progress=ctx.progress))
    return ctx.resolved


def resolve_kernel_chain(board: Board, *, cache: Cache, progress: Progress = QUIET) -> tuple[Resolution, ...]:
    """The kernel package alone (its dependencies are host tooling an embedded image does not
    want), then each linux-image package it depends on, as far as `fetch_kernel` may follow
    them (a metapackage such as linux-image-cloud-arm64 leads to the one holding the image)."""
    if board.kernel.package is None:
        return ()
    chain, name = [], board.kernel.package
    for _ in range(KERNEL_HOPS):
        chain.append(resolve_packages(board.feeds, board.arch, [name], nodeps=[name], cache=cache, progress=progress))
        following = _linux_image_dependency(chain[-1].packages[0])
        if following is None:
            break
        name = following
    return tuple(chain)


def fetch_board_packages(ctx: BuildContext) -> None:
    board = ctx.board
    if ctx.lock is not None:
        ctx.packages = fetch_locked(ctx.lock.packages, board.feeds, cache=ctx.cache, progress=ctx.progress)
        return
    assert ctx.resolved is not None, "resolve_board comes first"
    ctx.packages = download_resolution(ctx.resolved.packages, feeds=board.feeds, cache=ctx.cache, progress=ctx.progress)


def fetch_kernel(ctx: BuildContext) -> None:
    """Fetch the kernel package without its dependencies (kmod, initramfs-tools and the like
    are host tooling an embedded image does not want), following a metapackage such as
    linux-image-cloud-arm64 to the package that holds the image."""
    spec = ctx.board.kernel
    if spec.image is not None:
        load_vendor_kernel(ctx)
        if ctx.lock is not None:
            check_locked_inputs(ctx.lock, "kernel", _kernel_record(ctx))
        return
    if spec.package is None:
        raise UserError(f"{ctx.board.source}: kernel: give a package, or an image (and modules_from)")
    name = spec.package
    for hop in range(KERNEL_HOPS):
        ctx.progress.step(f"fetching kernel package {name}")
        fetched = _fetch_kernel_hop(ctx, name, hop)
        entries = read_fetched_entries(fetched, package_budget(ctx.board))
        if any(e.path.startswith("/boot/vmlinu") for e in entries):
            ctx.kernel_package = fetched
            ctx.kernel_entries = entries
            ctx.kernel = load_kernel(entries, source=provenance_of(fetched.package))
            ctx.licenses[fetched.package.name] = package_license(fetched.package, entries_reader(entries))
            ctx.progress.info(f"kernel {ctx.kernel.release} from {fetched.package.name} {fetched.package.version}")
            return
        name = _kernel_dependency(fetched.package)
    raise UserError(f"kernel package {spec.package} leads to no kernel image")


def _fetch_kernel_hop(ctx: BuildContext, name: str, hop: int) -> FetchedPackage:
    """The kernel package `name`, the `hop`th of the chain: the locked one under a lock, else
    the one `resolve_board` resolved."""
    if ctx.lock is not None:
        return fetch_alone(ctx.board, name, role="kernel", lock=ctx.lock, cache=ctx.cache, progress=ctx.progress)
    assert ctx.resolved is not None, "resolve_board comes first"
    [fetched] = download_resolution(ctx.resolved.kernel[hop], feeds=ctx.board.feeds, cache=ctx.cache,
                                    progress=ctx.progress)
    return fetched


def load_vendor_kernel(ctx: BuildContext) -> None:
    """A kernel given as files (a vendor's BSP): `kernel.image` and optionally
    `kernel.modules_from`, a folder or tarball laid out as `make modules_install
    INSTALL_MOD_PATH=<dir>` leaves it (lib/modules/<release>/...) or holding the contents of
    /lib/modules (<release>/...). The release comes from the image's banner or file name."""
    spec = ctx.board.kernel
    assert spec.image is not None
    ctx.progress.step(f"loading vendor kernel {spec.image.name}")
    name = spec.image.name if IMAGE_NAME.match(spec.image.name) else "vmlinuz"
    entries = [Entry(f"/boot/{name}", EntryType.FILE, 0o644, data=spec.image.read_bytes(), provenance="vendor")]
    if spec.modules_from is not None:
        entries += _read_vendor_modules(spec.modules_from)
    ctx.kernel_entries = entries
    ctx.kernel = load_kernel(entries, source=f"vendor:{spec.image}")
    ctx.progress.info(f"kernel {ctx.kernel.release} from {spec.image}, {len(ctx.kernel.modules)} module(s)")


def _read_vendor_modules(source: Path) -> list[Entry]:
    files = _folder_files(source) if source.is_dir() else _read_tarball(source)
    entries = []
    for relative, data in files:
        path = relative.lstrip("./")
        at = path.find("lib/modules/")
        path = "/" + path[at:] if at >= 0 else f"/lib/modules/{path}"
        entries.append(Entry(path, EntryType.FILE, 0o644, data=data, provenance="vendor"))
    if not any(MODULE_TREE.match(e.path) for e in entries):
        raise UserError(f"{source}: no kernel modules found", "expected lib/modules/<release>/... or <release>/...")
    return entries


def _folder_files(folder: Path) -> list[tuple[str, bytes]]:
    return [(e.path, e.data) for e in read_folder(folder) if e.type is EntryType.FILE]


def _read_tarball(path: Path) -> list[tuple[str, bytes]]:
    """Regular files of a tar archive (plain, gzip, xz, bzip2 or zstd)."""
    raw = path.read_bytes()
    if ZSTD.matches(raw):  # tarfile cannot read zstd itself
        raw = ZSTD.decompressobj().decompress(raw)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]
    except tarfile.TarError as e:
        raise UserError(f"{path}: not a readable tar archive ({e})") from e


def _kernel_dependency(package: Package) -> str:
    following = _linux_image_dependency(package)
    if following is None:
        raise UserError(f"{package.name} holds no kernel image and depends on no linux-image package")
    return following


def _linux_image_dependency(package: Package) -> str | None:
    return next((r.name for group in package.depends for r in group if r.name.startswith("linux-image-")), None)


def build_board_busybox(ctx: BuildContext) -> None:
    """Build the board's static musl BusyBox (or find it in the cache), unless the board
    takes BusyBox from a package."""
    if ctx.board.busybox.package is not None:
        if ctx.lock is not None:
            check_locked_inputs(ctx.lock, "busybox", None)
        return
    if ctx.lock is not None:
        check_locked_inputs(ctx.lock, "busybox", _busybox_inputs(ctx))
    source, fragments = _busybox_source(ctx), _busybox_fragments(ctx)
    path = build_busybox(ctx.board.arch, source=source, fragments=fragments,
                         cache_root=ctx.cache.root, progress=ctx.progress, remote=ctx.cache.remote)
    ctx.busybox = BuiltBusybox(source.version, path.read_bytes(), path.parent.name, source,
                               tuple(patches_for(source)), hash_file(path.parent / "config"))


def compile_overlay_builds(ctx: BuildContext) -> None:
    """Compile (or find in the cache) the programs the overlays build for this board."""
    ctx.built = [compile_build(b, ctx.board.arch, cache_root=ctx.cache.root, progress=ctx.progress,
                               remote=ctx.cache.remote)
                 for b in ctx.layers.builds]


def _busybox_source(ctx: BuildContext) -> BusyboxSource:
    spec = ctx.board.busybox
    if spec.version is not None:
        assert spec.sha256 is not None  # the schema requires them together
        return BusyboxSource(spec.version, spec.sha256, spec.urls or tuple(
            url.replace(DEFAULT_SOURCE.version, spec.version) for url in DEFAULT_SOURCE.urls))
    if spec.urls:
        return BusyboxSource(DEFAULT_SOURCE.version, DEFAULT_SOURCE.sha256, spec.urls)
    return DEFAULT_SOURCE


def _busybox_fragments(ctx: BuildContext) -> list[Path]:
    # The board's fragments first, then what its overlays need (later wins, as for files).
    spec = ctx.board.busybox
    return [*spec.config, *(f for f in ctx.layers.busybox_config if f not in spec.config)]


def _busybox_inputs(ctx: BuildContext) -> dict:
    source = _busybox_source(ctx)
    return busybox_inputs(source.version, source.sha256, source.urls, patches_for(source), _busybox_fragments(ctx),
                          ctx.board)


def assemble_rootfs(ctx: BuildContext) -> None:
    """Packages first, then BusyBox's applet links, overlays in order, generated files last."""
    rootfs = ctx.rootfs
    ctx.progress.step(f"assembling the root filesystem from {len(ctx.packages)} package(s)")
    limits = ctx.board.limits
    image = UnpackBudget(limits.image_size * MIB, f"limits.image_size ({limits.image_size} MiB)")
    installed = [(fetched, install_package(rootfs, fetched, package_budget(ctx.board, image)))
                 for fetched in ctx.packages]
    # Before exclude_paths: a licence is read from the package even when its file is left out.
    read = rootfs_reader(rootfs)
    ctx.licenses.update((f.package.name, package_license(f.package, read)) for f in ctx.packages)
    ctx.pruned = prune_package_files(rootfs, ctx.board.exclude_paths)
    if ctx.pruned:
        ctx.progress.info(f"left out {sum(ctx.pruned.values())} package file(s) matching exclude_paths")
    if ctx.source_date_epoch is None:
        # A deterministic default for SOURCE_DATE_EPOCH: the newest input, the files the
        # packages bring and the board's own (its file, its overlays'; commit times in git).
        from_packages = max((e.mtime or 0 for e in rootfs), default=0)
        from_board = newest_input_time(board_input_files(ctx.board))
        ctx.source_date_epoch = max(from_packages, from_board)
        ctx.epoch_from = "packages" if from_packages >= from_board else "board and overlay files"
    if ctx.busybox is not None:
        links = install_busybox(rootfs, ctx.busybox.binary, ctx.board.arch,
                                provenance=f"busybox:{ctx.busybox.version}-musl")
    else:
        busybox = rootfs.get("/bin/busybox")
        if busybox is None or busybox.type is not EntryType.FILE:
            raise UserError(f"no /bin/busybox in the image: package {ctx.board.busybox.package} did not provide it")
        links = install_busybox(rootfs, busybox.data, ctx.board.arch, provenance=busybox.provenance,
                                sysroot=runtime_files(rootfs, "/bin/busybox"))
    apply_layers(rootfs, ctx.layers)
    for built in ctx.built:
        install_build(rootfs, built)
    ctx.progress.info(f"overlays {', '.join(o.name for o in ctx.board.overlays)}: {len(ctx.layers.entries)} path(s)")
    record_package_state(ctx, installed, len(links))
    write_generated_files(ctx)


def record_package_state(ctx: BuildContext, installed: list[tuple[FetchedPackage, list[Entry]]], links: int) -> None:
    """The package scripts (performed, deferred or not run: fwgen.scripts) and the package
    manager's own state on the device (apk's installed database, world and repositories;
    opkg's status and info files)."""
    board = ctx.board
    ctx.package_scripts = handle_package_scripts(ctx.rootfs, ctx.packages, busybox_package=board.busybox.package,
                                                 applets=links, skip=board.skip_package_scripts)
    deferred = sum(d.action == "first-boot" for d in ctx.package_scripts)
    if ctx.package_scripts:
        ctx.progress.info(f"package scripts: {len(ctx.package_scripts)}, {deferred} deferred to the first boot")
    world = [*board.packages, *ctx.layers.packages, *([board.busybox.package] if board.busybox.package else [])]
    write_package_state(ctx.rootfs, installed, feeds=board.feeds, world=world, arch=board.arch, epoch=ctx.epoch)


def package_budget(board: Board, image: UnpackBudget | None = None) -> UnpackBudget:
    """What one package may unpack to: the board's package bound, within what is left of
    the image's."""
    size = board.limits.package_size
    return UnpackBudget(size * MIB, f"limits.package_size ({size} MiB)", parent=image)


def prune_package_files(rootfs: RootFS, patterns: Sequence[str]) -> dict[str, int]:
    """Remove what the packages installed under `patterns` (documentation, translations...);
    a directory goes only once it is empty. Returns how many paths each pattern removed."""
    removed = dict.fromkeys(patterns, 0)
    for entry in sorted(rootfs, key=lambda e: e.path, reverse=True):  # contents before folders
        pattern = next((p for p in patterns if fnmatch.fnmatchcase(entry.path, p)), None)
        if pattern is None or entry.path == "/":
            continue
        if entry.type is EntryType.DIR and rootfs.children(entry.path):
            continue
        rootfs.remove(entry.path)
        removed[pattern] += 1
    return {p: n for p, n in removed.items() if n}


def write_generated_files(ctx: BuildContext) -> None:
    rootfs, board = ctx.rootfs, ctx.board
    generated: dict[str, Any] = {"provenance": "fwgen"}
    for directory in ("/proc", "/sys", "/dev", "/tmp", "/run", "/var/log", "/srv", "/root"):
        if directory not in rootfs:
            rootfs.add_dir(directory, 0o1777 if directory == "/tmp" else 0o755, **generated)
    # The kernel opens /dev/console before devtmpfs is mounted: the node must be in the image.
    rootfs.add_device("/dev/console", EntryType.CHARDEV, 5, 1, 0o600, **generated)
    rootfs.add_device("/dev/null", EntryType.CHARDEV, 1, 3, 0o666, **generated)
    rootfs.add_file("/etc/hostname", f"{board.hostname}\n".encode(), **generated)
    os_release = (
        'NAME="fwgen"\nID=fwgen\n'
        f'VERSION_ID="{__version__}"\n'
        f'PRETTY_NAME="fwgen {__version__} ({board.name})"\n'
        f"FWGEN_BOARD={board.name}\nFWGEN_VERSION={__version__}\n"
        f"FWGEN_ARCH={board.arch.value}\nBUILD_ID={ctx.epoch}\n"
    )
    rootfs.add_file("/etc/os-release", os_release.encode(), **generated)
    if _has_disk_root(board):
        write_boot_config(ctx)
    if board.update is not None:
        add_update_files(rootfs, board)


def write_boot_config(ctx: BuildContext) -> None:
    """Tell /init where the root and data partitions are: the squashfs is mounted at /rom,
    the data partition (or RAM) at /overlay, and the two joined by overlayfs become /."""
    disk, generated = ctx.board.disk, {"provenance": "fwgen"}
    for directory in (ROOT_MOUNT, DATA_MOUNT):
        ctx.rootfs.add_dir(directory, 0o755, **generated)
    if ctx.board.flash is not None:
        write_flash_boot_config(ctx)
        return
    if has_ab_slots(ctx.board):
        root_a, root_b = (disk.partition(partition_number(root_part(slot))) for slot in SLOTS)
        data = disk.partition(partition_number(DATA_PART)) if disk.data_size else ""
        conf = ab_boot_conf(ctx.board.name, (root_a, root_b), data)
        ctx.rootfs.add_file(BOOT_CONF, conf.encode(), 0o644, **generated)
        return
    # An SD card's (or a U-Boot disk's) first partition is the FAT boot partition: root and
    # data come after it.
    first = 2 if any(output.boot_partition for output in outputs_of(ctx.board)) else 1
    data = disk.partition(first + 1) if disk.data_size else ""
    conf = disk_boot_conf(ctx.board.name, disk.partition(first), data)
    ctx.rootfs.add_file(BOOT_CONF, conf.encode(), 0o644, **generated)


def write_flash_boot_config(ctx: BuildContext) -> None:
    """A router's firmware partition, as the kernel sees it (`disk.device`): /init finds the
    squashfs after the uImage (its size from the uImage header, rounded up to the erase
    block) and the overlay after the squashfs, as OpenWrt's mtdsplit does."""
    assert ctx.board.flash is not None
    conf = flash_boot_conf(ctx.board.name, ctx.board.disk.device, ctx.board.flash.erase_block)
    ctx.rootfs.add_file(BOOT_CONF, conf.encode(), 0o644, provenance="fwgen")


def audit_elf_files(ctx: BuildContext) -> None:
    """Every ELF file must fit the board (machine, endianness, float ABI, CPU architecture)
    and find its libraries inside the image."""
    report = audit_rootfs(ctx.rootfs, ctx.board.arch, cache=ctx.cache, progress=ctx.progress)
    ctx.progress.step(f"audited {len(report.files)} ELF file(s) for {ctx.board.arch.value}")
    for info in report.files:  # the manifest says which C libraries the image's programs use
        ctx.elf_libc[info.libc] = ctx.elf_libc.get(info.libc, 0) + 1
    if report.errors:
        more = f" (and {len(report.errors) - 1} more: fwgen audit lists them)" if len(report.errors) > 1 else ""
        raise UserError(f"ELF audit failed: {report.errors[0]}{more}")


def select_kernel_modules(ctx: BuildContext) -> None:
    assert ctx.kernel is not None
    ctx.modules = resolve_modules(ctx.kernel, [*ctx.board.kernel.modules, *ctx.layers.modules,
                                               *_root_modules(ctx.board)])
    ctx.progress.step(
        f"kernel modules: {', '.join(m.name for m in ctx.modules) or 'none'}"
    )
    install_modules(ctx.rootfs, ctx.kernel, ctx.modules, provenance=ctx.kernel.source)


def prepare_outputs(ctx: BuildContext) -> None:
    """Output-specific steps on the root filesystem, before the ELF audit."""
    for output in outputs_of(ctx.board):
        if output.prepare is not None:
            output.prepare(ctx)


def enforce_policy(ctx: BuildContext) -> None:
    """List the image's device nodes, setuid, setgid and world-writable paths; those a package
    brought are held against the board's `policy` (refused, warned about or allowed)."""
    ctx.special_files = find_special_files(ctx.rootfs)
    fetched = [*ctx.packages, *([ctx.kernel_package] if ctx.kernel_package else [])]
    packages = {provenance_of(f.package): package_label(f.package) for f in fetched}
    for outcome in apply_policy(ctx.special_files, ctx.board.policy, packages):
        ctx.policy[outcome.special.path, outcome.special.kind] = outcome.action
        if outcome.action == "warn":
            ctx.progress.info(f"warning: {outcome.special.describe()} (policy.{outcome.rule}: warn)")


def _root_modules(board: Board) -> list[str]:
    """Filesystems /init needs for a disk root (built-in ones are skipped by the resolver).
    The disk controller's driver is the board's to name: it differs per machine."""
    if not _has_disk_root(board):
        return []
    if board.flash is not None:
        return ["squashfs", "overlay", DATA_FS_TYPE, "loop"]
    return ["squashfs", "overlay"] + ([DATA_FS_TYPE] if board.disk.data_size else [])


def _has_disk_root(board: Board) -> bool:
    """The root is a squashfs partition on a disk (or an SD card), not the initramfs."""
    return any(output.root_on_disk for output in outputs_of(board))


def write_images(ctx: BuildContext) -> None:
    """The kernel, then each output of the board through the output table."""
    assert ctx.staging is not None and ctx.kernel is not None
    ctx.progress.step("writing images")
    kernel_path = ctx.staging / KERNEL_FILE
    kernel_path.write_bytes(ctx.kernel.image)
    ctx.outputs["kernel"] = kernel_path
    write_outputs(ctx)


def find_bootloader_license(ctx: BuildContext) -> None:
    """U-Boot's package is read for its binary only: its licence is read here."""
    if ctx.bootloader is not None:
        fetched = ctx.bootloader["package"]
        ctx.licenses[fetched.package.name] = package_license(fetched.package,
                                                             entries_reader(read_fetched_entries(fetched)))


def warn_unstated_licenses(ctx: BuildContext) -> None:
    """One line per package whose licence fwgen could not read (NOASSERTION), saying why."""
    for name, found in sorted(ctx.licenses.items()):
        if found.expression == NOASSERTION:
            ctx.progress.info(f"warning: package {name}: licence NOASSERTION: {found.problem}")


def write_manifest(ctx: BuildContext) -> dict:
    assert ctx.staging is not None and ctx.kernel is not None
    board = ctx.board
    manifest = {
        "fwgen": __version__,
        "board": {"name": board.name, "file": str(board.source), "sha256": board_digest(board)},
        "arch": board.arch.value,
        "source_date_epoch": ctx.epoch,
        "source_date_epoch_from": ctx.epoch_from,
        "inputs": {
            "packages": [_package_record(p, ctx.licenses) for p in ctx.packages],
            "kernel": dict(_kernel_record(ctx), release=ctx.kernel.release, image=ctx.kernel.image_path),
            "kernel_modules": [m.name for m in ctx.modules],
            "busybox": _busybox_record(ctx),
            "builds": [{"build": b.provenance.removeprefix("build:"), "key": b.key,
                        "files": {path: hash_file(host) for path, (host, _) in sorted(b.files.items())}}
                       for b in ctx.built],
            **({"bootloader": dict(ctx.bootloader, package=_package_record(ctx.bootloader["package"], ctx.licenses))}
               if ctx.bootloader else {}),
            "overlays": [{"name": o.name, "path": str(o.path)} for o in ctx.board.overlays],
            "excluded": list(board.exclude),
            "nodeps": list(board.nodeps),
            "provides": [name + (f"={version}" if version else "") for name, version in board.provides.items()],
            "excluded_paths": ctx.pruned,
        },
        "outputs": {
            name: {"file": path.name, "sha256": hash_file(path), "size": path.stat().st_size}
            for name, path in sorted(ctx.outputs.items())
        },
        "boot": {"cmdline": board.kernel.cmdline, "qemu_profile": board.qemu.profile.name if board.qemu else None},
        **({"flash": ctx.flash} if ctx.flash else {}),
        "package_scripts": [d.to_dict() for d in ctx.package_scripts],
        "elf_libc": dict(sorted(ctx.elf_libc.items())),
        "special_files": [dict(f.to_dict(), policy=ctx.policy.get((f.path, f.kind))) for f in ctx.special_files],
        "files": {entry.path: entry.provenance for entry in ctx.rootfs},
    }
    path = ctx.staging / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def _busybox_record(ctx: BuildContext) -> dict:
    if ctx.busybox is None:
        return {"package": ctx.board.busybox.package}
    built = ctx.busybox
    return {"version": built.version, "libc": "musl", "build": built.cache_key,
            "sha256": hashlib.sha256(built.binary).hexdigest(), "size": len(built.binary),
            "license": BUSYBOX_LICENSE,
            "source": {"url": built.source.urls[0], "sha256": built.source.sha256},
            "patches": [{"name": p.name, "sha256": hash_file(p)} for p in built.patches],
            "config_sha256": built.config_sha256}


def _kernel_record(ctx: BuildContext) -> dict:
    if ctx.kernel_package is not None:
        return _package_record(ctx.kernel_package, ctx.licenses)
    spec = ctx.board.kernel
    assert spec.image is not None
    record = {"vendor_image": str(spec.image), "sha256": hash_file(spec.image),
              **License(NOASSERTION, str(spec.image), "a vendor kernel image states no licence").to_dict()}
    if spec.modules_from is not None:
        record["modules_from"] = str(spec.modules_from)
        if spec.modules_from.is_file():
            record["modules_sha256"] = hash_file(spec.modules_from)
    return record


def _package_record(fetched: FetchedPackage, licenses: dict[str, License]) -> dict:
    p = fetched.package
    return {"name": p.name, "version": p.version, "arch": p.arch, "feed": p.feed, "purl": purl_of(p),
            # An APKINDEX lists no file hash (its C: identity was checked): hash the verified file.
            "sha256": p.sha256 or hash_file(fetched.path),
            "size": p.size, "url": p.url, **licenses[p.name].to_dict(), "depends": list(fetched.depends)}
