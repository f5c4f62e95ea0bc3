"""Alpine's apk v2 packages and APKINDEX, with their RSA signatures.

Facts (apk-tools doc/apk-v2.5.scd, src/extract_v2.c; abuild abuild.in, abuild-sign):

- A package is three gzip streams, concatenated: a signature tar holding one file
  `.SIGN.<ALG>.<keyname>`, a control tar (`.PKGINFO`, scripts) and a data tar. The first two
  are cut before their end-of-archive blocks (`abuild-tar --cut`).
- The signature covers the *compressed bytes* of stream 2. ALG `RSA` is PKCS#1 v1.5 over
  SHA-1, `RSA256` over SHA-256, `RSA512` over SHA-512. `keyname` is a file name in
  /etc/apk/keys. "Signature files over 64 KiB are ignored."
- `.PKGINFO` `datahash` is the SHA-256 of the compressed stream 3; without it the signature
  covers streams 2 and 3 together.
- Each data entry carries the PAX record `APK-TOOLS.checksum.SHA1` (file content, or for a
  symlink the target string).
- APKINDEX.tar.gz is signed the same way; its stream 2 is a tar of `DESCRIPTION` and
  `APKINDEX`. An index entry's `C:` is "Q1" + base64(SHA-1 of the package's compressed
  control stream): the identity that ties the index to the file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..arch import Arch
from ..board import Feed
from ..cache import Cache
from ..errors import FormatError, IntegrityError, UserError
from ..progress import Progress
from ..rootfs import Entry
from . import apkversion
from .archive import UnpackBudget, open_decompressed, read_tar_stream
from .backend import Backend, FileHead, VerifyReport, feed_arch, head_of
from .package import Package, Relation

SHIPPED_KEYS = Path(__file__).resolve().parent.parent / "keys" / "alpine"

SIGNATURE_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "RSA": hashes.SHA1, "RSA256": hashes.SHA256, "RSA512": hashes.SHA512}
MAX_SIGNATURE_SIZE = 64 * 1024
CHECKSUM_PAX = "APK-TOOLS.checksum.SHA1"
_INFLATE_CHUNK = 1 << 20


# -- gzip streams -------------------------------------------------------------------------
@dataclass(frozen=True)
class GzipStream:
    """One gzip member of a file: its compressed byte range and what it inflates to."""

    start: int
    end: int
    data: bytes


def split_gzip_streams(blob: bytes, name: str, *, count: int | None = None,
                       budget: UnpackBudget | None = None, start: int = 0) -> list[GzipStream]:
    """The concatenated gzip members of `blob` from offset `start` (the first `count` of
    them, or all), each with its exact compressed byte range; together they may unpack to no
    more than `budget`."""
    budget = (budget or UnpackBudget.default()).headroom()
    streams: list[GzipStream] = []
    offset = start
    while offset < len(blob) and (count is None or len(streams) < count):
        data, end = _inflate_stream(blob, offset, f"{name}: offset {offset:#x}: gzip stream {len(streams) + 1}", budget)
        streams.append(GzipStream(offset, end, data))
        offset = end
    if not streams:
        raise FormatError(f"{name}: offset 0x0: empty file")
    return streams


def _inflate_stream(blob: bytes, offset: int, where: str, budget: UnpackBudget) -> tuple[bytes, int]:
    """The gzip member at `offset` inflated, a chunk at a time so that a bomb is refused by
    `budget` before it is held, and the offset just past it."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header and trailer
    pending: bytes | memoryview = memoryview(blob)[offset:]
    parts = []
    try:
        while not inflater.eof:
            part = inflater.decompress(pending, _INFLATE_CHUNK)
            budget.charge(len(part), where)
            parts.append(part)
            pending = inflater.unconsumed_tail
            if not pending and len(part) < _INFLATE_CHUNK:
                break  # input used up and nothing held back: done, or truncated
    except zlib.error as e:
        raise FormatError(f"{where}: bad gzip stream: {e}") from e
    if not inflater.eof:
        raise FormatError(f"{where}: truncated gzip stream")
    return b"".join(parts), len(blob) - len(inflater.unused_data)


# -- tar members ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TarMember:
    info: tarfile.TarInfo
    data: bytes

    @property
    def name(self) -> str:
        return self.info.name


