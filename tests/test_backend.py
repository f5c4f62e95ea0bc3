"""The Backend base class: the defaults every format inherits, the table of formats by name,
and verifying one package file through its format (`Backend.verify_file`), against the real
.deb, .apk and .ipk in ../shared/samples and a tampered copy of each."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from feedgen import FileSpec, build_deb

from fwgen.arch import Arch
from fwgen.cache import Cache
from fwgen.cli import main
from fwgen.errors import FormatError, IntegrityError, UserError
from fwgen.fetch.apk import ApkBackend
from fwgen.fetch.archive import UnpackBudget
from fwgen.fetch.backend import Backend, FileHead, read_head
from fwgen.fetch.backends import all_backends, get_backend, identify_file
from fwgen.fetch.deb import DebBackend
from fwgen.fetch.ipk import IpkBackend
from fwgen.fetch.package import Package
from fwgen.fetch.verify import verify_file
from fwgen.progress import QUIET
from fwgen.rootfs import Entry

DEB = "debian/fact-test.deb"
APK = "alpine/alpine-baselayout-3.2.0-r23.aarch64.apk"
IPK = "openwrt-core-mvebu/fwtool_2019-11-12-8f7fe925-1_arm_cortex-a9_vfpv3-d16.ipk"


class PlainFormat(Backend):
    """A format that declares only what it must: .debs read under another name, so every
    optional hook is the base class's default."""

    name = "plain"
    neutral_arch = "any"
    purl = ("generic", "plain")

    def __init__(self) -> None:
        self.reader = DebBackend()

    def arch_name(self, arch: Arch) -> str:
        return arch.value

    def load_index(self, feed, arch, cache, progress):
        return []

    def compare_versions(self, a: str, b: str) -> int:
        return (a > b) - (a < b)

    def satisfies(self, version: str, op: str, wanted: str) -> bool:
        return op == "=" and version == wanted

    def recognizes(self, head: FileHead) -> bool:
        return self.reader.recognizes(head)

    def read_entries(self, path: Path, budget: UnpackBudget | None = None) -> Iterator[Entry]:
        return self.reader.read_entries(path, budget)

    def read_control_files(self, path: Path) -> dict[str, bytes]:
        return self.reader.read_control_files(path)


