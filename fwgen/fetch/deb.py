"""The `deb` backend: Debian repositories and .deb archives.

Trust chain (wiki.debian.org/DebianRepository/Format): `dists/<suite>/InRelease` is an
OpenPGP clearsigned file; once its signature verifies against the Debian archive keys, only
the signed text is used. Its `SHA256:` list gives hash and size of
`<component>/binary-<arch>/Packages.xz`; each stanza there gives `Filename`, `Size` and
`SHA256` of a .deb. A .deb is an ar archive (deb(5)) of `debian-binary`, `control.tar[.*]`
and `data.tar[.*]`.
"""

from __future__ import annotations

import array
import datetime as dt
import email.utils
import functools
import gzip
import hashlib
import itertools
import lzma
import marshal
import mmap
import os
import queue
import re
import struct
import threading
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
from .backend import Backend, FileHead, VerifyReport, feed_arch
from .package import AlternativesGroup, Package, PackageSet, Relation

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


# -- Sources -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourcePackage:
    """A source package as `Sources` lists it: the .dsc and the files it names, each with
    the SHA-256 and size the verified index gives, under `base_url`/`directory`."""

    name: str
    version: str
    base_url: str
    directory: str
    files: tuple[ReleaseFile, ...]  # path: the file name

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def url(self, file: ReleaseFile) -> str:
        return f"{self.base_url}/{self.directory}/{file.path}"


def parse_sources(text: str, names: set[str], *, base_url: str, source: str) -> list[SourcePackage]:
    """The stanzas of a `Sources` index for the source packages named `names`."""
    found = []
    for block in re.split(r"\n(?=Package: )", text):
        name = block[len("Package: "):block.find("\n")].strip() if block.startswith("Package: ") else ""
        if name not in names:  # most of the 35,000 stanzas: skip them unparsed
            continue
        fields = next(parse_stanzas(block))
        try:
            files = tuple(ReleaseFile(path, int(size), digest.lower())
                          for digest, size, path in (line.split() for line in fields["Checksums-Sha256"].splitlines()
                                                     if line.strip()))
            found.append(SourcePackage(name, fields["Version"], base_url, fields["Directory"], files))
        except (KeyError, ValueError) as e:
            raise FormatError(f"{source}: source package {quoted(name)}: missing or bad field {e}") from e
    return found


