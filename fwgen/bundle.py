"""Update bundles, format 1: what a device installs into its inactive slot (the layout both
sides of issue 14 follow is fixed in UPDATE-BUNDLE.md).

A bundle is a plain POSIX ustar tar (busybox tar reads it on the device) of:

    metadata.json      board, compatible names, version, build id, slots, and the size
                       and sha256 of every part (sorted keys, indent 1, a final newline)
    metadata.json.sig  a usign/signify signature over metadata.json's bytes (signed bundles)
    <parts>            in the order metadata.json lists them: fit.itb or the kernel, then
                       rootfs.squashfs, the exact bytes a slot receives

The signature covers the parts through their hashes, so a device checks one signature, then
each part's size and hash, before it writes anything. Every member has mode 0644, owner 0,
empty owner names and the build's SOURCE_DATE_EPOCH as mtime: the same inputs (and the same
key: Ed25519 signatures are deterministic) give the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import usign
from .errors import FormatError, IntegrityError, UserError
from .files import hash_file, hash_stream, replacing

FORMAT = 1
METADATA, SIGNATURE = "metadata.json", "metadata.json.sig"
MAX_METADATA = 1 << 20  # far beyond any real metadata.json; a bigger one is not a bundle
PART_FILES = {"fit": "fit.itb", "kernel": "kernel", "rootfs": "rootfs.squashfs"}
USTAR_MAGIC = b"ustar\x00"  # at offset 257 of a POSIX ustar header ("ustar  \0" is GNU's)


@dataclass(frozen=True)
class Part:
    """A part to pack: its name in metadata.json, its member name, where its bytes are."""

    name: str
    file: str
    path: Path


@dataclass(frozen=True)
class BundleReport:
    """What a verified bundle holds."""

    path: Path
    metadata: dict[str, Any]
    signed_by: str | None  # the key id of a signature that verified
    signature_key: str | None  # the key id a signature names, checked or not

    @property
    def parts(self) -> list[dict[str, Any]]:
        return self.metadata["parts"]

    def summary(self) -> str:
        m = self.metadata
        if self.signed_by:
            signature = f"signed by key {self.signed_by}, signature verified"
        elif self.signature_key:
            signature = f"signed by key {self.signature_key}, signature NOT checked (give --key)"
        else:
            signature = "unsigned (devices refuse it: fwgen sign BUNDLE --key KEY)"
        return (f"{self.path.name}: update bundle for {m['board']} (compatible: {', '.join(m['compatible'])}), "
                f"version {m['version']}, build {m['build_id']}, slots {m['slots']}: {signature}; "
                f"{len(m['parts'])} part(s), sizes and sha256 match")


def part_for(name: str, path: Path) -> Part:
    """The part `name` ("fit", "kernel" or "rootfs") with its bytes in `path`."""
    return Part(name, PART_FILES[name], path)


def build_metadata(*, board: str, compatible: tuple[str, ...], version: str, build_id: str, slots: str,
                   parts: list[Part]) -> bytes:
    """metadata.json as UPDATE-BUNDLE.md fixes it, the parts hashed from their files."""
    data = {"format": FORMAT, "board": board, "compatible": list(compatible), "version": version,
            "build_id": build_id, "slots": slots,
            "parts": [{"name": p.name, "file": p.file, "size": p.path.stat().st_size, "sha256": hash_file(p.path)}
                      for p in parts]}
    return (json.dumps(data, sort_keys=True, indent=1) + "\n").encode()


def write_bundle(path: Path, metadata: bytes, parts: list[Part], *, mtime: int,
                 key: usign.UsignSecretKey | None = None) -> None:
    """Write the bundle to `path` (atomically), signed with `key` when one is given."""
    signature = key.sign(metadata).encode() if key is not None else None
    with replacing(path) as out, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add_bytes(tar, METADATA, metadata, mtime)
        if signature is not None:
            _add_bytes(tar, SIGNATURE, signature, mtime)
        for part in parts:
            with open(part.path, "rb") as f:
                tar.addfile(tar_member(part.file, part.path.stat().st_size, mtime), f)


def is_bundle(path: Path) -> bool:
    """Whether `path` starts as a bundle does: a ustar header for metadata.json."""
    with open(path, "rb") as f:
        head = f.read(512)
    return len(head) == 512 and head[:100].rstrip(b"\0") == METADATA.encode() and head[257:263] == USTAR_MAGIC


def verify_bundle(path: Path, keys: dict[str, usign.UsignKey] | None = None, *,
                  board: str | None = None) -> BundleReport:
    """Read the bundle at `path` and check it as a device would: the signature over
    metadata.json against `keys` (when given: then a signature is required), `board` among
    its compatible names (when given), then every part's size and sha256.
    Raises IntegrityError or FormatError, naming the bundle and what failed."""
    path = Path(path)
    with _open_tar(path) as tar:
        raw, signature = _read_head(tar, path)
        signed_by = _check_signature(path, raw, signature, keys)  # before a byte of it is parsed
        metadata = _parse_metadata(raw, f"{path}: {METADATA}")
        if board is not None and board not in metadata["compatible"]:
            raise IntegrityError(f"{path}: a bundle for {', '.join(metadata['compatible'])}, not for board {board}")
        _check_parts(tar, path, metadata["parts"])
    return BundleReport(path, metadata, signed_by, signature.key_id if signature else None)


def sign_bundle(path: Path, key: usign.UsignSecretKey) -> BundleReport:
    """Sign the bundle at `path` with `key`, replacing any signature it had, after checking
    its parts (a damaged bundle is not signed). The file is rewritten atomically."""
    path = Path(path)
    report = verify_bundle(path)  # the parts' sizes and hashes
    with _open_tar(path) as tar:
        raw, _ = _read_head(tar, path)
        mtime = int(tar.getmember(METADATA).mtime)
    with _open_tar(path) as tar, replacing(path) as out, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as signed:
        _add_bytes(signed, METADATA, raw, mtime)
        _add_bytes(signed, SIGNATURE, key.sign(raw).encode(), mtime)
        for member in tar:
            if member.name not in (METADATA, SIGNATURE):
                signed.addfile(tar_member(member.name, member.size, mtime), tar.extractfile(member))
    return BundleReport(path, report.metadata, key.key_id, key.key_id)


def _read_head(tar: tarfile.TarFile, path: Path) -> tuple[bytes, usign.UsignSignature | None]:
    """metadata.json's bytes and the signature after it, if any."""
    first = tar.next()
    if first is None or first.name != METADATA or not first.isfile():
        raise FormatError(f"{path}: not an update bundle: its first member is not {METADATA}")
    if first.size > MAX_METADATA:
        raise FormatError(f"{path}: {METADATA} is {first.size:,} bytes, more than a bundle's ever is")
    raw = _read_member(tar, first)
    signature = None
    following = tar.next()
    if following is not None and following.name == SIGNATURE:
        signature = usign.parse_signature(_read_member(tar, following), f"{path}: {SIGNATURE}")
    return raw, signature


