"""Bounded-time fuzzing of every reader of outside input, seeded from the real sample files.

Each case mutates a real file (bit flips, overwritten bytes and length fields, cut, spliced
or repeated runs), either on its outer bytes or, for compressed containers, inside the
decompressed tar before the package is put back together, so that the tar and header
parsers are reached and not only the decompressors. Every case must end in success or in
one of fwgen's own errors (a FwgenError subclass) with a one-line message; anything else,
or a case running past its time bound, is a finding. Cases are reproducible: case `i` of a
reader uses random.Random(f"{reader}:{i}").
"""

from __future__ import annotations

import gzip
import io
import lzma
import random
import signal
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from feedgen import ar_archive

from fwgen import usign
from fwgen.bundle import build_metadata as build_bundle_metadata
from fwgen.bundle import part_for, verify_bundle, write_bundle
from fwgen.errors import FwgenError
from fwgen.fetch import apk, deb, ipk
from fwgen.fetch.archive import UnpackBudget, list_ar_members, read_tar_stream
from fwgen.images.cpio import read_cpio, read_initramfs
from fwgen.images.flash import describe_flash, flash_image, scanned_layout
from fwgen.images.squashfs_reader import read_squashfs
from fwgen.images.uimage import make_multi_uimage, multi_files, read_uimage
from fwgen.sysupgrade import verify_sysupgrade, write_sysupgrade

CASES = 200  # per reader: 19 readers, 3,800 cases in about 12 s
CASE_SECONDS = 5.0  # a case's bound; a real one takes milliseconds


def budget() -> UnpackBudget:
    """A fresh bound for one case (a budget keeps count of what it was charged)."""
    return UnpackBudget(64 << 20, "the fuzz limit (64 MiB)")


