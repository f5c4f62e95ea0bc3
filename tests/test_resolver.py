"""The resolver over synthetic Debian indexes (parsed by the real Packages parser)."""

from __future__ import annotations

import textwrap

import pytest

from fwgen.errors import ResolveError
from fwgen.fetch.deb import DebBackend, parse_packages
from fwgen.fetch.package import PackageIndex
from fwgen.fetch.resolver import resolve

DEB = DebBackend()


def make_index(stanzas: str, arch: str = "armhf") -> PackageIndex:
    """An index from Packages stanzas; Filename/Size/SHA256 are filled in when absent."""
    blocks = []
    for block in textwrap.dedent(stanzas).strip().split("\n\n"):
        if "Filename:" not in block:
            name = block.split("Package:")[1].split()[0]
            block += f"\nFilename: pool/{name}.deb\nSize: 1\nSHA256: {'0' * 64}"
        if "Architecture:" not in block:
            block += f"\nArchitecture: {arch}"
        blocks.append(block)
    packages = parse_packages("\n\n".join(blocks) + "\n", feed="debian", base_url="http://x", source="test")
    return PackageIndex(packages, DEB.satisfies, DEB.compare_versions, arch, "all", ("debian",))


def names(resolution) -> list[str]:
    return [p.name for p in resolution.packages]


def test_dependencies_come_before_dependents():
    index = make_index("""
        Package: app
        Version: 1
        Depends: libfoo (>= 1.0), libbar

        Package: libfoo
        Version: 1.2
        Pre-Depends: libc

        Package: libbar
        Version: 1
        Depends: libc

        Package: libc
        Version: 2.36
    """)
    assert names(resolve(index, ["app"])) == ["libc", "libfoo", "libbar", "app"]


def test_newest_version_that_satisfies_is_chosen():
    index = make_index("""
        Package: app
        Version: 1
        Depends: lib (<< 2.0)

        Package: lib
        Version: 2.1

        Package: lib
        Version: 1.9

        Package: lib
        Version: 1.5
    """)
    chosen = {p.name: p.version for p in resolve(index, ["app"]).packages}
    assert chosen == {"app": "1", "lib": "1.9"}


def test_failure_explains_the_chain():
    index = make_index("""
        Package: dropbear
        Version: 2022.83-1
        Architecture: all
        Depends: dropbear-bin (>= 2022.83-1)

        Package: dropbear-bin
        Version: 2022.83-1
        Depends: libtomcrypt1 (>= 1.18)

        Package: libtomcrypt1
        Version: 1.17
    """)
    with pytest.raises(ResolveError) as caught:
        resolve(index, ["dropbear"])
    assert str(caught.value) == (
        "cannot install dropbear-bin: dropbear-bin depends on libtomcrypt1 (>= 1.18) "
        "but debian has 1.17 (chain: dropbear -> dropbear-bin -> libtomcrypt1)"
    )


def test_missing_package_is_named():
    index = make_index("""
        Package: app
        Version: 1
    """)
    with pytest.raises(ResolveError, match="cannot install nosuch: no package nosuch in debian"):
        resolve(index, ["nosuch"])
    with pytest.raises(ResolveError, match="exists only for arm64"):
        resolve(make_index("Package: x\nVersion: 1\nArchitecture: arm64"), ["x"])


def test_alternatives_prefer_first_satisfiable():
    index = make_index("""
        Package: app
        Version: 1
        Depends: missing | second | third

        Package: second
        Version: 1

        Package: third
        Version: 1
    """)
    assert names(resolve(index, ["app"])) == ["second", "app"]


def test_alternatives_prefer_one_already_chosen():
    index = make_index("""
        Package: app
        Version: 1
        Depends: third, first | third

        Package: first
        Version: 1

        Package: third
        Version: 1
    """)
    assert names(resolve(index, ["app"])) == ["third", "app"]


def test_backtracks_from_an_alternative_that_cannot_install():
    index = make_index("""
        Package: app
        Version: 1
        Depends: broken | good

        Package: broken
        Version: 1
        Depends: gone

        Package: good
        Version: 1
    """)
    assert names(resolve(index, ["app"])) == ["good", "app"]


def test_virtual_package_via_provides():
    index = make_index("""
        Package: app
        Version: 1
        Depends: mail-transport-agent

        Package: zmta
        Version: 1
        Provides: mail-transport-agent

        Package: amta
        Version: 1
        Provides: mail-transport-agent
    """)
    # Several providers: the choice is deterministic (by name).
    assert names(resolve(index, ["app"])) == ["amta", "app"]
    assert names(resolve(index, ["mail-transport-agent"])) == ["amta"]


def test_versioned_dependency_needs_versioned_provides():
    index = make_index("""
        Package: app
        Version: 1
        Depends: libvirt (>= 2)

        Package: unversioned
        Version: 9
        Provides: libvirt

        Package: versioned
        Version: 1
        Provides: libvirt (= 2.5)
    """)
    assert names(resolve(index, ["app"])) == ["versioned", "app"]
    old = make_index("""
        Package: app
        Version: 1
        Depends: libvirt (>= 3)

        Package: versioned
        Version: 1
        Provides: libvirt (= 2.5)
    """)
    with pytest.raises(ResolveError, match="no provider of libvirt satisfies libvirt"):
        resolve(old, ["app"])


