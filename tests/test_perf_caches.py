"""The caches that make warm builds fast must never change what a build sees.

Each is derived from a verified file and named by its SHA-256: the parsed Packages index, a
big package's data.tar kept as zstd. A damaged, truncated or foreign copy is ignored and
rewritten. The fast `.modinfo` reader must agree with pyelftools, the reader of record.
"""

from __future__ import annotations

import array
import gzip
import hashlib
import lzma
import marshal
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from localhttp import Server
from test_fetch_deb import add_member, build_deb, build_tar
from test_fetch_repo import LocalRepo

from fwgen.arch import Arch
from fwgen.cache import Cache
from fwgen.errors import FormatError
from fwgen.fetch import deb, load_index, read_package_entries, resolve
from fwgen.kernel import find_modinfo_section, read_modinfo, read_modinfo_section


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache", attempts=2, backoff=0.01, timeout=10)


@pytest.fixture(autouse=True)
def forget_parsed_indexes():
    # The in-process memo would hide what the cache files do.
    deb.forget_opened_indexes()
    yield
    deb.forget_opened_indexes()


# -- the parsed Packages index ----------------------------------------------------------


def publish_repo(server: Server, tmp_path: Path) -> tuple[LocalRepo, bytes]:
    """A signed local repository whose stanzas use every field the parser keeps."""
    repo = LocalRepo(server, tmp_path)
    repo.add("libtiny1", "1.0-1", {"usr/lib/libtiny.so.1": b"lib"})
    repo.stanzas[-1] += "Multi-Arch: same\nPriority: optional\nSource: tiny (1.0)\n"
    repo.add("tiny", "2.0-1", {"usr/bin/tiny": b"bin"}, depends="libtiny1 (>= 1.0) | libother:any, base")
    repo.stanzas[-1] += (
        "Pre-Depends: libc6 (>= 2.36)\nProvides: tiny-api (= 2), httpd\nConflicts: oldtiny (<< 1)\n"
        "Breaks: tinier\nEssential: yes\n"
    )
    repo.add("base", "1", {"etc/base": b"base"}, arch="all")
    repo.add("libc6", "2.36-9", {"lib/libc.so.6": b"libc"})
    repo.publish()
    index = lzma.compress("\n".join(repo.stanzas).encode())
    return repo, index


def fresh_parse(repo: LocalRepo, index: bytes) -> list:
    text = lzma.decompress(index).decode()
    return deb.parse_packages(text, feed="local", base_url=repo.server.url, source="test")


def parsed_file(cache: Cache, index: bytes) -> Path:
    return cache.derived_path(sha256(index), deb.PARSED_INDEX_KIND)


def test_parsed_index_is_written_then_read_instead_of_parsing(server, cache, tmp_path, monkeypatch):
    repo, index = publish_repo(server, tmp_path)
    expected = fresh_parse(repo, index)
    first = load_index([repo.feed()], Arch.AARCH64, cache=cache)
    assert first.packages == expected
    assert parsed_file(cache, index).read_bytes().startswith(b"fwgen-deb-index %d " % deb.PARSED_INDEX_VERSION)

    deb.forget_opened_indexes()

    def no_rebuilding(*args, **kwargs):
        raise AssertionError("built again although the compact index is cached")

    monkeypatch.setattr(deb, "encode_compact_index", no_rebuilding)
    second = load_index([repo.feed()], Arch.AARCH64, cache=cache)
    assert second.packages == expected
    tiny = second.by_name["tiny"][0]
    assert [[str(r) for r in g] for g in tiny.depends] == [
        ["libc6 (>= 2.36)"], ["libtiny1 (>= 1.0)", "libother:any"], ["base"]]
    assert [str(r) for r in tiny.provides] == ["tiny-api (= 2)", "httpd"]
    assert [str(r) for r in tiny.conflicts] == ["oldtiny (<< 1)", "tinier"]
    assert tiny.essential and tiny.feed == "local" and tiny.url.startswith(server.url)
    assert [(p.name, r.version) for p, r in second.providers["tiny-api"]] == [("tiny", "2")]


def test_a_lookup_parses_only_the_stanzas_of_that_name(server, cache, tmp_path, monkeypatch):
    repo, index = publish_repo(server, tmp_path)
    load_index([repo.feed()], Arch.AARCH64, cache=cache)
    deb.forget_opened_indexes()
    parsed = []
    real = deb.parse_packages

    def counting(text, **kwargs):
        found = real(text, **kwargs)
        parsed.extend(p.name for p in found)
        return found

    monkeypatch.setattr(deb, "parse_packages", counting)
    warm = load_index([repo.feed()], Arch.AARCH64, cache=cache)
    assert parsed == []
    assert [p.name for p in resolve(warm, ["base"]).packages] == ["base"]
    assert parsed == ["base"]
    assert warm.by_name.get("httpd") is None and [p.name for p, _ in warm.providers["httpd"]] == ["tiny"]
    assert parsed == ["base", "tiny"]


