"""The `deb` backend: Debian repositories and .deb archives.

Trust chain (wiki.debian.org/DebianRepository/Format): `dists/<suite>/InRelease` is an
OpenPGP clearsigned file; once its signature verifies against the Debian archive keys, only
the signed text is used. Its `SHA256:` list gives hash and size of
`<component>/binary-<arch>/Packages.xz`; each stanza there gives `Filename`, `Size` and
`SHA256` of a .deb. A .deb is an ar archive (deb(5)) of `debian-binary`, `control.tar[.*]`
and `data.tar[.*]`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import functools
import gc
import gzip
import hashlib
import json
import lzma
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pysequoia
import zstandard

from ..arch import Arch
from ..board import Feed
from ..cache import Cache, discard_damaged
from ..errors import FormatError, IntegrityError, UserError, quoted
from ..progress import Progress
from ..rootfs import Entry, EntryType
from . import debversion
from .archive import (
    AR_MAGIC,
    ArMember,
    UnpackBudget,
    decompress,
    list_ar_members,
    read_member_tar,
    read_tar_entries,
)
from .backend import FileHead, feed_arch, register_backend
from .package import AlternativesGroup, Package, Relation

KEYS_DIR = Path(__file__).resolve().parent.parent / "keys"

# The fields the resolver and the fetcher need; the rest of a stanza is skipped unparsed.
_WANTED = {
    "Package", "Version", "Architecture", "Depends", "Pre-Depends", "Provides", "Conflicts",
    "Breaks", "Filename", "Size", "SHA256", "Multi-Arch", "Essential", "Priority", "Source",
}


# -- signatures -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def load_certs(paths: tuple[Path, ...] = ()) -> tuple[pysequoia.Cert, ...]:
    """The certificates in `paths` (files holding one or more), or fwgen's shipped Debian keys."""
    files = paths or tuple(sorted(KEYS_DIR.glob("*.pgp")))
    certs: list[pysequoia.Cert] = []
    for file in files:
        try:
            certs.extend(pysequoia.Cert.split_file(str(file)))
        except Exception as e:  # pysequoia raises plain exceptions carrying a Rust backtrace
            raise UserError(f"{file}: not an OpenPGP certificate: {_first_line(e)}") from e
    if not certs:
        raise UserError(f"no OpenPGP certificates found in {', '.join(map(str, files)) or KEYS_DIR}")
    return tuple(certs)


def verify_clearsigned(data: bytes, certs: tuple[pysequoia.Cert, ...], source: str) -> bytes:
    """Verify a clearsigned message against `certs` and return only the signed text."""
    try:
        verified = pysequoia.verify(bytes=data, store=lambda _key_ids: list(certs))
    except Exception as e:
        raise IntegrityError(
            f"{source}: OpenPGP signature does not verify: {_first_line(e)}",
            "the file was refused; is the mirror tampered with or the keyring out of date?",
        ) from e
    if not verified.valid_sigs:
        raise IntegrityError(f"{source}: no valid signature by a trusted key")
    if verified.bytes is None:
        raise IntegrityError(f"{source}: the signature carries no signed text")
    return verified.bytes


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# -- control-file syntax --------------------------------------------------------------------
def parse_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Paragraphs of `Field: value` lines (deb822); continuation lines start with a space."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if not line or line.startswith("#"):
                continue
            if line[0] in " \t":
                if key is not None:
                    fields[key] += "\n" + line[1:]
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields:
            yield fields


_RELATION = re.compile(
    r"^\s*(?P<name>[a-z0-9][a-z0-9+.-]*)(?::(?P<arch>[a-z0-9-]+))?\s*"
    r"(?:\(\s*(?P<op><<|<=|>=|>>|=|<|>)\s*(?P<version>[^)\s]+)\s*\))?\s*"
    r"(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$"
)


@functools.lru_cache(maxsize=131072)
def parse_relation(text: str) -> Relation:
    """One relation, `name[:arch] [(op version)]`; architecture and profile restrictions
    (`[amd64]`, `<!nocheck>`, seen only in source packages) are dropped."""
    match = _RELATION.match(text)
    if not match:
        raise FormatError(f"bad package relation {text.strip()!r}")
    return Relation(match["name"], match["op"], match["version"], match["arch"])


