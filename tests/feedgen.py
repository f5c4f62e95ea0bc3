"""Generate signed Alpine repositories and OpenWrt feeds in the real formats, and serve them.

Written from the format facts (FORMATS.md: apk v2, APKINDEX, opkg feeds, usign), with test
keys made here, so that the fetchers can be exercised end to end without the real mirrors
(which are not reachable from CI). Every byte layout follows what abuild and ipkg-build
produce: three gzip streams with the first two tars cut before their end blocks, the
signature over the compressed control stream, PAX `APK-TOOLS.checksum.SHA1` records, an
OpenWrt .ipk as a gzip-compressed tar, `Packages.sig` over the uncompressed `Packages`.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import http.server
import io
import lzma
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from fwgen import usign
from fwgen.fetch.apk import identity_of

MTIME = 1_700_000_000


@dataclass
class FileSpec:
    """One path of a generated package: a file (data), a directory or a symlink (target)."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    kind: str = "file"  # file, dir, symlink, sparse (a GNU sparse file: `size` bytes of hole)
    target: str = ""
    size: int = 0  # sparse: the size the file unpacks to
    major: int = 0  # chardev, blockdev
    minor: int = 0


def _tarinfo(spec: FileSpec) -> tarfile.TarInfo:
    info = tarfile.TarInfo(spec.path)
    info.mode, info.uid, info.gid, info.mtime = spec.mode, spec.uid, spec.gid, MTIME
    info.uname = info.gname = "root"
    if spec.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif spec.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, spec.target
    elif spec.kind in ("chardev", "blockdev"):
        info.type = tarfile.CHRTYPE if spec.kind == "chardev" else tarfile.BLKTYPE
        info.devmajor, info.devminor = spec.major, spec.minor
    elif spec.kind == "sparse":
        info.type, info.size = tarfile.GNUTYPE_SPARSE, spec.size
    else:
        info.size = len(spec.data)
    return info


def build_tar(members: list[tuple[tarfile.TarInfo, bytes]], *, cut: bool) -> bytes:
    """A PAX tar of `members`; `cut` drops the end-of-archive blocks (`abuild-tar --cut`)."""
    buffer = io.BytesIO()
    tar = tarfile.TarFile(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT)
    for info, data in members:
        if info.type == tarfile.GNUTYPE_SPARSE:
            buffer.write(sparse_header(info))  # tarfile cannot write sparse members
            tar.offset += tarfile.BLOCKSIZE
            continue
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    end_of_members = tar.offset
    tar.close()
    return buffer.getvalue()[:end_of_members] if cut else buffer.getvalue()


def sparse_header(info: tarfile.TarInfo) -> bytes:
    """An old-GNU sparse ('S') header storing no data: the whole file, `info.size` bytes, is
    one hole. 512 bytes that unpack to any size: the smallest decompression bomb."""
    plain = tarfile.TarInfo(info.name)
    plain.mode, plain.mtime, plain.type = info.mode, info.mtime, tarfile.GNUTYPE_SPARSE
    block = bytearray(plain.tobuf(tarfile.GNU_FORMAT))
    block[483:495] = b"%011o\0" % info.size  # realsize; the four sparse entries stay (0, 0)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# -- Alpine ------------------------------------------------------------------------------------
