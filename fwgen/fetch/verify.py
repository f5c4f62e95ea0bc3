"""`fwgen verify FILE`: say what a package or index file is, whether it verifies, and with which key.

Covers Alpine .apk and APKINDEX.tar.gz (RSA), OpenWrt .ipk and Packages + Packages.sig
(usign), Debian .deb and InRelease (OpenPGP). Keys come from `keys_dirs`; without them, the
keys fwgen ships (Alpine's, Debian's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import usign
from ..errors import FormatError, IntegrityError
from . import apk, ipk
from .archive import list_ar_members
from .backend import backend_for_head, head_of, read_head


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `verify_file`."""

    kind: str  # "apk", "APKINDEX", "ipk", "opkg Packages", "deb", "InRelease"
    ok: bool
    key: str | None  # the key that verified it (file name or key id), None when none applies
    detail: str  # one line: what was checked, or why it was refused

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        by = f" (key {self.key})" if self.key else ""
        return f"{self.kind}: {verdict}{by}: {self.detail}"


def verify_file(path: Path, keys_dirs: list[Path] | tuple[Path, ...] = ()) -> VerifyReport:
    """Identify `path` and verify it with the keys in `keys_dirs` (else fwgen's own keys)."""
    path = Path(path)
    kind = identify(path)
    check = _CHECKS[kind]
    try:
        return check(path, tuple(Path(d) for d in keys_dirs))
    except (IntegrityError, FormatError) as e:
        return VerifyReport(kind, False, None, e.message)


def identify(path: Path) -> str:
    """The kind of package or index file `path` is, from its name and first bytes (sniffed
    as the build sniffs package files: `backend.read_head`)."""
    if path.name in ("Packages", "Packages.gz", "Packages.sig"):
        return "opkg Packages"
    if "APKINDEX" in path.name and path.name.endswith(".tar.gz"):
        return "APKINDEX"  # by name too: a damaged one must still fail as a signature
    head = read_head(path)
    if head.raw.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
        return "InRelease"
    backend = backend_for_head(head)
    if backend is None:
        raise FormatError(f"{path}: offset 0x0: not a package or index fwgen knows ({head.raw[:8]!r})")
    if backend.name == "deb" and path.suffix == ".ipk":
        return "ipk"  # the older ar-style .ipk has a .deb's container
    if backend.name == "apk" and _holds_apkindex(path):
        return "APKINDEX"
    return backend.name


def _holds_apkindex(path: Path) -> bool:
    """An index's signed tar starts with DESCRIPTION or APKINDEX, a package's with .PKGINFO;
    only the head of it is inflated."""
    blob = path.read_bytes()
    try:
        _, signed_from = apk.read_signature_stream(blob, str(path))
    except (IntegrityError, FormatError):
        return False  # read_apk says what is wrong with it
    return head_of(blob[signed_from:]).inflated[:100].rstrip(b"\0") in (b"DESCRIPTION", b"APKINDEX")


def _rsa_keys(keys_dirs: tuple[Path, ...]) -> dict[str, apk.RsaKey]:
    return apk.load_rsa_keys(keys_dirs or (apk.SHIPPED_KEYS,))


def _check_apk(path: Path, keys_dirs: tuple[Path, ...]) -> VerifyReport:
    package = apk.read_apk(path.read_bytes(), _rsa_keys(keys_dirs), str(path))
    datahash = "datahash" if "datahash" in package.pkginfo else "legacy signature over control+data"
    return VerifyReport(
        "apk", True, package.key.name,
        f"{package.name} {package.version}, identity {package.identity}, {datahash} and "
        f"{len(package.entries)} entries' SHA-1 checked",
    )


def _check_apkindex(path: Path, keys_dirs: tuple[Path, ...]) -> VerifyReport:
    index = apk.read_apkindex(path.read_bytes(), _rsa_keys(keys_dirs), str(path))
    return VerifyReport("APKINDEX", True, index.key.name, f"{index.description}: {len(index.entries)} packages")


