"""The format-neutral package model every backend produces and the resolver consumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Relation:
    """One dependency item: `name [(op version)] [:arch_qualifier]`.

    `op` is one of << <= = >= >> (Debian spelling; other backends translate to it), or None
    for an unversioned relation. `arch_qualifier` is "any", "native", an arch name, or None.
    """

    name: str
    op: str | None = None
    version: str | None = None
    arch_qualifier: str | None = None

    def __str__(self) -> str:
        text = self.name + (f":{self.arch_qualifier}" if self.arch_qualifier else "")
        if self.op:
            text += f" ({self.op} {self.version})"
        return text


# A dependency is satisfied by any one of its alternatives: `a | b` -> (Relation(a), Relation(b)).
AlternativesGroup = tuple[Relation, ...]


@dataclass(frozen=True)
class Package:
    """A binary package as an index lists it.

    `depends` holds Pre-Depends and Depends together (both must hold before the package
    works; fwgen runs no maintainer scripts, so the difference does not matter).
    `provides` relations have op "=" when versioned. `filename` is relative to `base_url`.
    """

    name: str
    version: str
    arch: str
    feed: str
    format: str  # the backend's type name: "deb", later "apk", "ipk"
    base_url: str
    filename: str
    size: int
    sha256: str
    depends: tuple[AlternativesGroup, ...] = ()
    provides: tuple[Relation, ...] = ()
    conflicts: tuple[Relation, ...] = ()  # Conflicts and Breaks
    multi_arch: str | None = None
    essential: bool = False
    priority: str | None = None
    source: str | None = None
    # Alpine's `k:`: among providers of one name the highest wins; with a format whose bare
    # (unversioned) provides are virtual, only a provider with a priority is auto-selected.
    provider_priority: int = 0
    # The licence as the index states it (Alpine's `L:`, OpenWrt's `License:`), unnormalised;
    # None where the index says nothing (a Debian index: its licences are in the package).
    license: str | None = None

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.filename.lstrip("/")

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.arch})"


VersionCompare = Callable[[str, str], int]
VersionSatisfies = Callable[[str, str, str], bool]


@dataclass
class PackageIndex:
    """Every package the feeds offer for one architecture, with the format's version rules.

    `native_arch` is the format's name for the target architecture ("arm64"); packages of
    `neutral_arch` ("all") install on any architecture. `bare_provides_need_priority`: the
    format treats an unversioned provide as virtual, auto-selected only from a provider with a
    provider priority (Alpine); Debian picks any provider.
    """

    packages: list[Package]
    satisfies: VersionSatisfies  # (version, op, wanted) -> bool
    compare: VersionCompare
    native_arch: str
    neutral_arch: str = "all"
    feeds: tuple[str, ...] = ()
    bare_provides_need_priority: bool = False
    by_name: dict[str, list[Package]] = field(default_factory=dict, init=False)
    providers: dict[str, list[tuple[Package, Relation]]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        import functools

        for package in self.packages:
            self.by_name.setdefault(package.name, []).append(package)
            for provided in package.provides:
                self.providers.setdefault(provided.name, []).append((package, provided))
        def older(a: Package, b: Package) -> int:
            return self.compare(b.version, a.version)

        newest_first = functools.cmp_to_key(older)
        for candidates in self.by_name.values():
            # Newest first; among equal versions the earlier feed wins (stable sort).
            candidates.sort(key=newest_first)
        for offers in self.providers.values():
            # The highest provider priority first (all 0 outside Alpine), then by name, newest first.
            offers.sort(key=lambda pair: (-pair[0].provider_priority, pair[0].name, newest_first(pair[0])))

    def offers(self, name: str) -> bool:
        """Whether a package of this architecture (or a neutral one) is, or provides, `name`."""
        fits = (self.native_arch, self.neutral_arch)
        return any(p.arch in fits for p in self.by_name.get(name, ())) or any(
            p.arch in fits for p, _ in self.providers.get(name, ()))