@functools.lru_cache(maxsize=65536)
def parse_relations(text: str) -> tuple[AlternativesGroup, ...]:
    """A Depends-style field: `,` between items, `|` between alternatives."""
    groups = []
    for item in text.split(","):
        if item.strip():
            groups.append(tuple(parse_relation(alt) for alt in item.split("|")))
    return tuple(groups)


def parse_packages(text: str, *, feed: str, base_url: str, source: str) -> list[Package]:
    """The stanzas of a `Packages` index as Package objects."""
    packages = []
    for fields in parse_stanzas(text):
        fields = {k: v for k, v in fields.items() if k in _WANTED}
        try:
            depends = parse_relations(fields.get("Pre-Depends", "")) + parse_relations(
                fields.get("Depends", "")
            )
            conflicts = parse_relations(fields.get("Conflicts", "")) + parse_relations(
                fields.get("Breaks", "")
            )
            packages.append(
                Package(
                    name=fields["Package"],
                    version=fields["Version"],
                    arch=fields["Architecture"],
                    feed=feed,
                    format="deb",
                    base_url=base_url,
                    filename=fields["Filename"],
                    size=int(fields["Size"]),
                    sha256=fields["SHA256"].lower(),
                    depends=depends,
                    provides=tuple(g[0] for g in parse_relations(fields.get("Provides", ""))),
                    conflicts=tuple(r for g in conflicts for r in g),
                    multi_arch=fields.get("Multi-Arch"),
                    essential=fields.get("Essential") == "yes",
                    priority=fields.get("Priority"),
                    source=fields.get("Source"),
                )
            )
        except KeyError as e:
            name = quoted(fields.get("Package", "?"))
            raise FormatError(f"{source}: package {name}: missing field {e.args[0]}") from e
        except (ValueError, FormatError) as e:
            name = quoted(fields.get("Package", "?"))
            raise FormatError(f"{source}: package {name}: {e}") from e
    return packages


# -- Release files --------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseFile:
    path: str  # relative to dists/<suite>/
    size: int
    sha256: str


@dataclass(frozen=True)
class Release:
    files: dict[str, ReleaseFile]  # by path relative to dists/<suite>/
    by_hash: bool  # Acquire-By-Hash: indexes are also served as by-hash/SHA256/<hash>


def parse_release(text: str, source: str, *, now: dt.datetime | None = None) -> Release:
    """The SHA256 file list of a verified Release text, after checking Valid-Until."""
    stanzas = list(parse_stanzas(text))
    if not stanzas:
        raise FormatError(f"{source}: empty Release file")
    fields = stanzas[0]
    _check_valid_until(fields, source, now or dt.datetime.now(dt.UTC))
    if "SHA256" not in fields:
        raise FormatError(f"{source}: no SHA256 field (only SHA-256 is trusted)")
    files = {}
    for line in fields["SHA256"].splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        digest, size, path = parts
        files[path] = ReleaseFile(path, int(size), digest.lower())
    return Release(files, by_hash=fields.get("Acquire-By-Hash", "no") == "yes")


def _check_valid_until(fields: dict[str, str], source: str, now: dt.datetime) -> None:
    if "Valid-Until" not in fields:
        return
    try:
        valid_until = email.utils.parsedate_to_datetime(fields["Valid-Until"].replace("UTC", "+0000"))
    except (TypeError, ValueError) as e:
        raise FormatError(f"{source}: Valid-Until '{fields['Valid-Until']}' is not a date") from e
    if valid_until < now:
        raise IntegrityError(
            f"{source}: expired: Valid-Until {fields['Valid-Until']} has passed",
            "the mirror is stale or replaying an old index",
        )


