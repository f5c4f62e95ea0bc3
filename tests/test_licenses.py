"""Package licences: read where each format states them (Debian's DEP-5 copyright files in the
package, Alpine's L:, OpenWrt's License:), normalised to SPDX expressions, and a deny list held
against them. The readers run on real files: the Alpine and OpenWrt samples, the Debian sample
.deb, and packages from the Debian mirror (network)."""

from __future__ import annotations

import pytest

from fwgen import usign
from fwgen.arch import Arch
from fwgen.board import Feed
from fwgen.cache import Cache
from fwgen.errors import UserError
from fwgen.fetch import apk, fetch_packages, ipk, read_fetched_entries, read_package_entries
from fwgen.fetch.deb import DebBackend
from fwgen.licenses import (
    NOASSERTION,
    denied_by,
    entries_reader,
    normalize,
    package_license,
    parse_deny,
)

ALPINE = "alpine-aarch64-3.13.4"


@pytest.mark.parametrize(("written", "expression"), [
    ("GPL-2", "GPL-2.0-only"),  # DEP-5: a version without + is that version only
    ("GPL-2+", "GPL-2.0-or-later"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("Expat", "MIT"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("GPL2+", "GPL-2.0-or-later"),  # Alpine's older spelling
    ("GPLv3", "GPL-3.0-only"),
    ("GPL-2.0 GPL-2.0+", "GPL-2.0-only AND GPL-2.0-or-later"),  # OpenWrt: names side by side all apply
    ("GPL-3+ with Bison exception", "GPL-3.0-or-later WITH Bison-exception-2.2"),
    ("LGPL-2.1 or BSD-2-clause", "BSD-2-Clause OR LGPL-2.1-only"),  # terms in a stable order
    ("MIT, and BSD-3-clause", "BSD-3-Clause AND MIT"),
    ("GPL-2+-or-X11", "LicenseRef-GPL-2-or-X11"),  # a name with no SPDX id keeps its own
    ("GPL and", "LicenseRef-GPL-and"),
    ("  ", NOASSERTION),
])
def test_licence_names_normalise_to_spdx_expressions(written, expression):
    assert normalize(written)[0] == expression


def test_a_deny_list_takes_spdx_ids_and_distribution_spellings_and_refuses_unknown_names():
    assert parse_deny(["GPL-3.0-only,GPL-3", "AGPL-3.0-or-later"]) == ["GPL-3.0-only", "AGPL-3.0-or-later"]
    with pytest.raises(UserError, match="--deny GPL-three: not a licence fwgen knows"):
        parse_deny(["GPL-three"])


def test_a_licence_is_denied_only_when_no_choice_avoids_the_denied_ones():
    assert denied_by("GPL-2.0-only", ["GPL-2.0-only"]) == ["GPL-2.0-only"]
    assert denied_by("GPL-2.0-only OR MIT", ["GPL-2.0-only"]) == []
    assert denied_by("GPL-2.0-only OR MIT", ["GPL-2.0-only", "MIT"]) == ["GPL-2.0-only", "MIT"]
    assert denied_by("Zlib AND (GPL-2.0-only OR MIT)", ["Zlib"]) == ["Zlib"]
    assert denied_by("GPL-3.0-or-later WITH GCC-exception-3.1", ["GPL-3.0-or-later"]) == ["GPL-3.0-or-later"]
    assert denied_by(NOASSERTION, ["GPL-2.0-only"]) == []


# -- the real files -------------------------------------------------------------------------------
def test_alpines_index_licences_are_read_and_normalised(samples):
    folder = samples / ALPINE
    keys = apk.load_rsa_keys([samples / "alpine" / "keys"])
    index = apk.read_apkindex((folder / "APKINDEX.tar.gz").read_bytes(), keys, "APKINDEX.tar.gz")
    packages = {e.name: apk.package_from_entry(e, feed="main", base_url=folder.as_uri(), source="APKINDEX")
                for e in index.entries}
    found = {name: package_license(p, lambda path: None) for name, p in packages.items()}
    assert found["musl"].expression == "MIT"
    assert found["busybox"].expression == "GPL-2.0-only"
    assert found["libcrypto1.1"].expression == "OpenSSL"
    assert found["ca-certificates-bundle"].expression == "MIT AND MPL-2.0"
    assert found["libc-utils"].expression == "BSD-2-Clause AND BSD-3-Clause"
    # "MIT BSD GPL2+": three names side by side; BSD alone names no SPDX licence.
    assert found["musl-utils"].expression == "GPL-2.0-or-later AND LicenseRef-BSD AND MIT"
    assert found["musl"].source == "apk index of feed main: 'MIT'"
    assert all(f.expression != NOASSERTION for f in found.values())


def test_alpines_package_info_states_the_licence_its_index_does(samples):
    """.PKGINFO's `license` of each real package is the index's `L:`: either source gives one licence."""
    folder = samples / ALPINE
    keys = apk.load_rsa_keys([samples / "alpine" / "keys"])
    index = apk.read_apkindex((folder / "APKINDEX.tar.gz").read_bytes(), keys, "APKINDEX.tar.gz")
    by_name = {e.name: e for e in index.entries}
    for path in sorted(folder.glob("*.apk")):
        package = apk.read_apk(path.read_bytes(), keys, path.name)
        [license] = package.pkginfo["license"]
        assert license == by_name[package.name].license, path.name


def test_openwrt_feed_licences_are_read_and_normalised(samples):
    found = {}
    for name in ("openwrt-core-mvebu", "openwrt-simonsmh-mt7621"):
        folder = samples / name
        verified = ipk.verify_index((folder / "Packages.gz").read_bytes(), (folder / "Packages.sig").read_bytes(),
                                    usign.load_keys([folder]), f"{name}/Packages")
        for stanza in ipk.parse_stanzas(verified.text, f"{name}/Packages"):
            package = ipk.package_from_stanza(stanza, feed=name, base_url=folder.as_uri(), source=name)
            found[package.name] = package_license(package, lambda path: None).expression
    assert found["fwtool"] == "GPL-2.0-only"
    assert found["uboot-envtools"] == "GPL-2.0-only AND GPL-2.0-or-later"
    assert found["libgcc1"] == "GPL-3.0-or-later WITH GCC-exception-3.1"
    assert found["ChinaDNS"] == "GPL-3.0-only"
    assert found["zlib"] == "Zlib"


def test_a_deb_without_a_copyright_file_is_noassertion_saying_why(samples):
    path = samples / "debian" / "fact-test.deb"
    package = DebBackend().read_package(path, feed="package_files", base_url=path.parent.as_uri(),
                                        filename=path.name)
    found = package_license(package, entries_reader(read_package_entries(path)))
    assert found.expression == NOASSERTION
    assert found.problem == f"the package has no /usr/share/doc/{package.name}/copyright"


@pytest.mark.network
def test_debian_copyright_files_are_read_from_the_packages(cache_dir):
    """Real DEP-5 files from the mirror: every Files paragraph's licence applies, the debian/*
    ones (the packaging, not shipped) do not; a copyright file that is not DEP-5 says nothing
    fwgen can read; a doc folder linked to another package's is followed."""
    feed = Feed("debian", "deb", "http://deb.debian.org/debian")
    names = ["dropbear-bin", "zlib1g", "libc6", "libtomcrypt1"]
    fetched = {f.package.name: f for f in fetch_packages([feed], Arch.AARCH64, names, nodeps=names,
                                                         cache=Cache(cache_dir))}
    found = {name: package_license(f.package, entries_reader(read_fetched_entries(f)))
             for name, f in fetched.items()}
    # dropbear's debian/initramfs/* is GPL-2+: the packaging's licence, not in the expression.
    assert found["dropbear-bin"].expression == \
        "BSD-2-Clause AND BSD-3-Clause AND LicenseRef-scancode-public-domain AND MIT AND SSH-OpenSSH"
    assert found["dropbear-bin"].source == "usr/share/doc/dropbear-bin/copyright"
    assert found["zlib1g"].expression == "Zlib"
    assert found["libtomcrypt1"].expression == "LicenseRef-scancode-public-domain OR WTFPL"
    assert found["libc6"].expression == NOASSERTION
    assert "not machine-readable" in (found["libc6"].problem or "")


def test_the_build_warns_once_per_package_whose_licence_is_noassertion_saying_why():
    from types import SimpleNamespace

    from fwgen.build import warn_unstated_licenses
    from fwgen.licenses import License

    said: list[str] = []
    ctx = SimpleNamespace(progress=SimpleNamespace(info=said.append), licenses={
        "zlib1g": License("Zlib", "usr/share/doc/zlib1g/copyright"),
        "libc6": License(NOASSERTION, "usr/share/doc/libc6/copyright",
                         "usr/share/doc/libc6/copyright is not machine-readable (no DEP-5 Format: line)")})
    warn_unstated_licenses(ctx)  # type: ignore[arg-type]
    assert said == ["warning: package libc6: licence NOASSERTION: usr/share/doc/libc6/copyright is not "
                    "machine-readable (no DEP-5 Format: line)"]
