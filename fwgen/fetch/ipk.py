"""OpenWrt opkg feeds: `Packages` signed with usign, and .ipk packages.

Facts (openwrt/openwrt scripts/ipkg-build; openwrt/opkg-lede; openwrt/usign):

- A feed folder holds `Packages` (deb822-style stanzas with `Filename`, `Size`,
  `SHA256sum`), `Packages.gz`, and `Packages.sig`: a usign Ed25519 signature over the
  *uncompressed* `Packages`. opkg looks the key up as /etc/opkg/keys/<key number, %016x>.
- An OpenWrt .ipk is a gzip-compressed tar (not ar) of `./debian-binary` ("2.0\\n"),
  `./data.tar.gz` and `./control.tar.gz`; older opkg packages are ar archives of the same
  three members. Tell them apart by magic: 1f8b is OpenWrt's, `!<arch>\\n` the ar style.
- Control fields are Debian's; Depends carry versions (`kernel (=5.15.134-1-<hash>)`).
  opkg compares versions with dpkg's algorithm.
- Feed layout: `<url>/packages/<arch>/<feed name>` (base, packages, luci, routing,
  telephony) and `<url>/targets/<target>/<subtarget>/packages` (kernel modules).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import usign
from ..arch import Arch
from ..board import Feed
from ..cache import Cache
from ..compression import GZIP
from ..errors import FormatError, IntegrityError, UserError, quoted
from ..progress import Progress
from ..rootfs import Entry, EntryType
from . import debversion
from .archive import (
    AR_MAGIC,
    UnpackBudget,
    decompress,
    list_ar_members,
    open_decompressed,
    read_tar_stream,
)
from .backend import Backend, FileHead, VerifyReport, feed_arch
from .package import AlternativesGroup, Package, Relation

# OpenWrt's largest feed (packages) lists about 9,000 packages in under 8 MiB of Packages.
INDEX_SIZE = 256 << 20


# -- control syntax -------------------------------------------------------------------------
def parse_stanzas(text: str, name: str) -> list[dict[str, str]]:
    """The paragraphs of a `Packages` or `control` file; continuation lines start with a space.

    Only an empty line ends a paragraph: OpenWrt writes a description's blank line as a
    single space (opkg reads it as part of the field), and its feeds' `Packages` have them.
    """
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line:
            if fields:
                stanzas.append(fields)
            fields, key = {}, None
            continue
        if line[0] in " \t":
            if key is None:
                if not line.strip():
                    continue  # whitespace between paragraphs
                raise FormatError(f"{name}:{number}: continuation line outside a field")
            fields[key] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise FormatError(f"{name}:{number}: expected 'Field: value', got {line[:40]!r}")
        fields[key] = value.strip()
    if fields:
        stanzas.append(fields)
    return stanzas


_RELATION = re.compile(
    r"\s*(?P<name>[A-Za-z0-9][A-Za-z0-9+._-]*)\s*"
    r"(?:\(\s*(?P<op><<|<=|>=|>>|=|<|>)\s*(?P<version>[^)\s<>=][^)\s]*)\s*\))?\s*"
)


def parse_relations(text: str, where: str) -> tuple[AlternativesGroup, ...]:
    """A Depends-style field: `,` between items, `|` between alternatives."""
    groups = []
    for item in text.split(","):
        if not item.strip():
            continue
        alternatives = []
        for alternative in item.split("|"):
            m = _RELATION.fullmatch(alternative)
            if m is None:
                raise FormatError(f"{where}: bad relation {alternative.strip()!r}")
            alternatives.append(Relation(m["name"], m["op"], m["version"]))
        groups.append(tuple(alternatives))
    return tuple(groups)


def package_from_stanza(fields: dict[str, str], *, feed: str, base_url: str, source: str) -> Package:
    """One `Packages` stanza as a Package; FormatError naming the package and field."""
    where = f"{source}: package {quoted(fields.get('Package', '?'))}"
    try:
        conflicts = parse_relations(fields.get("Conflicts", ""), where) + parse_relations(fields.get("Breaks", ""), where)
        return Package(
            name=fields["Package"],
            version=fields["Version"],
            arch=fields["Architecture"],
            feed=feed,
            format="ipk",
            base_url=base_url,
            filename=fields["Filename"],
            size=int(fields["Size"]),
            sha256=fields["SHA256sum"].lower(),
            depends=parse_relations(fields.get("Pre-Depends", ""), where) + parse_relations(fields.get("Depends", ""), where),
            provides=tuple(g[0] for g in parse_relations(fields.get("Provides", ""), where)),
            conflicts=tuple(r for g in conflicts for r in g),
            essential=fields.get("Essential") == "yes",
            priority=fields.get("Priority"),
            source=fields.get("SourceName") or fields.get("Source"),
            license=fields.get("License") or None,
        )
    except KeyError as e:
        raise FormatError(f"{where}: missing field {e.args[0]}") from e
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from e


# -- the signed index -----------------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedIndex:
    text: str
    key: usign.UsignKey


def verify_index(packages: bytes, signature: bytes, keys: dict[str, usign.UsignKey], name: str) -> VerifiedIndex:
    """Check `Packages.sig` over the uncompressed `Packages` (given plain or gzipped)."""
    if GZIP.matches(packages):
        # Inflated before the signature can be checked: bounded, or a forged Packages.gz
        # fills memory before it is refused.
        limit = UnpackBudget(INDEX_SIZE, f"the index limit ({INDEX_SIZE >> 20} MiB)")
        packages = decompress(packages, "gz", f"{name}.gz", limit)
    key = usign.verify(packages, usign.parse_signature(signature, f"{name}.sig"), keys, name)
    try:
        return VerifiedIndex(packages.decode("utf-8"), key)
    except UnicodeDecodeError as e:
        raise FormatError(f"{name}: offset {e.start:#x}: not UTF-8") from e


# -- .ipk -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IpkMembers:
    """The three members of an .ipk, whichever container they came in."""

    debian_binary: bytes
    control_tar_gz: bytes
    data_tar_gz: bytes
    container: str  # "tar.gz" (OpenWrt) or "ar"


def split_ipk(blob: bytes, name: str, budget: UnpackBudget | None = None) -> IpkMembers:
    """The members of an .ipk, in either the OpenWrt gzip-tar layout or the ar layout; the
    gzip-tar container may unpack to no more than `budget` allows."""
    if blob.startswith(AR_MAGIC):
        found = {m.name: blob[m.offset : m.offset + m.size] for m in list_ar_members(blob, name)}
        container = "ar"
    elif GZIP.matches(blob):
        found = _outer_tar_members(blob, name, (budget or UnpackBudget.default()).headroom())
        container = "tar.gz"
    else:
        raise FormatError(f"{name}: offset 0x0: not an .ipk (magic {blob[:8]!r})")
    missing = [m for m in ("debian-binary", "control.tar.gz", "data.tar.gz") if m not in found]
    if missing:
        raise FormatError(f"{name}: no {', '.join(missing)} member (found {sorted(found)})")
    if not found["debian-binary"].startswith(b"2."):
        raise FormatError(f"{name}: debian-binary: unsupported format {found['debian-binary'][:8]!r}")
    return IpkMembers(found["debian-binary"], found["control.tar.gz"], found["data.tar.gz"], container)


def _outer_tar_members(blob: bytes, name: str, budget: UnpackBudget) -> dict[str, bytes]:
    stream = open_decompressed(blob, "gz", name)
    return {entry.path.lstrip("/"): entry.data
            for entry in read_tar_stream(stream, f"{name}: gzip-tar container", budget) if entry.type is EntryType.FILE}


def _read_inner_tar(data: bytes, name: str, budget: UnpackBudget | None = None) -> Iterator[Entry]:
    return read_tar_stream(open_decompressed(data, "gz", name), name, budget)


def read_control(members: IpkMembers, name: str) -> dict[str, str]:
    """The `control` file of an .ipk's control.tar.gz."""
    for entry in _read_inner_tar(members.control_tar_gz, f"{name}: control.tar.gz"):
        if entry.path == "/control":
            stanzas = parse_stanzas(entry.data.decode("utf-8", "replace"), f"{name}: control")
            if len(stanzas) != 1:
                raise FormatError(f"{name}: control: expected one stanza, found {len(stanzas)}")
            return stanzas[0]
    raise FormatError(f"{name}: control.tar.gz has no control file")


