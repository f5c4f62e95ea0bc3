"""The `deb` backend: Debian repositories and .deb archives.

Trust chain (wiki.debian.org/DebianRepository/Format): `dists/<suite>/InRelease` is an
OpenPGP clearsigned file; once its signature verifies against the Debian archive keys, only
the signed text is used. Its `SHA256:` list gives hash and size of
`<component>/binary-<arch>/Packages.xz`; each stanza there gives `Filename`, `Size` and
`SHA256` of a .deb. A .deb is an ar archive (deb(5)) of `debian-binary`, `control.tar[.*]`
and `data.tar[.*]`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import gzip
import lzma
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pysequoia

from ..arch import Arch
from ..board import Feed
from ..errors import FormatError, IntegrityError, UserError
from ..progress import Progress
from ..rootfs import Entry
from . import debversion
from .archive import AR_MAGIC, list_ar_members, read_member_tar
from .backend import register_backend
from .cache import Cache
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
        raise FormatError(f"bad package relation '{text.strip()}'")
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
            name = fields.get("Package", "?")
            raise FormatError(f"{source}: package {name}: missing field {e.args[0]}") from e
        except (ValueError, FormatError) as e:
            name = fields.get("Package", "?")
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

    def arch_name(self, arch: Arch) -> str:
        if arch.debian is None:
            raise UserError(f"Debian has no port for {arch.value}", "use an OpenWrt feed for it")
        return arch.debian

    def compare_versions(self, a: str, b: str) -> int:
        return debversion.compare_versions(a, b)

    def satisfies(self, version: str, op: str, wanted: str) -> bool:
        return debversion.satisfies(version, op, wanted)

    def recognizes(self, head: bytes) -> bool:
        return head.startswith(AR_MAGIC)

    def load_index(self, feed: Feed, arch: Arch, cache: Cache, progress: Progress) -> list[Package]:
        debarch = self.arch_name(arch)
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
            packages += _read_packages_file(local, path, feed.name, base, url)
        return packages

    def fetch_release(self, feed: Feed, cache: Cache, progress: Progress) -> Release:
        """Fetch `dists/<suite>/InRelease`, verify it, and return its SHA256 file list."""
        url = f"{feed.url.rstrip('/')}/dists/{feed.suite}/InRelease"
        local = cache.fetch(url, sha256=None, size=None, progress=progress)
        try:
            text = verify_clearsigned(local.read_bytes(), load_certs(feed.keys), url)
        except IntegrityError:
            # Never keep a refused index: the next run must ask the mirror again.
            local.unlink(missing_ok=True)
            raise
        return parse_release(text.decode("utf-8", "replace"), url)

    def read_entries(self, path: Path) -> Iterator[Entry]:
        data = path.read_bytes()
        members = list_ar_members(data, str(path))
        if not members or members[0].name != "debian-binary":
            raise FormatError(f"{path}: offset 0x8: first ar member is not debian-binary")
        version = data[members[0].offset : members[0].offset + members[0].size]
        if not version.startswith(b"2."):
            raise FormatError(f"{path}: offset {members[0].offset:#x}: unsupported deb format {version!r}")
        return read_member_tar(path, data, members, "data")


def _pick_index(release: Release, folder: str, source: str) -> str:
    for name in ("Packages.xz", "Packages.gz", "Packages"):
        if f"{folder}/{name}" in release.files:
            return f"{folder}/{name}"
    raise FormatError(f"{source}: lists no {folder}/Packages index (is the arch or component served?)")


@functools.lru_cache(maxsize=8)
def _read_packages_file(local: Path, path: str, feed: str, base: str, url: str) -> tuple[Package, ...]:
    # `local` is content-addressed (named by its verified SHA-256), so a build that asks for
    # the same index again in this process reuses the parse (~2 s for Debian main).
    text = _decompress_index(local.read_bytes(), path, url)
    return tuple(parse_packages(text, feed=feed, base_url=base, source=url))


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
