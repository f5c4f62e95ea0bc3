"""The deb backend end to end against repositories served from 127.0.0.1.

Offline tests sign a generated repository with a key made here (trusted through Feed.keys);
the network-marked tests use Debian's real InRelease, verified with the keys fwgen ships.
"""

from __future__ import annotations

import hashlib
import lzma
import warnings
from pathlib import Path

import pysequoia
import pytest
from localhttp import Server, content_files
from test_fetch_deb import add_member, build_deb, build_tar

from fwgen.arch import Arch
from fwgen.board import Feed
from fwgen.cache import Cache
from fwgen.errors import FetchError, IntegrityError
from fwgen.fetch import fetch_packages, install_package, load_index
from fwgen.fetch.deb import DebBackend
from fwgen.progress import QUIET
from fwgen.rootfs import RootFS

DEBIAN = "http://deb.debian.org/debian"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalRepo:
    """A signed Debian repository served on 127.0.0.1 (suite `test`, arch arm64)."""

    def __init__(self, server: Server, tmp: Path, *, by_hash: bool = False, valid_until: str | None = None):
        self.server, self.by_hash, self.valid_until = server, by_hash, valid_until
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.key = pysequoia.Tsk.generate("fwgen test archive <test@example.org>")
        self.key_file = tmp / "test-archive.pgp"
        self.key_file.write_bytes(bytes(self.key.extract_certificate()))
        self.stanzas: list[str] = []
        self.debs: dict[str, bytes] = {}

    def add(self, name: str, version: str, files: dict[str, bytes], depends: str = "", arch: str = "arm64"):
        deb = build_deb(build_tar(lambda t: [add_member(t, f"./{p}", data=d, mode=0o755) for p, d in files.items()]))
        filename = f"pool/main/{name}_{version}_{arch}.deb"
        self.debs[filename] = deb
        self.server.serve("/" + filename, deb)
        stanza = f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
        stanza += f"Depends: {depends}\n" if depends else ""
        stanza += f"Filename: {filename}\nSize: {len(deb)}\nSHA256: {sha256(deb)}\nDescription: test\n multi-line\n"
        self.stanzas.append(stanza)

    def publish(self, *, packages_xz: bytes | None = None) -> bytes:
        """Write Packages.xz and a signed InRelease; `packages_xz` replaces the served index."""
        index = lzma.compress("\n".join(self.stanzas).encode())
        release = "Origin: fwgen-test\nSuite: test\nArchitectures: arm64\nComponents: main\n"
        release += "Acquire-By-Hash: yes\n" if self.by_hash else ""
        release += f"Valid-Until: {self.valid_until}\n" if self.valid_until else ""
        release += f"SHA256:\n {sha256(index)} {len(index)} main/binary-arm64/Packages.xz\n"
        inrelease = pysequoia.sign(self.key.signer(), release.encode(), mode=pysequoia.SignatureMode.CLEAR)
        served = packages_xz if packages_xz is not None else index
        self.server.serve("/dists/test/InRelease", inrelease)
        self.server.serve("/dists/test/main/binary-arm64/Packages.xz", served)
        self.server.serve(f"/dists/test/main/binary-arm64/by-hash/SHA256/{sha256(index)}", served)
        return inrelease

    def feed(self, *, keys: tuple[Path, ...] | None = None) -> Feed:
        return Feed("local", "deb", self.server.url, suite="test", keys=(self.key_file,) if keys is None else keys)


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache", attempts=2, backoff=0.01, timeout=10)


def test_fetch_and_install_from_a_signed_local_repository(server, cache, tmp_path):
    repo = LocalRepo(server, tmp_path, by_hash=True)
    repo.add("libtiny1", "1.0-1", {"usr/lib/libtiny.so.1": b"\x7fELF lib"})
    repo.add("tiny", "2.0-1", {"usr/bin/tiny": b"\x7fELF bin"}, depends="libtiny1 (>= 1.0)")
    repo.publish()
    fetched = fetch_packages([repo.feed()], Arch.AARCH64, ["tiny"], cache=cache, jobs=2)
    assert [(f.package.name, f.package.version, f.package.feed) for f in fetched] == [
        ("libtiny1", "1.0-1", "local"), ("tiny", "2.0-1", "local"),
    ]
    for item in fetched:
        assert item.path.read_bytes() == repo.debs[item.package.filename]
        assert item.path.name == sha256(item.path.read_bytes())
    rootfs = RootFS()
    for item in fetched:
        install_package(rootfs, item)
    assert rootfs["/usr/bin/tiny"].data == b"\x7fELF bin"
    assert rootfs["/usr/lib/libtiny.so.1"].provenance == "deb:libtiny1"
    # Acquire-By-Hash: the index came from its by-hash name, never from the plain one.
    assert "/dists/test/main/binary-arm64/Packages.xz" not in server.hits
    # A second run reuses the cache: no package is downloaded again.
    fetch_packages([repo.feed()], Arch.AARCH64, ["tiny"], cache=cache)
    assert server.hits[f"/{fetched[1].package.filename}"] == 1


