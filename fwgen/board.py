"""What a board is, once its file and its overlays' files have been loaded and validated:
frozen dataclasses.

Nothing downstream of `fwgen.config` reads YAML or looks for overlay folders; it reads these.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .arch import Arch
from .document import Positions
from .dtb import Fixup
from .errors import ConfigError


@dataclass(frozen=True)
class Feed:
    """A package repository. `type` names the backend: deb (Debian), apk (Alpine), ipk (OpenWrt)."""

    name: str
    type: str
    url: str
    suite: str = "bookworm"
    components: tuple[str, ...] = ("main",)
    keys: tuple[Path, ...] = ()  # extra trusted keys; empty = the keys fwgen ships for the type
    where: str = field(default="", compare=False)  # "boards/x.yaml:8:5", for errors only
    arch: str | None = None  # the feed's package arch name; None: the type's name for the board's arch
    device_url: str | None = None  # where the device reaches the feed (/etc/apk/repositories); None: url
    fallback: tuple[str, ...] = ()  # mirrors of the same layout for locked packages the url dropped


@dataclass(frozen=True)
class PackageFile:
    """A package file the board brings itself (OpenWrt's libc, which no feed index lists),
    pinned by the SHA-256 its bytes must have before anything reads them."""

    path: Path
    sha256: str
    where: str  # "boards/x.yaml:12:11: package_files[0]", for errors


@dataclass(frozen=True)
class KernelSpec:
    package: str | None  # a kernel package (metapackages are followed to the image package)
    cmdline: str = ""
    modules: tuple[str, ...] = ()  # modules needed at boot, by name; dependencies are added
    image: Path | None = None  # a vendor kernel image file instead of a package
    modules_from: Path | None = None  # a vendor modules folder or tarball


@dataclass(frozen=True)
class BusyboxSpec:
    """fwgen builds a static musl BusyBox from pinned source unless `package` names one to take
    from the feeds instead (Debian's glibc-static `busybox-static`, say)."""

    package: str | None = None
    version: str | None = None  # None: fwgen's pinned default release
    sha256: str | None = None  # of the source tarball; required with `version`
    urls: tuple[str, ...] = ()  # mirrors tried in order; empty: the default release's mirrors
    config: tuple[Path, ...] = ()  # Kconfig fragments applied after defconfig, in order


@dataclass(frozen=True)
class DiskSpec:
    """The `disk` output: a partition table with the squashfs root (1) and data (2)."""

    device: str = "/dev/vda"  # the whole disk as the board's kernel names it
    data_size: int = 32  # MiB; 0: no data partition, the overlay lives in RAM
    root_slack: int = 0  # free MiB after the squashfs in the root partition

    def partition(self, number: int) -> str:
        """The device of partition `number`: /dev/vda1, or /dev/mmcblk0p1 after a digit."""
        separator = "p" if self.device[-1].isdigit() else ""
        return f"{self.device}{separator}{number}"


# What a board's U-Boot console commands may use (uboot.commands), filled in by the build.
CONSOLE_PLACEHOLDERS = {
    "file": "the uImage's file name, as the TFTP server serves it",
    "address": "where the uImage is loaded: uboot.fit_address moved up so the initramfs inside is page-aligned",
    "bootargs": "the kernel command line (kernel.cmdline and rdinit=/init)",
    "initrd_start": "the initramfs's address inside the loaded uImage (for rd_start=)",
    "initrd_size": "the initramfs's size in bytes (for rd_size=)",
}


@dataclass(frozen=True)
class UbootSpec:
    """The `fit` output: U-Boot from a package, and where its boot script puts the images."""

    package: str = "u-boot-qemu"
    binary: str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"
    device: str = "virtio 0:1"  # U-Boot's name of the boot partition
    signing_key: Path | None = None  # PEM RSA key signing the FIT's configurations, never copied into an image
    fit_address: int = 0x50000000  # away from every load address (gzip inflates in place)
    kernel_load: int = 0x40400000
    ramdisk_load: int = 0x48000000
    compression: str = "gzip"
    boot_size: int = 64  # MiB of the FAT32 boot partition
    prompt: str | None = None  # U-Boot's prompt, where `fwgen boot` types `commands`
    commands: tuple[str, ...] = ()  # typed at the prompt over the serial console, with fwgen's placeholders


@dataclass(frozen=True)
class UpdateSpec:
    """Firmware updates (the board's `update:`): how many slots, which keys the device trusts
    for bundles, which hardware a bundle must name, and what makes a trial boot good."""

    slots: str = "ab"  # "ab" or "single"
    keys: tuple[Path, ...] = ()  # usign/signify public keys, absolute
    compatible: tuple[str, ...] = ()  # never empty once loaded: the board's name by default
    trials: int = 3
    health: str | None = None  # None: every service of the board running
    health_timeout: int = 60  # seconds a trial boot has to pass the health check before it reboots
    fit_size: int | None = None  # MiB of each FIT slot; None: this build's FIT plus disk.root_slack
    root_size: int | None = None  # MiB of each root slot; None: this build's squashfs plus disk.root_slack


@dataclass(frozen=True)
class FlashPartition:
    """One partition of a router's flash. `content` says what the build puts there:
    bootloader (the U-Boot binary of `uboot`), environment (a U-Boot environment blob of
    `flash.environment`), firmware (the uImage kernel, the squashfs root and the space left
    for the overlay) or erased (left 0xFF: calibration data such as `art` is the device's own)."""

    name: str
    offset: int
    size: int
    content: str = "erased"

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class FlashSpec:
    """The `flash` output: the whole flash image and its firmware partition alone."""

    size: int
    erase_block: int
    partitions: tuple[FlashPartition, ...]
    environment: dict[str, str] = field(default_factory=dict)
    swap_words_below: int = 0  # Malta: 32-bit words byte-swapped below this offset (bi-endian wiring)

    @property
    def firmware(self) -> FlashPartition:
        return next(p for p in self.partitions if p.content == "firmware")


@dataclass(frozen=True)
class SdcardSpec:
    """The `sdcard` output (Raspberry Pi): FAT32 boot partition, then root and data from `disk`."""

    boot_size: int = 64  # MiB
    firmware_dir: str = "/usr/lib/raspi-firmware"  # moved out of the root into the boot partition
    firmware: tuple[str, ...] = ("bootcode.bin", "start.elf", "fixup.dat")
    dtb: str | None = None  # file name in the kernel package
    config: str = ""  # extra config.txt lines


@dataclass(frozen=True)
class Limits:
    """Bounds on what packages unpack to, in MiB (the decompressed bytes of their data
    archives): a package beyond either is refused, naming it. The loader fills in the image
    bound's default (the guest RAM of a board whose root is its initramfs). `ram`: the RAM
    budget the board declares, which its QEMU guest boots with."""

    package_size: int = 1024
    image_size: int = 2048
    ram: int | None = None  # MiB the device has; the QEMU guest gets as much (qemu.memory)


@dataclass(frozen=True)
class Policy:
    """What packages may bring into the image (fwgen.policy): each kind is "allow", "warn"
    or "refuse". The schema holds the defaults, the setuid allow list's among them."""

    device_nodes: str = "refuse"
    setuid: str = "warn"  # setuid or setgid files outside setuid_allowed
    setuid_allowed: tuple[str, ...] = ()  # shell patterns of paths
    world_writable: str = "warn"


@dataclass(frozen=True)
class QemuProfile:
    """A QEMU machine from qemu/*.yaml."""

    name: str
    arch: Arch
    binary: str
    machine: str
    console: str
    memory: int
    cpu: str | None = None
    fixed_memory: bool = False  # the machine takes only `memory` (-m); less is mem= on the kernel command line
    disk: str | None = None
    nic: str | None = None
    args: tuple[str, ...] = ()
    firmware: tuple[str, ...] = ()  # files QEMU loads from its search path (-L): BIOS, option ROMs
    bios_size: int = 0  # bytes of boot flash -bios fills; a board's larger flash image is cut to it
    source: Path | None = None
    dtb_fixups: tuple[Fixup, ...] = ()  # applied to a copy of the board's DTB, for emulation only


@dataclass(frozen=True)
class QemuSpec:
    profile: QemuProfile
    memory: int | None = None  # overrides the profile's
    forward: tuple[int, ...] = ()  # guest TCP ports forwarded to free ports on 127.0.0.1
    timeout: float = 120.0  # seconds to the ready line, before the timeout multiplier


@dataclass(frozen=True)
class Check:
    """One check `fwgen boot` runs once the guest is ready.

    kind "run": run `command` on the serial console; compare exit status `exit`,
      and the output with `expect` (exact, stripped) and/or `contains`.
    kind "http": GET `path` from the host through the forwarded guest `port`;
      compare `status` and `contains`.
    kind "console": wait for a line containing `contains` on the console.
    kind "tcp": connect to the forwarded guest `port`; the first line must start with `banner`.
    kind "service": kill `service`'s process; a new one must run within `timeout` seconds.
    kind "persist": write a token to `path`, reboot, and find it there again.
    """

    kind: str
    name: str
    command: str | None = None
    path: str | None = None
    port: int | None = None
    expect: str | None = None
    contains: str | None = None
    status: int = 200
    exit: int = 0
    timeout: float = 30.0
    service: str | None = None
    banner: str | None = None


@dataclass(frozen=True)
class Variable:
    """A variable an overlay declares for its templates, service commands, keys and checks."""

    default: str | int | float | bool | tuple[str, ...] | None = None  # None: the board must set it
    description: str = ""


@dataclass(frozen=True)
class FileRule:
    """What overlay.yaml says of one image path: owner and mode a git checkout cannot carry,
    and whether it replaces an earlier overlay's file."""

    mode: int | None = None
    owner: str | None = None  # a user, by name
    group: str | None = None
    replaces: bool = False


@dataclass(frozen=True)
class User:
    """A user as one overlay declares it; None is a setting it leaves to an earlier overlay
    or to the defaults (a later overlay may add settings, never change them)."""

    uid: int | None = None
    group: str | None = None
    groups: tuple[str, ...] | None = None
    home: str | None = None
    shell: str | None = None
    gecos: str | None = None
    password_hash: str | None = None
    authorized_keys: str | None = None  # may use variables, rendered when the image is planned
    authorized_keys_file: str | None = None  # relative to the overlay folder

    def declared(self) -> dict[str, Any]:
        """The settings the overlay gave, by their overlay.yaml key."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Service:
    """A supervised daemon: `command` runs in the foreground, after `setup`, as `user`."""

    command: str  # may use variables, rendered when the image is planned
    setup: str | None = None
    user: str = "root"
    depends: tuple[str, ...] = ()  # services started first
    description: str = ""


@dataclass(frozen=True)
class Build:
    """A program an overlay compiles for the board's architecture (fwgen.compile)."""

    name: str
    overlay: str  # the overlay's name, for messages and provenance
    keypath: tuple  # ("builds", name) in overlay.yaml, for errors with a position
    folder: Path | None = None  # the source folder inside the overlay; or a tarball:
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    patches: tuple[Path, ...] = ()
    system: str = "make"  # make, configure, cmake or cc
    configure_args: tuple[str, ...] = ()
    make_args: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # system cc: the C files
    program: str | None = None  # system cc: the program it links
    static: bool = True
    install: dict[str, str] = field(default_factory=dict)  # image path -> file in the source tree
    links: dict[str, str] = field(default_factory=dict)  # image path -> symlink target

    @property
    def filename(self) -> str:
        """The tarball's name (the last part of its first URL)."""
        return self.urls[0].rsplit("/", 1)[-1] if self.urls else self.name


@dataclass(frozen=True)
class Overlay:
    """One overlay of a board, loaded once with the board (fwgen.config.load_board): its
    overlay.yaml validated (defaults applied), its checks rendered with the board's variables
    and every port they reach forwarded by the board."""

    name: str
    path: Path  # the folder, holding overlay.yaml and files/
    positions: Positions  # of overlay.yaml, for errors found when the image is planned
    description: str = ""
    depends: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    variables: dict[str, Variable] = field(default_factory=dict)
    files: dict[str, FileRule] = field(default_factory=dict)  # image path -> rule
    users: dict[str, User] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)  # name -> gid
    services: dict[str, Service] = field(default_factory=dict)
    sysctl: dict[str, str] = field(default_factory=dict)  # key -> value, as text
    modules: tuple[str, ...] = ()
    busybox_config: tuple[Path, ...] = ()  # Kconfig fragments the overlay's services need
    builds: tuple[Build, ...] = ()  # programs compiled for the board (fwgen.compile)
    checks: tuple[Check, ...] = ()  # rendered, run after the board's own

    @property
    def meta_file(self) -> str:
        return str(self.positions.file)

    def error(self, keypath: tuple, message: str, hint: str | None = None, *, at_key: bool = False) -> ConfigError:
        return self.positions.error(keypath, message, hint, at_key=at_key)


@dataclass(frozen=True)
class Board:
    name: str
    arch: Arch
    source: Path  # the board file
    description: str = ""
    hostname: str = "fwgen"
    feeds: tuple[Feed, ...] = ()
    kernel: KernelSpec = field(default_factory=lambda: KernelSpec(package=None))
    busybox: BusyboxSpec = field(default_factory=BusyboxSpec)
    packages: tuple[str, ...] = ()  # installed with their dependencies
    package_feeds: dict[str, str] = field(default_factory=dict)  # package -> the feed it is pinned to
    package_versions: dict[str, str] = field(default_factory=dict)  # package -> the exact version pinned
    exclude: tuple[str, ...] = ()  # never installed, even when something depends on them
    nodeps: tuple[str, ...] = ()  # installed without following their dependencies
    skip_package_scripts: dict[str, str] = field(default_factory=dict)  # package -> why its scripts are not run
    package_files: tuple[PackageFile, ...] = ()  # resolved as if the feeds of their format listed them
    provides: dict[str, str | None] = field(default_factory=dict)  # name -> version the board supplies itself
    exclude_paths: tuple[str, ...] = ()  # package files left out of the image (schema has the defaults)
    overlays: tuple[Overlay, ...] = ()  # in application order, dependencies first
    variables: dict[str, str] = field(default_factory=dict)  # the board's overrides, as text
    values: dict[str, str] = field(default_factory=dict)  # every template variable, resolved
    outputs: tuple[str, ...] = ("initramfs",)
    disk: DiskSpec = field(default_factory=DiskSpec)
    sdcard: SdcardSpec = field(default_factory=SdcardSpec)
    uboot: UbootSpec = field(default_factory=UbootSpec)
    flash: FlashSpec | None = None
    version: str = "0"  # the firmware version
    update: UpdateSpec | None = None  # None: the board has no updates
    qemu: QemuSpec | None = None
    checks: tuple[Check, ...] = ()
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)
    inherits: tuple[Path, ...] = ()  # the board files it extends, nearest first

    @property
    def all_checks(self) -> tuple[Check, ...]:
        """What `fwgen boot` runs: the board's own checks, then its overlays' in layer order."""
        return (*self.checks, *(check for overlay in self.overlays for check in overlay.checks))