# -- the backend ----------------------------------------------------------------------------
class DebBackend:
    """Debian (and derivative) repositories."""

    name = "deb"
    neutral_arch = "all"
    purl = ("deb", "debian")  # the package-URL type and namespace (purl-spec's PURL-TYPES)
    # Debian Policy 12.5: every package has its copyright file here, machine-readable (DEP-5)
    # where its maintainer wrote it so; the index states no licence.
    license_file = "/usr/share/doc/{name}/copyright"

    def arch_name(self, arch: Arch) -> str:
        if arch.debian is None:
            raise UserError(f"Debian has no port for {arch.value}", "use an OpenWrt feed for it")
        return arch.debian

    def compare_versions(self, a: str, b: str) -> int:
        return debversion.compare_versions(a, b)

    def satisfies(self, version: str, op: str, wanted: str) -> bool:
        return debversion.satisfies(version, op, wanted)

    def recognizes(self, head: FileHead) -> bool:
        return head.raw.startswith(AR_MAGIC)

    def load_index(self, feed: Feed, arch: Arch, cache: Cache, progress: Progress) -> list[Package]:
        debarch = feed_arch(self, feed, arch)
        base = feed.url.rstrip("/")
        dists = f"{base}/dists/{feed.suite}"
        release = self.fetch_release(feed, cache, progress)
        packages: list[Package] = []
        for component in feed.components:
            path = _pick_index(release, f"{component}/binary-{debarch}", f"{dists}/InRelease")
            entry = release.files[path]
            url = f"{dists}/{path}"
            if release.by_hash:
                url = f"{dists}/{path.rsplit('/', 1)[0]}/by-hash/SHA256/{entry.sha256}"
            local = cache.fetch(url, sha256=entry.sha256, size=entry.size, progress=progress)
            with cache.shared_derived(cache.derived_path(entry.sha256, PARSED_INDEX_KIND), progress) as parsed:
                packages += _read_packages_file(local, path, feed.name, base, url, parsed)
        return packages

    def fetch_release(self, feed: Feed, cache: Cache, progress: Progress) -> Release:
        """Fetch `dists/<suite>/InRelease`, verify it, and return its SHA256 file list."""
        url = f"{feed.url.rstrip('/')}/dists/{feed.suite}/InRelease"
        local = cache.fetch(url, sha256=None, size=None, progress=progress)
        try:
            text = verify_clearsigned(local.read_bytes(), load_certs(feed.keys), url)
        except IntegrityError:
            # Never keep a refused index: the next run must ask the mirror again.
            cache.forget(local)
            raise
        return parse_release(text.decode("utf-8", "replace"), url)

    def read_entries(self, path: Path, budget: UnpackBudget | None = None) -> Iterator[Entry]:
        data = path.read_bytes()
        members = list_ar_members(data, str(path))
        if not members or members[0].name != "debian-binary":
            raise FormatError(f"{path}: offset 0x8: first ar member is not debian-binary")
        version = data[members[0].offset : members[0].offset + members[0].size]
        if not version.startswith(b"2."):
            raise FormatError(f"{path}: offset {members[0].offset:#x}: unsupported deb format {version!r}")
        cache = Cache.holding(path)
        member = _data_member(members)
        if cache is not None and member is not None and _worth_transcoding(member):
            tar = _read_transcoded_tar(cache, path, data, member, budget)
            return read_tar_entries(tar, _member_source(path, member), budget)
        return read_member_tar(path, data, members, "data", budget)

    def read_control_files(self, path: Path) -> dict[str, bytes]:
        """The files of a .deb's control.tar: control, md5sums, the maintainer scripts..."""
        data = path.read_bytes()
        entries = read_member_tar(path, data, list_ar_members(data, str(path)), "control")
        return {e.path.lstrip("/"): e.data for e in entries if e.type is EntryType.FILE}

    def read_package(self, path: Path, *, feed: str, base_url: str, filename: str) -> Package:
        """The package a .deb file describes by its own control file: what a `Packages`
        stanza of it would say."""
        data = path.read_bytes()
        members = list_ar_members(data, filename)
        control = next((e for e in read_member_tar(Path(filename), data, members, "control") if e.path == "/control"), None)
        if control is None:
            raise FormatError(f"{filename}: control.tar has no control file")
        stanza = (control.data.decode("utf-8", "replace").rstrip("\n")
                  + f"\nFilename: {filename}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
        [package] = parse_packages(stanza, feed=feed, base_url=base_url, source=filename)
        return package


# -- the transcoded data.tar cache ----------------------------------------------------------
# A big package's data.tar.xz is decompressed by every build that installs it: the cloud
# kernel's is 20 MB of xz, 104 MB of tar, ~1.5 s of lzma. The cache keeps such a tar again,
# compressed with zstd (level 1, about 3 times xz's size, read back in ~0.2 s), named by the
# SHA-256 of the .deb it came from. The zstd frame carries its content size and an XXH64
# checksum, so a damaged or truncated copy is noticed, discarded (with a warning) and written
# again.
_TRANSCODE_MIN_SIZE = 1 << 20  # compressed bytes (libc6: 2.2 MB of xz, 0.17 s); smaller ones are quick
_TRANSCODED_KIND = "data.tar.v1.zst"


def _data_member(members: list[ArMember]) -> ArMember | None:
    for member in members:
        base, dot_tar, _ = member.name.partition(".tar")
        if base == "data" and dot_tar:
            return member
    return None


def _worth_transcoding(member: ArMember) -> bool:
    return member.name.endswith((".xz", ".lzma", ".bz2")) and member.size >= _TRANSCODE_MIN_SIZE


def _member_source(path: Path, member: ArMember) -> str:
    # The wording of archive.read_member_tar, so errors read the same either way.
    return f"{path}: {member.name} at {member.offset:#x}"


def _read_transcoded_tar(cache: Cache, path: Path, data: bytes, member: ArMember,
                         budget: UnpackBudget | None) -> bytes:
    copy = cache.derived_path(hashlib.sha256(data).hexdigest(), _TRANSCODED_KIND)
    tar = _read_zstd_file(copy)
    if tar is None:
        compression = member.name.partition(".tar")[2].lstrip(".")
        raw = data[member.offset : member.offset + member.size]
        tar = decompress(raw, compression, _member_source(path, member), budget)
        compressor = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
        Cache.store_derived(copy, compressor.compress(tar))
    return tar


def _read_zstd_file(path: Path) -> bytes | None:
    """The content of a one-frame zstd file, or None if it is missing; a damaged or truncated
    one is discarded with a warning."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        discard_damaged(path, f"unreadable ({e.strerror})", "decompressing the package again")
        return None
    try:
        reader = zstandard.ZstdDecompressor().decompressobj()
        content = reader.decompress(blob)
    except zstandard.ZstdError as e:
        discard_damaged(path, f"not valid zstd ({e})", "decompressing the package again")
        return None
    complete = reader.eof and not reader.unused_data
    if not complete or zstandard.frame_content_size(blob) != len(content):
        discard_damaged(path, "truncated or followed by other data", "decompressing the package again")
        return None
    return content


def _pick_index(release: Release, folder: str, source: str) -> str:
    for name in ("Packages.xz", "Packages.gz", "Packages"):
        if f"{folder}/{name}" in release.files:
            return f"{folder}/{name}"
    raise FormatError(f"{source}: lists no {folder}/Packages index (is the arch or component served?)")


@functools.lru_cache(maxsize=8)
def _read_packages_file(
    local: Path, path: str, feed: str, base: str, url: str, parsed: Path
) -> tuple[Package, ...]:
    # `local` is content-addressed (named by its verified SHA-256), so a build that asks for
    # the same index again in this process reuses the parse, and a later build reads the
    # parse back from `parsed`, the cache file derived from it.
    with _gc_paused():
        packages = read_parsed_index(parsed, feed=feed, base_url=base)
        # A damaged parse was discarded with a warning: parse the verified index again.
        if packages is None:
            text = _decompress_index(local.read_bytes(), path, url)
            packages = parse_packages(text, feed=feed, base_url=base, source=url)
            Cache.store_derived(parsed, encode_parsed_index(packages))
    return tuple(packages)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Building an index allocates a million small objects that form no cycles; the cyclic
    # collector, triggered by the allocations, rescans the growing index again and again and
    # costs more than the work itself (1.0 of 2.3 s parsing Debian main, 1.0 of 1.4 s reading
    # the parsed index back). Nothing made in between needs collecting. The index then lives
    # as long as the process (memoized), so it is frozen out of the collector's sight: each
    # later collection would rescan it, which costs ~1 s over a build (PackageIndex alone is
    # made three times). The collection before it keeps older garbage from being frozen too.
    enabled = gc.isenabled()
    if enabled:
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.enable()


# -- the parsed-index cache -----------------------------------------------------------------
# Decompressing and parsing Debian main's Packages (62,000 stanzas) takes ~2 s; every build
# needs it. The parse is kept in the cache beside the verified Packages file, named by that
# file's SHA-256 (Cache.derived_path), so it can only ever describe that exact file. The
# file starts with a header line that names its format and the SHA-256 of the body after
# it, JSON compressed with zstd (level 1: 21 MB of JSON become 6 MB, 0.05 s to read); a file
# that is damaged, truncated, of another format or unreadable is discarded with a warning and
# rewritten, never half-trusted. Bump PARSED_INDEX_VERSION whenever parse_packages or
# this layout changes what a Package holds.
PARSED_INDEX_VERSION = 2
PARSED_INDEX_KIND = f"deb-index.v{PARSED_INDEX_VERSION}.json.zst"
_PARSED_INDEX_MAGIC = b"fwgen-deb-index"


def encode_parsed_index(packages: Sequence[Package]) -> bytes:
    """The parsed-index cache file for `packages`: header line, then a zstd-compressed JSON body.

    Feed name and base URL are left out (they come from the board, not the file). Relations
    and alternatives groups repeat a lot, so each is stored once and referred to by number.
    Relations are told apart by identity, not equality: parse_relation memoizes, so equal
    ones are mostly the same object, and hashing a dataclass by its fields is slow (1 s for
    Debian main). An equal relation stored twice only costs a few bytes.
    """
    relations: dict[int, tuple[int, Relation]] = {}
    groups: dict[tuple[int, ...], int] = {}

    def relation_ids(items: Iterable[Relation]) -> list[int]:
        return [relations.setdefault(id(r), (len(relations), r))[0] for r in items]

    def group_ids(items: Iterable[AlternativesGroup]) -> list[int]:
        return [groups.setdefault(tuple(relation_ids(g)), len(groups)) for g in items]

    rows = [
        [p.name, p.version, p.arch, p.filename, p.size, p.sha256, group_ids(p.depends),
         relation_ids(p.provides), relation_ids(p.conflicts), p.multi_arch, p.essential,
         p.priority, p.source]
        for p in packages
    ]
    body = json.dumps(
        {
            "relations": [[r.name, r.op, r.version, r.arch_qualifier] for _, r in relations.values()],
            "groups": list(groups),
            "packages": rows,
        },
        separators=(",", ":"),
    ).encode()
    body = zstandard.ZstdCompressor(level=1).compress(body)
    header = b"%s %d %s\n" % (_PARSED_INDEX_MAGIC, PARSED_INDEX_VERSION, hashlib.sha256(body).hexdigest().encode())
    return header + body


def read_parsed_index(path: Path, *, feed: str, base_url: str) -> list[Package] | None:
    """The packages in a parsed-index cache file, or None when it is missing. One that is
    damaged or of another format version is discarded with a warning, and None returned (the
    caller then parses the Packages file again)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        discard_damaged(path, f"unreadable ({e.strerror})", "parsing the index again")
        return None
    header, _, body = data.partition(b"\n")
    expected = b"%s %d %s" % (_PARSED_INDEX_MAGIC, PARSED_INDEX_VERSION, hashlib.sha256(body).hexdigest().encode())
    if header != expected:
        discard_damaged(path, "header does not match the content", "parsing the index again")
        return None
    try:
        document = json.loads(zstandard.ZstdDecompressor().decompress(body))
        return _decode_parsed_index(document, feed, base_url)
    except (zstandard.ZstdError, ValueError, TypeError, IndexError, KeyError) as e:
        discard_damaged(path, f"not a parsed index ({type(e).__name__}: {e})", "parsing the index again")
        return None


def _decode_parsed_index(document: dict, feed: str, base_url: str) -> list[Package]:
    relations = [
        Relation(name=name, op=op, version=version, arch_qualifier=arch)
        for name, op, version, arch in document["relations"]
    ]
    groups = [tuple(map(relations.__getitem__, ids)) for ids in document["groups"]]
    return [
        Package(
            name=name, version=version, arch=arch, feed=feed, format="deb", base_url=base_url,
            filename=filename, size=size, sha256=sha256,
            depends=tuple(map(groups.__getitem__, depends)),
            provides=tuple(map(relations.__getitem__, provides)),
            conflicts=tuple(map(relations.__getitem__, conflicts)),
            multi_arch=multi_arch, essential=essential, priority=priority, source=source,
        )
        for (name, version, arch, filename, size, sha256, depends, provides, conflicts, multi_arch,
             essential, priority, source) in document["packages"]
    ]


def _decompress_index(data: bytes, path: str, source: str) -> str:
    try:
        if path.endswith(".xz"):
            data = lzma.decompress(data)
        elif path.endswith(".gz"):
            data = gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise FormatError(f"{source}: cannot decompress: {e}") from e
    return data.decode("utf-8", "replace")


register_backend(DebBackend())