def source_of(package: Package) -> tuple[str, str]:
    """(source name, source version) of a binary package: its `Source:` field, which names
    the version when it differs (`gcc-12 (12.2.0-14)`), else the package's own name and
    version without a binNMU suffix (`+b1`: Debian Policy 5.6.12, rebuilt, same source)."""
    field = package.source or package.name
    name, _, version = field.partition(" (")
    if version:
        return name, version.rstrip(")")
    return name, re.sub(r"\+b\d+$", "", package.version)


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
class DebBackend(Backend):
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

    def load_index(self, feed: Feed, arch: Arch, cache: Cache, progress: Progress) -> PackageSet:
        debarch = feed_arch(self, feed, arch)
        base = feed.url.rstrip("/")
        dists = f"{base}/dists/{feed.suite}"
        release = self.fetch_release(feed, cache, progress)
        components: list[CompactIndex] = []
        for component in feed.components:
            path = _pick_index(release, f"{component}/binary-{debarch}", f"{dists}/InRelease")
            entry = release.files[path]
            url = _index_url(dists, path, entry, release)
            with cache.shared_derived(cache.derived_path(entry.sha256, PARSED_INDEX_KIND), progress) as parsed:
                components.append(_read_packages_file(cache, entry, path, feed.name, base, url, parsed, progress))
        return PackageSet(components)

    def load_sources(self, feed: Feed, names: set[str], cache: Cache, progress: Progress) -> list[SourcePackage]:
        """The source packages named `names` in the feed's `Sources` indexes (every version
        listed), each index checked against the verified InRelease like `Packages`."""
        base = feed.url.rstrip("/")
        dists = f"{base}/dists/{feed.suite}"
        release = self.fetch_release(feed, cache, progress)
        found: list[SourcePackage] = []
        for component in feed.components:
            path = _pick_index(release, f"{component}/source", f"{dists}/InRelease", stem="Sources")
            entry = release.files[path]
            url = _index_url(dists, path, entry, release)
            progress.step(f"source index {path} of {feed.name} ({entry.size / 1048576:.1f} MiB)")
            local = cache.fetch(url, sha256=entry.sha256, size=entry.size, progress=progress)
            text = _decompress_index(local.read_bytes(), path, url).decode("utf-8", "replace")
            found += parse_sources(text, names, base_url=base, source=url)
        return found

    def fetch_release(self, feed: Feed, cache: Cache, progress: Progress) -> Release:
        """Fetch `dists/<suite>/InRelease`, verify it, and return its SHA256 file list."""
        url = f"{feed.url.rstrip('/')}/dists/{feed.suite}/InRelease"
        local = cache.fetch(url, sha256=None, size=None, progress=progress)
        try:
            return _verified_release(local.read_bytes(), feed.keys, url)
        except IntegrityError:
            # Never keep a refused index: the next run must ask the mirror again.
            cache.forget(local)
            raise

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

    def prepare_package(self, path: Path) -> None:
        """Make the zstd copy of a big data.tar now: the download threads call this as soon as
        their package is in the cache, and lzma runs without the GIL, so on two cores the
        copies of some packages are made while others download instead of one after the
        other at extraction. A package that cannot be read is left to the extraction,
        which names it in its error."""
        cache = Cache.holding(path)
        if cache is None or cache.derived_path(path.name, _TRANSCODED_KIND).exists():
            return
        with _TRANSCODING:
            try:
                data = path.read_bytes()
                member = _data_member(list_ar_members(data, str(path)))
                if member is not None and _worth_transcoding(member):
                    _transcode(_transcoded_path(cache, data), path, data, member, None)
            except (UserError, OSError):
                return

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

    def identify(self, path: Path, head: FileHead) -> str | None:
        if head.raw.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
            return "InRelease"
        # The older ar-style .ipk has a .deb's bytes: its name says it is OpenWrt's.
        return "deb" if self.recognizes(head) and path.suffix != ".ipk" else None

    def verify_file(self, path: Path, kind: str, keys_dirs: Sequence[Path]) -> VerifyReport:
        """An InRelease's OpenPGP signature; a .deb's structure, every member decompressed
        and its files checked against its own md5sums (as `dpkg --verify`): a .deb carries no
        signature, the repository's InRelease vouches for it."""
        if kind == "InRelease":
            verify_clearsigned(path.read_bytes(), load_certs(tuple(_key_files(keys_dirs))), str(path))
            by = ", ".join(map(str, keys_dirs)) if keys_dirs else "Debian archive keys"
            return VerifyReport("InRelease", True, by, "OpenPGP signature verifies")
        members = [m.name for m in list_ar_members(path.read_bytes(), str(path))]
        if not any(m.startswith("data.tar") for m in members) or not any(m.startswith("control.tar") for m in members):
            raise FormatError(f"{path}: members {members}: no control.tar or data.tar")
        entries = list(self.read_entries(path))
        checked = _check_md5sums(path, self.read_control_files(path).get("md5sums"), entries)
        return VerifyReport("deb", True, None, f"structure ok ({', '.join(members)}), {len(entries)} entries, "
                                               f"{checked}; signature lives in the repository's InRelease")


def _key_files(keys_dirs: Sequence[Path]) -> list[Path]:
    """The key files given: each file itself, each folder's files."""
    files: list[Path] = []
    for entry in keys_dirs:
        files += sorted(p for p in entry.iterdir() if p.is_file()) if entry.is_dir() else [entry]
    return files


def _check_md5sums(path: Path, md5sums: bytes | None, entries: list[Entry]) -> str:
    """Check the data files against the package's md5sums (`<md5>  <path>` per line, paths
    relative to /); say what was checked. A file it lists that differs or is absent is refused."""
    if md5sums is None:
        return "no md5sums to check"
    files = {e.path: e.data for e in entries if e.type is EntryType.FILE}
    listed = [(n, line) for n, line in enumerate(md5sums.decode("utf-8", "replace").splitlines(), 1) if line.strip()]
    for number, line in listed:
        digest, _, name = line.partition("  ")
        data = files.get("/" + name.lstrip("/"))
        if data is None:
            raise IntegrityError(f"{path}: md5sums:{number}: {name}: not in data.tar")
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != digest.lower():
            raise IntegrityError(f"{path}: md5sums:{number}: {name}: content does not match its MD5 {digest}")
    return f"{len(listed)} files match md5sums"


