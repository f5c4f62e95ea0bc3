"""OpenWrt's usign: Ed25519 signatures in signify-style files (openwrt/usign main.c).

A public key file is two lines::

    untrusted comment: <anything>
    <base64 of 42 bytes: b"Ed" + 8-byte key number + 32-byte Ed25519 public key>

A signature file has the same shape, its payload 74 bytes: b"Ed" + key number + 64-byte
signature. The signature is plain Ed25519 over the message (for opkg feeds, the
*uncompressed* `Packages`). opkg finds the key as `/etc/opkg/keys/<key number as %016x>`.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from construct import Bytes, Const, ConstructError, Struct
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import FormatError, IntegrityError, parse_error

ALGORITHM = b"Ed"

PUBLIC_KEY = Struct("pkalg" / Const(ALGORITHM), "fingerprint" / Bytes(8), "pubkey" / Bytes(32))
SIGNATURE = Struct("pkalg" / Const(ALGORITHM), "fingerprint" / Bytes(8), "sig" / Bytes(64))


@dataclass(frozen=True)
class UsignKey:
    """A trusted usign public key."""

    fingerprint: bytes  # the 8-byte key number
    public: Ed25519PublicKey
    comment: str
    source: str  # the file it came from

    @property
    def key_id(self) -> str:
        """The key number as opkg names the key file: 16 lower-case hex digits."""
        return self.fingerprint.hex()


@dataclass(frozen=True)
class UsignSignature:
    fingerprint: bytes
    signature: bytes
    comment: str

    @property
    def key_id(self) -> str:
        return self.fingerprint.hex()


def _read_payload(text: str, name: str) -> tuple[str, bytes]:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].startswith("untrusted comment:"):
        raise FormatError(f"{name}: not a usign file (expected 'untrusted comment:' then base64)")
    comment = lines[0].removeprefix("untrusted comment:").strip()
    try:
        return comment, base64.b64decode(lines[1].strip(), validate=True)
    except binascii.Error as e:
        raise FormatError(f"{name}: line 2: bad base64: {e}") from e


def parse_public_key(text: str, name: str = "<key>") -> UsignKey:
    """Parse a usign public key file."""
    comment, payload = _read_payload(text, name)
    if len(payload) != PUBLIC_KEY.sizeof():
        raise FormatError(f"{name}: public key is {len(payload)} bytes, expected 42")
    try:
        parsed = PUBLIC_KEY.parse(payload)
    except ConstructError as e:
        raise parse_error(name, "not an Ed25519 usign key", e) from e
    return UsignKey(parsed.fingerprint, Ed25519PublicKey.from_public_bytes(parsed.pubkey), comment, name)


def parse_signature(text: str | bytes, name: str = "<signature>") -> UsignSignature:
    """Parse a usign signature file (such as an opkg feed's `Packages.sig`)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    comment, payload = _read_payload(text, name)
    if len(payload) != SIGNATURE.sizeof():
        raise FormatError(f"{name}: signature is {len(payload)} bytes, expected 74")
    try:
        parsed = SIGNATURE.parse(payload)
    except ConstructError as e:
        raise parse_error(name, "not an Ed25519 usign signature", e) from e
    return UsignSignature(parsed.fingerprint, parsed.sig, comment)


def load_keys(paths: list[Path] | tuple[Path, ...]) -> dict[str, UsignKey]:
    """Every usign public key in `paths`, by key id.

    A folder may hold other files (opkg's keys folder, a folder of RSA keys): they are
    skipped. A file named on its own must be a usign key: a FormatError says why not.
    """
    keys: dict[str, UsignKey] = {}
    for path in map(Path, paths):
        if path.is_file():
            key = parse_public_key(path.read_text(errors="replace"), str(path))
            keys.setdefault(key.key_id, key)
            continue
        for key in _keys_in_folder(path):
            keys.setdefault(key.key_id, key)
    return keys


def _keys_in_folder(folder: Path) -> list[UsignKey]:
    if not folder.is_dir():
        return []
    keys = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.stat().st_size > 4096:
            continue
        try:
            keys.append(parse_public_key(path.read_text(errors="replace"), str(path)))
        except FormatError:
            continue
    return keys


def verify(message: bytes, signature: UsignSignature, keys: dict[str, UsignKey], name: str) -> UsignKey:
    """Check `signature` over `message` with the key its key number names; return that key.

    Raises IntegrityError when no trusted key has that number or the signature is wrong.
    """
    key = keys.get(signature.key_id)
    if key is None:
        raise IntegrityError(
            f"{name}: signed by usign key {signature.key_id}, which is not trusted",
            hint="add its public key file to the keys folder",
        )
    try:
        key.public.verify(signature.signature, message)
    except InvalidSignature as e:
        raise IntegrityError(f"{name}: usign signature by key {signature.key_id} does not verify") from e
    return key


# -- writing (test feeds and users who sign their own feeds) -------------------------------
def format_public_key(private: Ed25519PrivateKey, fingerprint: bytes, comment: str) -> str:
    """The usign public key file for `private`."""
    raw = private.public_key().public_bytes_raw()
    payload = PUBLIC_KEY.build({"fingerprint": fingerprint, "pubkey": raw})
    return f"untrusted comment: {comment}\n{base64.b64encode(payload).decode()}\n"


def sign(message: bytes, private: Ed25519PrivateKey, fingerprint: bytes, comment: str = "signed by fwgen") -> str:
    """A usign signature file over `message`."""
    payload = SIGNATURE.build({"fingerprint": fingerprint, "sig": private.sign(message)})
    return f"untrusted comment: {comment}\n{base64.b64encode(payload).decode()}\n"


def new_fingerprint() -> bytes:
    """A random 8-byte key number, as `usign -G` makes."""
    return os.urandom(8)