def test_compact_index_keeps_stanzas_as_the_parser_splits_them():
    # Whitespace-only lines end a stanza, comments and unread fields (with their continuation
    # lines) are left out, a read field keeps its continuation lines.
    text = (b"Package: a\nDescription: x\n long\n .\nVersion: 1\nArchitecture: all\nFilename: a.deb\n"
            b"Size: 1\nSHA256: AA\nDepends: b,\n c\n  \t\n# a comment\nPackage: b\nVersion: 2\n"
            b"Architecture: all\nFilename: b.deb\nSize: 2\nSHA256: bb\nProvides: v\n\n\n\nPackage: c\n"
            b"Version: 3\nArchitecture: all\nFilename: c.deb\nSize: 3\nSHA256: cc\n")
    data = deb.encode_compact_index(text)
    compact = deb._decode_compact_index(data.partition(b"\n")[2], feed="f", base_url="http://m", source="t")
    assert list(compact) == deb.parse_packages(text.decode(), feed="f", base_url="http://m", source="t")
    assert [str(r) for g in compact.named("a")[0].depends for r in g] == ["b", "c"]
    assert [p.name for p, _ in compact.providing("v")] == ["b"]
    assert b"long" not in data and b"comment" not in data


def test_compact_index_of_pieces_cut_anywhere_is_the_same_file():
    # The cold path builds it from pieces a thread decompresses; every cut must give the same
    # bytes, blank-line and whitespace-line stanza ends and continuation lines included.
    text = (b"Package: a\nDescription: x\n long\n .\nVersion: 1\nDepends: b,\n c\n  \t\nPackage: b\n"
            b"Version: 2\nProvides: v\n\n\n\nPackage: c\nVersion: 3\n\nPackage: d\nVersion: 4\n") * 3
    whole = deb.encode_compact_index(text)
    for size in range(1, len(text) + 1):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert deb.encode_compact_index(iter(pieces)) == whole, f"pieces of {size} bytes"


def test_index_decompressed_by_a_thread_is_what_lzma_gives(tmp_path, monkeypatch):
    monkeypatch.setattr(deb, "_INDEX_PIECE", 1000)
    text = b"".join(b"Package: p%d\nVersion: 1\n\n" % i for i in range(2000))
    local = tmp_path / "Packages.xz"
    local.write_bytes(lzma.compress(text[:20000]) + lzma.compress(text[20000:]))  # two xz streams
    pieces = list(deb._decompressed_pieces(local, "main/binary-arm64/Packages.xz", "the-url"))
    assert len(pieces) > 2 and b"".join(pieces) == text
    local.write_bytes(lzma.compress(text)[:-40])
    with pytest.raises(FormatError, match=r"^the-url: cannot decompress: compressed data ended before"):
        list(deb._decompressed_pieces(local, "main/binary-arm64/Packages.xz", "the-url"))
    local.write_bytes(b"not xz at all")
    with pytest.raises(FormatError, match=r"^the-url: cannot decompress: "):
        list(deb._decompressed_pieces(local, "main/binary-arm64/Packages.xz", "the-url"))
    for name, packed in (("Packages.gz", gzip.compress(text)), ("Packages", text)):
        local.write_bytes(packed)
        assert b"".join(deb._decompressed_pieces(local, f"main/binary-arm64/{name}", "the-url")) == text
    local.write_bytes(gzip.compress(text)[:-40])
    with pytest.raises(FormatError, match=r"^the-url: cannot decompress: "):
        list(deb._decompressed_pieces(local, "main/binary-arm64/Packages.gz", "the-url"))


def test_parsed_index_holds_no_feed_name_or_url(server, cache, tmp_path):
    # A mirror of the same file under another feed name must not inherit the first one's.
    repo, index = publish_repo(server, tmp_path)
    load_index([repo.feed()], Arch.AARCH64, cache=cache)
    packages = deb.read_compact_index(parsed_file(cache, index), feed="other", base_url="http://mirror", source="t")
    assert {(p.feed, p.base_url) for p in packages} == {("other", "http://mirror")}
    assert b"local" not in parsed_file(cache, index).read_bytes()