def _check_opkg_index(path: Path, keys_dirs: tuple[Path, ...]) -> VerifyReport:
    folder = path.parent
    signature = folder / "Packages.sig"
    index = folder / "Packages" if (folder / "Packages").exists() else folder / "Packages.gz"
    if path.name != "Packages.sig":
        index = path
    if not signature.exists():
        raise IntegrityError(f"{index}: no Packages.sig beside it: the index is unsigned")
    if not index.exists():
        raise FormatError(f"{signature}: no Packages or Packages.gz beside it")
    verified = ipk.verify_index(index.read_bytes(), signature.read_bytes(), usign.load_keys(keys_dirs), str(index))
    count = len(ipk.parse_stanzas(verified.text, str(index)))
    return VerifyReport("opkg Packages", True, verified.key.key_id, f"{index.name}: {count} packages (usign Ed25519)")


def _check_ipk(path: Path, keys_dirs: tuple[Path, ...]) -> VerifyReport:
    blob = path.read_bytes()
    members = ipk.split_ipk(blob, str(path))
    control = ipk.read_control(members, str(path))
    entries = ipk.read_ipk_entries(blob, str(path))
    what = f"{control.get('Package', '?')} {control.get('Version', '?')} ({members.container}), {len(entries)} entries"
    listed = _ipk_listing(path, keys_dirs)
    if listed is None:
        return VerifyReport("ipk", True, None, f"{what}; structure ok; the signature lives in the feed's Packages.sig")
    stanza, key = listed
    ipk.check_size_and_hash(blob, int(stanza["Size"]), stanza["SHA256sum"], str(path))
    return VerifyReport("ipk", True, key, f"{what}; Size and SHA256sum match the signed Packages beside it")


def _ipk_listing(path: Path, keys_dirs: tuple[Path, ...]) -> tuple[dict[str, str], str] | None:
    """The stanza of the signed Packages beside `path` that lists it, if there is one."""
    folder = path.parent
    index = next((folder / n for n in ("Packages", "Packages.gz") if (folder / n).exists()), None)
    if index is None or not (folder / "Packages.sig").exists():
        return None
    verified = ipk.verify_index(index.read_bytes(), (folder / "Packages.sig").read_bytes(), usign.load_keys(keys_dirs), str(index))
    for stanza in ipk.parse_stanzas(verified.text, str(index)):
        if stanza.get("Filename", "").rsplit("/", 1)[-1] == path.name:
            return stanza, verified.key.key_id
    raise IntegrityError(f"{path}: not listed in the signed {index}")


def _check_deb(path: Path, keys_dirs: tuple[Path, ...]) -> VerifyReport:
    blob = path.read_bytes()
    members = [m.name for m in list_ar_members(blob, str(path))]
    if not members or members[0] != "debian-binary":
        raise FormatError(f"{path}: offset 0x8: first ar member is not debian-binary")
    if not any(m.startswith("data.tar") for m in members) or not any(m.startswith("control.tar") for m in members):
        raise FormatError(f"{path}: members {members}: no control.tar or data.tar")
    return VerifyReport("deb", True, None, f"structure ok ({', '.join(members)}); signature lives in the repository's InRelease")


def _check_inrelease(path: Path, keys_dirs: tuple[Path, ...]) -> VerifyReport:
    from . import deb

    certs = deb.load_certs(tuple(_expand(keys_dirs)))
    deb.verify_clearsigned(path.read_bytes(), certs, str(path))
    return VerifyReport("InRelease", True, "Debian archive keys" if not keys_dirs else ", ".join(map(str, keys_dirs)), "OpenPGP signature verifies")


def _expand(keys_dirs: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for entry in keys_dirs:
        files += sorted(p for p in entry.iterdir() if p.is_file()) if entry.is_dir() else [entry]
    return files


_CHECKS = {
    "apk": _check_apk,
    "APKINDEX": _check_apkindex,
    "opkg Packages": _check_opkg_index,
    "ipk": _check_ipk,
    "deb": _check_deb,
    "InRelease": _check_inrelease,
}
