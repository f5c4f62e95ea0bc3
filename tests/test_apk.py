"""Alpine: the real v3.16 index and packages, byte flips, version ordering, a served repo."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from feedgen import ApkSpec, FileSpec, RsaSigner, build_apk, serve, write_alpine_repo

from fwgen.arch import Arch
from fwgen.board import Feed
from fwgen.cache import Cache
from fwgen.errors import FetchError, FormatError, IntegrityError, UserError
from fwgen.fetch import apk, apkversion
from fwgen.fetch.package import PackageIndex
from fwgen.fetch.resolver import resolve
from fwgen.fetch.verify import verify_file
from fwgen.progress import QUIET
from fwgen.rootfs import EntryType, RootFS

INDEX = "alpine/APKINDEX-v3.16-main-x86_64.tar.gz"
BASELAYOUT = "alpine/alpine-baselayout-3.2.0-r23.aarch64.apk"
CURL = "alpine/curl-7.83.1-r1.x86_64.apk"


@pytest.fixture(scope="module")
def keys() -> dict[str, apk.RsaKey]:
    return apk.load_rsa_keys([apk.SHIPPED_KEYS])


# -- the real files ----------------------------------------------------------------------------
def test_shipped_keys_are_alpines_18(keys):
    assert len(keys) == 18
    assert {k.short_id for k in keys.values()} >= {"6165ee59", "616ae350", "524d27bb", "616adfeb"}


def test_real_apkindex_verifies_and_parses_completely(samples, keys):
    index = apk.read_apkindex((samples / INDEX).read_bytes(), keys, INDEX)
    assert index.key.short_id == "6165ee59"
    assert index.description == "v3.16.3-13-g4d933a1fa3"
    assert len(index.entries) == 4929
    assert all(e.identity.startswith("Q1") and len(e.identity) == 30 for e in index.entries)
    assert {e.arch for e in index.entries} <= {"x86_64", "noarch"}
    assert all(e.installable for e in index.entries)
    by_name = {e.name: e for e in index.entries}
    musl = by_name["musl"]
    assert musl.provides == ["so:libc.musl-x86_64.so.1=1"]
    busybox = by_name["busybox"]
    assert "cmd:sh=1.35.0-r17" in busybox.provides and busybox.depends == ["so:libc.musl-x86_64.so.1"]
    first = index.entries[0]
    assert (first.name, first.install_if) == ("git-zsh-completion", ["zsh=5.8.1-r4", "git"])
    assert sum(e.provider_priority is not None for e in index.entries) == 72


def test_real_index_resolves_curl_through_so_provides(samples, keys):
    index = apk.read_apkindex((samples / INDEX).read_bytes(), keys, INDEX)
    packages = [apk.package_from_entry(e, feed="main", base_url="http://x/main/x86_64", source=INDEX) for e in index.entries]
    backend = apk.ApkBackend()
    resolution = resolve(PackageIndex(packages, backend.satisfies, backend.compare_versions, "x86_64", "noarch"), ["curl"])
    names = [p.name for p in resolution.packages]
    assert names[-1] == "curl"
    # so:libc.musl-x86_64.so.1, so:libcurl.so.4 and so:libz.so.1 are found by their providers.
    assert {"musl", "libcurl", "zlib", "ca-certificates"} <= set(names)
    assert names.index("musl") < names.index("libcurl")


def test_real_baselayout_extracts_with_modes_owners_symlinks(samples, keys):
    package = apk.read_apk((samples / BASELAYOUT).read_bytes(), keys, BASELAYOUT, provenance="apk:alpine-baselayout")
    assert package.key.short_id == "616ae350"
    assert (package.name, package.version) == ("alpine-baselayout", "3.2.0-r23")
    assert [m.name for m in package.control][0] == ".PKGINFO"
    rootfs = RootFS()
    for entry in package.entries:
        rootfs.add(entry)
    assert rootfs["/tmp"].mode == 0o1777 and rootfs["/var/tmp"].mode == 0o1777
    assert rootfs["/root"].mode == 0o700 and rootfs["/var/empty"].mode == 0o555
    assert rootfs["/etc/crontabs/root"].mode == 0o600
    assert rootfs["/sbin/mkmntdirs"].mode == 0o755 and rootfs["/sbin/mkmntdirs"].data.startswith(b"\x7fELF")
    assert all(e.uid == 0 and e.gid == 0 for e in package.entries)
    links = {e.path: e.target for e in package.entries if e.type is EntryType.SYMLINK}
    assert links["/var/spool/cron/crontabs"] == "/etc/crontabs"
    assert "/var/run" in links
    assert rootfs["/etc/motd"].provenance == "apk:alpine-baselayout"
    assert b"Alpine" in rootfs["/etc/motd"].data


def test_curl_identity_matches_the_index_excerpt(samples, keys):
    excerpt = apk.parse_apkindex((samples / "alpine/APKINDEX-excerpt.txt").read_text(), "excerpt")
    wanted = next(e for e in excerpt if e.name == "curl")
    package = apk.read_apk((samples / CURL).read_bytes(), keys, CURL, identity=wanted.identity)
    assert package.identity == "Q1dHNOerPc1tLPEYaP5dYIgzfGdto=" == wanted.identity
    assert package.key.short_id == "6165ee59"
    other = next(e for e in excerpt if e.name == "gvim")
    with pytest.raises(IntegrityError, match="does not match the index"):
        apk.read_apk((samples / CURL).read_bytes(), keys, CURL, identity=other.identity)


def _flip(blob: bytes, offset: int) -> bytes:
    return blob[:offset] + bytes([blob[offset] ^ 0x01]) + blob[offset + 1 :]


@pytest.mark.parametrize("name", [BASELAYOUT, CURL])
def test_any_changed_byte_of_a_real_package_is_refused(samples, keys, name):
    blob = (samples / name).read_bytes()
    streams = apk.split_gzip_streams(blob, name)
    assert len(streams) == 3
    for stream in streams:
        # The gzip header's MTIME byte: inflates the same, but the compressed bytes differ,
        # which only the signature (control) or datahash (data) can notice.
        if stream is not streams[0]:
            with pytest.raises(IntegrityError):
                apk.read_apk(_flip(blob, stream.start + 4), keys, name)
        for offset in (stream.start + 12, (stream.start + stream.end) // 2, stream.end - 5):
            with pytest.raises(UserError):
                apk.read_apk(_flip(blob, offset), keys, name)


def test_changed_real_index_is_refused(samples, keys):
    blob = (samples / INDEX).read_bytes()
    streams = apk.split_gzip_streams(blob, INDEX)
    with pytest.raises(IntegrityError, match="does not verify"):
        apk.read_apkindex(_flip(blob, streams[1].start + 4), keys)
    for offset in (streams[0].start + 20, streams[1].start + 40, len(blob) // 2, len(blob) - 3):
        with pytest.raises(UserError):
            apk.read_apkindex(_flip(blob, offset), keys)


SIGNATURE_FAILED = re.compile(
    r"APKINDEX: FAILED: .*APKINDEX.tar.gz: (RSA signature by (?P<key>alpine-devel@\S+\.rsa\.pub) does not verify"
    r"|signature( by (?P<named>alpine-devel@\S+\.rsa\.pub))? FAILED: "
    r"the signature stream at offset 0x0 is damaged \([a-z ]+\))$")


@pytest.mark.parametrize(("sample", "signer"), [
    ("alpine-aarch64-3.13.4/APKINDEX.tar.gz", "alpine-devel@lists.alpinelinux.org-58199dcc.rsa.pub"),
    (INDEX, "alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub"),
])
def test_a_changed_byte_anywhere_in_a_real_index_is_a_signature_failure(samples, tmp_path, sample, signer):
    blob = (samples / sample).read_bytes()
    signature, index = apk.split_gzip_streams(blob, sample)
    offsets = {
        "signature stream's deflate data": signature.start + 20,
        "middle of the signature stream": (signature.start + signature.end) // 2,
        "signature stream's CRC-32": signature.end - 6,
        "index stream's gzip header": index.start + 4,
        "index stream's first block": index.start + 20,
        "middle of the index stream": (index.start + index.end) // 2,
        "index stream's length": index.end - 2,
    }
    for where, offset in offsets.items():
        path = tmp_path / "APKINDEX.tar.gz"
        path.write_bytes(_flip(blob, offset))
        line = str(verify_file(path))
        match = SIGNATURE_FAILED.match(line)
        assert match, f"{where} (offset {offset:#x}): {line}"
        named = match["key"] or match["named"]
        # Damage near the start of the signature stream may leave even the key's name unreadable.
        assert named == signer or (named is None and offset == signature.start + 20), f"{where}: {line}"
        if offset >= index.start:  # the signature itself reads fine and fails
            assert match["key"] == signer, f"{where}: {line}"
        with pytest.raises(IntegrityError):
            apk.read_apkindex(path.read_bytes(), apk.load_rsa_keys([apk.SHIPPED_KEYS]), sample)


def test_untrusted_key_is_refused(samples, keys):
    others = {k: v for k, v in keys.items() if "6165ee59" not in k}
    with pytest.raises(IntegrityError, match="6165ee59.rsa.pub is not trusted"):
        apk.read_apkindex((samples / INDEX).read_bytes(), others)


def test_gzip_streams_are_split_at_exact_byte_ranges(samples):
    blob = (samples / CURL).read_bytes()
    streams = apk.split_gzip_streams(blob, CURL)
    assert [(s.start, s.end) for s in streams] == [(0, 667), (667, 1243), (1243, len(blob))]
    with pytest.raises(FormatError, match="truncated"):
        apk.split_gzip_streams(blob[:-10], CURL)


# -- index syntax and dependencies -------------------------------------------------------------
def test_apkindex_errors_name_the_line():
    with pytest.raises(FormatError, match=r"APKINDEX:3: expected 'X:value'"):
        apk.parse_apkindex("P:a\nV:1\nbroken line\n")
    with pytest.raises(FormatError, match=r"APKINDEX:4: stanza has no V: field"):
        apk.parse_apkindex("P:a\nV:1\n\nP:b\n")
    with pytest.raises(FormatError, match=r"APKINDEX:3: S: not a number"):
        apk.parse_apkindex("P:a\nV:1\nS:x\n")


def test_unknown_letters_lower_case_ignored_upper_case_uninstallable():
    entries = apk.parse_apkindex("P:a\nV:1\nz:whatever\n\nP:b\nV:1\nW:new\n")
    assert [e.installable for e in entries] == [True, False]


@pytest.mark.parametrize(
    "token, expected",
    [
        ("so:libc.musl-x86_64.so.1", apk.ApkDependency("so:libc.musl-x86_64.so.1")),
        ("!busybox-suid", apk.ApkDependency("busybox-suid", conflict=True)),
        ("zsh=5.8.1-r4", apk.ApkDependency("zsh", "=", "5.8.1-r4")),
        ("pc:libfoo>=1.2", apk.ApkDependency("pc:libfoo", ">=", "1.2")),
        ("python3~3.10", apk.ApkDependency("python3", "~", "3.10")),
        ("/bin/sh", apk.ApkDependency("/bin/sh")),
    ],
)
def test_dependency_tokens(token, expected):
    assert apk.parse_dependency(token) == expected
    assert str(expected) == token


# -- version ordering ---------------------------------------------------------------------------
# Pairs checked against apk-tools' rules (its test/version.data holds many of these).
VERSION_ORDER = [
    ("1.0", "<", "1.0.1"), ("1.2.1", ">", "1.2"), ("1.0.4-r3", "<", "1.0.4-r4"),
    ("1.1_alpha1", "<", "1.1"), ("1.1", "<", "1.1_p1"), ("1.3_alpha", "<", "1.3_alpha2"),
    ("0.8_beta4", "<", "0.8_rc1"), ("1.0_rc1", "<", "1.0"), ("1.0_pre1", "<", "1.0_rc1"),
    ("1.0_alpha", "<", "1.0_beta"), ("1.0_cvs", "<", "1.0_svn"), ("1.0_git1", "<", "1.0_hg1"),
    ("1.0_hg", "<", "1.0_p"), ("1.7", "<", "1.7b"), ("2.3.0b-r1", "<", "2.3.0b-r2"),
    ("2.5.1-r8", "<", "2.5.1a-r1"), ("1.2.12.04", "<", "1.2.12.05"), ("1.07", "<", "1.19"),
    ("1.001", "<", "1.01"), ("1.01", "<", "1.1"), ("1.06-r6", "<", "006"), ("013", "<", "014-r1"),
    ("2.01.01_alpha10", ">", "0.94"), ("0.1.0_alpha_pre2", "<", "0.1.0_alpha"),
    ("1.0_p10-r0", ">", "1.0_p9-r0"), ("1.3_pre1-r1", "<", "1.3.2"), ("22.7.3-r1", ">", "22.7"),
    ("1.0.0_pre20191002222144-r0", "<", "1.0.0_pre20210530193627-r0"), ("1.2.3-r1", ">", "1.2.3"),
    ("2.0.6", "=", "2.0.6"), ("20050718-r2", ">", "3.9.8-r5"), ("1.0", "<", "1.0bc"),
    ("1.2.3~abc123-r0", ">", "1.2.3~abc122-r0"), ("1.10", ">", "1.9"),
]


@pytest.mark.parametrize("a, op, b", VERSION_ORDER)
def test_alpine_version_ordering(a, op, b):
    expected = {"<": -1, "=": 0, ">": 1}[op]
    assert apkversion.compare(a, b) == expected
    assert apkversion.compare(b, a) == -expected


def test_version_constraints():
    assert apkversion.satisfies("1.2.3-r0", "~", "1.2")
    assert not apkversion.satisfies("1.3.0-r0", "~", "1.2")
    assert apkversion.satisfies("1.2.9", ">~", "1.2") and apkversion.satisfies("1.3", ">~", "1.2")
    assert not apkversion.satisfies("1.1", ">~", "1.2")
    assert apkversion.satisfies("1.0", "<<", "1.1") and not apkversion.satisfies("1.1", "<", "1.1")
    assert apkversion.satisfies("1.1", "<=", "1.1") and apkversion.satisfies("2", ">", "1.1")
    assert not apkversion.is_valid("1.0bc") and apkversion.is_valid("1.2.3_rc1~0ab-r7")


# -- a generated, signed repository served on 127.0.0.1 ----------------------------------------
def _packages(signer: RsaSigner) -> dict[str, object]:
    libfoo = build_apk(ApkSpec("libfoo", "1.2.0-r1", "aarch64", [
        FileSpec("usr", kind="dir", mode=0o755), FileSpec("usr/lib", kind="dir", mode=0o755),
        FileSpec("usr/lib/libfoo.so.1.2", b"\x7fELF libfoo", mode=0o755),
        FileSpec("usr/lib/libfoo.so.1", kind="symlink", target="libfoo.so.1.2", mode=0o777),
    ], provides=["so:libfoo.so.1=1.2"]), signer)
    old = build_apk(ApkSpec("libfoo", "1.1.0-r0", "aarch64", [FileSpec("usr/lib/libfoo.so.1", b"old")],
                            provides=["so:libfoo.so.1=1.1"]), signer)
    app = build_apk(ApkSpec("foo-app", "2.0_rc1-r0", "aarch64", [
        FileSpec("usr/bin/foo", b"#!/bin/sh\necho foo\n", mode=0o4750, uid=0, gid=42),
        FileSpec("var/lib/foo", kind="dir", mode=0o700, uid=100, gid=101),
    ], depends=["so:libfoo.so.1", "foo-data>=1", "!foo-legacy"], provides=["cmd:foo=2.0_rc1-r0"]), signer)
    data = build_apk(ApkSpec("foo-data", "1.0-r0", "noarch", [FileSpec("usr/share/foo/db", b"data")]), signer, algorithm="RSA256")
    return {"libfoo": libfoo, "old": old, "app": app, "data": data}


@pytest.fixture()
def alpine_repo(tmp_path):
    signer = RsaSigner.generate()
    keys = tmp_path / "keys"
    signer.write_public(keys)
    built = _packages(signer)
    root = tmp_path / "www"
    folder = write_alpine_repo(root, "v3.99/main/aarch64", list(built.values()), signer)
    with serve(root) as url:
        feed = Feed(name="alpine-test", type="apk", url=f"{url}/v3.99", components=("main",), keys=(keys,))
        yield feed, folder, built, signer


def _url_entries(cache: Cache) -> list[Path]:
    return sorted(p for p in (cache.root / "url").rglob("*") if p.is_file() and not p.name.endswith(".part"))


def test_generated_repo_end_to_end(alpine_repo, tmp_path):
    feed, folder, built, _ = alpine_repo
    backend = apk.ApkBackend()
    cache = Cache(tmp_path / "cache", attempts=1)
    packages = backend.load_index(feed, Arch.AARCH64, cache, QUIET)
    assert sorted((p.name, p.version) for p in packages) == [
        ("foo-app", "2.0_rc1-r0"), ("foo-data", "1.0-r0"), ("libfoo", "1.1.0-r0"), ("libfoo", "1.2.0-r1")]
    index = PackageIndex(packages, backend.satisfies, backend.compare_versions, "aarch64", "noarch")
    resolution = resolve(index, ["foo-app"])
    chosen = [(p.name, p.version) for p in resolution.packages]
    assert chosen == [("libfoo", "1.2.0-r1"), ("foo-data", "1.0-r0"), ("foo-app", "2.0_rc1-r0")]
    rootfs = RootFS()
    for package in resolution.packages:
        path = backend.fetch_package(package, cache, QUIET)
        for entry in backend.read_entries(path):
            rootfs.add(entry)
    assert rootfs["/usr/bin/foo"].mode == 0o4750 and rootfs["/usr/bin/foo"].gid == 42
    assert rootfs["/var/lib/foo"].mode == 0o700 and (rootfs["/var/lib/foo"].uid, rootfs["/var/lib/foo"].gid) == (100, 101)
    assert rootfs["/usr/lib/libfoo.so.1"].target == "libfoo.so.1.2"
    assert rootfs.resolve("/usr/lib/libfoo.so.1").data == b"\x7fELF libfoo"
    assert rootfs["/usr/share/foo/db"].data == b"data"


def test_conflict_is_honoured(alpine_repo, tmp_path):
    feed, folder, built, signer = alpine_repo
    backend = apk.ApkBackend()
    packages = backend.load_index(feed, Arch.AARCH64, Cache(tmp_path / "cache", attempts=1), QUIET)
    legacy = apk.package_from_entry(
        apk.parse_apkindex("P:foo-legacy\nV:1-r0\nA:aarch64\nS:1\n")[0], feed="x", base_url="http://x", source="x")
    index = PackageIndex([*packages, legacy], backend.satisfies, backend.compare_versions, "aarch64", "noarch")
    with pytest.raises(UserError, match="conflicts with foo-legacy"):
        resolve(index, ["foo-legacy", "foo-app"])


def test_tampered_index_is_refused_and_not_cached(alpine_repo, tmp_path):
    feed, folder, built, signer = alpine_repo
    blob = (folder / "APKINDEX.tar.gz").read_bytes()
    streams = apk.split_gzip_streams(blob, "index")
    (folder / "APKINDEX.tar.gz").write_bytes(_flip(blob, streams[1].start + 4))
    cache = Cache(tmp_path / "cache", attempts=1)
    with pytest.raises(IntegrityError, match="does not verify"):
        apk.ApkBackend().load_index(feed, Arch.AARCH64, cache, QUIET)
    assert _url_entries(cache) == []


def test_index_signed_by_an_unknown_key_is_refused(alpine_repo, tmp_path):
    feed, folder, built, signer = alpine_repo
    stranger = RsaSigner.generate("stranger@example.org-0badc0de.rsa.pub")
    write_alpine_repo(folder.parents[2], "v3.99/main/aarch64", list(built.values()), stranger)
    with pytest.raises(IntegrityError, match="0badc0de.rsa.pub is not trusted"):
        apk.ApkBackend().load_index(feed, Arch.AARCH64, Cache(tmp_path / "cache", attempts=1), QUIET)


def test_tampered_package_is_refused_and_not_cached(alpine_repo, tmp_path):
    feed, folder, built, signer = alpine_repo
    backend = apk.ApkBackend()
    cache = Cache(tmp_path / "cache", attempts=1)
    packages = {(p.name, p.version): p for p in backend.load_index(feed, Arch.AARCH64, cache, QUIET)}
    index_files = _url_entries(cache)
    app = built["app"]
    target = folder / "foo-app-2.0_rc1-r0.apk"
    # Same size, one data byte changed (gzip MTIME of the data stream): datahash catches it.
    target.write_bytes(_flip(app.blob, app.data_range[0] + 4))
    with pytest.raises(IntegrityError, match="datahash"):
        backend.fetch_package(packages[("foo-app", "2.0_rc1-r0")], cache, QUIET)
    # A different, validly signed package under the listed name: the index identity catches it.
    impostor = build_apk(ApkSpec("foo-app", "2.0_rc1-r0", "aarch64", [FileSpec("usr/bin/foo", b"evil")]), signer)
    target.write_bytes(impostor.blob)
    listed = packages[("foo-app", "2.0_rc1-r0")]
    with pytest.raises(FetchError, match="unexpected size"):
        backend.fetch_package(listed, cache, QUIET)
    # Even where the size happens to match, the identity (SHA-1 of the control stream) differs.
    with pytest.raises(IntegrityError, match="does not match the index"):
        backend.fetch_package(dataclasses.replace(listed, size=len(impostor.blob)), cache, QUIET)
    assert _url_entries(cache) == index_files  # only the verified index stays


def test_arch_names_come_from_the_arch_table():
    backend = apk.ApkBackend()
    assert [backend.arch_name(a) for a in (Arch.ARMV6, Arch.ARMV7, Arch.AARCH64)] == ["armhf", "armv7", "aarch64"]
    with pytest.raises(UserError, match="Alpine has no port for mips"):
        backend.arch_name(Arch.MIPS)


# -- fwgen verify ------------------------------------------------------------------------------
def test_verify_file_on_the_real_samples(samples):
    report = verify_file(samples / INDEX)
    assert (report.kind, report.ok) == ("APKINDEX", True) and "6165ee59" in report.key
    assert "4929 packages" in report.detail
    report = verify_file(samples / BASELAYOUT)
    assert (report.kind, report.ok) == ("apk", True) and "616ae350" in report.key
    report = verify_file(samples / "debian/fact-test.deb")
    assert (report.kind, report.ok, report.key) == ("deb", True, None)
    assert "signature lives in the repository's InRelease" in report.detail


def test_verify_file_refuses_a_changed_package_and_unknown_keys(samples, tmp_path):
    blob = (samples / CURL).read_bytes()
    changed = tmp_path / "curl.apk"
    changed.write_bytes(_flip(blob, 667 + 4))
    report = verify_file(changed)
    assert (report.kind, report.ok) == ("apk", False) and "does not verify" in report.detail
    empty = tmp_path / "nokeys"
    empty.mkdir()
    report = verify_file(samples / CURL, [empty])
    assert not report.ok and "is not trusted" in report.detail
    assert str(report).startswith("apk: FAILED")


def test_install_if_adds_packages_whose_conditions_are_all_chosen(alpine_repo, tmp_path):
    feed, folder, built, signer = alpine_repo
    doc = build_apk(ApkSpec("foo-doc", "2.0-r0", "noarch", [FileSpec("usr/share/doc/foo", b"doc")],
                            install_if=["foo-app=2.0_rc1-r0", "docs"]), signer)
    docs = build_apk(ApkSpec("docs", "1-r0", "noarch", []), signer)
    write_alpine_repo(folder.parents[2], "v3.99/main/aarch64", [*built.values(), doc, docs], signer)
    backend = apk.ApkBackend()
    packages = backend.load_index(feed, Arch.AARCH64, Cache(tmp_path / "cache", attempts=1), QUIET)
    by_name = {p.name: p for p in packages}
    assert backend.install_if_additions(packages, [by_name["foo-app"]]) == []
    added = backend.install_if_additions(packages, [by_name["foo-app"], by_name["docs"]])
    assert [p.name for p in added] == ["foo-doc"]