def test_tampered_inrelease_is_refused_and_not_kept(server, cache, tmp_path):
    repo = LocalRepo(server, tmp_path)
    repo.add("tiny", "1", {"bin/tiny": b"x"})
    signed = repo.publish()
    tampered = signed.replace(b"Origin: fwgen-test", b"Origin: fwgen-tesT")
    server.serve("/dists/test/InRelease", tampered)
    with pytest.raises(IntegrityError, match=r"/dists/test/InRelease: OpenPGP signature does not verify"):
        load_index([repo.feed()], Arch.AARCH64, cache=cache)
    assert not [p for p in (cache.root / "url").rglob("*") if p.is_file()]


def test_inrelease_signed_by_an_untrusted_key_is_refused(server, cache, tmp_path):
    repo = LocalRepo(server, tmp_path)
    repo.add("tiny", "1", {"bin/tiny": b"x"})
    repo.publish()
    # Default keys: Debian's archive keys, which did not sign this repository.
    with pytest.raises(IntegrityError, match="signature does not verify"):
        load_index([repo.feed(keys=())], Arch.AARCH64, cache=cache)


def test_expired_valid_until_is_refused(server, cache, tmp_path):
    repo = LocalRepo(server, tmp_path, valid_until="Sat, 01 Jan 2000 00:00:00 UTC")
    repo.add("tiny", "1", {"bin/tiny": b"x"})
    repo.publish()
    with pytest.raises(IntegrityError, match=r"expired: Valid-Until Sat, 01 Jan 2000 00:00:00 UTC has passed"):
        load_index([repo.feed()], Arch.AARCH64, cache=cache)


def test_packages_index_not_matching_release_is_refused(server, cache, tmp_path):
    repo = LocalRepo(server, tmp_path)
    repo.add("tiny", "1", {"bin/tiny": b"x"})
    real = lzma.compress("\n".join(repo.stanzas).encode())
    forged = lzma.compress(b"Package: evil\nVersion: 1\n")
    repo.publish(packages_xz=forged.ljust(len(real), b"\0"))  # same size, other content
    with pytest.raises(IntegrityError, match=rf"Packages.xz: SHA-256 mismatch: expected {sha256(real)}"):
        load_index([repo.feed()], Arch.AARCH64, cache=cache)
    assert content_files(cache) == []
    repo.publish(packages_xz=forged)  # another size: retried as a mirror in mid-sync, then refused
    with pytest.raises(FetchError, match=r"Packages.xz: file has unexpected size \d+ \(the index says"):
        load_index([repo.feed()], Arch.AARCH64, cache=cache)
    assert content_files(cache) == []


def test_package_not_matching_index_is_refused(server, cache, tmp_path):
    repo = LocalRepo(server, tmp_path)
    repo.add("tiny", "1", {"bin/tiny": b"x"})
    repo.publish()
    [filename] = repo.debs
    good = repo.debs[filename]
    server.serve("/" + filename, good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit off
    with pytest.raises(IntegrityError, match=rf"{filename}: SHA-256 mismatch: expected {sha256(good)}, got "):
        fetch_packages([repo.feed()], Arch.AARCH64, ["tiny"], cache=cache)
    assert [p.name for p in content_files(cache)] == [sha256(lzma.compress("\n".join(repo.stanzas).encode()))]


# -- the real Debian archive ------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_inrelease(cache_dir) -> bytes:
    cache = Cache(cache_dir)
    return cache.fetch(f"{DEBIAN}/dists/bookworm/InRelease", sha256=None, size=None).read_bytes()


@pytest.mark.network
def test_real_inrelease_verifies_and_a_flipped_byte_does_not(real_inrelease):
    from fwgen.fetch.deb import load_certs, parse_release, verify_clearsigned

    text = verify_clearsigned(real_inrelease, load_certs(), "InRelease")
    release = parse_release(text.decode(), "InRelease")
    assert "main/binary-arm64/Packages.xz" in release.files and release.by_hash
    signed_start = real_inrelease.index(b"Codename: bookworm")
    tampered = bytearray(real_inrelease)
    tampered[signed_start + len("Codename: b")] ^= 0x01  # bookworm -> bcokworm
    with pytest.raises(IntegrityError, match="InRelease: OpenPGP signature does not verify"):
        verify_clearsigned(bytes(tampered), load_certs(), "InRelease")


@pytest.mark.network
def test_real_inrelease_with_altered_packages_index_is_refused(real_inrelease, server, cache):
    """A copy of the real repository tree: Debian's signed InRelease, a forged Packages.xz."""
    server.serve("/debian/dists/bookworm/InRelease", real_inrelease)
    forged = lzma.compress(b"Package: busybox-static\nVersion: 99\nArchitecture: arm64\n")
    text = real_inrelease.decode()
    line = next(ln for ln in text.splitlines() if ln.endswith(" main/binary-arm64/Packages.xz") and len(ln.split()[0]) == 64)
    digest, size = line.split()[:2]
    served = forged.ljust(int(size), b"\0")
    server.serve(f"/debian/dists/bookworm/main/binary-arm64/by-hash/SHA256/{digest}", served)
    feed = Feed("mirror", "deb", f"{server.url}/debian", suite="bookworm")
    with pytest.raises(IntegrityError, match=rf"by-hash/SHA256/{digest}: SHA-256 mismatch: expected {digest}"):
        DebBackend().load_index(feed, Arch.AARCH64, cache, QUIET)
    assert content_files(cache) == []