@functools.lru_cache(maxsize=8)
def _verified_release(data: bytes, keys: tuple[Path, ...], url: str) -> Release:
    # A build reads the same InRelease for its packages, its kernel and its up-to-date check:
    # the signature is checked once per process and content.
    text = verify_clearsigned(data, load_certs(keys), url)
    return parse_release(text.decode("utf-8", "replace"), url)


# -- the transcoded data.tar cache ----------------------------------------------------------
# A big package's data.tar.xz is decompressed by every build that installs it: the cloud
# kernel's is 20 MB of xz, 104 MB of tar, ~1.5 s of lzma. The cache keeps such a tar again,
# compressed with zstd (level 1, about 3 times xz's size, read back in ~0.2 s), named by the
# SHA-256 of the .deb it came from. The zstd frame carries its content size and an XXH64
# checksum, so a damaged or truncated copy is noticed, discarded (with a warning) and written
# again.
# Below this, xz costs little more than zstd (compressed bytes); above it, a warm build's
# extraction was mostly lzma (libstdc++6's 0.6 MB and libssl3's 1.6 MB among 12 packages).
_TRANSCODE_MIN_SIZE = 64 << 10
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
    # Looked up by the name the cache gives the verified .deb, its SHA-256 (no hashing); made
    # and named by the SHA-256 of the bytes it is made of, so a .deb damaged since it was
    # verified never gives a copy under the good one's name.
    tar = _read_zstd_file(cache.derived_path(path.name, _TRANSCODED_KIND))
    return tar if tar is not None else _transcode(_transcoded_path(cache, data), path, data, member, budget)


def _transcoded_path(cache: Cache, data: bytes) -> Path:
    return cache.derived_path(hashlib.sha256(data).hexdigest(), _TRANSCODED_KIND)


def _transcode(copy: Path, path: Path, data: bytes, member: ArMember, budget: UnpackBudget | None) -> bytes:
    """The data.tar of the .deb `data`, decompressed, its zstd copy stored as `copy`."""
    compression = member.name.partition(".tar")[2].lstrip(".")
    raw = data[member.offset : member.offset + member.size]
    tar = decompress(raw, compression, _member_source(path, member), budget)
    compressor = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
    Cache.store_derived(copy, compressor.compress(tar))
    return tar


# At most this many copies are made at once ahead of extraction, each holding its tar in memory.
_TRANSCODING = threading.BoundedSemaphore(os.cpu_count() or 1)


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


def _pick_index(release: Release, folder: str, source: str, stem: str = "Packages") -> str:
    for name in (f"{stem}.xz", f"{stem}.gz", stem):
        if f"{folder}/{name}" in release.files:
            return f"{folder}/{name}"
    raise FormatError(f"{source}: lists no {folder}/{stem} index (is the arch or component served?)")


def _index_url(dists: str, path: str, entry: ReleaseFile, release: Release) -> str:
    # Acquire-By-Hash: the index as it was when InRelease was signed, whatever a mirror
    # sync does to the plain name meanwhile.
    if release.by_hash:
        return f"{dists}/{path.rsplit('/', 1)[0]}/by-hash/SHA256/{entry.sha256}"
    return f"{dists}/{path}"


_OPENED_INDEXES: dict[tuple[Path, str, str, str], CompactIndex] = {}  # the last few, by file, feed and URL


def forget_opened_indexes() -> None:
    """Forget the compact indexes this process opened (tests: to see what the cache files do)."""
    _OPENED_INDEXES.clear()