def read_tar(raw: bytes, name: str) -> list[TarMember]:
    """Every member of one (possibly cut) tar stream, with regular files' contents."""
    members: list[TarMember] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", format=tarfile.PAX_FORMAT) as tar:
            for info in tar:
                content = b""
                if info.isreg():
                    extracted = tar.extractfile(info)
                    content = extracted.read() if extracted else b""
                    if len(content) != info.size:
                        raise FormatError(f"{name}: offset {info.offset_data:#x}: {info.name} is truncated")
                members.append(TarMember(info, content))
    except tarfile.TarError as e:
        raise FormatError(f"{name}: bad tar stream: {e}") from e
    return members


# -- keys and signatures -------------------------------------------------------------------
@dataclass(frozen=True)
class RsaKey:
    name: str  # the file name, as `.SIGN.RSA.<name>` refers to it
    public: rsa.RSAPublicKey
    source: Path

    @property
    def short_id(self) -> str:
        """The key's short id as Alpine spells it in file names ("6165ee59")."""
        m = re.search(r"-([0-9a-f]{8})\.rsa\.pub$", self.name)
        return m.group(1) if m else self.name


def load_rsa_keys(paths: Iterable[Path]) -> dict[str, RsaKey]:
    """Every PEM RSA public key in `paths` (files or folders), by file name."""
    keys: dict[str, RsaKey] = {}
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                public = serialization.load_pem_public_key(file.read_bytes())
            except (ValueError, OSError, TypeError):
                continue
            if isinstance(public, rsa.RSAPublicKey):
                keys.setdefault(file.name, RsaKey(file.name, public, file))
    return keys


@dataclass(frozen=True)
class Signature:
    algorithm: str  # RSA, RSA256, RSA512
    key_name: str
    value: bytes


def read_signatures(stream: GzipStream, name: str) -> list[Signature]:
    """The `.SIGN.*` files of a signature stream (stream 1)."""
    signatures = []
    for member in read_tar(stream.data, f"{name}: signature stream"):
        m = re.fullmatch(r"\.SIGN\.([A-Z0-9]+)\.(.+)", member.name)
        if m is None:
            raise FormatError(f"{name}: signature stream holds {member.name!r}, not a .SIGN.* file")
        if member.info.size <= MAX_SIGNATURE_SIZE:
            signatures.append(Signature(m.group(1), m.group(2), member.data))
    return signatures


def verify_signatures(signatures: list[Signature], message: bytes, keys: dict[str, RsaKey], name: str) -> RsaKey:
    """The trusted key one of `signatures` verifies `message` with; IntegrityError if none."""
    problems = []
    for signature in signatures:
        key = keys.get(signature.key_name)
        algorithm = SIGNATURE_HASHES.get(signature.algorithm)
        if algorithm is None:
            problems.append(f"{signature.algorithm} signatures are not supported")
        elif key is None:
            problems.append(f"key {signature.key_name} is not trusted")
        else:
            try:
                key.public.verify(signature.value, message, padding.PKCS1v15(), algorithm())
                return key
            except InvalidSignature:
                problems.append(f"{signature.algorithm} signature by {signature.key_name} does not verify")
    detail = "; ".join(problems) or "no signature"
    raise IntegrityError(f"{name}: {detail}")


def _signed_parts(blob: bytes, name: str, *, count: int | None = None,
                  budget: UnpackBudget | None = None) -> tuple[list[Signature], list[GzipStream]]:
    signatures, signed_from = read_signature_stream(blob, name, budget)
    rest = count - 1 if count is not None else None
    return signatures, split_gzip_streams(blob, name, count=rest, budget=budget, start=signed_from)


def read_signature_stream(blob: bytes, name: str,
                          budget: UnpackBudget | None = None) -> tuple[list[Signature], int]:
    """The signatures in the first gzip stream and the offset where the signed bytes begin.

    A damaged signature stream is a failed signature (IntegrityError naming the key, where
    its name can still be read), not a gzip error: the file is refused either way."""
    try:
        [stream] = split_gzip_streams(blob, name, count=1, budget=budget)
        signatures = read_signatures(stream, name) if _is_signature_stream(stream) else []
    except FormatError as e:
        by, damage = _signer_named(blob), e.message.rsplit(": ", 1)[-1]  # zlib's or tarfile's words
        raise IntegrityError(f"{name}: signature{f' by {by}' if by else ''} FAILED: "
                             f"the signature stream at offset 0x0 is damaged ({damage})") from e
    if not signatures:
        raise IntegrityError(f"{name}: not signed (first gzip stream holds no .SIGN.* file)")
    if stream.end >= len(blob):
        raise FormatError(f"{name}: offset {stream.end:#x}: nothing follows the signature")
    return signatures, stream.end