def read_ipk_entries(blob: bytes, name: str, *, provenance: str = "",
                     budget: UnpackBudget | None = None) -> list[Entry]:
    """Every entry of an .ipk's data.tar.gz, decompressed as read and charged to `budget`."""
    members = split_ipk(blob, name, budget)
    entries = list(_read_inner_tar(members.data_tar_gz, f"{name}: data.tar.gz", budget))
    if provenance:
        from dataclasses import replace

        entries = [replace(e, provenance=provenance) for e in entries]
    return entries


def check_size_and_hash(blob: bytes, size: int, sha256: str, name: str) -> None:
    """Check an .ipk against its `Packages` stanza's Size and SHA256sum."""
    if len(blob) != size:
        raise IntegrityError(f"{name}: size {len(blob)} differs from the index's Size {size}")
    actual = hashlib.sha256(blob).hexdigest()
    if actual != sha256.lower():
        raise IntegrityError(f"{name}: SHA-256 {actual} differs from the index's SHA256sum {sha256}")


def recognizes(head: FileHead) -> bool:
    """Whether a file with this head is an OpenWrt .ipk (gzip-tar whose first member is
    debian-binary). The ar-style .ipk is a .deb by its bytes."""
    return head.inflated[:100].rstrip(b"\0") in (b"./debian-binary", b"debian-binary")


