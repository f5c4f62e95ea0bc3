"""The build's context: one object the pipeline's steps (build.py) fill in and the output
writers (outputs.py, bootloader.py) read, as mkosi's steps share its `Context`.

It lives below build.py so that the writers can take it without importing the pipeline that
calls them (build -> outputs -> build would be a cycle). It holds data only: no step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .board import Board
from .busybox import BusyboxSource
from .cache import Cache
from .compile import BuiltFiles
from .fetch import FetchedPackage, Resolution
from .kernel import Kernel, Module
from .licenses import License
from .lock import Lock
from .overlay import Layers
from .policy import SpecialFile
from .progress import QUIET, Progress
from .rootfs import Entry, RootFS
from .scripts import ScriptDecision
from .usign import UsignSecretKey


@dataclass(frozen=True)
class BuiltBusybox:
    version: str
    binary: bytes
    cache_key: str  # what identifies the build: source, patches, config, target, toolchain
    source: BusyboxSource
    patches: tuple[Path, ...]
    config_sha256: str  # of the .config it was built with


@dataclass(frozen=True)
class BoardResolution:
    """The board's packages and kernel resolved over its feeds, once per build: the
    up-to-date check digests it (rebuild.py), the fetch steps download it, so the feeds'
    indexes are read and resolved once."""

    packages: Resolution  # what the board asks for, with dependencies, in install order
    kernel: tuple[Resolution, ...] = ()  # the kernel package alone, then each linux-image package it leads to


@dataclass
class BuildContext:
    board: Board
    outdir: Path
    cache: Cache
    progress: Progress = QUIET
    source_date_epoch: int | None = None
    compression: str = "gzip"
    rootfs: RootFS = field(default_factory=RootFS)
    packages: list[FetchedPackage] = field(default_factory=list)
    kernel_package: FetchedPackage | None = None
    kernel: Kernel | None = None
    kernel_entries: list[Entry] = field(default_factory=list)  # the kernel's files (DTBs)
    boot_firmware: dict[str, bytes] = field(default_factory=dict)  # for the SD card's boot partition
    modules: list[Module] = field(default_factory=list)
    layers: Layers = field(default_factory=Layers)
    busybox: BuiltBusybox | None = None
    built: list[BuiltFiles] = field(default_factory=list)  # the overlays' builds, in order
    elf_libc: dict[str, int] = field(default_factory=dict)  # libc (musl, glibc, none) -> ELF files using it
    pruned: dict[str, int] = field(default_factory=dict)  # exclude_paths pattern -> paths removed
    special_files: list[SpecialFile] = field(default_factory=list)  # device nodes, setuid, world-writable
    policy: dict[tuple[str, str], str] = field(default_factory=dict)  # (path, kind) -> what the policy said
    staging: Path | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    bootloader: dict | None = None  # the U-Boot package and binary of a board booted through U-Boot
    lock: Lock | None = None  # build exactly these inputs (fwgen build --locked)
    flash: dict | None = None  # the flash layout as written, for the manifest and fwgen inspect
    epoch_from: str = "SOURCE_DATE_EPOCH"  # what chose the timestamps: the environment or the newest input
    signing_key: UsignSecretKey | None = None  # signs the update bundle; never written anywhere
    package_scripts: list[ScriptDecision] = field(default_factory=list)  # what became of each package script
    licenses: dict[str, License] = field(default_factory=dict)  # package name -> what it states
    resolved: BoardResolution | None = None  # set by build.resolve_board, before anything is fetched

    @property
    def epoch(self) -> int:
        assert self.source_date_epoch is not None, "epoch is known once packages are fetched"
        return self.source_date_epoch

