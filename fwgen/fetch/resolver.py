"""Dependency resolution over a format-neutral `PackageIndex`.

The resolver picks one version per package name, greedily and deterministically: for each
dependency it keeps a package already chosen when one satisfies it, otherwise it tries the
alternatives in the order written (`a | b` prefers a), each alternative's candidates newest
first, real packages before providers of a virtual name, providers with the highest provider
priority first. Where the format says so (Alpine), a bare virtual provide is satisfied only by
a provider that is already chosen or has a provider priority. When a choice leads to a dead end
(missing dependency, conflict) it backtracks to the next candidate. The first (deepest) failure
is reported with the chain of packages that led to it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cmp_to_key

from ..errors import ResolveError
from .package import AlternativesGroup, Package, PackageIndex, Relation


@dataclass(frozen=True)
class ExcludedDependency:
    """A dependency no package satisfies, on purpose: it names an excluded package, or one
    the board provides itself."""

    dependent: str
    relation: AlternativesGroup

    def __str__(self) -> str:
        return f"{self.dependent} depends on {_group_text(self.relation)}"


@dataclass
class Resolution:
    """The packages to install, dependencies first, and what exclusion and nodeps skipped."""

    packages: list[Package]
    excluded: list[ExcludedDependency] = field(default_factory=list)
    nodeps: list[str] = field(default_factory=list)  # packages taken without their dependencies
    provided: list[ExcludedDependency] = field(default_factory=list)  # satisfied by the board itself
    # What each chosen package's dependencies resolved to: name -> names of chosen packages.
    depends: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class _State:
    selected: dict[str, Package] = field(default_factory=dict)
    edges: dict[str, list[str]] = field(default_factory=dict)
    excluded: list[ExcludedDependency] = field(default_factory=list)
    provided: list[ExcludedDependency] = field(default_factory=list)

    def copy(self) -> _State:
        return _State(dict(self.selected), {k: list(v) for k, v in self.edges.items()}, list(self.excluded),
                      list(self.provided))


def resolve(
    index: PackageIndex,
    names: Sequence[str],
    *,
    exclude: Collection[str] = (),
    nodeps: Collection[str] = (),
    pins: Mapping[str, str] | None = None,
    provided: Mapping[str, str | None] | None = None,
    versions: Mapping[str, str] | None = None,
) -> Resolution:
    """Resolve `names` and their dependencies over `index`.

    `pins` maps a requested name to the feed it must come from (its dependencies may come
    from any feed of the index).
    `exclude`: names never installed; a dependency naming one counts as satisfied and is
    reported in `Resolution.excluded`. `nodeps`: names installed without their dependencies.
    Both take shell-style patterns too (`linux-image-*-cloud-arm64`), so a board can name a
    kernel package whose ABI number changes with every update.
    `provided`: names the board supplies itself (name -> version or None), satisfying a
    dependency before any package does, reported in `Resolution.provided`. As with a
    package's provides (Debian Policy 7.5), only a versioned one satisfies a versioned
    dependency.
    `versions`: name -> the one version of that package that may be chosen, wherever it is
    (requested or a dependency); equal as the format compares versions ("0:1.6-2" is "1.6-2").
    Raises ResolveError explaining the chain when no consistent choice exists.
    """
    return _Resolver(index, frozenset(exclude), frozenset(nodeps), dict(pins or {}), dict(provided or {}),
                     dict(versions or {})).run(names)


class _Resolver:
    def __init__(self, index: PackageIndex, exclude: frozenset[str], nodeps: frozenset[str],
                 pins: dict[str, str], provided: dict[str, str | None], versions: dict[str, str]) -> None:
        self.index = index
        self.pins = pins
        self.provided = provided
        self.versions = versions
        self.exclude = _Names(exclude)
        self.nodeps = _Names(nodeps)
        self.state = _State()
        self.feeds = ", ".join(index.feeds) or "the feeds"

    def run(self, names: Sequence[str]) -> Resolution:
        for name in names:
            if name in self.exclude:
                raise ResolveError(f"cannot install {name}: it is also listed in exclude")
            if name in self.provided:
                raise ResolveError(f"cannot install {name}: it is also listed in provides (the board supplies it)")
            self._satisfy(None, (Relation(name),), [], feed=self.pins.get(name))
        order = self._install_order(names)
        taken = [name for name in order if name in self.nodeps]
        return Resolution([self.state.selected[n] for n in order], self.state.excluded, taken, self.state.provided,
                          {n: list(dict.fromkeys(self.state.edges.get(n, []))) for n in order})

    # -- choosing ---------------------------------------------------------------------------
    def _satisfy(self, dependent: Package | None, group: AlternativesGroup, chain: list[str],
                 feed: str | None = None) -> None:
        selected = self.state.selected
        if dependent is not None and any(self._board_provides(relation) for relation in group):
            self.state.provided.append(ExcludedDependency(dependent.name, group))
            return
        for relation in group:
            for candidate in self._candidates(relation, auto=False, feed=feed):
                if selected.get(candidate.name) is candidate:
                    self._link(dependent, candidate)
                    return
        for relation in group:
            if relation.name in self.exclude:
                if dependent is not None:
                    self.state.excluded.append(ExcludedDependency(dependent.name, group))
                return
        failures: list[ResolveError] = []
        for relation in group:
            for candidate in self._candidates(relation, feed=feed):
                if candidate.name in self.exclude or candidate.name in selected:
                    continue
                saved = self.state.copy()
                try:
                    self._install(candidate, chain)
                except ResolveError as e:
                    self.state = saved
                    failures.append(e)
                    continue
                self._link(dependent, candidate)
                return
        if failures:
            raise failures[0]
        if feed is not None and self._candidates(group[0]):
            raise ResolveError(f"cannot install {group[0].name}: feed {feed} has no such package",
                               f"it is in {', '.join(sorted({p.feed for p in self._candidates(group[0])}))}")
        raise ResolveError(self._explain(dependent, group, chain), self._hint(group))

    def _board_provides(self, relation: Relation) -> bool:
        if relation.name not in self.provided:
            return False
        version = self.provided[relation.name]
        return relation.op is None or (version is not None and self.index.satisfies(version, relation.op, relation.version or ""))

    def _install(self, package: Package, chain: list[str]) -> None:
        chain = [*chain, package.name]
        self._check_conflicts(package, chain)
        self.state.selected[package.name] = package
        self.state.edges[package.name] = []
        if package.name in self.nodeps:
            return
        for group in package.depends:
            self._satisfy(package, group, chain)

    def _link(self, dependent: Package | None, dependency: Package) -> None:
        if dependent is not None and dependency.name != dependent.name:
            self.state.edges[dependent.name].append(dependency.name)

    def _candidates(self, relation: Relation, *, auto: bool = True, feed: str | None = None) -> list[Package]:
        """Packages that satisfy `relation`; with `auto`, only those the resolver may choose
        by itself (apk: "a bare provide is virtual and is only auto-selected when the
        provider has `k:` priority")."""
        index = self.index
        found = [
            p
            for p in index.by_name.get(relation.name, ())
            if self._arch_fits(p, relation)
            and (relation.op is None or index.satisfies(p.version, relation.op, relation.version or ""))
        ]
        for provider, provided in index.providers.get(relation.name, ()):
            if not self._arch_fits(provider, relation) or provider in found:
                continue
            if auto and provided.op is None and index.bare_provides_need_priority and provider.provider_priority <= 0:
                continue
            # Debian Policy 7.5: a versioned dependency is satisfied only by a versioned provide.
            if relation.op is None or (
                provided.op == "=" and index.satisfies(provided.version or "", relation.op, relation.version or "")
            ):
                found.append(provider)
        found = [p for p in found if self._pinned_version_fits(p)]
        return found if feed is None else [p for p in found if p.feed == feed]

    def _pinned_version_fits(self, package: Package) -> bool:
        wanted = self.versions.get(package.name)
        return wanted is None or self.index.compare(package.version, wanted) == 0

    def _arch_fits(self, package: Package, relation: Relation) -> bool:
        if package.arch not in (self.index.native_arch, self.index.neutral_arch):
            return False
        qualifier = relation.arch_qualifier
        # ":any" and ":native" both mean the one architecture this index holds.
        return qualifier in (None, "any", "native") or package.arch == qualifier

    # -- conflicts --------------------------------------------------------------------------
    def _check_conflicts(self, package: Package, chain: list[str]) -> None:
        for other in self.state.selected.values():
            for a, b in ((package, other), (other, package)):
                for relation in a.conflicts:
                    if self._matches(b, relation):
                        raise ResolveError(
                            f"cannot install {package.name}: {a.name} {a.version} conflicts with "
                            f"{relation} ({b.name} {b.version} is chosen) (chain: {' -> '.join(chain)})"
                        )

    def _matches(self, package: Package, relation: Relation) -> bool:
        if package.name == relation.name:
            return relation.op is None or self.index.satisfies(package.version, relation.op, relation.version or "")
        return any(
            provided.name == relation.name
            and (
                relation.op is None
                or (provided.op == "=" and self.index.satisfies(provided.version or "", relation.op, relation.version or ""))
            )
            for provided in package.provides
        )

    # -- reporting --------------------------------------------------------------------------
    def _explain(self, dependent: Package | None, group: AlternativesGroup, chain: list[str]) -> str:
        reasons = "; ".join(self._why_not(relation) for relation in group)
        target = group[0].name
        if dependent is None:
            return f"cannot install {target}: {reasons}"
        path = " -> ".join([*chain, target])
        return (
            f"cannot install {dependent.name}: {dependent.name} depends on {_group_text(group)} "
            f"but {reasons} (chain: {path})"
        )

    def _hint(self, group: AlternativesGroup) -> str | None:
        """For a name no feed has at all: the two ways a board can supply it."""
        missing = [r.name for r in group if r.name not in self.index.by_name and r.name not in self.index.providers
                   and r.name not in self.provided]
        if not missing:
            return None
        return (f"if the board supplies {missing[0]} itself, list it in provides; if a package file holds it "
                "(OpenWrt's libc and kernel are in no feed index), add the file to package_files with its sha256")

    def _why_not(self, relation: Relation) -> str:
        index = self.index
        if relation.name in self.provided:
            version = self.provided[relation.name]
            return f"the board provides {relation.name} {f'= {version}' if version else 'without a version'}"
        same_name = index.by_name.get(relation.name, [])
        fitting = [p for p in same_name if self._arch_fits(p, relation)]
        chosen = self.state.selected.get(relation.name)
        if chosen is not None:
            return f"{chosen.name} {chosen.version} is already chosen"
        if relation.name in self.exclude:
            return f"{relation.name} is excluded"
        pinned = self.versions.get(relation.name)
        if fitting and pinned is not None and not any(self._pinned_version_fits(p) for p in fitting):
            return f"{relation.name} is pinned to {pinned} but {self._versions_text(fitting)}"
        if fitting:
            return self._versions_text(fitting)
        if same_name:
            arches = ", ".join(sorted({p.arch for p in same_name}))
            return f"{relation.name} exists only for {arches}"
        if relation.name in index.providers:
            providers = [p for p, _ in index.providers[relation.name] if self._arch_fits(p, relation)]
            if providers and relation.op is None and not self._candidates(relation):
                names = ", ".join(sorted({p.name for p in providers}))
                return (f"{relation.name} is virtual and none of its providers ({names}) has a provider "
                        "priority: name one in the board's packages")
            return f"no provider of {relation.name} satisfies {relation}"
        return f"no package {relation.name} in {self.feeds}"

    def _versions_text(self, packages: list[Package]) -> str:
        """"debian has 1.6-2.1" or "debian has 1.6-2.1, local has 1.7-1", oldest first per feed."""
        feeds: dict[str, set[str]] = {}
        for package in packages:
            feeds.setdefault(package.feed, set()).add(package.version)
        return ", ".join(f"{feed} has {', '.join(sorted(versions, key=cmp_to_key(self.index.compare)))}"
                         for feed, versions in feeds.items())

    # -- ordering ---------------------------------------------------------------------------
    def _install_order(self, names: Sequence[str]) -> list[str]:
        """Dependencies before dependents (depth-first post-order); cycles broken where
        first met, which is deterministic because edges keep the order dependencies are written."""
        order: list[str] = []
        done: set[str] = set()
        roots = [self._root_name(name) for name in names]
        for root in [*roots, *self.state.selected]:
            stack: list[tuple[str, int]] = [(root, 0)] if root not in done else []
            done.add(root)
            while stack:
                name, i = stack.pop()
                children = self.state.edges.get(name, [])
                if i < len(children):
                    stack.append((name, i + 1))
                    child = children[i]
                    if child not in done:
                        done.add(child)
                        stack.append((child, 0))
                else:
                    order.append(name)
        return order

    def _root_name(self, requested: str) -> str:
        if requested in self.state.selected:
            return requested
        for candidate in self._candidates(Relation(requested), auto=False):
            if self.state.selected.get(candidate.name) is candidate:
                return candidate.name
        return requested


def name_matches(name: str, names: Collection[str]) -> bool:
    """Whether `name` is one of `names` or matches one of their shell-style patterns."""
    return name in _Names(frozenset(names))


class _Names:
    """A set of package names and shell-style patterns."""

    def __init__(self, names: frozenset[str]) -> None:
        self.exact = {n for n in names if not any(c in n for c in "*?[")}
        self.patterns = sorted(names - self.exact)

    def __contains__(self, name: str) -> bool:
        return name in self.exact or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


def _group_text(group: AlternativesGroup) -> str:
    return " | ".join(str(r) for r in group)