# -- the backend -----------------------------------------------------------------------------
def feed_folders(feed: Feed, arch_name: str) -> list[str]:
    """The feed folder URLs: `<url>/packages/<arch>/<component>`, or `<url>/<component>` when
    the component is itself a path (`targets/ath79/generic/packages`)."""
    base = feed.url.rstrip("/")
    folders = []
    for component in feed.components:
        if "/" in component:
            folders.append(f"{base}/{component.strip('/')}")
        else:
            folders.append(f"{base}/packages/{arch_name}/{component}")
    return folders


def load_feed_keys(feed: Feed) -> dict[str, usign.UsignKey]:
    """The usign keys a feed trusts: the files and folders its `keys` name."""
    return usign.load_keys([Path(p) for p in feed.keys])


class IpkBackend(Backend):
    """OpenWrt opkg feeds."""

    name = "ipk"
    neutral_arch = "all"
    # purl-spec defines no OpenWrt type: its `generic` type, namespaced by the distribution.
    purl = ("generic", "openwrt")

    def arch_name(self, arch: Arch) -> str:
        if arch.openwrt is None:
            raise UserError(f"OpenWrt has no package arch for {arch.value}")
        return arch.openwrt

    def compare_versions(self, a: str, b: str) -> int:
        return debversion.compare_versions(a, b)

    def satisfies(self, version: str, op: str, wanted: str) -> bool:
        return debversion.satisfies(version, op, wanted)

    def recognizes(self, head: FileHead) -> bool:
        return recognizes(head)

    def load_index(self, feed: Feed, arch: Arch, cache: Cache, progress: Progress) -> list[Package]:
        keys = load_feed_keys(feed)
        if not keys:
            where = ", ".join(str(k) for k in feed.keys) or "the feed's 'keys' (none given)"
            raise UserError(f"feed '{feed.name}': no usign keys in {where}",
                            "OpenWrt signs feeds with usign: add the release's public key file, "
                            "from OpenWrt's keyring or the vendor, to the feed's keys")
        packages: list[Package] = []
        for folder in feed_folders(feed, feed_arch(self, feed, arch)):
            text = self._fetch_verified(folder, keys, cache, progress)
            for fields in parse_stanzas(text, f"{folder}/Packages"):
                packages.append(package_from_stanza(fields, feed=feed.name, base_url=folder, source=f"{folder}/Packages"))
        return packages

    def _fetch_verified(self, folder: str, keys: dict[str, usign.UsignKey], cache: Cache, progress: Progress) -> str:
        signature = cache.fetch(f"{folder}/Packages.sig", sha256=None, size=None, progress=progress)
        index = cache.fetch(f"{folder}/Packages.gz", sha256=None, size=None, progress=progress)
        try:
            return verify_index(index.read_bytes(), signature.read_bytes(), keys, f"{folder}/Packages").text
        except (IntegrityError, FormatError):
            # Never keep a refused index: the next run must ask the feed again.
            cache.forget(signature)
            cache.forget(index)
            raise

    def read_control_files(self, path: Path) -> dict[str, bytes]:
        """The files of an .ipk's control.tar.gz: control, conffiles, the scripts..."""
        members = split_ipk(path.read_bytes(), str(path))
        entries = _read_inner_tar(members.control_tar_gz, f"{path}: control.tar.gz")
        return {e.path.lstrip("/"): e.data for e in entries if e.type is EntryType.FILE}

    def read_entries(self, path: Path, budget: UnpackBudget | None = None) -> Iterator[Entry]:
        return iter(read_ipk_entries(path.read_bytes(), str(path), budget=budget))

    def read_package(self, path: Path, *, feed: str, base_url: str, filename: str) -> Package:
        """The package an .ipk file describes by its own control file (for OpenWrt's libc and
        kernel, which no `Packages` lists): what a `Packages` stanza of it would say."""
        blob = path.read_bytes()
        control = read_control(split_ipk(blob, filename), filename)
        stanza = dict(control, Filename=filename, Size=str(len(blob)), SHA256sum=hashlib.sha256(blob).hexdigest())
        return package_from_stanza(stanza, feed=feed, base_url=base_url, source=filename)


    def identify(self, path: Path, head: FileHead) -> str | None:
        if path.name in INDEX_NAMES:
            return "opkg Packages"
        # The older ar-style .ipk has a .deb's bytes: its name says it is OpenWrt's.
        return "ipk" if self.recognizes(head) or path.suffix == ".ipk" and head.raw.startswith(AR_MAGIC) else None

    def verify_file(self, path: Path, kind: str, keys_dirs: Sequence[Path]) -> VerifyReport:
        """A feed's Packages against Packages.sig beside it (usign Ed25519); an .ipk's
        structure, whole, and, when a signed Packages beside it lists it, its Size and SHA256sum."""
        keys = usign.load_keys(list(keys_dirs))
        if kind == "opkg Packages":
            return _verify_index_file(path, keys)
        blob = path.read_bytes()
        members = split_ipk(blob, str(path))
        control = read_control(members, str(path))
        entries = read_ipk_entries(blob, str(path))
        what = f"{control.get('Package', '?')} {control.get('Version', '?')} ({members.container}), {len(entries)} entries"
        listed = _listing_beside(path, keys)
        if listed is None:
            return VerifyReport("ipk", True, None, f"{what}; structure ok; the signature lives in the feed's Packages.sig")
        stanza, key = listed
        check_size_and_hash(blob, int(stanza["Size"]), stanza["SHA256sum"], str(path))
        return VerifyReport("ipk", True, key, f"{what}; Size and SHA256sum match the signed Packages beside it")