@dataclass
class RsaSigner:
    """An abuild-style signing key: the private key and the file name of its public half."""

    private: rsa.RSAPrivateKey
    name: str  # "fwgen-test-0001.rsa.pub"

    @classmethod
    def generate(cls, name: str = "fwgen-test@example.org-00000001.rsa.pub") -> RsaSigner:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), name)

    def write_public(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.name
        path.write_bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return path

    def signature_stream(self, signed: bytes, algorithm: str = "RSA") -> bytes:
        digest = {"RSA": hashes.SHA1, "RSA256": hashes.SHA256}[algorithm]()
        value = self.private.sign(signed, padding.PKCS1v15(), digest)
        info = tarfile.TarInfo(f".SIGN.{algorithm}.{self.name}")
        info.size, info.mtime, info.mode = len(value), MTIME, 0o644
        return gz(build_tar([(info, value)], cut=True))


@dataclass
class ApkSpec:
    name: str
    version: str
    arch: str
    files: list[FileSpec] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    install_if: list[str] = field(default_factory=list)
    provider_priority: int | None = None
    description: str = "generated by fwgen's tests"


@dataclass
class BuiltApk:
    spec: ApkSpec
    blob: bytes
    identity: str
    control_range: tuple[int, int]
    data_range: tuple[int, int]


def build_apk(spec: ApkSpec, signer: RsaSigner, *, algorithm: str = "RSA") -> BuiltApk:
    """An apk v2 package: signature, control and data gzip streams, as abuild writes them."""
    data_members = []
    for f in spec.files:
        info = _tarinfo(f)
        checksummed = f.target.encode() if f.kind == "symlink" else f.data
        if f.kind != "dir":
            info.pax_headers = {"APK-TOOLS.checksum.SHA1": hashlib.sha1(checksummed).hexdigest()}
        data_members.append((info, f.data))
    data = gz(build_tar(data_members, cut=False))
    lines = [
        f"pkgname = {spec.name}", f"pkgver = {spec.version}", f"pkgdesc = {spec.description}",
        f"arch = {spec.arch}", f"size = {sum(len(f.data) for f in spec.files)}", "license = MIT",
    ]
    lines += [f"depend = {d}" for d in spec.depends] + [f"provides = {p}" for p in spec.provides]
    lines += [f"datahash = {hashlib.sha256(data).hexdigest()}"]
    pkginfo = ("\n".join(lines) + "\n").encode()
    info = tarfile.TarInfo(".PKGINFO")
    info.size, info.mtime, info.mode = len(pkginfo), MTIME, 0o644
    control = gz(build_tar([(info, pkginfo)], cut=True))
    signature = signer.signature_stream(control, algorithm)
    blob = signature + control + data
    start = len(signature)
    return BuiltApk(spec, blob, identity_of(control), (start, start + len(control)), (start + len(control), len(blob)))


def apkindex_text(packages: list[BuiltApk]) -> str:
    """APKINDEX stanzas in apk-tools' writer order."""
    stanzas = []
    for p in packages:
        s = p.spec
        lines = [f"C:{p.identity}", f"P:{s.name}", f"V:{s.version}", f"A:{s.arch}", f"S:{len(p.blob)}",
                 "I:4096", f"T:{s.description}", "U:https://example.org", "L:MIT", f"o:{s.name}",
                 "m:fwgen tests <tests@example.org>", f"t:{MTIME}"]
        if s.provider_priority is not None:
            lines.append(f"k:{s.provider_priority}")
        for letter, values in (("D", s.depends), ("p", s.provides), ("i", s.install_if)):
            if values:
                lines.append(f"{letter}:{' '.join(values)}")
        stanzas.append("\n".join(lines) + "\n")
    return "\n".join(stanzas) + "\n"


def build_apkindex(packages: list[BuiltApk], signer: RsaSigner, description: str = "fwgen-test") -> bytes:
    """A signed APKINDEX.tar.gz listing `packages`."""
    members = []
    for name, content in (("DESCRIPTION", description.encode()), ("APKINDEX", apkindex_text(packages).encode())):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(content), MTIME, 0o644
        members.append((info, content))
    index = gz(build_tar(members, cut=False))
    return signer.signature_stream(index) + index


def write_alpine_repo(root: Path, folder: str, packages: list[BuiltApk], signer: RsaSigner) -> Path:
    """Lay out `<root>/<folder>/` (e.g. v3.99/main/aarch64) with the packages and the index."""
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    for p in packages:
        (target / f"{p.spec.name}-{p.spec.version}.apk").write_bytes(p.blob)
    (target / "APKINDEX.tar.gz").write_bytes(build_apkindex(packages, signer))
    return target


# -- OpenWrt -----------------------------------------------------------------------------------
@dataclass
class UsignSigner:
    private: ed25519.Ed25519PrivateKey
    fingerprint: bytes

    @classmethod
    def generate(cls) -> UsignSigner:
        return cls(ed25519.Ed25519PrivateKey.generate(), usign.new_fingerprint())

    def write_public(self, folder: Path) -> Path:
        """The public key file, named as opkg looks it up: the key number in hex."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.fingerprint.hex()
        path.write_text(usign.format_public_key(self.private, self.fingerprint, "fwgen test key"))
        return path

    def sign(self, message: bytes) -> str:
        return usign.sign(message, self.private, self.fingerprint)


@dataclass
class IpkSpec:
    name: str
    version: str
    arch: str
    files: list[FileSpec] = field(default_factory=list)
    depends: str = ""


def _tar_gz_of(files: list[FileSpec]) -> bytes:
    return gz(build_tar([(_tarinfo(f), f.data) for f in files], cut=False))


def build_ipk(spec: IpkSpec, *, container: str = "tar.gz") -> bytes:
    """An .ipk as OpenWrt's ipkg-build writes it (gzip tar) or in the older ar layout."""
    control = f"Package: {spec.name}\nVersion: {spec.version}\nArchitecture: {spec.arch}\n"
    if spec.depends:
        control += f"Depends: {spec.depends}\n"
    control += "Description: generated by fwgen's tests\n"
    members = [
        ("debian-binary", b"2.0\n"),
        ("data.tar.gz", _tar_gz_of(spec.files)),
        ("control.tar.gz", _tar_gz_of([FileSpec("./control", control.encode())])),
    ]
    if container == "ar":
        return ar_archive([(name + "/", data) for name, data in members])
    outer = []
    for name, data in members:
        info = tarfile.TarInfo(f"./{name}")
        info.size, info.mtime, info.mode = len(data), MTIME, 0o644
        outer.append((info, data))
    return gz(build_tar(outer, cut=False))


def ar_archive(members: list[tuple[str, bytes]]) -> bytes:
    """An ar archive (deb(5)): the global magic, then 60-byte headers, data padded to even."""
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def build_deb(name: str, files: list[FileSpec], *, compression: str = "xz", md5sums: bytes | None = None) -> bytes:
    """A .deb as dpkg-deb writes it: debian-binary, control.tar.gz (with `md5sums` when
    given), data.tar.<compression>."""
    compress = {"xz": lzma.compress, "gz": gz, "bz2": bz2.compress}[compression]
    control = f"Package: {name}\nVersion: 1.0\nArchitecture: all\nDescription: generated by fwgen's tests\n"
    control_files = [FileSpec("./control", control.encode())]
    if md5sums is not None:
        control_files.append(FileSpec("./md5sums", md5sums))
    return ar_archive([
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", _tar_gz_of(control_files)),
        (f"data.tar.{compression}", compress(build_tar([(_tarinfo(f), f.data) for f in files], cut=False))),
    ])


def write_opkg_feed(folder: Path, packages: list[tuple[IpkSpec, bytes]], signer: UsignSigner) -> Path:
    """Write the .ipk files, `Packages`, `Packages.gz` and `Packages.sig` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for spec, blob in packages:
        filename = f"{spec.name}_{spec.version}_{spec.arch}.ipk"
        (folder / filename).write_bytes(blob)
        stanza = f"Package: {spec.name}\nVersion: {spec.version}\n"
        if spec.depends:
            stanza += f"Depends: {spec.depends}\n"
        stanza += (
            f"License: MIT\nSection: base\nArchitecture: {spec.arch}\nInstalled-Size: 4096\n"
            f"Filename: {filename}\nSize: {len(blob)}\nSHA256sum: {hashlib.sha256(blob).hexdigest()}\n"
            "Description: generated by fwgen's tests\n"
        )
        stanzas.append(stanza)
    text = "\n".join(stanzas).encode()
    (folder / "Packages").write_bytes(text)
    (folder / "Packages.gz").write_bytes(gz(text))
    (folder / "Packages.sig").write_text(signer.sign(text))
    return folder


# -- serving -------------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve `root` over HTTP on 127.0.0.1 (a free port) and yield its base URL."""
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
