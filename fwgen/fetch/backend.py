"""The base class each package format (deb, apk, ipk) extends, and file-head sniffing.

A backend knows its repository layout, its signatures, its index and its archive format;
nothing outside `fwgen.fetch` does. `Backend` declares every hook the pipeline calls, each
optional one with its default, so that what a format may do is read here and nowhere else.
This module imports no backend: the table of formats by name is `fetch.backends`.
"""

from __future__ import annotations

import io
import zlib
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..compression import GZIP
from ..errors import UserError

if TYPE_CHECKING:
    from ..arch import Arch
    from ..board import Feed
    from ..cache import Cache
    from ..progress import Progress
    from ..rootfs import Entry
    from .archive import UnpackBudget
    from .package import Package, PackageSource


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of verifying one package or index file (`fwgen verify FILE`)."""

    kind: str  # "apk", "APKINDEX", "ipk", "opkg Packages", "deb", "InRelease"
    ok: bool
    key: str | None  # the key that verified it (file name or key id), None when none applies
    detail: str  # one line: what was checked, or why it was refused

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        by = f" (key {self.key})" if self.key else ""
        return f"{self.kind}: {verdict}{by}: {self.detail}"


class Backend(ABC):
    """One package format (deb, apk, ipk): the abstract methods each format must have, the
    other hooks with the default that fits a format that lacks the feature."""

    name: str  # the Feed.type that selects it
    neutral_arch: str  # the arch name of architecture-independent packages
    purl: tuple[str, str]  # the package-URL type and namespace of its packages
    # A path template ("/usr/share/doc/{name}/copyright") for formats whose packages carry
    # their licence statement as a file; None where the index states the licence.
    license_file: str | None = None
    # Whether an unversioned provide is virtual, auto-selected only from a provider with a
    # provider priority (Alpine); dpkg and opkg pick any provider.
    bare_provides_need_priority: bool = False

    @abstractmethod
    def arch_name(self, arch: Arch) -> str:
        """The format's name for `arch`; UserError when the format has no such port."""

    @abstractmethod
    def load_index(self, feed: Feed, arch: Arch, cache: Cache, progress: Progress) -> Sequence[Package] | PackageSource:
        """Fetch the feed's index for `arch`, verify its signature and hashes, parse it (or
        return it as a PackageSource that parses only the packages looked up)."""

    @abstractmethod
    def compare_versions(self, a: str, b: str) -> int:
        """-1, 0, 1 as version a sorts before, equal to, after b."""

    @abstractmethod
    def satisfies(self, version: str, op: str, wanted: str) -> bool:
        """Whether `version` satisfies the relation `op wanted`."""

    @abstractmethod
    def recognizes(self, head: FileHead) -> bool:
        """Whether a package file whose first bytes are `head` is this format."""

    @abstractmethod
    def read_entries(self, path: Path, budget: UnpackBudget | None = None) -> Iterator[Entry]:
        """Every entry of the package's data, in archive order, paths normalized; what it
        unpacks to is charged to `budget` (the default package limit when None) as it is
        decompressed, refused with LimitError beyond it."""

    @abstractmethod
    def read_control_files(self, path: Path) -> dict[str, bytes]:
        """The files of the package's control part (metadata and maintainer scripts) by name,
        without a leading "./" or "/"."""

    def read_package(self, path: Path, *, feed: str, base_url: str, filename: str) -> Package:
        """The package a file describes by its own control data, for files no index lists
        (a board's `package_files`). By default the format takes packages from feeds only."""
        raise UserError(f"fwgen takes {self.name} packages from feeds only")

    def fetch_package(self, package: Package, cache: Cache, progress: Progress) -> Path:
        """Download `package` into the cache, verified; by default against the size and
        SHA-256 its index gave (a format whose index has none verifies its own way)."""
        return cache.fetch(package.url, sha256=package.sha256, size=package.size, progress=progress)

    def prepare_package(self, path: Path) -> None:
        """Work that extracting the package downloaded to `path` (in the cache) will need,
        done ahead by its download thread while other packages download; by default none."""
        return None

    def install_if_additions(self, candidates: Collection[Package], chosen: Sequence[Package]) -> list[Package]:
        """The `candidates` whose install_if conditions `chosen` meets (Alpine's); by
        default none: the format has no such field."""
        return []

    def identify(self, path: Path, head: FileHead) -> str | None:
        """The kind of this format's file `path` is ("deb", or an index kind such as
        "InRelease"), or None when it is none of this format's files. By default a package
        file recognised by its head, named as the format."""
        return self.name if self.recognizes(head) else None

    def verify_file(self, path: Path, kind: str, keys_dirs: Sequence[Path]) -> VerifyReport:
        """Verify one file of this format that `identify` named `kind`, with the keys in
        `keys_dirs` (else the keys fwgen ships); IntegrityError or FormatError, one line
        naming the file, when it does not. By default a package file is read whole, its
        control part and every data entry (their compression's checksums checked): a format
        that signs its index and not its packages can vouch for no more on its own."""
        control = self.read_control_files(path)
        entries = sum(1 for _ in self.read_entries(path))
        return VerifyReport(kind, True, None, f"structure ok ({len(control)} control files, {entries} entries); "
                                              "the signature lives in the feed's index")


HEAD_BYTES = 4096  # of the file itself
INFLATED_BYTES = 512  # of a gzip file's decompressed stream: one whole tar header
MAX_HEAD_INPUT = 1 << 16  # compressed bytes read at most to inflate that much


@dataclass(frozen=True)
class FileHead:
    """What format sniffing looks at: a file's first bytes and, when the file is gzip, the
    first bytes of its decompressed stream.

    The formats inside gzip (an OpenWrt .ipk's tar, an .apk's signature tar) show only in the
    first tar header, 512 bytes of output. How much input those take depends on the deflate
    blocks: the first 64 bytes of a real OpenWrt .ipk (gzip -6, a dynamic Huffman block)
    decompress to nothing at all, so input is read until the output is there.
    """

    raw: bytes
    inflated: bytes = b""


def read_head(path: Path) -> FileHead:
    """The FileHead of the file at `path`: every format check reads its file through this."""
    with open(path, "rb") as f:
        raw = f.read(HEAD_BYTES)
        inflated = _inflate_head(raw, f) if GZIP.matches(raw) else b""
    return FileHead(raw, inflated)


def head_of(blob: bytes) -> FileHead:
    """The FileHead of a file already in memory."""
    raw = blob[:HEAD_BYTES]
    inflated = _inflate_head(raw, io.BytesIO(blob[HEAD_BYTES:])) if GZIP.matches(raw) else b""
    return FileHead(raw, inflated)


def _inflate_head(raw: bytes, rest: BinaryIO) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out, pending, read = b"", raw, len(raw)
    try:
        while len(out) < INFLATED_BYTES:
            # max_length keeps a decompression bomb from growing the output past one header.
            out += inflater.decompress(pending, INFLATED_BYTES - len(out))
            pending = inflater.unconsumed_tail
            if inflater.eof:
                break
            if not pending:
                if read >= MAX_HEAD_INPUT:
                    break
                pending = rest.read(HEAD_BYTES)
                read += len(pending)
                if not pending:
                    break
    except zlib.error:
        pass  # a damaged stream: sniff what came out before the damage
    return out


def feed_arch(backend: Backend, feed: Feed, arch: Arch) -> str:
    """The feed's name for `arch`: its own `arch` setting, else the format's usual name."""
    return feed.arch or backend.arch_name(arch)