INDEX_NAMES = ("Packages", "Packages.gz", "Packages.sig")  # a feed folder's index files


def _verify_index_file(path: Path, keys: dict[str, usign.UsignKey]) -> VerifyReport:
    folder = path.parent
    signature = folder / "Packages.sig"
    index = folder / "Packages" if (folder / "Packages").exists() else folder / "Packages.gz"
    if path.name != "Packages.sig":
        index = path
    if not signature.exists():
        raise IntegrityError(f"{index}: no Packages.sig beside it: the index is unsigned")
    if not index.exists():
        raise FormatError(f"{signature}: no Packages or Packages.gz beside it")
    verified = verify_index(index.read_bytes(), signature.read_bytes(), keys, str(index))
    count = len(parse_stanzas(verified.text, str(index)))
    return VerifyReport("opkg Packages", True, verified.key.key_id, f"{index.name}: {count} packages (usign Ed25519)")


def _listing_beside(path: Path, keys: dict[str, usign.UsignKey]) -> tuple[dict[str, str], str] | None:
    """The stanza of the signed Packages beside `path` that lists it, and the key that signed
    it; None when no signed Packages is beside it."""
    folder = path.parent
    index = next((folder / n for n in ("Packages", "Packages.gz") if (folder / n).exists()), None)
    if index is None or not (folder / "Packages.sig").exists():
        return None
    verified = verify_index(index.read_bytes(), (folder / "Packages.sig").read_bytes(), keys, str(index))
    for stanza in parse_stanzas(verified.text, str(index)):
        if stanza.get("Filename", "").rsplit("/", 1)[-1] == path.name:
            return stanza, verified.key.key_id
    raise IntegrityError(f"{path}: not listed in the signed {index}")