def _parse_metadata(raw: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{where}: not JSON: {e}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise FormatError(f"{where}: format {found!r}, fwgen reads format {FORMAT}")
    for key, kind in (("board", str), ("compatible", list), ("version", str), ("build_id", str),
                      ("slots", str), ("parts", list)):
        if not isinstance(data.get(key), kind):
            raise FormatError(f"{where}: {key}: missing or not a {kind.__name__}")
    if not data["compatible"] or not all(isinstance(name, str) for name in data["compatible"]):
        raise FormatError(f"{where}: compatible: not a list of names")
    for i, part in enumerate(data["parts"]):
        if not (isinstance(part, dict) and isinstance(part.get("file"), str) and isinstance(part.get("name"), str)
                and isinstance(part.get("size"), int) and isinstance(part.get("sha256"), str)):
            raise FormatError(f"{where}: parts[{i}]: needs name, file, size and sha256")
    return data


def _check_signature(path: Path, raw: bytes, signature: usign.UsignSignature | None,
                     keys: dict[str, usign.UsignKey] | None) -> str | None:
    if keys is None:
        return None
    if signature is None:
        raise IntegrityError(f"{path}: not signed (no {SIGNATURE}): devices refuse it",
                             "fwgen sign BUNDLE --key KEY")
    return usign.verify(raw, signature, keys, f"{path}: {METADATA}").key_id


def _check_parts(tar: tarfile.TarFile, path: Path, parts: list[dict[str, Any]]) -> None:
    """Each part, in the order metadata.json lists them, with its size and sha256; nothing else."""
    members = [m for m in tar.getmembers() if m.name not in (METADATA, SIGNATURE)]
    for i, part in enumerate(parts):
        if i >= len(members) or members[i].name != part["file"]:
            found = members[i].name if i < len(members) else "the end of the bundle"
            raise IntegrityError(f"{path}: part {part['name']}: expected {part['file']}, found {found}")
        member = members[i]
        if member.size != part["size"]:
            raise IntegrityError(f"{path}: part {part['name']} ({part['file']}): {member.size:,} bytes, "
                                 f"{METADATA} says {part['size']:,}")
        content = tar.extractfile(member)
        assert content is not None  # a regular file's member, checked above
        digest = hash_stream(content)
        if digest != part["sha256"]:
            raise IntegrityError(f"{path}: part {part['name']} ({part['file']}): sha256 {digest[:16]}... "
                                 f"is not the {part['sha256'][:16]}... {METADATA} lists")
    if len(members) > len(parts):
        raise IntegrityError(f"{path}: {members[len(parts)].name}: a member {METADATA} does not list")


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    """The bundle as a tar; a damaged header or a cut-off member, wherever it is met, is a
    FormatError naming the bundle."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            yield tar
    except (tarfile.TarError, EOFError) as e:
        raise FormatError(f"{path}: not an update bundle, or a damaged one: {e}") from e


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    return f.read()


def tar_member(name: str, size: int, mtime: int, *, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    """A tar header that says nothing of the build machine: owner 0, no owner names."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime, info.mode = kind, size, mtime, mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    tar.addfile(tar_member(name, len(data), mtime), io.BytesIO(data))


def check_signing_key(key: usign.UsignSecretKey, trusted: tuple[Path, ...], where: str) -> None:
    """A bundle signed with a key its board does not list would be refused by every device:
    refuse to build it instead."""
    if key.key_id not in usign.load_keys(trusted):
        raise UserError(f"{where}: update.keys does not list the signing key {key.key_id} ({key.source})",
                        "add its .pub file to update.keys, or sign with a key the devices trust")
