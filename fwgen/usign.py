"""OpenWrt's usign and OpenBSD's signify: Ed25519 keys and signatures in the same files
(openwrt/usign main.c, openbsd signify.c). Feeds (opkg) and update bundles both use them.

A public key file is two lines::

    untrusted comment: <anything>
    <base64 of 42 bytes: b"Ed" + 8-byte key number + 32-byte Ed25519 public key>

A signature file has the same shape, its payload 74 bytes: b"Ed" + key number + 64-byte
signature. The signature is plain Ed25519 over the message (for opkg feeds, the
*uncompressed* `Packages`). opkg finds the key as `/etc/opkg/keys/<key number as %016x>`.

A secret key file, as `signify -G -n` and `usign -G` write it, has a 104-byte payload:
b"Ed", the KDF b"BK" (bcrypt_pbkdf), its rounds as a big-endian uint32 (0: not encrypted),
a 16-byte salt, the first 8 bytes of SHA-512 over the 64-byte secret key (a checksum), the
key number, and the secret key itself (Ed25519 seed + public key, as NaCl stores it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from construct import Bytes, Const, ConstructError, Int32ub, Struct
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import FormatError, IntegrityError, UserError, parse_error

ALGORITHM = b"Ed"

PUBLIC_KEY = Struct("pkalg" / Const(ALGORITHM), "fingerprint" / Bytes(8), "pubkey" / Bytes(32))
SIGNATURE = Struct("pkalg" / Const(ALGORITHM), "fingerprint" / Bytes(8), "sig" / Bytes(64))
SECRET_KEY = Struct(
    "pkalg" / Const(ALGORITHM),
    "kdfalg" / Const(b"BK"),
    "kdfrounds" / Int32ub,  # 0: the secret key is stored as it is (signify -n)
    "salt" / Bytes(16),
    "checksum" / Bytes(8),  # SHA-512 of seckey, first 8 bytes
    "fingerprint" / Bytes(8),
    "seckey" / Bytes(64),  # the 32-byte seed, then the 32-byte public key
)


class _Numbered:
    """Keys and signatures carry the key number that pairs them."""

    fingerprint: bytes  # the 8-byte key number

    @property
    def key_id(self) -> str:
        """The key number as opkg names the key file: 16 lower-case hex digits."""
        return self.fingerprint.hex()


@dataclass(frozen=True)
class UsignKey(_Numbered):
    """A trusted usign public key."""

    fingerprint: bytes
    public: Ed25519PublicKey
    comment: str
    source: str  # the file it came from


@dataclass(frozen=True)
class UsignSecretKey(_Numbered):
    """A secret key read from its file, to sign with. Never written into anything fwgen builds."""

    fingerprint: bytes
    private: Ed25519PrivateKey
    source: str

    def sign(self, message: bytes) -> str:
        """A usign/signify signature file over `message`."""
        return sign(message, self.private, self.fingerprint, f"signed by key {self.key_id}")

    def trusted(self) -> dict[str, UsignKey]:
        """Its public half, as load_keys returns keys: to check what it just signed."""
        return {self.key_id: UsignKey(self.fingerprint, self.private.public_key(), "", self.source)}


@dataclass(frozen=True)
class UsignSignature(_Numbered):
    fingerprint: bytes
    signature: bytes
    comment: str


def _read_payload(text: str, name: str) -> tuple[str, bytes]:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].startswith("untrusted comment:"):
        raise FormatError(f"{name}: not a usign file (expected 'untrusted comment:' then base64)")
    comment = lines[0].removeprefix("untrusted comment:").strip()
    try:
        return comment, base64.b64decode(lines[1].strip(), validate=True)
    except ValueError as e:  # binascii.Error, and a line with non-ASCII characters
        raise FormatError(f"{name}: line 2: bad base64: {e}") from e


def _parse_file(text: str, name: str, layout: Struct, what: str) -> tuple[str, Any]:
    """The comment and the parsed payload of a usign file holding a `what` laid out as `layout`."""
    comment, payload = _read_payload(text, name)
    if len(payload) != layout.sizeof():
        raise FormatError(f"{name}: {what} is {len(payload)} bytes, expected {layout.sizeof()}")
    try:
        return comment, layout.parse(payload)
    except ConstructError as e:
        raise parse_error(name, f"not an Ed25519 usign {what}", e) from e


def parse_public_key(text: str, name: str = "<key>") -> UsignKey:
    """Parse a usign public key file."""
    comment, parsed = _parse_file(text, name, PUBLIC_KEY, "public key")
    return UsignKey(parsed.fingerprint, Ed25519PublicKey.from_public_bytes(parsed.pubkey), comment, name)


def parse_signature(text: str | bytes, name: str = "<signature>") -> UsignSignature:
    """Parse a usign signature file (such as an opkg feed's `Packages.sig`)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    comment, parsed = _parse_file(text, name, SIGNATURE, "signature")
    return UsignSignature(parsed.fingerprint, parsed.sig, comment)


def parse_secret_key(text: str, name: str = "<secret key>") -> UsignSecretKey:
    """Parse an unencrypted usign/signify secret key file; the checksum and the public half
    must match the secret key."""
    _, parsed = _parse_file(text, name, SECRET_KEY, "secret key")
    if parsed.kdfrounds:
        raise FormatError(f"{name}: the secret key is encrypted with a passphrase ({parsed.kdfrounds} rounds)",
                          "fwgen reads unencrypted keys: fwgen keygen, signify -G -n, usign -G")
    if hashlib.sha512(parsed.seckey).digest()[:8] != parsed.checksum:
        raise FormatError(f"{name}: the secret key does not match its checksum")
    private = Ed25519PrivateKey.from_private_bytes(parsed.seckey[:32])
    if private.public_key().public_bytes_raw() != parsed.seckey[32:]:
        raise FormatError(f"{name}: the secret key's public half does not belong to it")
    return UsignSecretKey(parsed.fingerprint, private, name)


def load_secret_key(path: Path) -> UsignSecretKey:
    """The secret key in the file `path`."""
    return parse_secret_key(Path(path).read_text(errors="replace"), str(path))


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


def format_secret_key(private: Ed25519PrivateKey, fingerprint: bytes, comment: str) -> str:
    """The unencrypted secret key file for `private`, as `signify -G -n` writes it."""
    seckey = private.private_bytes_raw() + private.public_key().public_bytes_raw()
    payload = SECRET_KEY.build({"kdfrounds": 0, "salt": os.urandom(16), "checksum": hashlib.sha512(seckey).digest()[:8],
                                "fingerprint": fingerprint, "seckey": seckey})
    return f"untrusted comment: {comment}\n{base64.b64encode(payload).decode()}\n"


def write_key_pair(base: Path) -> tuple[Path, Path]:
    """A new key pair: `base`.key (the secret key, mode 0600) and `base`.pub. Neither file may
    exist already: a signing key is never overwritten. Each appears whole or not at all."""
    base = Path(base)
    secret, public = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for path in (secret, public):
        if path.exists() or path.is_symlink():
            raise UserError(f"{path}: exists already", "fwgen keygen never overwrites a key: choose another name")
    private, fingerprint = Ed25519PrivateKey.generate(), new_fingerprint()
    _write_new_file(secret, format_secret_key(private, fingerprint, f"fwgen secret key {fingerprint.hex()}"), 0o600)
    try:
        _write_new_file(public, format_public_key(private, fingerprint, f"fwgen public key {fingerprint.hex()}"), 0o644)
    except BaseException:
        secret.unlink()
        raise
    return secret, public


def _write_new_file(path: Path, text: str, mode: int) -> None:
    """Write a temporary file (mkstemp: 0600 from the start), then hard-link it to `path`,
    which fails rather than replace a file that appeared meanwhile."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.link(tmp, path)
    except FileExistsError as e:
        raise UserError(f"{path}: exists already", "fwgen keygen never overwrites a key") from e
    finally:
        os.unlink(tmp)


def new_fingerprint() -> bytes:
    """A random 8-byte key number, as `usign -G` makes."""
    return os.urandom(8)