# -- the mutator ---------------------------------------------------------------------------------
def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of `data`."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            out += rng.randbytes(rng.randint(1, 64))
            continue
        at = rng.randrange(len(out))
        match rng.randrange(7):
            case 0:  # flip a bit
                out[at] ^= 1 << rng.randrange(8)
            case 1:  # overwrite a run with random bytes
                run = rng.randint(1, 16)
                out[at:at + run] = rng.randbytes(run)
            case 2:  # an extreme length or offset field
                out[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f\xff\xff\xff", b"9999"])
            case 3:  # cut the file
                del out[at:]
            case 4:  # remove a run
                del out[at:at + rng.randint(1, 512)]
            case 5:  # repeat a run
                run = bytes(out[at:at + rng.randint(1, 512)])
                out[at:at] = run * rng.randint(1, 4)
            case 6:  # ASCII digits into a text field (tar and ar sizes are octal/decimal text)
                out[at:at + 8] = str(rng.randrange(10**8)).encode().rjust(8, b"0")
    return bytes(out)


# -- the readers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    scratch: Path  # a folder for readers that take a file
    alpine_keys: dict
    usign_keys: dict
    packages_sig: bytes  # the sample feed's Packages.sig


@dataclass(frozen=True)
class Reader:
    """A reader fed with mutations of the `seeds` (paths under the samples folder)."""

    seeds: tuple[str, ...]
    read: Callable[[bytes, Context], object]
    prepare: Callable[[bytes], bytes] = lambda data: data  # what the mutator works on
    rebuild: Callable[[bytes, bytes], bytes] = lambda mutated, original: mutated


def _read_squashfs(data: bytes, ctx: Context) -> None:
    path = ctx.scratch / "fuzz.sqfs"
    path.write_bytes(data)
    with read_squashfs(path) as image:
        for entry in image.entries():
            if entry.type.value == "file":
                image.read_file(entry.path)


def _read_initramfs(data: bytes, ctx: Context) -> None:
    path = ctx.scratch / "fuzz.cpio.gz"
    path.write_bytes(data)
    read_initramfs(path)


def _read_deb(data: bytes, ctx: Context) -> None:
    path = ctx.scratch / "fuzz.deb"
    path.write_bytes(data)
    list(deb.DebBackend().read_entries(path, budget()))


def _data_tar_of_deb(blob: bytes) -> bytes:
    member = next(m for m in list_ar_members(blob, "seed") if m.name.startswith("data.tar"))
    return lzma.decompress(blob[member.offset:member.offset + member.size])


def _deb_with_data_tar(tar: bytes, original: bytes) -> bytes:
    # dpkg-deb also writes an uncompressed data.tar; xz would cost half a second a case.
    members = [(m.name, original[m.offset:m.offset + m.size]) for m in list_ar_members(original, "seed")]
    return ar_archive([("data.tar", tar) if name.startswith("data.tar") else (name, data) for name, data in members])


def _read_ipk(data: bytes, ctx: Context) -> None:
    ipk.read_ipk_entries(data, "fuzz.ipk", budget=budget())
    ipk.read_control(ipk.split_ipk(data, "fuzz.ipk"), "fuzz.ipk")


def _data_tar_of_ipk(blob: bytes) -> bytes:
    return gzip.decompress(ipk.split_ipk(blob, "seed").data_tar_gz)


def _ipk_with_data_tar(tar: bytes, original: bytes) -> bytes:
    members = ipk.split_ipk(original, "seed")
    return ar_archive([("debian-binary/", members.debian_binary), ("control.tar.gz/", members.control_tar_gz),
                       ("data.tar.gz/", gzip.compress(tar, mtime=0))])


def _read_apk(data: bytes, ctx: Context) -> None:
    apk.read_apk(data, ctx.alpine_keys, "fuzz.apk", budget=budget())


def _data_tar_of_apk(blob: bytes) -> bytes:
    streams = apk.split_gzip_streams(blob, "seed")
    return b"".join(s.data for s in streams[2:])


def _read_apk_data_tar(data: bytes, ctx: Context) -> None:
    # What read_apk does with a data stream once its signature and datahash verified.
    list(read_tar_stream(io.BytesIO(data), "fuzz.apk: data stream", budget(), check=apk._check_sha1))


def _read_apkindex(data: bytes, ctx: Context) -> None:
    apk.read_apkindex(data, ctx.alpine_keys, "fuzz/APKINDEX.tar.gz")


def _index_text_of_apkindex(blob: bytes) -> bytes:
    streams = apk.split_gzip_streams(blob, "seed")
    with tarfile.open(fileobj=io.BytesIO(b"".join(s.data for s in streams[1:]))) as tar:
        member = tar.extractfile("APKINDEX")
        assert member is not None
        return member.read()


def _parse_apkindex(data: bytes, ctx: Context) -> None:
    text = data.decode("utf-8", "surrogateescape")  # what _decode refuses is tested apart
    for entry in apk.parse_apkindex(text, "fuzz/APKINDEX"):
        apk.package_from_entry(entry, feed="fuzz", base_url="http://fuzz", source="fuzz/APKINDEX")


def _parse_opkg_packages(data: bytes, ctx: Context) -> None:
    text = data.decode("utf-8", "surrogateescape")
    for fields in ipk.parse_stanzas(text, "fuzz/Packages"):
        ipk.package_from_stanza(fields, feed="fuzz", base_url="http://fuzz", source="fuzz/Packages")


def _parse_debian_packages(data: bytes, ctx: Context) -> None:
    deb.parse_packages(data.decode("utf-8", "surrogateescape"), feed="fuzz", base_url="http://fuzz",
                       source="fuzz/Packages")


def _first_stanzas(data: bytes) -> bytes:
    return data[:data.index(b"\n\n", 12000) + 2]  # a dozen stanzas: mutations stay dense


def _as_debian_stanzas(data: bytes) -> bytes:
    # No Debian Packages among the samples: OpenWrt's has Debian's syntax, and Debian's
    # field for the hash once renamed.
    return _first_stanzas(data).replace(b"\nSHA256sum:", b"\nSHA256:")


def _read_uimage(data: bytes, ctx: Context) -> None:
    image = read_uimage(data, where="fuzz.uimg")
    image.describe()
    multi_files(image)


def _as_multi_file(data: bytes) -> bytes:
    # The sample is a single image: its data and the start of the flash after it as the two
    # files of a multi-file image (type 4), whose data starts with the size table.
    image = read_uimage(data, where="seed")
    facts = image.describe()
    return make_multi_uimage([image.data, data[64 + len(image.data):][:4096]], name=facts["name"], arch="mips",
                             load=facts["load"], entry=facts["entry"], time=facts["time"])


def _scan_flash(data: bytes, ctx: Context) -> None:
    # What `fwgen inspect` does with a flash dump no manifest describes, on 4 KiB boundaries.
    describe_flash(data, scanned_layout(len(data), 0x1000))


def _as_flash_dump(data: bytes) -> bytes:
    # The squashfs sample on the block after a small multi-file uImage, in erased flash.
    uimage = make_multi_uimage([b"kernel" * 100, b"initramfs" * 50], name="fuzz", arch="mips")
    return flash_image(0x4000 + len(data) + 0x1000, [(0, uimage), (0x2000, data)])


def _read_opkg_index(data: bytes, ctx: Context) -> None:
    ipk.verify_index(data, ctx.packages_sig, ctx.usign_keys, "fuzz/Packages")


# Update bundles and sysupgrade images are signed with a fixed key: a mutation that keeps the
# signed bytes whole reaches the checks behind the signature.
FUZZ_KEY = usign.UsignSecretKey(b"fuzzfuzz", Ed25519PrivateKey.from_private_bytes(bytes(range(32))), "fuzz")


def _read_bundle(data: bytes, ctx: Context) -> None:
    path = ctx.scratch / "fuzz.bundle"
    path.write_bytes(data)
    verify_bundle(path, FUZZ_KEY.trusted(), board="fuzz")


def _as_bundle(data: bytes) -> bytes:
    # The squashfs sample as the root part of a signed bundle, a slice of it as the FIT.
    with tempfile.TemporaryDirectory() as folder:
        fit, root, bundle = Path(folder, "fit"), Path(folder, "root"), Path(folder, "bundle")
        fit.write_bytes(data[:1000])
        root.write_bytes(data)
        parts = [part_for("fit", fit), part_for("rootfs", root)]
        metadata = build_bundle_metadata(board="fuzz", compatible=("fuzz",), version="1", build_id="0", slots="ab",
                                         parts=parts)
        write_bundle(bundle, metadata, parts, mtime=0, key=FUZZ_KEY)
        return bundle.read_bytes()


def _read_sysupgrade(data: bytes, ctx: Context) -> None:
    path = ctx.scratch / "fuzz-sysupgrade.bin"
    path.write_bytes(data)
    verify_sysupgrade(path, FUZZ_KEY.trusted())


def _as_sysupgrade(data: bytes) -> bytes:
    # fwtool's sample metadata.json as the metadata of a small signed sysupgrade image.
    with tempfile.TemporaryDirectory() as folder:
        kernel, root, image = Path(folder, "kernel"), Path(folder, "root"), Path(folder, "image")
        kernel.write_bytes(b"kernel" * 200)
        root.write_bytes(b"hsqs" * 300)
        write_sysupgrade(image, board="tplink_archer-c7-v5", kernel=kernel, root=root, metadata=data, mtime=0,
                         key=FUZZ_KEY)
        return image.read_bytes()


CPIO = ("cpio/test_svr4.cpio", "cpio/test_svr4_crc.cpio")
SQUASHFS = ("squashfs/fact-gzip.sqfs", "squashfs/fact-xz.sqfs", "squashfs/fact-zstd.sqfs", "squashfs/binwalk-squashfs.bin")
IPKS = ("openwrt-core-mvebu/fwtool_2019-11-12-8f7fe925-1_arm_cortex-a9_vfpv3-d16.ipk",
        "openwrt-core-mvebu/kmod-lib-crc8_5.15.137-1_arm_cortex-a9_vfpv3-d16.ipk",
        "openwrt-core-mvebu/libpthread_1.2.4-4_arm_cortex-a9_vfpv3-d16.ipk")
APKS = ("alpine-aarch64-3.13.4/libc-utils-0.7.2-r3.apk", "alpine-aarch64-3.13.4/ssl_client-1.32.1-r5.apk",
        "alpine-aarch64-3.13.4/alpine-keys-2.2-r0.apk")
READERS = {
    "cpio": Reader(CPIO, lambda data, ctx: read_cpio(data, source="fuzz.cpio")),
    "initramfs-gzip": Reader(CPIO, _read_initramfs, rebuild=lambda m, o: gzip.compress(m, mtime=0)),
    "squashfs": Reader(SQUASHFS, _read_squashfs),
    "deb": Reader(("debian/fact-test.deb",), _read_deb),
    "deb-data-tar": Reader(("debian/fact-test.deb",), _read_deb, _data_tar_of_deb, _deb_with_data_tar),
    "ipk": Reader(IPKS, _read_ipk),
    "ipk-data-tar": Reader(IPKS, _read_ipk, _data_tar_of_ipk, _ipk_with_data_tar),
    "apk": Reader(APKS, _read_apk),
    "apk-data-tar": Reader(APKS, _read_apk_data_tar, _data_tar_of_apk),
    "apkindex": Reader(("alpine-aarch64-3.13.4/APKINDEX.tar.gz",), _read_apkindex),
    "apkindex-text": Reader(("alpine-aarch64-3.13.4/APKINDEX.tar.gz",), _parse_apkindex, _index_text_of_apkindex),
    "opkg-index": Reader(("openwrt-core-mvebu/Packages",), _read_opkg_index),
    "opkg-packages": Reader(("openwrt-core-mvebu/Packages",), _parse_opkg_packages, _first_stanzas),
    "debian-packages": Reader(("openwrt-core-mvebu/Packages",), _parse_debian_packages, _as_debian_stanzas),
    "uimage": Reader(("uimage/uboot.image_with_header",), _read_uimage),
    "uimage-multi": Reader(("uimage/uboot.image_with_header",), _read_uimage, _as_multi_file),
    "flash-dump": Reader(("squashfs/fact-gzip.sqfs",), _scan_flash, _as_flash_dump),
    "update-bundle": Reader(("squashfs/fact-gzip.sqfs",), _read_bundle, _as_bundle),
    "sysupgrade": Reader(("fwtool/metadata.json",), _read_sysupgrade, _as_sysupgrade),
}


class CaseTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise CaseTimeout()


def run_case(reader: Reader, data: bytes, original: bytes, ctx: Context) -> str | None:
    """None when the case ends well; otherwise what went wrong, in one line."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        reader.read(reader.rebuild(data, original), ctx)
    except CaseTimeout:
        return f"ran past {CASE_SECONDS} s"
    except FwgenError as e:
        text = str(e)
        if "\n" in text or not text.strip():
            return f"{type(e).__name__} message is not one line: {text[:300]!r}"
    except Exception as e:  # noqa: BLE001 - any other exception is what the fuzzer looks for
        return f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return None


@pytest.fixture(scope="module")
def keys(samples) -> tuple[dict, dict, bytes]:
    feed = samples / "openwrt-core-mvebu"
    return (apk.load_rsa_keys([samples / "alpine" / "keys"]), usign.load_keys([feed]),
            (feed / "Packages.sig").read_bytes())


# Cases beyond CASES that found something in longer runs (28,000 cases), kept as regressions:
# a squashfs whose directory table starts past its end (ValueError from min()), and Debian
# relations holding a continuation line (a message on three lines).
FOUND = {"squashfs": (767,), "debian-packages": (1346, 1540)}


@pytest.mark.parametrize("name", list(READERS))
def test_fuzzed_input_gives_success_or_a_one_line_fwgen_error(name, samples, keys, tmp_path):
    reader = READERS[name]
    ctx = Context(tmp_path, *keys)
    originals = [(samples / seed).read_bytes() for seed in reader.seeds]
    prepared = [reader.prepare(original) for original in originals]
    # The unmutated seeds read without any error: the mutations make the failures.
    for original, data in zip(originals, prepared, strict=True):
        reader.read(reader.rebuild(data, original), ctx)
    findings = []
    started = time.monotonic()
    cases = [*range(CASES), *FOUND.get(name, ())]
    for i in cases:
        rng = random.Random(f"{name}:{i}")
        which = rng.randrange(len(originals))
        problem = run_case(reader, mutate(prepared[which], rng), originals[which], ctx)
        if problem:
            findings.append(f"case {i} ({reader.seeds[which]}): {problem}")
    elapsed = time.monotonic() - started
    assert not findings, f"{len(findings)} of {len(cases)} cases of {name}:\n" + "\n".join(findings)
    assert elapsed < len(cases) * CASE_SECONDS
