"""FIT images written with fwgen's own FDT code, listed and extracted by U-Boot's mkimage and
dumpimage (u-boot-tools, test-only), read back by `fwgen inspect`."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from fwgen.cli import main
from fwgen.dtb import DeviceTree, Node
from fwgen.errors import FormatError, UserError
from fwgen.images.fit import FitConfig, FitImage, make_fit, read_fit
from fwgen.images.uimage import compress

EPOCH = 1700002853
REPO_BOARDS = Path(__file__).resolve().parents[1] / "boards"
KERNEL = os.urandom(40000) + bytes(60000)
INITRAMFS = os.urandom(7001)

needs_uboot_tools = pytest.mark.skipif(shutil.which("mkimage") is None,
                                       reason="mkimage not installed (Debian package u-boot-tools, see .ci/setup)")


def _dtb() -> bytes:
    root = Node("", children=[Node("chosen")])
    root.set_strings("compatible", ["linux,dummy-virt"])
    return DeviceTree(root).to_bytes()


def _fit(kernel_compression: str = "gzip", load: int = 0x40400000) -> bytes:
    images = [
        FitImage("kernel-1", "kernel", compress(KERNEL, kernel_compression), "arm64",
                 compression=kernel_compression, load=load, entry=load, description="Linux"),
        FitImage("ramdisk-1", "ramdisk", INITRAMFS, "arm64", load=0x48000000),
        FitImage("fdt-1", "flat_dt", _dtb(), "arm64"),
    ]
    configs = [FitConfig("conf-1", "kernel-1", "ramdisk-1", "fdt-1"), FitConfig("conf-2", "kernel-1", "ramdisk-1")]
    return make_fit(images, configs, description="fwgen test", timestamp=EPOCH, default="conf-2")


def _listing(text: str) -> dict[str, dict[str, str]]:
    """mkimage -l's FIT listing: {image or configuration name: {field: value}}."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        head = re.match(r"^ (Image|Configuration) \d+ \((.+)\)$", line)
        if head:
            current = sections.setdefault(head[2], {})
        elif (field := re.match(r"^  ([A-Z][\w ]+):\s+(.*)$", line)) and current is not None:
            current[field[1]] = field[2].strip()
        elif (default := re.match(r"^ Default Configuration: '(.+)'$", line)):
            sections["default"] = {"name": default[1]}
    return sections


@needs_uboot_tools
def test_mkimage_lists_types_addresses_and_hashes(tmp_path):
    fit = tmp_path / "image.itb"
    fit.write_bytes(_fit())
    text = subprocess.run(["mkimage", "-l", str(fit)], capture_output=True, text=True, check=True).stdout
    listed = _listing(text)
    assert "FIT description: fwgen test" in text
    assert "Created:         Tue Nov 14 23:00:53 2023" in text  # the timestamp we gave, nothing else
    kernel, ramdisk, fdt = listed["kernel-1"], listed["ramdisk-1"], listed["fdt-1"]
    assert (kernel["Type"], kernel["Compression"], kernel["Architecture"], kernel["OS"]) == \
        ("Kernel Image", "gzip compressed", "AArch64", "Linux")
    assert kernel["Load Address"] == kernel["Entry Point"] == "0x40400000"
    assert kernel["Hash algo"] == "sha256"
    assert kernel["Hash value"] == hashlib.sha256(compress(KERNEL, "gzip")).hexdigest()
    assert (ramdisk["Type"], ramdisk["Compression"], ramdisk["Load Address"]) == \
        ("RAMDisk Image", "uncompressed", "0x48000000")
    assert ramdisk["Hash value"] == hashlib.sha256(INITRAMFS).hexdigest()
    assert fdt["Type"] == "Flat Device Tree" and fdt["Hash value"] == hashlib.sha256(_dtb()).hexdigest()
    assert listed["default"]["name"] == "conf-2"
    assert (listed["conf-1"]["Kernel"], listed["conf-1"]["Init Ramdisk"], listed["conf-1"]["FDT"]) == \
        ("kernel-1", "ramdisk-1", "fdt-1")
    assert "FDT" not in listed["conf-2"]