def _signer_named(blob: bytes) -> str | None:
    """The key a damaged signature stream names in its first tar header, if that inflates."""
    header = head_of(blob).inflated[:100].rstrip(b"\0")
    m = re.fullmatch(rb"\.SIGN\.[A-Z0-9]+\.(.+)", header)
    return m.group(1).decode(errors="replace") if m else None


def _is_signature_stream(stream: GzipStream) -> bool:
    return stream.data[:6] == b".SIGN."


# -- APKINDEX --------------------------------------------------------------------------------
# Field letters of an APKINDEX stanza (apk-tools src/package.c, doc/apk-package.5.scd).
INDEX_FIELDS = {
    "C": "identity", "P": "name", "V": "version", "A": "arch", "S": "size",
    "I": "installed_size", "T": "description", "U": "url", "L": "license", "o": "origin",
    "m": "maintainer", "t": "build_time", "c": "commit", "k": "provider_priority",
    "D": "depends", "p": "provides", "i": "install_if", "r": "replaces", "q": "replaces_priority",
}


@dataclass
class ApkIndexEntry:
    """One stanza of an APKINDEX: every field, by the names apk-package(5) gives them."""

    name: str = ""
    version: str = ""
    arch: str = ""
    identity: str = ""
    size: int = 0
    installed_size: int = 0
    description: str = ""
    url: str = ""
    license: str = ""
    origin: str = ""
    maintainer: str = ""
    build_time: int = 0
    commit: str = ""
    provider_priority: int | None = None
    depends: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    install_if: list[str] = field(default_factory=list)
    replaces: list[str] = field(default_factory=list)
    replaces_priority: int | None = None
    unknown: dict[str, str] = field(default_factory=dict)  # letters apk-tools does not know
    line: int = 0  # where the stanza starts

    @property
    def installable(self) -> bool:
        """apk: "an unknown upper-case letter makes the package uninstallable"."""
        return not any(letter.isupper() for letter in self.unknown)

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.apk"


_LIST_FIELDS = {"depends", "provides", "install_if", "replaces"}
_INT_FIELDS = {"size", "installed_size", "build_time", "provider_priority", "replaces_priority"}


def parse_apkindex(text: str, name: str = "APKINDEX") -> list[ApkIndexEntry]:
    """Every stanza of an APKINDEX text; FormatError naming the line on malformed input."""
    entries: list[ApkIndexEntry] = []
    current: ApkIndexEntry | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if current is not None:
                entries.append(_finish_entry(current, name))
                current = None
            continue
        if len(line) < 2 or line[1] != ":":
            raise FormatError(f"{name}:{number}: expected 'X:value', got {line[:40]!r}")
        if current is None:
            current = ApkIndexEntry(line=number)
        _set_index_field(current, line[0], line[2:], name, number)
    if current is not None:
        entries.append(_finish_entry(current, name))
    return entries


def _set_index_field(entry: ApkIndexEntry, letter: str, value: str, name: str, number: int) -> None:
    if letter not in INDEX_FIELDS:
        entry.unknown[letter] = value
        return
    attribute = INDEX_FIELDS[letter]
    if attribute in _LIST_FIELDS:
        getattr(entry, attribute).extend(value.split())
    elif attribute in _INT_FIELDS:
        try:
            setattr(entry, attribute, int(value))
        except ValueError as e:
            raise FormatError(f"{name}:{number}: {letter}: not a number: {value!r}") from e
    else:
        setattr(entry, attribute, value)


def _finish_entry(entry: ApkIndexEntry, name: str) -> ApkIndexEntry:
    for letter in ("P", "V"):
        if not getattr(entry, INDEX_FIELDS[letter]):
            raise FormatError(f"{name}:{entry.line}: stanza has no {letter}: field")
    return entry


