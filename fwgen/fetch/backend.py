"""The interface each package format implements, and the registry of formats by name.

A backend knows its repository layout, its signatures, its index and its archive format;
nothing outside `fwgen.fetch` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import UserError

if TYPE_CHECKING:
    from ..arch import Arch
    from ..board import Feed
    from ..progress import Progress
    from ..rootfs import Entry
    from .archive import UnpackBudget
    from .cache import Cache
    from .package import Package


class Backend(Protocol):
    """One package format (deb, apk, ipk)."""

    name: str  # the Feed.type that selects it
    neutral_arch: str  # the arch name of architecture-independent packages

    def arch_name(self, arch: Arch) -> str:
        """The format's name for `arch`; UserError when the format has no such port."""

    def load_index(self, feed: Feed, arch: Arch, cache: Cache, progress: Progress) -> list[Package]:
        """Fetch the feed's index for `arch`, verify its signature and hashes, parse it."""

    def compare_versions(self, a: str, b: str) -> int:
        """-1, 0, 1 as version a sorts before, equal to, after b."""

    def satisfies(self, version: str, op: str, wanted: str) -> bool:
        """Whether `version` satisfies the relation `op wanted`."""

    def recognizes(self, head: bytes) -> bool:
        """Whether a package file starting with `head` (at least 16 bytes) is this format."""

    def read_entries(self, path: Path, budget: UnpackBudget | None = None) -> Iterator[Entry]:
        """Every entry of the package's data, in archive order, paths normalized; what it
        unpacks to is charged to `budget` (the default package limit when None) as it is
        decompressed, refused with LimitError beyond it."""


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Make `backend` available for feeds of type `backend.name`."""
    _BACKENDS[backend.name] = backend
    return backend


def get_backend(type_name: str) -> Backend:
    """The backend for a feed type; UserError naming the known types otherwise."""
    _load_builtin_backends()
    try:
        return _BACKENDS[type_name]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS)) or "none"
        raise UserError(f"unknown feed type '{type_name}' (known: {known})") from None


def backend_for_file(path: Path) -> Backend:
    """The backend whose archive format `path` is, recognised by its first bytes."""
    _load_builtin_backends()
    with open(path, "rb") as f:
        head = f.read(64)
    for backend in _BACKENDS.values():
        if backend.recognizes(head):
            return backend
    from ..errors import FormatError

    raise FormatError(f"{path}: offset 0x0: not a package of any known format ({head[:8]!r})")


def _load_builtin_backends() -> None:
    # Importing a backend module registers it; new formats add one import here.
    from . import apk, deb, ipk  # noqa: F401