@needs_uboot_tools
@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_dumpimage_extracts_each_image_byte_identical(tmp_path, compression):
    fit = tmp_path / "image.itb"
    fit.write_bytes(_fit(compression))
    for index, expected in enumerate((compress(KERNEL, compression), INITRAMFS, _dtb())):
        out = tmp_path / f"image{index}"
        subprocess.run(["dumpimage", "-T", "flat_dt", "-p", str(index), "-o", str(out), str(fit)],
                       check=True, capture_output=True)
        assert out.read_bytes() == expected
    if compression == "gzip":
        assert gzip.decompress((tmp_path / "image0").read_bytes()) == KERNEL


@needs_uboot_tools
def test_a_64_bit_load_address_takes_two_cells_and_mkimage_reads_it(tmp_path):
    fit = tmp_path / "image.itb"
    fit.write_bytes(_fit("none", load=0x8_4040_0000))
    listed = _listing(subprocess.run(["mkimage", "-l", str(fit)], capture_output=True, text=True, check=True).stdout)
    assert listed["kernel-1"]["Load Address"] == "0x840400000"
    assert read_fit(fit.read_bytes()).image("kernel-1").load == 0x8_4040_0000


def test_same_inputs_give_the_same_bytes_and_the_reader_gets_them_back():
    assert _fit() == _fit()
    fit = read_fit(_fit())
    assert fit.timestamp == EPOCH and fit.default == "conf-2"
    assert [(i.name, i.type, i.compression, i.load) for i in fit.images] == [
        ("kernel-1", "kernel", "gzip", 0x40400000), ("ramdisk-1", "ramdisk", "none", 0x48000000),
        ("fdt-1", "flat_dt", "none", None)]
    assert all(h.ok for i in fit.images for h in i.hashes)
    assert fit.configurations["conf-2"] == {"kernel": "kernel-1", "ramdisk": "ramdisk-1"}
    assert gzip.decompress(fit.image("kernel-1").data) == KERNEL


def test_inspect_lists_the_images_and_a_flipped_kernel_byte_fails_its_hash(tmp_path):
    good = tmp_path / "image.itb"
    good.write_bytes(_fit("none"))
    result = CliRunner().invoke(main, ["inspect", str(good)])
    assert result.exit_code == 0, result.output
    assert re.search(r"kernel-1: kernel arm64 linux, compression none, 100,000 bytes, "
                     r"load 0x40400000 entry 0x40400000; sha256 [0-9a-f]{64} OK", result.output)
    assert "configuration conf-1: kernel kernel-1, ramdisk ramdisk-1, fdt fdt-1" in result.output
    extracted = CliRunner().invoke(main, ["inspect", str(good), "--extract", "ramdisk-1"])
    assert extracted.stdout_bytes == INITRAMFS
    raw = bytearray(good.read_bytes())
    raw[raw.index(KERNEL[:64]) + 500] ^= 0x80
    bad = tmp_path / "bad.itb"
    bad.write_bytes(bytes(raw))
    result = CliRunner().invoke(main, ["inspect", str(bad), "--json"])
    assert result.exit_code == 2
    facts = json.loads(result.output)
    assert facts["kind"] == "fit" and facts["ok"] is False
    assert [h["ok"] for i in facts["images"] for h in i["hashes"]] == [False, True, True]


@needs_uboot_tools
def test_external_data_as_mkimage_E_writes_it_is_read(tmp_path):
    fit = tmp_path / "image.itb"
    fit.write_bytes(_fit())
    subprocess.run(["mkimage", "-E", "-F", str(fit)], check=True, capture_output=True)
    read = read_fit(fit.read_bytes())
    assert "data" not in DeviceTree.parse(fit.read_bytes()).find("/images/kernel-1").properties
    assert read.image("ramdisk-1").data == INITRAMFS
    assert all(h.ok for i in read.images for h in i.hashes)