def _read_packages_file(cache: Cache, entry: ReleaseFile, path: str, feed: str, base: str, url: str, parsed: Path,
                        progress: Progress) -> CompactIndex:
    # `parsed` is named by the SHA-256 the signed Release gives the Packages file, so a build
    # that asks for the same index again in this process reuses it (and the packages already
    # parsed), and a later build reads the compact index back from the cache without fetching
    # or hashing the Packages file it was made from.
    key = (parsed, feed, base, url)
    if key in _OPENED_INDEXES:
        return _OPENED_INDEXES[key]
    index = read_compact_index(parsed, feed=feed, base_url=base, source=url)
    # None, or a damaged compact index discarded with a warning: build it from the verified file.
    if index is None:
        local = cache.fetch(url, sha256=entry.sha256, size=entry.size, progress=progress)
        data = encode_compact_index(_decompressed_pieces(local, path, url))
        Cache.store_derived(parsed, data)
        index = _decode_compact_index(data[data.index(b"\n") + 1:], feed=feed, base_url=base, source=url)
    if len(_OPENED_INDEXES) >= 8:
        del _OPENED_INDEXES[next(iter(_OPENED_INDEXES))]
    _OPENED_INDEXES[key] = index
    return index


# -- the compact index ----------------------------------------------------------------------
# Parsing Debian main's Packages (62,000 stanzas, 49 MB) into Package objects took ~6 s, and
# reading a parse back ~1.3 s, while a resolution looks at a few hundred packages. The cache
# keeps instead, beside the verified Packages file and named by its SHA-256 (so it can only
# ever describe that exact file): the stanzas cut down to the fields fwgen reads (26 MB),
# an offset table, and two marshalled tables (package name -> stanzas, provided name ->
# stanzas). Loading it is reading the file, checking the SHA-256 in its header and one
# marshal.loads (~0.05 s); a stanza is parsed by parse_packages, the parser of record, when a
# name leads to it. A file that is damaged, truncated, of another format or unreadable is
# discarded with a warning and rebuilt, never half-trusted. Bump PARSED_INDEX_VERSION whenever
# parse_packages or this layout changes.
PARSED_INDEX_VERSION = 3
PARSED_INDEX_KIND = f"deb-index.v{PARSED_INDEX_VERSION}.compact"
_PARSED_INDEX_MAGIC = b"fwgen-deb-index"
# A wanted field with its continuation lines, or a blank line (a stanza's end), each after "\n".
_KEPT_LINES = re.compile(
    rb"\n(?:(?:" + "|".join(sorted(_WANTED)).encode() + rb"):[^\n]*(?:\n[ \t]+\S[^\n]*)*|[ \t]*(?=\n))"
)
_STANZA_END = re.compile(rb"\n\s*\n")
_PROVIDED_NAME = re.compile(r"(?:^|,)\s*([a-z0-9][a-z0-9+.-]*)")
_FIELD = {name: re.compile(rb"(?:^|\n)%s:([^\n]*)" % name.encode()) for name in ("Package", "Provides")}


def encode_compact_index(text: bytes | Iterable[bytes]) -> bytes:
    """The compact-index cache file for the Packages text `text` (or its consecutive
    pieces, cut anywhere): header line, then the length of the tables, the marshalled
    tables, and the cut-down stanzas.

    Tables: the name of each stanza in order, one per line (a string splits and becomes a
    dict in milliseconds, where a marshalled dict of 62,000 lists took 0.3 s); the stanzas
    of names listed more than once; the stanzas of each provided name; stanza offsets."""
    stanzas: list[bytes] = []
    names: list[str] = []
    provides: dict[str, list[int]] = {}
    # Block by block, as the pieces come: the tables grow while the next piece decompresses.
    for block in _stanza_blocks([text] if isinstance(text, bytes) else text):
        first = len(stanzas)
        stanzas += _kept_stanzas(block)
        names += [_package_name(stanza) for stanza in stanzas[first:]]
        for i in range(first, len(stanzas)):
            if b"Provides:" in stanzas[i]:
                # The names only (the stanza's own parse reads the rest, and refuses what is malformed).
                for name in _PROVIDED_NAME.findall(_field_value(stanzas[i], "Provides")):
                    provides.setdefault(name, []).append(i)
    repeated: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        repeated.setdefault(name, []).append(i)
    repeated = {name: found for name, found in repeated.items() if len(found) > 1}
    offsets = array.array("Q", itertools.accumulate(map(len, stanzas), initial=0))
    tables = marshal.dumps(("\n".join(names), repeated, provides, offsets.tobytes()))
    body = struct.pack("<Q", len(tables)) + tables + b"".join(stanzas)
    header = b"%s %d %s\n" % (_PARSED_INDEX_MAGIC, PARSED_INDEX_VERSION, hashlib.sha256(body).hexdigest().encode())
    return header + body