def body_of(data: bytes) -> bytes:
    return data.partition(b"\n")[2]


def with_good_checksum(body: bytes) -> bytes:
    return b"fwgen-deb-index %d %s\n%s" % (deb.PARSED_INDEX_VERSION, sha256(body).encode(), body)


def flip_body_byte(data: bytes) -> bytes:
    at = data.index(b"\n") + (len(data) - data.index(b"\n")) // 2
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def other_version(data: bytes) -> bytes:
    header, _, body = data.partition(b"\n")
    version = b" %d " % deb.PARSED_INDEX_VERSION
    return header.replace(version, b" %d " % (deb.PARSED_INDEX_VERSION - 1)) + b"\n" + body


def tables(value) -> bytes:
    packed = marshal.dumps(value)
    return with_good_checksum(struct.pack("<Q", len(packed)) + packed)


DAMAGES = {
    "flipped-byte": flip_body_byte,
    "truncated": lambda d: d[: len(d) // 2],
    "empty": lambda d: b"",
    "other-version": other_version,
    # Under a valid header: what the decoder does not expect is refused.
    "not-marshal": lambda d: with_good_checksum(struct.pack("<Q", 3) + b"\xff\xfe\xfd stanzas"),
    "short-length": lambda d: with_good_checksum(b"\x01"),
    "wrong-shape": lambda d: tables(["tiny", "1"]),
    "offsets-beyond-the-stanzas": lambda d: tables(({}, {}, array.array("Q", [0, 99]).tobytes())),
    "stanzas-cut": lambda d: with_good_checksum(body_of(d)[:-10]),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_parsed_index_is_ignored_and_rewritten(server, cache, tmp_path, damage):
    repo, index = publish_repo(server, tmp_path)
    load_index([repo.feed()], Arch.AARCH64, cache=cache)
    path = parsed_file(cache, index)
    good = path.read_bytes()
    path.write_bytes(damage(good))
    assert deb.read_compact_index(path, feed="local", base_url=server.url, source="t") is None

    deb.forget_opened_indexes()
    again = load_index([repo.feed()], Arch.AARCH64, cache=cache)
    assert again.packages == fresh_parse(repo, index)
    assert path.read_bytes() == good


def test_a_new_index_gets_its_own_parsed_file(server, cache, tmp_path):
    repo, old_index = publish_repo(server, tmp_path)
    load_index([repo.feed()], Arch.AARCH64, cache=cache)
    cache.unhashed_ttl = 0  # fetch InRelease again
    repo.stanzas = [s.replace("Version: 2.0-1", "Version: 3.0-1") for s in repo.stanzas]
    repo.publish()
    new_index = lzma.compress("\n".join(repo.stanzas).encode())
    deb.forget_opened_indexes()
    index = load_index([repo.feed()], Arch.AARCH64, cache=cache)
    assert index.by_name["tiny"][0].version == "3.0-1"
    assert parsed_file(cache, old_index).exists() and parsed_file(cache, new_index).exists()


def test_an_unwritable_cache_costs_time_not_the_build(server, cache, tmp_path):
    repo, index = publish_repo(server, tmp_path)
    blocker = cache.root / "derived"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"a file where the folder should be")
    assert load_index([repo.feed()], Arch.AARCH64, cache=cache).packages == fresh_parse(repo, index)
    assert blocker.read_bytes().startswith(b"a file")


# -- the transcoded data.tar --------------------------------------------------------------


@pytest.fixture(scope="module")
def big_deb() -> bytes:
    """A .deb whose data.tar.xz is above the transcoding threshold (random data: xz cannot
    shrink it), with a directory, a symlink and a hard link."""
    payload = os.urandom(deb._TRANSCODE_MIN_SIZE + (256 << 10))

    def add(tar: tarfile.TarFile) -> None:
        add_member(tar, "./usr/", tarfile.DIRTYPE, mode=0o755)
        add_member(tar, "./usr/lib/", tarfile.DIRTYPE, mode=0o755)
        add_member(tar, "./usr/lib/blob.bin", data=payload, mtime=1_700_000_000)
        add_member(tar, "./usr/lib/blob.link", tarfile.SYMTYPE, linkname="blob.bin")
        add_member(tar, "./usr/lib/blob.hard", tarfile.LNKTYPE, linkname="./usr/lib/blob.bin")
        add_member(tar, "./usr/lib/small", data=b"small\n", mode=0o755)

    return build_deb(build_tar(add), "xz")


def in_cache(cache: Cache, data: bytes) -> Path:
    path = cache.path_for(sha256(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def transcoded_file(cache: Cache, data: bytes) -> Path:
    return cache.derived_path(sha256(data), deb._TRANSCODED_KIND)


def entry_facts(path: Path) -> list[tuple]:
    return [(e.path, e.type, e.mode, e.uid, e.gid, e.mtime, e.target, e.data) for e in read_package_entries(path)]


def test_big_data_tar_is_transcoded_once_and_read_back_the_same(cache, tmp_path, big_deb, monkeypatch):
    outside = tmp_path / "big.deb"
    outside.write_bytes(big_deb)
    expected = entry_facts(outside)
    assert not (cache.root / "derived").exists(), "a file outside a cache leaves nothing behind"

    cached = in_cache(cache, big_deb)
    assert entry_facts(cached) == expected
    assert transcoded_file(cache, big_deb).exists()

    def no_xz(*args, **kwargs):
        raise AssertionError("decompressed the xz member although a transcoded copy exists")

    monkeypatch.setattr(deb, "decompress", no_xz)
    assert entry_facts(cached) == expected


def test_transcoded_copy_is_the_tar_dpkg_deb_sees(cache, tmp_path, big_deb):
    for tool in ("dpkg-deb", "zstd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    cached = in_cache(cache, big_deb)
    list(read_package_entries(cached))
    ours = subprocess.run(["zstd", "-dc", str(transcoded_file(cache, big_deb))], capture_output=True,
                          check=True).stdout
    theirs = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(cached)], capture_output=True, check=True).stdout
    assert ours == theirs


def flip_middle(data: bytes) -> bytes:
    at = len(data) // 2
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


TAR_DAMAGES = {
    "flipped-byte": flip_middle,
    "truncated": lambda d: d[: len(d) - 100],
    "empty": lambda d: b"",
    "trailing-garbage": lambda d: d + b"\0junk",
    "not-zstd": lambda d: b"plain text",
}


@pytest.mark.parametrize("damage", TAR_DAMAGES.values(), ids=TAR_DAMAGES.keys())
def test_damaged_transcoded_copy_is_ignored_and_rewritten(cache, big_deb, damage):
    cached = in_cache(cache, big_deb)
    expected = entry_facts(cached)
    copy = transcoded_file(cache, big_deb)
    good = copy.read_bytes()
    copy.write_bytes(damage(good))
    assert entry_facts(cached) == expected
    assert copy.read_bytes() == good


def test_downloading_makes_the_transcoded_copy_before_extraction(server, cache, big_deb, monkeypatch):
    # Done by the download threads while other packages download, not by the extraction.
    from fwgen.fetch import Package, download_packages

    server.serve("/pool/big.deb", big_deb)
    package = Package(name="big", version="1", arch="arm64", feed="local", format="deb", base_url=server.url,
                      filename="pool/big.deb", size=len(big_deb), sha256=sha256(big_deb))
    [fetched] = download_packages([package], cache=cache)
    assert transcoded_file(cache, big_deb).exists()

    def no_xz(*args, **kwargs):
        raise AssertionError("decompressed the xz member at extraction although the download made the copy")

    expected = entry_facts(fetched.path)
    monkeypatch.setattr(deb, "decompress", no_xz)
    assert entry_facts(fetched.path) == expected


def test_downloading_only_makes_no_transcoded_copy(server, cache, big_deb):
    # `fwgen fetch` copies the packages out: decompressing them would be work for nothing.
    from fwgen.fetch import Package, download_packages

    server.serve("/pool/big.deb", big_deb)
    package = Package(name="big", version="1", arch="arm64", feed="local", format="deb", base_url=server.url,
                      filename="pool/big.deb", size=len(big_deb), sha256=sha256(big_deb))
    [fetched] = download_packages([package], cache=cache, extracting=False)
    assert fetched.path.read_bytes() == big_deb and not transcoded_file(cache, big_deb).exists()


def test_small_packages_are_not_transcoded(cache):
    small = build_deb(build_tar(lambda t: add_member(t, "./etc/x", data=b"x")), "xz")
    list(read_package_entries(in_cache(cache, small)))
    assert not transcoded_file(cache, small).exists()


def test_cache_holding_recognizes_only_its_content_addressed_files(cache, tmp_path):
    data = b"content"
    held = Cache.holding(in_cache(cache, data))
    assert held is not None and held.root == cache.root
    assert Cache.holding(tmp_path / "file.deb") is None
    assert Cache.holding(cache.root / "sha256" / "ab" / ("cd" + "0" * 62)) is None  # wrong folder


# -- the fast .modinfo reader -------------------------------------------------------------


def make_module(modinfo: bytes, *, elf_class: int = 2, order: str = "<", machine: int = 183,
                with_modinfo: bool = True) -> bytes:
    """A relocatable ELF object with .modinfo (optional), .shstrtab and a null section,
    in either class and byte order (built here, independent of both readers)."""
    strtab = b"\0.modinfo\0.shstrtab\0" if with_modinfo else b"\0.comment\0.shstrtab\0"
    ehsize, shentsize = (64, 64) if elf_class == 2 else (52, 40)
    shoff = ehsize + len(modinfo) + len(strtab)
    shoff += -shoff % 8
    ident = b"\x7fELF" + bytes([elf_class, 1 if order == "<" else 2, 1, 0]) + bytes(8)
    header_format = "HHIQQQIHHHHHH" if elf_class == 2 else "HHIIIIIHHHHHH"
    header = ident + struct.pack(order + header_format, 1, machine, 1, 0, 0, shoff, 0, ehsize, 0, 0,
                                 shentsize, 3, 2)
    section_format = order + ("IIQQQQIIQQ" if elf_class == 2 else "IIIIIIIIII")
    sections = (
        struct.pack(section_format, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        + struct.pack(section_format, 1, 1, 2, 0, ehsize, len(modinfo), 0, 0, 1, 0)
        + struct.pack(section_format, 10, 3, 0, 0, ehsize + len(modinfo), len(strtab), 0, 0, 1, 0)
    )
    body = header + modinfo + strtab
    return body + bytes(shoff - len(body)) + sections


MODINFO = b"alias=fs-squashfs\0depends=\0name=squashfs\0vermagic=6.1.0-1-mips SMP mod_unload MIPS32_R2 32BIT\0"


@pytest.mark.parametrize("elf_class,order,machine", [(2, "<", 183), (1, ">", 8), (1, "<", 40), (2, ">", 8)],
                         ids=["elf64-le-aarch64", "elf32-be-mips", "elf32-le-arm", "elf64-be-mips64"])
def test_fast_modinfo_reader_agrees_with_pyelftools(elf_class, order, machine):
    data = make_module(MODINFO, elf_class=elf_class, order=order, machine=machine)
    assert find_modinfo_section(data) == read_modinfo_section(data) == MODINFO
    assert read_modinfo(data)["name"] == ["squashfs"]


@pytest.mark.parametrize("mangle", [
    lambda d: d[: len(d) - 20],  # section header table cut short
    lambda d: d[:4] + b"\x03" + d[5:],  # unknown ELF class
    lambda d: b"\x7fELG" + d[4:],  # not ELF
    lambda d: d[:60] + struct.pack("<H", 0xFFFF) + d[62:],  # e_shstrndx out of range
], ids=["truncated", "bad-class", "bad-magic", "bad-shstrndx"])
def test_fast_reader_declines_odd_files_and_pyelftools_words_the_error(mangle):
    data = mangle(make_module(MODINFO))
    assert find_modinfo_section(data) is None
    with pytest.raises(FormatError, match=r"^x\.ko: (not an ELF kernel module|no \.modinfo section)"):
        read_modinfo(data, where="x.ko")


def test_module_without_modinfo_is_left_to_pyelftools():
    data = make_module(b"GCC: (Debian) 12\0", with_modinfo=False)
    assert find_modinfo_section(data) is None
    with pytest.raises(FormatError, match=r"x\.ko: no \.modinfo section"):
        read_modinfo(data, where="x.ko")


@pytest.mark.network
def test_fast_reader_agrees_with_pyelftools_on_every_real_module(cache_dir):
    from fwgen.board import Feed
    from fwgen.fetch import fetch_packages

    feeds = [Feed("debian", "deb", "http://deb.debian.org/debian", suite="bookworm")]
    real_cache = Cache(cache_dir)
    [meta] = fetch_packages(feeds, Arch.AARCH64, ["linux-image-cloud-arm64"], nodeps=["linux-image-cloud-arm64"],
                            cache=real_cache)
    name = next(r.name for g in meta.package.depends for r in g if r.name.startswith("linux-image-6."))
    [image] = fetch_packages(feeds, Arch.AARCH64, [name], nodeps=[name], cache=real_cache)
    modules = [e for e in read_package_entries(image.path) if e.path.endswith(".ko")]
    assert len(modules) > 500
    for module in modules:
        assert find_modinfo_section(module.data) == read_modinfo_section(module.data), module.path