def test_wrong_references_and_names_are_refused():
    kernel = FitImage("kernel-1", "kernel", b"k", "arm64")
    with pytest.raises(UserError, match="configuration conf-1 names image 'ramdisk-9'"):
        make_fit([kernel], [FitConfig("conf-1", "kernel-1", "ramdisk-9")], description="", timestamp=0)
    with pytest.raises(UserError, match="FIT image kernel-1: compression 'xz' is not one of"):
        make_fit([FitImage("kernel-1", "kernel", b"k", "arm64", compression="xz")],
                 [FitConfig("conf-1", "kernel-1")], description="", timestamp=0)
    with pytest.raises(FormatError, match=r"^x\.dtb: a device tree without /images, not a FIT$"):
        read_fit(_dtb(), where="x.dtb")


@needs_uboot_tools
def test_fuzzed_fits_give_a_one_line_error_or_a_listing(tmp_path):
    """Seeded mutations of a FIT written by U-Boot's own mkimage (`-f auto`, and `-E` for data
    outside the tree) and of one fwgen wrote: the reader (dtb.py under read_fit) answers each
    with a listing or a one-line fwgen error, never a crash."""
    import random

    from test_fuzz_readers import Context, Reader, mutate, run_case

    (tmp_path / "kernel").write_bytes(KERNEL[:3000] + bytes(3000))
    seeds = [_fit("none")]
    for extra in ([], ["-E"]):
        out = tmp_path / f"auto{len(extra)}.itb"
        subprocess.run(["mkimage", "-f", "auto", *extra, "-A", "arm64", "-O", "linux", "-T", "kernel", "-C", "none",
                        "-a", "0x40400000", "-e", "0x40400000", "-d", str(tmp_path / "kernel"), str(out)],
                       check=True, capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
        seeds.append(out.read_bytes())
    reader = Reader((), lambda data, ctx: read_fit(data, where="fuzz.itb").describe())
    ctx = Context(tmp_path, {}, {}, b"")
    for seed in seeds[1:]:
        assert all(h.ok for i in read_fit(seed).images for h in i.hashes)
    findings = []
    for i in range(200):
        rng = random.Random(f"fit:{i}")
        which = rng.randrange(len(seeds))
        problem = run_case(reader, mutate(seeds[which], rng), seeds[which], ctx)
        if problem:
            findings.append(f"case {i} (seed {which}): {problem}")
    assert not findings, "\n".join(findings)


def test_hostile_trees_are_refused_in_one_line_or_read():
    deep = node = Node("")
    for level in range(100):
        child = Node(f"n{level}")
        node.children.append(child)
        node = child
    with pytest.raises(FormatError, match=r"^x\.itb: nodes nested over 64 deep at 0x[0-9a-f]+$"):
        read_fit(DeviceTree(deep).to_bytes(), where="x.itb")
    image = Node("kernel-1", {"data": b"k", "type": b"\xff\xfe\0"})
    tree = DeviceTree(Node("", children=[Node("images", children=[image])]))
    read = read_fit(tree.to_bytes()).image("kernel-1")
    assert read.type == "\ufffd\ufffd" and read.hashes == ()
    image.properties["load"] = b"\0\0"
    with pytest.raises(FormatError, match=r"^x\.itb: /images/kernel-1: DTB property kernel-1/load is 2 bytes, "
                                          r"not whole cells$"):
        read_fit(tree.to_bytes(), where="x.itb")
    image.properties["load"] = bytes(12)
    with pytest.raises(FormatError, match="kernel-1/load is 3 cells, not a 32- or 64-bit number"):
        read_fit(tree.to_bytes())


def test_boot_script_of_the_uboot_board_sets_bootargs_and_refuses_a_quote():
    from dataclasses import replace

    from fwgen.bootloader import build_boot_script
    from fwgen.config import load_board
    from fwgen.images.uimage import multi_files, read_uimage

    board = load_board("qemu-aarch64-uboot")
    image = read_uimage(build_boot_script(board, EPOCH))
    assert image.describe()["type"] == "script" and image.describe()["arch"] == "arm64"
    script = multi_files(image)[0].decode()
    assert "setenv bootargs 'console=ttyAMA0 panic=-1 rdinit=/init'\n" in script
    quoted = replace(board, kernel=replace(board.kernel, cmdline="console=ttyAMA0 x='y'"))
    with pytest.raises(UserError, match="cannot pass a single quote or newline to the kernel"):
        build_boot_script(quoted, EPOCH)


# --- signatures ---------------------------------------------------------------------------

def _rsa_key(tmp_path, name: str = "dev", bits: int = 2048):
    """A fresh RSA key as U-Boot's mkimage wants it in a key directory: NAME.key (the PEM
    private key) and NAME.crt (a self-signed certificate, where mkimage -K reads the public key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    keydir = tmp_path / "keys"
    keydir.mkdir(exist_ok=True)
    (keydir / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    (keydir / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, keydir


def _signed_fit(key, name: str = "dev") -> bytes:
    from fwgen.images.fitsig import sign_fit

    return sign_fit(DeviceTree.parse(_fit()), key, key_name=name, timestamp=EPOCH, signer=("fwgen", "test"))


def _signature(blob: bytes, config: str = "conf-1") -> dict[str, bytes]:
    return DeviceTree.parse(blob).find(f"/configurations/{config}/signature-1").properties


def _verdicts(blob: bytes, key) -> list[bool | None]:
    from fwgen.images.fitsig import read_signatures

    return [s.ok for s in read_signatures(blob, DeviceTree.parse(blob), key)]


@needs_uboot_tools
@pytest.mark.parametrize("bits", [2048, 4096])
def test_mkimage_signing_fwgens_fit_again_writes_the_same_signature_and_key_node(tmp_path, bits):
    """mkimage -F re-signs an existing FIT in place, choosing the regions itself: PKCS#1 v1.5
    is deterministic, so its `value` equals fwgen's only if both signed the same bytes."""
    from fwgen.images.fitsig import key_node

    key, keydir = _rsa_key(tmp_path, bits=bits)
    ours = _signed_fit(key)
    assert _signature(ours, "conf-1")["algo"] == f"sha256,rsa{bits}".encode() + b"\0"
    theirs, pubkey = tmp_path / "again.itb", tmp_path / "pubkey.dtb"
    theirs.write_bytes(ours)
    pubkey.write_bytes(DeviceTree(Node("")).to_bytes())
    subprocess.run(["mkimage", "-F", "-k", str(keydir), "-K", str(pubkey), "-r", str(theirs)],
                   check=True, capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    for config in ("conf-1", "conf-2"):
        mine, again = _signature(ours, config), _signature(theirs.read_bytes(), config)
        assert again["signer-name"] == b"mkimage\0"  # mkimage really rewrote the node
        for prop in ("value", "hashed-nodes", "hashed-strings"):
            assert mine[prop] == again[prop], (config, prop)
    assert DeviceTree.parse(ours).find("/configurations/conf-2/signature-1").strings("hashed-nodes") == [
        "/", "/configurations/conf-2", "/images/kernel-1", "/images/kernel-1/hash-1",
        "/images/ramdisk-1", "/images/ramdisk-1/hash-1"]
    written = DeviceTree.parse(pubkey.read_bytes()).find("/signature/key-dev").properties
    assert written == key_node(key.public_key(), "dev").properties


@needs_uboot_tools
def test_fwgen_verifies_a_fit_mkimage_signed_and_refuses_another_key(tmp_path):
    key, keydir = _rsa_key(tmp_path)
    (tmp_path / "kernel.bin").write_bytes(KERNEL)
    (tmp_path / "ramdisk.bin").write_bytes(INITRAMFS)
    its = tmp_path / "image.its"
    its.write_text("""/dts-v1/;
/ { description = "mkimage"; #address-cells = <1>;
  images {
    kernel-1 { data = /incbin/("kernel.bin"); type = "kernel"; arch = "arm64"; os = "linux";
               compression = "none"; load = <0x40400000>; entry = <0x40400000>; hash-1 { algo = "sha256"; }; };
    ramdisk-1 { data = /incbin/("ramdisk.bin"); type = "ramdisk"; arch = "arm64"; os = "linux";
                compression = "none"; load = <0x48000000>; hash-1 { algo = "sha256"; }; }; };
  configurations { default = "conf-1";
    conf-1 { kernel = "kernel-1"; ramdisk = "ramdisk-1";
             signature-1 { algo = "sha256,rsa2048"; key-name-hint = "dev"; sign-images = "kernel", "ramdisk"; }; }; };
};
""")
    signed = tmp_path / "image.itb"
    subprocess.run(["mkimage", "-f", str(its), "-k", str(keydir), str(signed)], check=True, capture_output=True,
                   cwd=tmp_path, env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    blob = signed.read_bytes()
    assert _verdicts(blob, key.public_key()) == [True]
    (tmp_path / "other").mkdir()
    other, _ = _rsa_key(tmp_path / "other")
    assert _verdicts(blob, other.public_key()) == [False]


def test_a_changed_configuration_or_hash_breaks_the_signature_and_inspect_says_so(tmp_path):
    key, _ = _rsa_key(tmp_path)
    signed = _signed_fit(key)
    assert signed == _signed_fit(key)  # PKCS#1 v1.5 is deterministic: the FIT stays reproducible
    assert _verdicts(signed, key.public_key()) == [True, True]
    assert _verdicts(signed, None) == [None, None]
    # conf-2 now boots the FIT's DTB too: the same images, a changed configuration
    tree = DeviceTree.parse(signed)
    tree.find("/configurations/conf-2").set_strings("fdt", ["fdt-1"])
    assert _verdicts(tree.to_bytes(), key.public_key()) == [True, False]
    # a kernel hash value changed together with its data: the hashes match, the signature not
    tree = DeviceTree.parse(signed)
    kernel = tree.find("/images/kernel-1")
    kernel.properties["data"] = bytes(len(kernel.properties["data"]))
    tree.find("/images/kernel-1/hash-1").properties["value"] = hashlib.sha256(kernel.properties["data"]).digest()
    assert _verdicts(tree.to_bytes(), key.public_key()) == [False, False]

    pem = tmp_path / "keys" / "dev.key"
    path = tmp_path / "image.itb"
    path.write_bytes(signed)
    good = CliRunner().invoke(main, ["inspect", str(path), "--key", str(pem)])
    assert good.exit_code == 0, good.output
    assert "configuration conf-2 signature sha256,rsa2048 key 'dev' over kernel, ramdisk: OK" in good.output
    unchecked = CliRunner().invoke(main, ["inspect", str(path)])
    assert unchecked.exit_code == 0 and "ramdisk: (not checked)" in unchecked.output
    flipped = bytearray(signed)
    at = signed.index(compress(KERNEL, "gzip")[100:132]) + 5
    flipped[at] ^= 0xFF
    path.write_bytes(bytes(flipped))
    bad = CliRunner().invoke(main, ["inspect", str(path), "--key", str(pem)])
    assert bad.exit_code == 2 and "MISMATCH" in bad.output  # the kernel's sha256 no longer matches
    path.write_bytes(tree.to_bytes())
    forged = CliRunner().invoke(main, ["inspect", str(path), "--key", str(pem), "--json"])
    assert forged.exit_code == 2
    assert [s["verified"] for s in json.loads(forged.output)["signatures"]] == [False, False]


def test_a_malformed_signature_node_is_reported_as_failing_not_as_a_crash(tmp_path):
    key, _ = _rsa_key(tmp_path)
    # conf-2 has no fdt: naming it in sign-images adds no node, the signature still holds
    for prop, value, verdict in (("hashed-strings", b"", False), ("hashed-nodes", b"/\0", False),
                                 ("sign-images", b"fdt\0kernel\0ramdisk\0", True)):
        tree = DeviceTree.parse(_signed_fit(key))
        tree.find("/configurations/conf-2/signature-1").properties[prop] = value
        assert _verdicts(tree.to_bytes(), key.public_key()) == [True, verdict], prop


def test_a_signing_key_that_is_not_rsa_is_refused_with_its_path(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from fwgen.images.fitsig import load_private_key

    pem = tmp_path / "ec.pem"
    pem.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(UserError, match=r"ec\.pem: the FIT signing key must be RSA"):
        load_private_key(pem)
    (tmp_path / "junk.pem").write_text("not a key\n")
    with pytest.raises(UserError, match=r"junk\.pem: not an unencrypted PEM private key"):
        load_private_key(tmp_path / "junk.pem")


@pytest.fixture(scope="module")
def signed_board(tmp_path_factory, cache_dir):
    """qemu-aarch64-uboot built through the library with uboot.signing_key: (key, keydir, out)."""
    import dataclasses

    from fwgen.build import build
    from fwgen.cache import Cache
    from fwgen.config import load_board

    tmp_path = tmp_path_factory.mktemp("signed")
    key, keydir = _rsa_key(tmp_path)
    board = load_board("qemu-aarch64-uboot")
    board = dataclasses.replace(board, uboot=dataclasses.replace(board.uboot, signing_key=keydir / "dev.key"))
    out = tmp_path / "out"
    build(board, outdir=out, cache=Cache(cache_dir), source_date_epoch=EPOCH)
    return key, keydir, out


@pytest.mark.network
@needs_uboot_tools
def test_a_board_with_a_signing_key_signs_its_fit_and_records_only_the_fingerprint(tmp_path, signed_board):
    """The signed board's FIT verifies, mkimage re-signing it writes the same value,
    fit-key.dtb holds the node mkimage -K writes, and no output holds the private key."""
    from cryptography.hazmat.primitives import serialization

    from fwgen.images.fitsig import fingerprint

    key, keydir, out = signed_board
    record = json.loads((out / "manifest.json").read_text())["inputs"]["bootloader"]["fit_signature"]
    assert record == {"algo": "sha256,rsa2048", "key_name": "dev", "public_key_sha256": fingerprint(key.public_key()),
                      "required": "conf", "key_dtb": "fit-key.dtb"}
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert record["public_key_sha256"] == hashlib.sha256(der).hexdigest()
    fit = (out / "image.itb").read_bytes()
    assert _verdicts(fit, key.public_key()) == [True]
    secret = key.private_numbers().d.to_bytes(256, "big")[:64]
    pem = (keydir / "dev.key").read_bytes()[40:100]
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret not in data and pem not in data, path

    again, pubkey = tmp_path / "again.itb", tmp_path / "pubkey.dtb"
    again.write_bytes(fit)
    pubkey.write_bytes(DeviceTree(Node("")).to_bytes())
    subprocess.run(["mkimage", "-F", "-k", str(keydir), "-K", str(pubkey), "-r", str(again)],
                   check=True, capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    assert _signature(again.read_bytes())["value"] == _signature(fit)["value"]
    ours = DeviceTree.parse((out / "fit-key.dtb").read_bytes()).find("/signature/key-dev").properties
    assert ours == DeviceTree.parse(pubkey.read_bytes()).find("/signature/key-dev").properties


def test_a_boards_signing_key_is_read_relative_to_the_board_file_or_refused_at_its_line(tmp_path):
    from fwgen.config import load_board
    from fwgen.errors import ConfigError

    shipped = (REPO_BOARDS / "qemu-aarch64-uboot.yaml").read_text()
    assert "signing_key" not in shipped  # the shipped boards are not signed
    folder = tmp_path / "boards"
    folder.mkdir()
    (folder / "keys").mkdir()
    (folder / "keys" / "dev.key").write_text("a key\n")
    board_file = folder / "signed.yaml"
    board_file.write_text(shipped.replace("\nuboot:\n", "\nuboot:\n  signing_key: keys/dev.key\n", 1))
    assert load_board(board_file).uboot.signing_key == (folder / "keys" / "dev.key").resolve()
    board_file.write_text(shipped.replace("\nuboot:\n", "\nuboot:\n  signing_key: keys/none.key\n", 1))
    with pytest.raises(ConfigError, match=r"signed\.yaml:\d+:\d+.*keys/none\.key not found"):
        load_board(board_file)


def _uboot_verdict(out, disk, dtb) -> str:
    """Start Debian's U-Boot (the board's u-boot.bin) on QEMU virt with `dtb` as its control
    DTB and `disk`; the lines from its first FIT check up to its verdict on the configuration."""
    import select
    import time

    marker = re.compile(rb"Verifying Hash Integrity \.\.\. (sha256,rsa2048:dev[+-].*|OK)")
    argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-m", "512", "-nographic",
            "-bios", str(out / "u-boot.bin"), "-drive", f"if=none,file={disk},format=raw,id=d0",
            "-device", "virtio-blk-device,drive=d0", "-net", "none", *(["-dtb", str(dtb)] if dtb else [])]
    seen = b""
    deadline = time.monotonic() + 60 * float(os.environ.get("FWGEN_TIMEOUT_FACTOR", "1"))
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as qemu:
        try:
            while time.monotonic() < deadline and not marker.search(seen):
                if select.select([qemu.stdout], [], [], 1)[0]:
                    chunk = os.read(qemu.stdout.fileno(), 4096)  # type: ignore[union-attr]
                    if not chunk:
                        break
                    seen += chunk
            time.sleep(1)  # U-Boot's next lines say what it does with the verdict
            while select.select([qemu.stdout], [], [], 0.5)[0] and (chunk := os.read(qemu.stdout.fileno(), 4096)):  # type: ignore[union-attr]
                seen += chunk
        finally:
            qemu.kill()
    found = marker.search(seen)
    assert found, seen.decode(errors="replace")[-2000:]
    return seen[found.start():].decode(errors="replace")


@pytest.mark.network
@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mcopy") is None or shutil.which("qemu-system-aarch64") is None,
                    reason="needs mtools and qemu-system-aarch64 (see .ci/setup)")
def test_uboot_with_the_key_in_its_control_dtb_checks_the_signature_and_refuses_a_changed_config(
        tmp_path, signed_board):
    """Debian's U-Boot enforces the signature once its control DTB holds fwgen's key node:
    QEMU's own virt DTB (dumped) plus /signature/key-dev, given to QEMU as -dtb. A FIT whose
    configuration was changed after signing is refused; without the key, U-Boot boots it."""
    from fwgen.images.fitsig import key_node

    key, _, out = signed_board
    dumped = tmp_path / "virt.dtb"
    subprocess.run(["qemu-system-aarch64", "-M", f"virt,dumpdtb={dumped}", "-cpu", "cortex-a53", "-m", "512",
                    "-nographic", "-net", "none"], check=True, capture_output=True, timeout=60)
    control = DeviceTree.parse(dumped.read_bytes())
    control.root.children.append(Node("signature", children=[key_node(key.public_key(), "dev")]))
    with_key = tmp_path / "virt-key.dtb"
    with_key.write_bytes(control.to_bytes())

    disk = tmp_path / "disk.img"
    shutil.copyfile(out / "disk.img", disk)
    assert "sha256,rsa2048:dev+ OK" in _uboot_verdict(out, disk, with_key)

    forged = DeviceTree.parse((out / "image.itb").read_bytes())
    forged.find("/configurations/conf-1").set_strings("description", ["forged"])
    (tmp_path / "forged.itb").write_bytes(forged.to_bytes())
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{4 << 20}", str(tmp_path / "forged.itb"), "::image.itb"],
                   check=True, capture_output=True)
    refused = _uboot_verdict(out, disk, with_key)
    assert "sha256,rsa2048:dev- " in refused and "Failed to verify required signature 'key-dev'" in refused
    assert "Starting kernel" not in refused
    assert _uboot_verdict(out, disk, None).startswith("Verifying Hash Integrity ... OK")
