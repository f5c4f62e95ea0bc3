"""The package formats by name (a feed's `type`), and which format a file is by its bytes.

The one table of the formats fwgen has. Each backend module imports only the base class
(`fetch.backend`), never this table, so the formats and their registry form no cycle. A
format's module is imported the first time the format is asked for: a Debian board's build
does not load the apk and ipk code (nor what they import).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import FormatError, UserError
from .backend import Backend, FileHead, read_head


def _deb() -> Backend:
    from .deb import DebBackend  # on first use: see the module docstring

    return DebBackend()


def _apk() -> Backend:
    from .apk import ApkBackend

    return ApkBackend()


def _ipk() -> Backend:
    from .ipk import IpkBackend

    return IpkBackend()


# In sniffing order: an ar-style .ipk has a .deb's bytes and is sniffed as a .deb.
_BUILTIN: dict[str, Callable[[], Backend]] = {"deb": _deb, "apk": _apk, "ipk": _ipk}
_LOADED: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Make `backend` available for feeds of type `backend.name` (in place of a built-in one
    of that name)."""
    _LOADED[backend.name] = backend
    return backend


def get_backend(type_name: str) -> Backend:
    """The backend for a feed type; UserError naming the known types otherwise."""
    if type_name not in _LOADED and type_name in _BUILTIN:
        register_backend(_BUILTIN[type_name]())
    try:
        return _LOADED[type_name]
    except KeyError:
        known = ", ".join(sorted({*_BUILTIN, *_LOADED}))
        raise UserError(f"unknown feed type '{type_name}' (known: {known})") from None


def all_backends() -> list[Backend]:
    """Every format, built-in ones first in sniffing order."""
    return [get_backend(name) for name in dict.fromkeys([*_BUILTIN, *_LOADED])]


def backend_for_head(head: FileHead) -> Backend | None:
    """The backend whose archive format a file with this head is, or None."""
    return next((b for b in all_backends() if b.recognizes(head)), None)


def backend_for_file(path: Path) -> Backend:
    """The backend whose archive format `path` is, recognised by its first bytes."""
    head = read_head(path)
    backend = backend_for_head(head)
    if backend is None:
        raise FormatError(f"{path}: offset 0x0: not a package of any known format ({head.raw[:8]!r})")
    return backend


def identify_file(path: Path) -> tuple[Backend, str]:
    """The format of a package or index file and the kind of file it is ("deb", "InRelease",
    "APKINDEX" ...), asking each format in sniffing order (`Backend.identify`)."""
    head = read_head(path)
    for backend in all_backends():
        kind = backend.identify(path, head)
        if kind is not None:
            return backend, kind
    raise FormatError(f"{path}: offset 0x0: not a package or index fwgen knows ({head.raw[:8]!r})")
