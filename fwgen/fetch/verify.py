"""`fwgen verify FILE`: say what a package or index file is, whether it verifies, and with which key.

Covers Alpine .apk and APKINDEX.tar.gz (RSA), OpenWrt .ipk and Packages + Packages.sig
(usign), Debian .deb and InRelease (OpenPGP). Keys come from `keys_dirs`; without them, the
keys fwgen ships (Alpine's, Debian's). Each format says which of its files a file is
(`Backend.identify`) and verifies it (`Backend.verify_file`); this module only asks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import FormatError, IntegrityError
from .backend import VerifyReport
from .backends import identify_file

__all__ = ["VerifyReport", "identify", "verify_file"]


def verify_file(path: Path, keys_dirs: Sequence[Path] = ()) -> VerifyReport:
    """Identify `path` and verify it with the keys in `keys_dirs` (else fwgen's own keys)."""
    path = Path(path)
    backend, kind = identify_file(path)
    try:
        return backend.verify_file(path, kind, tuple(Path(d) for d in keys_dirs))
    except (IntegrityError, FormatError) as e:
        return VerifyReport(kind, False, None, e.message)


def identify(path: Path) -> str:
    """The kind of package or index file `path` is, from its name and first bytes (sniffed
    as the build sniffs package files: `backend.read_head`)."""
    return identify_file(Path(path))[1]
