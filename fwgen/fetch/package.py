"""The format-neutral package model every backend produces and the resolver consumes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


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


class PackageSource(Protocol):
    """Packages of one index that are parsed only when asked for: a big index (Debian main,
    62,000 stanzas) is looked up by name a few hundred times per resolution, never read whole."""

    def named(self, name: str) -> list[Package]:
        """The packages called `name`, in index order."""

    def providing(self, name: str) -> list[tuple[Package, Relation]]:
        """The packages that provide `name`, with the provide, in index order."""

    def __iter__(self) -> Iterator[Package]:
        """Every package, in index order (parses them all)."""


class PackageSet(Sequence[Package]):
    """The packages of several indexes in feed order, looked up by name without reading the
    indexes whole. A part is a list or a lazily parsed `PackageSource`; names in `hidden` are
    left out of every part but the last (the board's own package files replace them)."""

    def __init__(self, parts: Sequence[Sequence[Package] | PackageSource], hidden: Collection[str] = ()) -> None:
        self.parts: list[PackageSource] = [_as_source(part) for part in parts]
        self.hidden = frozenset(hidden)
        self._all: list[Package] | None = None

    def named(self, name: str) -> list[Package]:
        parts = self.parts if name not in self.hidden else self.parts[-1:]
        return [p for part in parts for p in part.named(name)]

    def providing(self, name: str) -> list[tuple[Package, Relation]]:
        last = self.parts[-1] if self.parts else None
        return [(p, r) for part in self.parts for p, r in part.providing(name)
                if part is last or p.name not in self.hidden]

    def _everything(self) -> list[Package]:
        if self._all is None:
            last = self.parts[-1] if self.parts else None
            self._all = [p for part in self.parts for p in part if part is last or p.name not in self.hidden]
        return self._all

    def __iter__(self) -> Iterator[Package]:
        return iter(self._everything())

    def __len__(self) -> int:
        return len(self._everything())

    def __getitem__(self, i):
        return self._everything()[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)


def _as_source(part: Sequence[Package] | PackageSource) -> PackageSource:
    if hasattr(part, "named") and hasattr(part, "providing"):
        return part
    return _ListSource(list(part))


class _ListSource:
    """A list of packages already parsed, indexed by name once."""

    def __init__(self, packages: list[Package]) -> None:
        self.packages = packages
        self.by_name: dict[str, list[Package]] = {}
        self.providers: dict[str, list[tuple[Package, Relation]]] = {}
        for package in packages:
            self.by_name.setdefault(package.name, []).append(package)
            for provided in package.provides:
                self.providers.setdefault(provided.name, []).append((package, provided))

    def named(self, name: str) -> list[Package]:
        return self.by_name.get(name, [])

    def providing(self, name: str) -> list[tuple[Package, Relation]]:
        return self.providers.get(name, [])

    def __iter__(self) -> Iterator[Package]:
        return iter(self.packages)


class _Lookup(Mapping[str, list]):
    """A read-only mapping computed key by key (and kept): `PackageIndex.by_name` and
    `providers` over indexes that are not read whole. Absent keys are not listed; iterating
    reads everything."""

    def __init__(self, find: Callable[[str], list], every: Callable[[], Iterable[str]]) -> None:
        self._find = find
        self._every = every
        self._known: dict[str, list] = {}

    def __getitem__(self, name: str) -> list:
        found = self._known.get(name)
        if found is None:
            found = self._known[name] = self._find(name)
        if not found:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(self._every()))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class PackageIndex:
    """Every package the feeds offer for one architecture, with the format's version rules.

    `native_arch` is the format's name for the target architecture ("arm64"); packages of
    `neutral_arch` ("all") install on any architecture. `bare_provides_need_priority`: the
    format treats an unversioned provide as virtual, auto-selected only from a provider with a
    provider priority (Alpine); Debian picks any provider. `packages` may be a `PackageSet`
    over lazily parsed indexes: `by_name` and `providers` then parse only what is looked up.
    """

    packages: Sequence[Package]
    satisfies: VersionSatisfies  # (version, op, wanted) -> bool
    compare: VersionCompare
    native_arch: str
    neutral_arch: str = "all"
    feeds: tuple[str, ...] = ()
    bare_provides_need_priority: bool = False
    by_name: Mapping[str, list[Package]] = field(init=False)
    providers: Mapping[str, list[tuple[Package, Relation]]] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.packages, PackageSet):
            self.packages = PackageSet([self.packages])
        source = self.packages
        self.by_name = _Lookup(self._newest_first(source.named), lambda: (p.name for p in source))
        self.providers = _Lookup(self._best_first(source.providing),
                                 lambda: (r.name for p in source for r in p.provides))

    def _older(self) -> Callable[[Package], Any]:
        def older(a: Package, b: Package) -> int:
            return self.compare(b.version, a.version)
        return functools.cmp_to_key(older)

    def _newest_first(self, find: Callable[[str], list[Package]]) -> Callable[[str], list[Package]]:
        # Newest first; among equal versions the earlier feed wins (stable sort).
        return lambda name: sorted(find(name), key=self._older())

    def _best_first(self, find: Callable[[str], list[tuple[Package, Relation]]]
                    ) -> Callable[[str], list[tuple[Package, Relation]]]:
        # The highest provider priority first (all 0 outside Alpine), then by name, newest first.
        newest_first = self._older()
        return lambda name: sorted(find(name), key=lambda pair: (-pair[0].provider_priority, pair[0].name,
                                                                 newest_first(pair[0])))

    def offers(self, name: str) -> bool:
        """Whether a package of this architecture (or a neutral one) is, or provides, `name`."""
        fits = (self.native_arch, self.neutral_arch)
        return any(p.arch in fits for p in self.by_name.get(name, ())) or any(
            p.arch in fits for p, _ in self.providers.get(name, ()))
