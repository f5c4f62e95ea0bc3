"""The interface each package format implements, and the registry of formats by name.

A backend knows its repository layout, its signatures, its index and its archive format;
nothing outside `fwgen.fetch` does.
"""

from __future__ import annotations

import importlib
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ..compression import GZIP
from ..errors import FormatError, UserError

if TYPE_CHECKING:
    from ..arch import Arch
    from ..board import Feed
    from ..cache import Cache
    from ..progress import Progress
    from ..rootfs import Entry
    from .archive import UnpackBudget
    from .package import Package, PackageSource


class Backend(Protocol):
    """One package format (deb, apk, ipk)."""

    name: str  # the Feed.type that selects it
    neutral_arch: str  # the arch name of architecture-independent packages
    purl: tuple[str, str]  # the package-URL type and namespace of its packages

    def arch_name(self, arch: Arch) -> str:
        """The format's name for `arch`; UserError when the format has no such port."""

    def load_index(self, feed: Feed, arch: Arch, cache: Cache, progress: Progress) -> list[Package] | PackageSource:
        """Fetch the feed's index for `arch`, verify its signature and hashes, parse it (or
        return it as a PackageSource that parses only the packages looked up)."""

    def compare_versions(self, a: str, b: str) -> int:
        """-1, 0, 1 as version a sorts before, equal to, after b."""

    def satisfies(self, version: str, op: str, wanted: str) -> bool:
        """Whether `version` satisfies the relation `op wanted`."""

    def recognizes(self, head: FileHead) -> bool:
        """Whether a package file whose first bytes are `head` is this format."""

    def read_entries(self, path: Path, budget: UnpackBudget | None = None) -> Iterator[Entry]:
        """Every entry of the package's data, in archive order, paths normalized; what it
        unpacks to is charged to `budget` (the default package limit when None) as it is
        decompressed, refused with LimitError beyond it."""

    def read_control_files(self, path: Path) -> dict[str, bytes]:
        """The files of the package's control part (metadata and maintainer scripts) by name,
        without a leading "./" or "/"."""

    # Optional: read_package(path, *, feed, base_url, filename) -> Package, the package a
    # file describes by its own control data, for files no index lists (`package_files`).
    # Optional: license_file, a path template ("/usr/share/doc/{name}/copyright") for formats
    # whose packages carry their licence statement as a file rather than in the index.


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


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Make `backend` available for feeds of type `backend.name`."""
    _BACKENDS[backend.name] = backend
    return backend


def get_backend(type_name: str) -> Backend:
    """The backend for a feed type; UserError naming the known types otherwise."""
    if type_name in _BUILTIN_BACKENDS and type_name not in _BACKENDS:
        # Only the format asked for: a Debian board's build need not import apk and ipk.
        importlib.import_module(f".{type_name}", __package__)
    if type_name not in _BACKENDS:
        _load_builtin_backends()
    try:
        return _BACKENDS[type_name]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS)) or "none"
        raise UserError(f"unknown feed type '{type_name}' (known: {known})") from None


def feed_arch(backend: Backend, feed: Feed, arch: Arch) -> str:
    """The feed's name for `arch`: its own `arch` setting, else the format's usual name."""
    return feed.arch or backend.arch_name(arch)


def backend_for_head(head: FileHead) -> Backend | None:
    """The backend whose archive format a file with this head is, or None."""
    _load_builtin_backends()
    return next((b for b in _BACKENDS.values() if b.recognizes(head)), None)


def backend_for_file(path: Path) -> Backend:
    """The backend whose archive format `path` is, recognised by its first bytes."""
    head = read_head(path)
    backend = backend_for_head(head)
    if backend is None:
        raise FormatError(f"{path}: offset 0x0: not a package of any known format ({head.raw[:8]!r})")
    return backend


_BUILTIN_BACKENDS = ("deb", "apk", "ipk")  # modules of this package, named as their formats


def _load_builtin_backends() -> None:
    # Importing a backend module registers it; new formats add one import here.
    from . import apk, deb, ipk  # noqa: F401