def _tampered(source: Path, folder: Path) -> Path:
    """A copy of `source` with one byte changed in the middle (inside its data)."""
    blob = bytearray(source.read_bytes())
    blob[len(blob) // 2] ^= 0x55
    copy = folder / source.name
    copy.write_bytes(bytes(blob))
    return copy


def test_a_format_must_declare_the_abstract_hooks():
    class Incomplete(Backend):
        name = "incomplete"

    with pytest.raises(TypeError, match="abstract methods.*arch_name.*load_index"):
        Incomplete()  # type: ignore[abstract]


def test_the_optional_hooks_have_defaults(samples, tmp_path):
    plain = PlainFormat()
    assert (plain.license_file, plain.bare_provides_need_priority) == (None, False)
    assert plain.install_if_additions([], []) == []
    with pytest.raises(UserError, match="fwgen takes plain packages from feeds only"):
        plain.read_package(samples / DEB, feed="package_files", base_url="file:///", filename="fact-test.deb")
    assert plain.identify(samples / DEB, read_head(samples / DEB)) == "plain"
    assert plain.identify(samples / APK, read_head(samples / APK)) is None


def test_the_default_fetch_checks_the_index_size_and_sha256(samples, tmp_path):
    blob = (samples / DEB).read_bytes()
    folder = (samples / DEB).parent.as_uri()
    package = Package("fact", "1", "all", "x", "plain", folder, "fact-test.deb", len(blob), hashlib.sha256(blob).hexdigest())
    path = PlainFormat().fetch_package(package, Cache(tmp_path / "cache"), QUIET)
    assert path.read_bytes() == blob
    wrong = Package("fact", "1", "all", "x", "plain", folder, "fact-test.deb", len(blob), "0" * 64)
    with pytest.raises(IntegrityError, match="SHA-256"):
        PlainFormat().fetch_package(wrong, Cache(tmp_path / "other"), QUIET)


def test_the_default_verify_reads_the_package_whole(samples, tmp_path):
    report = PlainFormat().verify_file(samples / DEB, "plain", ())
    assert (report.kind, report.ok, report.key) == ("plain", True, None)
    assert report.detail.startswith("structure ok (1 control files, 7 entries)")
    with pytest.raises(FormatError, match=r"data\.tar\.xz at 0x204: cannot decompress"):
        PlainFormat().verify_file(_tampered(samples / DEB, tmp_path), "plain", ())


def test_the_formats_by_name_and_by_bytes(samples, tmp_path):
    assert [type(b) for b in all_backends()][:3] == [DebBackend, ApkBackend, IpkBackend]
    assert get_backend("apk") is get_backend("apk")
    with pytest.raises(UserError, match=r"unknown feed type 'rpm' \(known: apk, deb, ipk\)"):
        get_backend("rpm")
    assert [identify_file(samples / p)[1] for p in (DEB, APK, IPK)] == ["deb", "apk", "ipk"]
    ar_ipk = tmp_path / "old.ipk"
    shutil.copy(samples / DEB, ar_ipk)  # the older ar-style .ipk has a .deb's bytes
    backend, kind = identify_file(ar_ipk)
    assert (backend.name, kind) == ("ipk", "ipk")


@pytest.mark.parametrize(("sample", "keys", "kind", "key", "says"), [
    (DEB, None, "deb", None, "structure ok (debian-binary, control.tar.xz, data.tar.xz), 7 entries, no md5sums"),
    (APK, "alpine/keys", "apk", "alpine-devel@lists.alpinelinux.org-616ae350.rsa.pub",
     "alpine-baselayout 3.2.0-r23, identity Q1LLq2qDNrS/qRnhxQ3hsY/sHbQnc=, datahash and 83 entries' SHA-1"),
    (IPK, "openwrt-core-mvebu", "ipk", "d95e275d41a63bff", "fwtool 2019-11-12-8f7fe925-1 (tar.gz), 3 entries; "
     "Size and SHA256sum match the signed Packages beside it"),
])
def test_each_format_verifies_its_real_package_and_refuses_a_tampered_copy(samples, tmp_path, sample, keys,
                                                                            kind, key, says):
    path = samples / sample
    keys_dirs = (samples / keys,) if keys else ()
    report = get_backend(kind).verify_file(path, kind, keys_dirs)
    assert (report.kind, report.ok, report.key) == (kind, True, key)
    assert report.detail.startswith(says), report.detail
    tampered = _tampered(path, tmp_path)
    with pytest.raises((FormatError, IntegrityError)) as refused:
        get_backend(kind).verify_file(tampered, kind, keys_dirs)
    assert refused.value.message.startswith(f"{tampered}: ") and "\n" not in refused.value.message
    result = CliRunner().invoke(main, ["verify", str(tampered), *(["--keys", str(keys_dirs[0])] if keys else [])])
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert line.startswith(f"{kind}: FAILED: {tampered}: ")


def test_a_deb_whose_file_differs_from_its_md5sums_is_refused(tmp_path):
    files = [FileSpec("./usr/bin/hello", b"hello\n", mode=0o755), FileSpec("./etc/hello.conf", b"loud=1\n")]
    sums = b"b1946ac92492d2347c6235b4d2611184  usr/bin/hello\n5ccf53d3b5f5e8e0dd8ae3fd5c4a2b41  etc/hello.conf\n"
    good = tmp_path / "hello.deb"
    right = sums.replace(b"5ccf53d3b5f5e8e0dd8ae3fd5c4a2b41", hashlib.md5(b"loud=1\n").hexdigest().encode())
    good.write_bytes(build_deb("hello", files, md5sums=right + b"\n"))  # a blank line lists nothing
    report = verify_file(good)
    assert report.ok and "2 files match md5sums" in report.detail, report
    bad = tmp_path / "changed.deb"
    bad.write_bytes(build_deb("hello", files, md5sums=sums))
    report = verify_file(bad)
    assert not report.ok
    assert report.detail == (f"{bad}: md5sums:2: etc/hello.conf: content does not match its MD5 "
                             "5ccf53d3b5f5e8e0dd8ae3fd5c4a2b41")
    missing = tmp_path / "missing.deb"
    missing.write_bytes(build_deb("hello", files[:1], md5sums=right))
    assert verify_file(missing).detail == f"{missing}: md5sums:2: etc/hello.conf: not in data.tar"
