"""Signed checksums of a build: `SHA256SUMS` over every file of the build folder (images,
manifest.json, SBOMs, the update bundle) and `SHA256SUMS.sig`, so a customer checks a
download with standard tools:

    signify-openbsd -C -p fwgen.pub -x SHA256SUMS.sig     # OpenBSD signify: signature, then every file
    sha256sum -c SHA256SUMS                               # coreutils reads the same lines

The lines are BSD-tagged (`SHA256 (kernel) = 0c10...`), the one form `signify -C` reads and
`sha256sum -c` reads too, sorted by file name. The signature file is the usign/signify
signature followed by the signed `SHA256SUMS` itself (signify's embedded form, as OpenBSD's
own SHA256.sig), which `signify -C` needs; `signify -V -e` and fwgen verify it too.
"""

from __future__ import annotations

from pathlib import Path

from .errors import FormatError
from .files import hash_file
from .publish import write_file
from .usign import UsignKey, UsignSecretKey, parse_signature, verify

SUMS_FILE = "SHA256SUMS"
SIGNATURE_FILE = "SHA256SUMS.sig"


def summed_files(folder: Path) -> list[Path]:
    """The files a build's sums cover: every regular file at the top of the folder, but the
    sums themselves."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.is_symlink()
                   and p.name not in (SUMS_FILE, SIGNATURE_FILE)), key=lambda p: p.name)


def format_sums(files: list[Path]) -> bytes:
    return "".join(f"SHA256 ({p.name}) = {hash_file(p)}\n" for p in files).encode()


def write_signed_sums(folder: Path, key: UsignSecretKey) -> tuple[Path, Path]:
    """Write SHA256SUMS and SHA256SUMS.sig into `folder`, each atomically."""
    sums = format_sums(summed_files(folder))
    write_file(folder / SUMS_FILE, sums)
    write_file(folder / SIGNATURE_FILE, key.sign(sums).encode() + sums)
    return folder / SUMS_FILE, folder / SIGNATURE_FILE


def verify_signed_sums(folder: Path, keys: dict[str, UsignKey]) -> list[str]:
    """Check SHA256SUMS.sig with `keys` and every file it lists; the names checked. A bad
    signature, a missing file or a wrong hash raises, naming it."""
    signed = (folder / SIGNATURE_FILE).read_bytes()
    head, sums = _split_embedded(signed, folder / SIGNATURE_FILE)
    verify(sums, parse_signature(head, str(folder / SIGNATURE_FILE)), keys, str(folder / SIGNATURE_FILE))
    names = []
    for number, line in enumerate(sums.decode().splitlines(), 1):
        name, _, digest = line.removeprefix("SHA256 (").rpartition(") = ")
        if not name or not line.startswith("SHA256 ("):
            raise FormatError(f"{folder / SIGNATURE_FILE}: line {number + 2}: not 'SHA256 (file) = hash'")
        path = folder / name
        if not path.is_file():
            raise FormatError(f"{path}: listed in {SUMS_FILE} but missing")
        if hash_file(path) != digest:
            raise FormatError(f"{path}: SHA-256 differs from {SUMS_FILE}'s")
        names.append(name)
    return names


def _split_embedded(signed: bytes, where: Path) -> tuple[bytes, bytes]:
    """The signature's two lines and the message after them."""
    lines = signed.split(b"\n", 2)
    if len(lines) < 3:
        raise FormatError(f"{where}: not a signature followed by its message")
    return b"\n".join(lines[:2]) + b"\n", lines[2]