def _stanza_blocks(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The text of `pieces` again, cut only after blank lines: every block holds whole stanzas."""
    rest = b""
    for piece in pieces:
        buffer = rest + piece
        cut = buffer.rfind(b"\n\n") + 2
        if cut < 2:
            rest = buffer
            continue
        yield buffer[:cut]
        rest = buffer[cut:]
    if rest:
        yield rest


def _kept_stanzas(block: bytes) -> list[bytes]:
    # A block starts at a line's start, as the text does: the "\n" before it is its context.
    kept = b"".join(_KEPT_LINES.findall(b"\n" + block))
    # Whitespace-only lines end stanzas too; most files have none, and a plain split is faster.
    parts = _STANZA_END.split(kept) if re.search(rb"\n[ \t]+\n", kept) else kept.split(b"\n\n")
    return [s for s in (s.strip(b"\n") for s in parts) if s]


def _package_name(stanza: bytes) -> str:
    if stanza.startswith(b"Package: "):  # where Debian's tools put it
        end = stanza.find(b"\n")
        name = stanza[9 : end if end >= 0 else len(stanza)]
        if name == name.strip() and b" " not in name:
            return name.decode("utf-8", "replace")
    return _field_value(stanza, "Package")


def _field_value(stanza: bytes, name: str) -> str:
    # As parse_stanzas reads it: the first line's value, stripped (names never continue).
    match = _FIELD[name].search(stanza)
    return match[1].strip().decode("utf-8", "replace") if match else ""


def read_compact_index(path: Path, *, feed: str, base_url: str, source: str) -> CompactIndex | None:
    """The compact index in a cache file, or None when there is none. One that is damaged or
    of another format version is discarded with a warning, and None returned (the caller
    then builds it again from the Packages file). The file is memory-mapped: its pages are
    read once, by the hash check, and never copied."""
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # ValueError: mmap of an empty file
        discard_damaged(path, f"unreadable ({getattr(e, 'strerror', None) or e})", "parsing the index again")
        return None
    end = data.find(b"\n", 0, 200)
    body = memoryview(data)[end + 1:]
    expected = b"%s %d %s" % (_PARSED_INDEX_MAGIC, PARSED_INDEX_VERSION, hashlib.sha256(body).hexdigest().encode())
    if end < 0 or data[:end] != expected:
        discard_damaged(path, "header does not match the content", "parsing the index again")
        return None
    try:
        return _decode_compact_index(body, feed=feed, base_url=base_url, source=source)
    except (ValueError, TypeError, EOFError, struct.error) as e:
        discard_damaged(path, f"not a compact index ({type(e).__name__}: {e})", "parsing the index again")
        return None


def _decode_compact_index(body: memoryview | bytes, *, feed: str, base_url: str, source: str) -> CompactIndex:
    """The CompactIndex of a file's body (after its header line), its shape checked."""
    body = memoryview(body)
    (size,) = struct.unpack_from("<Q", body)
    names, repeated, provides, offset_bytes = marshal.loads(body[8 : 8 + size])
    if not (isinstance(names, str) and isinstance(repeated, dict) and isinstance(provides, dict)
            and isinstance(offset_bytes, bytes)):
        raise TypeError("tables of the wrong types")
    offsets = array.array("Q", offset_bytes)
    stanzas = body[8 + size:]
    listed = names.split("\n")
    if len(listed) != len(offsets) - 1 or offsets[0] != 0 or offsets[-1] != len(stanzas):
        raise ValueError(f"{len(listed)} names and {len(offsets)} offsets for {len(stanzas)} bytes of stanzas")
    # Reversed, so that the first stanza of a repeated name is the one kept.
    first = dict(zip(reversed(listed), range(len(listed) - 1, -1, -1), strict=True))
    return CompactIndex(stanzas, offsets, first, repeated, provides, feed=feed, base_url=base_url, source=source)


class CompactIndex:
    """One Packages file as a PackageSource: stanzas parsed (and kept) when looked up."""

    def __init__(self, stanzas: memoryview, offsets: array.array, first: dict[str, int],
                 repeated: dict[str, list[int]], provides: dict[str, list[int]], *, feed: str, base_url: str,
                 source: str) -> None:
        self.stanzas = stanzas
        self.offsets = offsets
        self.first = first  # name -> its first stanza
        self.repeated = repeated  # name -> its stanzas, for names listed more than once
        self.provides = provides
        self.feed = feed
        self.base_url = base_url
        self.source = source
        self._parsed: dict[int, Package] = {}

    @property
    def names(self) -> Iterable[str]:
        return self.first.keys()

    def package(self, i: int) -> Package:
        """The package of stanza `i`, parsed by parse_packages on first use."""
        found = self._parsed.get(i)
        if found is None:
            text = bytes(self.stanzas[self.offsets[i] : self.offsets[i + 1]]).decode("utf-8", "replace")
            [found] = parse_packages(text, feed=self.feed, base_url=self.base_url, source=self.source)
            self._parsed[i] = found
        return found

    def named(self, name: str) -> list[Package]:
        stanzas = self.repeated.get(name) or ([self.first[name]] if name in self.first else [])
        return [self.package(i) for i in stanzas]

    def providing(self, name: str) -> list[tuple[Package, Relation]]:
        pairs = []
        for i in self.provides.get(name, ()):
            package = self.package(i)
            pairs += [(package, r) for r in package.provides if r.name == name]
        return pairs

    def __iter__(self) -> Iterator[Package]:
        return (self.package(i) for i in range(len(self.offsets) - 1))

    def __len__(self) -> int:
        return len(self.offsets) - 1


def _decompressed_pieces(local: Path, path: str, source: str) -> Iterator[bytes]:
    """The content of the index file `local` (compressed as its name `path` says), in
    pieces, decompressed by a thread ahead of the caller: lzma and zlib let other threads
    run while they work, so on two cores Debian main's second of xz and the second its
    compact index takes to build overlap instead of adding up."""
    pieces: queue.SimpleQueue[bytes | Exception | None] = queue.SimpleQueue()  # unbounded: a
    # consumer that stops early leaves no thread blocked; it holds no more than the text.

    def decompress() -> None:
        try:
            data = local.read_bytes()
            for piece in _xz_pieces(data) if path.endswith(".xz") else [_decompress_index(data, path, source)]:
                pieces.put(piece)
            pieces.put(None)
        except (lzma.LZMAError, EOFError, FormatError, OSError) as e:
            pieces.put(e)

    threading.Thread(target=decompress, name="index-decompress", daemon=True).start()
    while (piece := pieces.get()) is not None:
        if isinstance(piece, FormatError):
            raise piece
        if isinstance(piece, Exception):
            raise FormatError(f"{source}: cannot decompress: {piece}") from piece
        yield piece


def _xz_pieces(data: bytes) -> Iterator[bytes]:
    # What lzma.decompress returns, in pieces of a few MiB, each decompressed by one call
    # that runs without the GIL (small calls would wait for it behind the parsing thread).
    streams = 0
    while data:
        decompressor = lzma.LZMADecompressor()
        try:
            piece = decompressor.decompress(data, _INDEX_PIECE)
        except lzma.LZMAError:
            if streams:
                return  # what follows the streams is not one (lzma.decompress ignores it too)
            raise
        while True:
            yield piece
            if decompressor.eof:
                break
            if decompressor.needs_input:
                raise EOFError("compressed data ended before the end-of-stream marker was reached")
            piece = decompressor.decompress(b"", _INDEX_PIECE)
        streams += 1
        data = decompressor.unused_data


_INDEX_PIECE = 4 << 20


def _decompress_index(data: bytes, path: str, source: str) -> bytes:
    try:
        if path.endswith(".xz"):
            data = lzma.decompress(data)
        elif path.endswith(".gz"):
            data = gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise FormatError(f"{source}: cannot decompress: {e}") from e
    return data