@dataclass(frozen=True)
class ApkIndex:
    description: str
    entries: list[ApkIndexEntry]
    key: RsaKey


def read_apkindex(blob: bytes, keys: dict[str, RsaKey], name: str = "APKINDEX.tar.gz") -> ApkIndex:
    """Verify a signed APKINDEX.tar.gz and parse it completely."""
    signatures, signed_from = read_signature_stream(blob, name)
    # The signature covers the compressed bytes of everything after the signature stream:
    # checked before they are inflated, so a changed byte is a failed signature.
    key = verify_signatures(signatures, blob[signed_from:], keys, name)
    raw = b"".join(stream.data for stream in split_gzip_streams(blob, name, start=signed_from))
    files = {m.name: m.data for m in read_tar(raw, f"{name}: index stream")}
    if "APKINDEX" not in files:
        raise FormatError(f"{name}: no APKINDEX file in the index stream (found {sorted(files)})")
    text = _decode(files["APKINDEX"], f"{name}: APKINDEX")
    return ApkIndex(_decode(files.get("DESCRIPTION", b""), name).strip(), parse_apkindex(text, f"{name}: APKINDEX"), key)


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{name}: offset {e.start:#x}: not UTF-8") from e


# -- dependencies ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApkDependency:
    """One `D:`/`p:`/`i:` token: `[!]name[op version]`."""

    name: str
    op: str | None = None
    version: str | None = None
    conflict: bool = False

    def __str__(self) -> str:
        return ("!" if self.conflict else "") + self.name + (f"{self.op}{self.version}" if self.op else "")


_DEPENDENCY = re.compile(r"(?P<bang>!?)(?P<name>[^<>=~!\s]+)(?:(?P<op>><|>=|<=|>~|<~|=~|[<>=~])(?P<version>\S+))?")


def parse_dependency(token: str, where: str = "") -> ApkDependency:
    """Parse one dependency token such as `so:libc.musl-x86_64.so.1`, `!foo`, `bar>=1.2`."""
    m = _DEPENDENCY.fullmatch(token)
    if m is None:
        raise FormatError(f"{where or 'dependency'}: cannot parse {token!r}")
    return ApkDependency(m["name"], m["op"], m["version"], bool(m["bang"]))


# -- packages ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApkPackage:
    """A verified .apk: its metadata, the key that signed it and its data entries."""

    pkginfo: dict[str, list[str]]
    identity: str  # "Q1..." as the index's C: field
    key: RsaKey
    control: list[TarMember]
    entries: list[Entry]

    @property
    def name(self) -> str:
        return self.pkginfo.get("pkgname", [""])[0]

    @property
    def version(self) -> str:
        return self.pkginfo.get("pkgver", [""])[0]


def parse_pkginfo(text: str, name: str) -> dict[str, list[str]]:
    """`.PKGINFO`: `key = value` lines; `depend`, `provides` and others repeat."""
    info: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition(" = ")
        if not sep:
            raise FormatError(f"{name}:{number}: expected 'key = value', got {line[:40]!r}")
        info.setdefault(key.strip(), []).append(value.strip())
    return info


def identity_of(control_stream: bytes) -> str:
    """The index identity (`C:`) of a package whose compressed control stream is given."""
    return "Q1" + base64.b64encode(hashlib.sha1(control_stream).digest()).decode()


@dataclass(frozen=True)
class VerifiedApk:
    """An .apk whose signature, index identity and datahash hold; its data not yet read."""

    pkginfo: dict[str, list[str]]
    identity: str
    key: RsaKey
    control: list[TarMember]
    data_start: int  # offset of the data stream(s)


def verify_apk(blob: bytes, keys: dict[str, RsaKey], name: str, *, identity: str | None = None,
               budget: UnpackBudget | None = None) -> VerifiedApk:
    """Check an .apk's signature, index identity and datahash, without unpacking its data:
    the signature covers the data's compressed bytes (through datahash, or directly)."""
    # Only the signature and control streams are split off; the data stream(s) that follow
    # are read as one stream, never held decompressed.
    signatures, rest = _signed_parts(blob, name, count=2, budget=budget)
    control_stream, data_start = rest[0], rest[0].end
    if data_start >= len(blob):
        raise FormatError(f"{name}: offset {data_start:#x}: no data stream after the control stream")
    control_bytes = blob[control_stream.start : control_stream.end]
    actual = identity_of(control_bytes)
    if identity is not None and actual != identity:
        raise IntegrityError(f"{name}: identity {actual} does not match the index's C:{identity}")
    control = read_tar(control_stream.data, f"{name}: control stream")
    files = {m.name: m.data for m in control}
    if ".PKGINFO" not in files:
        raise FormatError(f"{name}: control stream has no .PKGINFO")
    pkginfo = parse_pkginfo(_decode(files[".PKGINFO"], f"{name}: .PKGINFO"), f"{name}: .PKGINFO")
    data_bytes = blob[data_start:]
    datahash = pkginfo.get("datahash", [None])[0]
    if datahash is not None:
        key = verify_signatures(signatures, control_bytes, keys, name)
        if hashlib.sha256(data_bytes).hexdigest() != datahash.lower():
            raise IntegrityError(f"{name}: offset {data_start:#x}: data stream does not match datahash {datahash}")
    else:
        # Legacy packages: "the signature covers streams 2 and 3".
        key = verify_signatures(signatures, control_bytes + data_bytes, keys, name)
    return VerifiedApk(pkginfo, actual, key, control, data_start)


def read_apk(
    blob: bytes,
    keys: dict[str, RsaKey],
    name: str,
    *,
    identity: str | None = None,
    provenance: str = "",
    budget: UnpackBudget | None = None,
) -> ApkPackage:
    """Verify an .apk (verify_apk, then each file's SHA-1) and read it, the data stream
    decompressed as it is read and charged to `budget`.

    Nothing is returned unless every check passes.
    """
    verified = verify_apk(blob, keys, name, identity=identity, budget=budget)
    stream = open_decompressed(blob[verified.data_start:], "gz", f"{name}: data stream")
    entries = list(read_tar_stream(stream, f"{name}: data stream", budget, provenance=provenance, check=_check_sha1))
    return ApkPackage(verified.pkginfo, verified.identity, verified.key, verified.control, entries)


def _check_sha1(info: tarfile.TarInfo, content: bytes, where: str) -> None:
    recorded = info.pax_headers.get(CHECKSUM_PAX)
    if recorded is None:
        raise IntegrityError(f"{where}: no {CHECKSUM_PAX} record")
    if hashlib.sha1(content).hexdigest() != recorded.lower():
        raise IntegrityError(f"{where}: content does not match {CHECKSUM_PAX}={recorded}")


def recognizes(head: FileHead) -> bool:
    """Whether a file with this head is an apk v2 package or index (gzip + `.SIGN.`)."""
    return head.inflated.startswith(b".SIGN.")


def compare_versions(a: str, b: str) -> int:
    return apkversion.compare(a, b)


def satisfies(version: str, op: str, wanted: str) -> bool:
    return apkversion.satisfies(version, op, wanted)


# -- the backend -------------------------------------------------------------------------------
# Relation ops use Debian's spelling: apk's strict `<` and `>` are Debian's `<<` and `>>`;
# the fuzzy ones (`~`, `>~`, `<~`) have no Debian spelling and pass through unchanged.
_DEBIAN_OP = {"<": "<<", ">": ">>"}


def _relation_of(dependency: ApkDependency) -> Relation:
    op = _DEBIAN_OP.get(dependency.op or "", dependency.op)
    return Relation(dependency.name, op, dependency.version)


def package_from_entry(entry: ApkIndexEntry, *, feed: str, base_url: str, source: str) -> Package:
    """An APKINDEX stanza as a format-neutral Package (`!name` depends become conflicts)."""
    where = f"{source}:{entry.line}: {entry.name}"
    depends = [parse_dependency(token, where) for token in entry.depends]
    provides = []
    for token in entry.provides:
        provided = parse_dependency(token, where)
        provides.append(Relation(provided.name, "=" if provided.version else None, provided.version))
    return Package(
        name=entry.name,
        version=entry.version,
        arch=entry.arch,
        feed=feed,
        format="apk",
        base_url=base_url,
        filename=entry.filename,
        size=entry.size,
        sha256="",  # APKINDEX gives no file hash: the identity (C:) and signature stand in
        depends=tuple((_relation_of(d),) for d in depends if not d.conflict),
        provides=tuple(provides),
        conflicts=tuple(_relation_of(d) for d in depends if d.conflict),
        source=entry.origin or None,
        provider_priority=entry.provider_priority or 0,
        license=entry.license or None,
    )


def repository_folders(feed: Feed, arch_name: str) -> list[str]:
    """`<url>/<component>/<arch>` for each component: Alpine's `v3.16/main/aarch64` layout."""
    base = feed.url.rstrip("/")
    return [f"{base}/{component.strip('/')}/{arch_name}" for component in feed.components]


class ApkBackend(Backend):
    """Alpine repositories (apk v2)."""

    name = "apk"
    neutral_arch = "noarch"
    purl = ("apk", "alpine")  # the package-URL type and namespace (purl-spec's PURL-TYPES)
    # "A bare provide is virtual and is only auto-selected when the provider has k: priority."
    bare_provides_need_priority = True

    def __init__(self) -> None:
        # package URL -> (C: identity, the keys its feed trusts), from a verified index. Each
        # package is checked with its own feed's keys: two feeds may hold keys of one file name.
        self.listed: dict[str, tuple[str, dict[str, RsaKey]]] = {}
        self._verified_with: dict[Path, dict[str, RsaKey]] = {}  # cached file -> the keys it verified with
        self.install_if: dict[tuple[str, str], tuple[ApkDependency, ...]] = {}
        self.provider_priority: dict[tuple[str, str], int] = {}

    def arch_name(self, arch: Arch) -> str:
        if arch.alpine is None:
            raise UserError(f"Alpine has no port for {arch.value}", "use an OpenWrt or Debian feed for it")
        return arch.alpine

    def compare_versions(self, a: str, b: str) -> int:
        return apkversion.compare(a, b)

    def satisfies(self, version: str, op: str, wanted: str) -> bool:
        return apkversion.satisfies(version, op, wanted)

    def recognizes(self, head: FileHead) -> bool:
        return recognizes(head)

    def keys_for(self, feed: Feed) -> dict[str, RsaKey]:
        """The keys a feed trusts: its `keys` (files or folders), else the shipped Alpine keys."""
        return load_rsa_keys(feed.keys or (SHIPPED_KEYS,))

    def load_index(self, feed: Feed, arch: Arch, cache: Cache, progress: Progress) -> list[Package]:
        keys = self.keys_for(feed)
        packages: list[Package] = []
        for folder in repository_folders(feed, feed_arch(self, feed, arch)):
            url = f"{folder}/APKINDEX.tar.gz"
            local = cache.fetch(url, sha256=None, size=None, progress=progress)
            try:
                index = read_apkindex(local.read_bytes(), keys, url)
            except (IntegrityError, FormatError):
                cache.forget(local)  # never keep a refused index
                raise
            for entry in index.entries:
                if not entry.installable:
                    continue
                package = package_from_entry(entry, feed=feed.name, base_url=folder, source=url)
                self.listed[package.url] = (entry.identity, keys)
                self._record_extras(entry, url)
                packages.append(package)
        return packages

    def _record_extras(self, entry: ApkIndexEntry, source: str) -> None:
        key = (entry.name, entry.version)
        if entry.install_if:
            self.install_if[key] = tuple(parse_dependency(t, source) for t in entry.install_if)
        if entry.provider_priority is not None:
            self.provider_priority[key] = entry.provider_priority

    def install_if_additions(self, candidates: Collection[Package], chosen: Sequence[Package]) -> list[Package]:
        """The packages apk would add because of `install_if` (`i:`): each one whose every
        `i:` item is satisfied by a chosen package (by name or provide). Repeats until no
        more are added; the newest version of a name wins. The caller resolves their
        dependencies."""
        taken, added = list(chosen), list[Package]()
        while True:
            names = {p.name for p in taken}
            new = [
                p for p in candidates
                if p.name not in names and (p.name, p.version) in self.install_if
                and all(self._chosen_satisfies(taken, d) for d in self.install_if[(p.name, p.version)])
            ]
            newest: dict[str, Package] = {}
            for package in new:
                best = newest.get(package.name)
                if best is None or self.compare_versions(package.version, best.version) > 0:
                    newest[package.name] = package
            if not newest:
                return added
            added += newest.values()
            taken += newest.values()

    def _chosen_satisfies(self, chosen: list[Package], dependency: ApkDependency) -> bool:
        for package in chosen:
            offered = [(package.name, package.version)] + [(r.name, r.version) for r in package.provides]
            for name, version in offered:
                if name != dependency.name:
                    continue
                if dependency.op is None or (version and self.satisfies(version, dependency.op, dependency.version or "")):
                    return not dependency.conflict
        return dependency.conflict

    def fetch_package(self, package: Package, cache: Cache, progress: Progress) -> Path:
        """Download an .apk and verify it against the index that listed it; return its path.

        The cache cannot address it by SHA-256 (APKINDEX has none), so it is kept by URL; a
        file that fails any check is removed from the cache before the error is raised. Its
        data is not unpacked here: the files' SHA-1s are checked when it is installed, within
        the board's limits.
        """
        if package.url not in self.listed:
            raise UserError(f"{package.url}: not listed by any verified APKINDEX")
        identity, keys = self.listed[package.url]
        local = cache.fetch(package.url, sha256=None, size=package.size, progress=progress)
        try:
            verify_apk(local.read_bytes(), keys, package.url, identity=identity)
        except (IntegrityError, FormatError):
            cache.forget(local)
            raise
        self._verified_with[local] = keys
        return local

    def read_control_files(self, path: Path) -> dict[str, bytes]:
        """The files of the verified control stream: `.PKGINFO` and the scripts."""
        return {m.name: m.data for m in self.verified(path).control if m.info.isreg()}

    def verified(self, path: Path) -> VerifiedApk:
        """An .apk's control data, its signature checked as read_entries checks it."""
        keys = self._verified_with.get(path) or load_rsa_keys((SHIPPED_KEYS,))
        return verify_apk(path.read_bytes(), keys, str(path))

    def read_entries(self, path: Path, budget: UnpackBudget | None = None) -> Iterator[Entry]:
        """The verified data entries of an .apk, its signature checked with the keys of the
        feed it was fetched from (the shipped Alpine keys for a file fetched otherwise)."""
        keys = self._verified_with.get(path) or load_rsa_keys((SHIPPED_KEYS,))
        return iter(read_apk(path.read_bytes(), keys, str(path), budget=budget).entries)


    def identify(self, path: Path, head: FileHead) -> str | None:
        if "APKINDEX" in path.name and path.name.endswith(".tar.gz"):
            return "APKINDEX"  # by name too: a damaged one must still fail as a signature
        if not self.recognizes(head):
            return None
        return "APKINDEX" if _holds_apkindex(path) else "apk"

    def verify_file(self, path: Path, kind: str, keys_dirs: Sequence[Path]) -> VerifyReport:
        """An .apk's or an APKINDEX's RSA signature; an .apk's data hash (or, for old
        packages, the signature over control and data) and every file's SHA-1 too."""
        keys = load_rsa_keys(keys_dirs or (SHIPPED_KEYS,))
        if kind == "APKINDEX":
            index = read_apkindex(path.read_bytes(), keys, str(path))
            return VerifyReport("APKINDEX", True, index.key.name, f"{index.description}: {len(index.entries)} packages")
        package = read_apk(path.read_bytes(), keys, str(path))
        datahash = "datahash" if "datahash" in package.pkginfo else "legacy signature over control+data"
        return VerifyReport("apk", True, package.key.name,
                            f"{package.name} {package.version}, identity {package.identity}, {datahash} and "
                            f"{len(package.entries)} entries' SHA-1 checked")


def _holds_apkindex(path: Path) -> bool:
    """An index's signed tar starts with DESCRIPTION or APKINDEX, a package's with .PKGINFO;
    only the head of it is inflated."""
    blob = path.read_bytes()
    try:
        _, signed_from = read_signature_stream(blob, str(path))
    except (IntegrityError, FormatError):
        return False  # read_apk says what is wrong with it
    return head_of(blob[signed_from:]).inflated[:100].rstrip(b"\0") in (b"DESCRIPTION", b"APKINDEX")