def test_arch_qualifiers_and_arch_all():
    index = make_index("""
        Package: app
        Version: 1
        Depends: python3:any, data, helper:native

        Package: python3
        Version: 3.11
        Multi-Arch: allowed

        Package: data
        Version: 1
        Architecture: all

        Package: helper
        Version: 1

        Package: foreign
        Version: 1
        Architecture: arm64
    """)
    assert names(resolve(index, ["app"])) == ["python3", "data", "helper", "app"]
    with pytest.raises(ResolveError, match="foreign exists only for arm64"):
        resolve(index, ["foreign"])


def test_exclude_treats_dependency_as_satisfied_and_reports_it():
    index = make_index("""
        Package: kernel
        Version: 1
        Depends: kmod, linux-base | initramfs-tools, firmware

        Package: kmod
        Version: 1
        Depends: libc

        Package: linux-base
        Version: 1

        Package: initramfs-tools
        Version: 1

        Package: firmware
        Version: 1

        Package: libc
        Version: 1
    """)
    result = resolve(index, ["kernel"], exclude=["kmod", "linux-base"])
    assert names(result) == ["firmware", "kernel"]
    assert [str(e) for e in result.excluded] == [
        "kernel depends on kmod",
        "kernel depends on linux-base | initramfs-tools",
    ]
    with pytest.raises(ResolveError, match="also listed in exclude"):
        resolve(index, ["kmod"], exclude=["kmod"])


def test_nodeps_takes_the_package_alone():
    index = make_index("""
        Package: linux-image-cloud-arm64
        Version: 6.1
        Depends: linux-image-6.1.0-9-cloud-arm64

        Package: linux-image-6.1.0-9-cloud-arm64
        Version: 6.1
        Depends: kmod, linux-base, nonexistent
    """)
    result = resolve(index, ["linux-image-6.1.0-9-cloud-arm64"], nodeps=["linux-image-6.1.0-9-cloud-arm64"])
    assert names(result) == ["linux-image-6.1.0-9-cloud-arm64"]
    assert result.nodeps == ["linux-image-6.1.0-9-cloud-arm64"]
    with pytest.raises(ResolveError, match="no package kmod"):
        resolve(index, ["linux-image-cloud-arm64"])


def test_conflicts_and_breaks_are_refused_or_avoided():
    index = make_index("""
        Package: a
        Version: 1
        Conflicts: b

        Package: b
        Version: 1

        Package: c
        Version: 1
        Breaks: a (<< 2)

        Package: app
        Version: 1
        Depends: b | d

        Package: d
        Version: 1
    """)
    with pytest.raises(ResolveError, match=r"a 1 conflicts with b \(b 1 is chosen\)"):
        resolve(index, ["b", "a"])
    with pytest.raises(ResolveError, match=r"c 1 conflicts with a \(<< 2\)"):
        resolve(index, ["a", "c"])
    # With a installed, "b | d" backtracks to d.
    assert names(resolve(index, ["a", "app"])) == ["a", "d", "app"]


def test_self_conflict_through_provides_is_allowed():
    # busybox-static: Provides: busybox, Conflicts: busybox
    index = make_index("""
        Package: busybox-static
        Version: 1
        Provides: busybox
        Conflicts: busybox
    """)
    assert names(resolve(index, ["busybox-static"])) == ["busybox-static"]


def test_cycles_terminate_and_order_is_deterministic():
    index = make_index("""
        Package: a
        Version: 1
        Depends: b

        Package: b
        Version: 1
        Depends: c

        Package: c
        Version: 1
        Depends: a, d

        Package: d
        Version: 1
    """)
    first = names(resolve(index, ["a"]))
    assert first == ["d", "c", "b", "a"]
    assert all(names(resolve(index, ["a"])) == first for _ in range(3))
    assert sorted(names(resolve(index, ["c", "a"]))) == ["a", "b", "c", "d"]


def test_patterns_in_nodeps_and_exclude_follow_a_metapackage():
    index = make_index("""
        Package: linux-image-cloud-arm64
        Version: 6.1.76-1
        Depends: linux-image-6.1.0-18-cloud-arm64 (= 6.1.76-1)

        Package: linux-image-6.1.0-18-cloud-arm64
        Version: 6.1.76-1
        Depends: kmod, linux-base (>= 4.3~), initramfs-tools | linux-initramfs-tool
    """)
    result = resolve(index, ["linux-image-cloud-arm64"], nodeps=["linux-image-6.1.0-*-cloud-arm64"])
    assert names(result) == ["linux-image-6.1.0-18-cloud-arm64", "linux-image-cloud-arm64"]
    excluded = resolve(index, ["linux-image-cloud-arm64"], exclude=["kmod", "linux-b*", "initramfs-*"])
    assert len(excluded.excluded) == 3
