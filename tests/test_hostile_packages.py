"""Hostile but validly signed packages: decompression bombs in deb, apk and ipk, refused on
the board's limits before they fill memory. Packages come from the suite's generator
(tests/feedgen.py); the build test serves them as a signed OpenWrt feed on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest
from buildutil import REPO, run_fwgen
from feedgen import (
    ApkSpec,
    FileSpec,
    IpkSpec,
    RsaSigner,
    UsignSigner,
    build_apk,
    build_deb,
    build_ipk,
    serve,
    write_alpine_repo,
    write_opkg_feed,
)

from fwgen.arch import Arch
from fwgen.board import Feed, Policy
from fwgen.cache import Cache
from fwgen.config import load_board
from fwgen.errors import ConfigError, FormatError, LimitError, UserError
from fwgen.fetch import (
    FetchedPackage,
    Package,
    UnpackBudget,
    apk,
    fetch_packages,
    install_package,
    ipk,
    read_package_entries,
)
from fwgen.images.cpio import read_initramfs, write_initramfs
from fwgen.policy import apply_policy, find_special_files
from fwgen.rootfs import EntryType, RootFS

MIB = 1 << 20
OPENWRT_ARCH = Arch.AARCH64.openwrt
FORMATS = ["deb", "apk", "ipk"]
SPARSE_BOMB = [FileSpec("./usr/share/bomb.bin", kind="sparse", size=2 << 30)]  # 512 bytes -> 2 GiB


def write_package(folder: Path, fmt: str, files: list[FileSpec], name: str = "bomb") -> Path:
    """A package of `fmt` holding `files`; an .apk is signed with a key written beside it."""
    if fmt == "deb":
        blob = build_deb(name, files)
    elif fmt == "ipk":
        blob = build_ipk(IpkSpec(name, "1.0-1", OPENWRT_ARCH, files))
    else:
        signer = RsaSigner.generate()
        signer.write_public(folder / "keys")
        blob = build_apk(ApkSpec(name, "1.0-r0", "aarch64", files), signer).blob
    path = folder / f"{name}.{fmt}"
    path.write_bytes(blob)
    return path


def read_entries(path: Path, budget: UnpackBudget | None = None) -> list:
    if path.suffix == ".apk":  # verified with the key beside it, not Alpine's
        keys = apk.load_rsa_keys([path.parent / "keys"])
        return apk.read_apk(path.read_bytes(), keys, str(path), budget=budget).entries
    return list(read_package_entries(path, budget))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_sparse_bomb_is_refused_on_its_header(tmp_path, fmt):
    path = write_package(tmp_path, fmt, SPARSE_BOMB)
    assert path.stat().st_size < 4096
    with pytest.raises(LimitError) as caught:
        read_entries(path)
    assert re.search(r"\./usr/share/bomb\.bin: unpacks to more than the default package limit \(1024 MiB\)$",
                     caught.value.message), caught.value.message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_deflate_bomb_is_refused_while_it_streams(tmp_path, fmt):
    # 64 files of 1 MiB of zeros (64 MiB, a few hundred KiB compressed), each small enough
    # on its own: only counting what the stream unpacks stops them, at 8 MiB.
    files = [FileSpec(f"./usr/share/z{i:02}", b"\0" * MIB) for i in range(64)]
    path = write_package(tmp_path, fmt, files)
    budget = UnpackBudget(8 * MIB, "limits.package_size (8 MiB)")
    peak = 0

    def read() -> None:
        nonlocal peak
        tracemalloc.start()
        try:
            read_entries(path, budget)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    with pytest.raises(LimitError, match=r"unpacks to more than limits\.package_size \(8 MiB\)$"):
        read()
    # The compressed file, the files kept so far and the reader's buffers; never the 64 MiB.
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert budget.used <= 8 * MIB


def test_a_package_within_its_budget_reads_whole(tmp_path):
    files = [FileSpec(f"./usr/share/z{i}", b"\0" * MIB) for i in range(4)]
    for fmt in FORMATS:
        (tmp_path / fmt).mkdir()
        path = write_package(tmp_path / fmt, fmt, files)
        budget = UnpackBudget(8 * MIB, "eight")
        entries = read_entries(path, budget)
        assert sorted(e.path for e in entries if e.data) == [f"/usr/share/z{i}" for i in range(4)]
        assert 4 * MIB < budget.used < 5 * MIB, (fmt, budget.used)


def _fetched(path: Path, name: str) -> FetchedPackage:
    package = Package(name, "1.0-1", OPENWRT_ARCH, "openwrt-local", "ipk", "http://127.0.0.1", path.name,
                      path.stat().st_size, "0" * 64)
    return FetchedPackage(package, path)


def test_the_image_limit_bounds_the_packages_together(tmp_path):
    files = [FileSpec(f"./usr/share/{i}", b"\0" * MIB) for i in range(6)]
    first = _fetched(write_package(tmp_path, "ipk", files, name="first"), "first")
    second = _fetched(write_package(tmp_path, "ipk", files, name="second"), "second")
    image = UnpackBudget(10 * MIB, "limits.image_size (10 MiB)")
    rootfs = RootFS()
    install_package(rootfs, first, UnpackBudget(8 * MIB, "limits.package_size (8 MiB)", parent=image))
    with pytest.raises(LimitError) as caught:
        install_package(rootfs, second, UnpackBudget(8 * MIB, "limits.package_size (8 MiB)", parent=image))
    message = caught.value.message
    assert message.startswith("package second 1.0-1 (feed openwrt-local): second.ipk: data.tar.gz: offset 0x"), message
    assert message.endswith("unpacks to more than limits.image_size (10 MiB)"), message
    assert str(tmp_path) not in message, "the package's name, not its cache file"
    assert "/usr/share/5" in rootfs and not any(e.provenance == "ipk:second" for e in rootfs), \
        "nothing of a refused package is installed"


def test_board_limits_default_from_the_guest_ram_of_an_initramfs_root(tmp_path):
    assert load_board("qemu-aarch64").limits.image_size == 64  # its limits.ram: the initramfs root lives in RAM
    disk = load_board("qemu-aarch64-disk").limits  # the root is on the disk, not in RAM
    assert (disk.package_size, disk.image_size) == (1024, 2048)
    board = tmp_path / "small.yaml"
    board.write_text("arch: aarch64\nqemu: {profile: virt-aarch64, memory: 128}\n")
    assert load_board(board).limits.image_size == 128
    board.write_text("arch: aarch64\nqemu: {profile: virt-aarch64}\nlimits: {package_size: 16, image_size: 64}\n")
    assert (load_board(board).limits.package_size, load_board(board).limits.image_size) == (16, 64)
    board.write_text("arch: aarch64\nlimits:\n  image_size: 0\n")
    with pytest.raises(ConfigError, match=r"small\.yaml:3:15: limits\.image_size: "):
        load_board(board)


# -- fwgen build against a served feed ------------------------------------------------------------
def write_served_board(folder: Path, url: str, key: Path, package: str, **extra) -> Path:
    """qemu-aarch64 (512 MiB of RAM, so a 512 MiB image limit) with `package` from an OpenWrt
    feed served at `url`, the kernel from Debian."""
    board = {
        "name": package,
        "arch": "aarch64",
        "feeds": [
            {"name": "debian", "type": "deb", "url": "http://deb.debian.org/debian", "suite": "bookworm"},
            {"name": "openwrt-local", "type": "ipk", "url": f"{url}/openwrt", "components": ["base"],
             "keys": [str(key)]},
        ],
        "kernel": {"package": "linux-image-cloud-arm64", "cmdline": "console=ttyAMA0"},
        "packages": [package],
        "overlays": ["base"],
        "qemu": {"profile": "virt-aarch64"},
        **extra,
    }
    path = folder / f"{package}.yaml"
    path.write_text(json.dumps(board))
    return path


def write_served_feed(folder: Path, spec: IpkSpec) -> Path:
    """An OpenWrt feed of the one package under `folder`/www, signed; returns the key file."""
    signer = UsignSigner.generate()
    key = signer.write_public(folder / "keys")
    write_opkg_feed(folder / "www" / "openwrt" / "packages" / OPENWRT_ARCH / "base", [(spec, build_ipk(spec))], signer)
    return key


def run_measured(*args: str, cache: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the CLI under GNU time: its result and its peak resident set size in KiB."""
    import os

    time = Path("/usr/bin/time")
    if not time.exists():
        pytest.skip("GNU time (/usr/bin/time) is not installed: apt-get install time")
    result = subprocess.run([str(time), "-v", sys.executable, "-m", "fwgen.cli", *args], capture_output=True,
                            text=True, cwd=REPO, env=dict(os.environ, FWGEN_CACHE=str(cache)), timeout=900)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    assert peak, result.stderr
    return result, int(peak[1])


@pytest.mark.network
@pytest.mark.slow
def test_a_bomb_from_a_signed_feed_is_refused_with_one_line_and_little_memory(tmp_path, cache_dir):
    key = write_served_feed(tmp_path, IpkSpec("bomb", "1.0-1", OPENWRT_ARCH, SPARSE_BOMB))
    out = tmp_path / "out"
    with serve(tmp_path / "www") as url:
        board = write_served_board(tmp_path, url, key, "bomb")
        result, peak_kib = run_measured("build", "--board", str(board), "--out", str(out), cache=cache_dir)
    errors = [line for line in result.stderr.splitlines() if line.startswith("fwgen: error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0] == ("fwgen: error: package bomb 1.0-1 (feed openwrt-local): "
                         f"bomb_1.0-1_{OPENWRT_ARCH}.ipk: data.tar.gz: offset 0x0: "
                         "./usr/share/bomb.bin: unpacks to more than limits.image_size (512 MiB)"), errors[0]
    assert not out.exists() or list(out.iterdir()) == []
    # The 2 GiB are never unpacked: the build's peak is what any build of this board needs.
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib} KiB"


# -- what packages bring: device nodes, setuid files, names with control characters -------------
EVIL_FILES = [
    FileSpec("./dev", kind="dir", mode=0o755),
    FileSpec("./dev/evil-mem", kind="chardev", mode=0o666, major=1, minor=1),
    FileSpec("./usr/bin/rootshell", b"#!/bin/sh\nexec /bin/sh\n", mode=0o4755),
    FileSpec("./usr/bin/su", b"#!/bin/sh\n", mode=0o4755),  # on the default allow list
    FileSpec("./usr/share/drop", b"anyone writes me\n", mode=0o666),
    FileSpec("./var/spool", kind="dir", mode=0o1777),  # shared, like /tmp: not world-writable
]


def test_special_files_are_found_and_the_default_policy_applies_to_packages_only(tmp_path):
    path = write_package(tmp_path, "ipk", EVIL_FILES, name="evil")
    rootfs = RootFS()
    rootfs.add_device("/dev/console", EntryType.CHARDEV, 5, 1, 0o600, provenance="fwgen")
    install_package(rootfs, _fetched(path, "evil"))
    specials = find_special_files(rootfs)
    assert [(s.path, s.kind) for s in specials] == [
        ("/dev/console", "device node"), ("/dev/evil-mem", "device node"), ("/usr/bin/rootshell", "setuid"),
        ("/usr/bin/su", "setuid"), ("/usr/share/drop", "world-writable"),
    ]
    assert specials[1].describe() == "/dev/evil-mem: device node c 1,1 mode 0666 owner 0:0 (from ipk:evil)"
    packages = {"ipk:evil": "evil 1.0-1 (feed openwrt-local)"}
    with pytest.raises(UserError) as caught:
        apply_policy(specials, Policy(), packages)
    assert str(caught.value) == ("package evil 1.0-1 (feed openwrt-local): /dev/evil-mem: device node c 1,1 "
                                 "mode 0666 owner 0:0: refused by the board's policy.device_nodes (set "
                                 "policy.device_nodes to warn or allow to take it)")
    lenient = Policy(device_nodes="allow", setuid_allowed=("/usr/bin/su",))
    outcomes = {(o.special.path, o.rule, o.action) for o in apply_policy(specials, lenient, packages)}
    # fwgen's own /dev/console is not the policy's business.
    assert outcomes == {("/dev/evil-mem", "device_nodes", "allow"), ("/usr/bin/rootshell", "setuid", "warn"),
                        ("/usr/bin/su", "setuid_allowed", "allow"), ("/usr/share/drop", "world_writable", "warn")}
    with pytest.raises(UserError, match=r"/usr/bin/rootshell: setuid mode 4755 .*policy\.setuid"):
        apply_policy(specials, Policy(device_nodes="allow", setuid="refuse"), packages)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["./etc/evil\nroot::0:0::/:/bin/sh", "./usr/bin/\x1b]0;pwned\x07ls"])
def test_names_with_control_characters_are_refused_quoted_on_one_line(tmp_path, fmt, name):
    path = write_package(tmp_path, fmt, [FileSpec(name, b"x")])
    with pytest.raises(FormatError) as caught:
        read_entries(path)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message and "\x07" not in message, message
    assert repr(name) in message and message.endswith(": the name holds control characters"), message


def test_a_symlink_target_with_control_characters_is_refused(tmp_path):
    path = write_package(tmp_path, "ipk", [FileSpec("./bin/x", kind="symlink", target="sh\n/etc/shadow")])
    with pytest.raises(FormatError, match=r"\./bin/x: link target 'sh\\n/etc/shadow' holds control characters$"):
        read_entries(path)
    with pytest.raises(FormatError, match=r"^package x 1\.0-1 \(feed openwrt-local\): x\.ipk: data\.tar\.gz: "):
        install_package(RootFS(), _fetched(path.rename(tmp_path / "x.ipk"), "x"))


def test_the_initramfs_writer_refuses_a_name_over_255_bytes(tmp_path):
    rootfs = RootFS()
    rootfs.add_file("/etc/" + "n" * 255, b"fits")
    write_initramfs(rootfs, tmp_path / "ok.cpio.gz", mtime=0)
    assert any(m.name == "etc/" + "n" * 255 for m in read_initramfs(tmp_path / "ok.cpio.gz"))
    rootfs.add_file("/etc/" + "é" * 128, b"256 bytes of UTF-8", provenance="ipk:long")
    with pytest.raises(UserError, match=r"^initramfs: /etc/é+ \(from ipk:long\): file name too long "
                                        r"\(256 bytes; Linux allows at most 255\)$"):
        write_initramfs(rootfs, tmp_path / "long.cpio.gz", mtime=0)
    assert not (tmp_path / "long.cpio.gz").exists()


def test_fwgen_audit_lists_device_nodes_setuid_and_world_writable_files(tmp_path):
    path = write_package(tmp_path, "ipk", EVIL_FILES, name="evil")
    rootfs = RootFS()
    install_package(rootfs, _fetched(path, "evil"))
    image = tmp_path / "initramfs.cpio.gz"
    write_initramfs(rootfs, image, mtime=0)
    result = run_fwgen("audit", str(image), cache=tmp_path)
    assert result.returncode == 0, result.stderr
    special = [line for line in result.stdout.splitlines() if line.startswith("special: ")]
    # The one image reader names the archive's kind with its path, as squashfs entries have it.
    assert special == [
        f"special: /dev/evil-mem: device node c 1,1 mode 0666 owner 0:0 (from initramfs:{image})",
        f"special: /usr/bin/rootshell: setuid mode 4755 owner 0:0 (from initramfs:{image})",
        f"special: /usr/bin/su: setuid mode 4755 owner 0:0 (from initramfs:{image})",
        f"special: /usr/share/drop: world-writable mode 0666 owner 0:0 (from initramfs:{image})",
    ]
    listed = json.loads(run_fwgen("audit", "--json", str(image), cache=tmp_path).stdout)["special"]
    assert {"path": "/dev/evil-mem", "kind": "device node", "mode": "0666", "owner": "0:0", "rdev": [1, 1],
            "from": f"initramfs:{image}"} in listed


@pytest.mark.network
@pytest.mark.slow
def test_a_device_node_from_a_feed_is_refused_and_allowed_only_by_the_boards_policy(tmp_path, cache_dir):
    key = write_served_feed(tmp_path, IpkSpec("evil", "1.0-1", OPENWRT_ARCH, EVIL_FILES))
    out = tmp_path / "out"
    with serve(tmp_path / "www") as url:
        board = write_served_board(tmp_path, url, key, "evil")
        refused = run_fwgen("build", "--board", str(board), "--out", str(out), cache=cache_dir)
        lenient = write_served_board(tmp_path, url, key, "evil", policy={"device_nodes": "allow"})
        built = run_fwgen("build", "--board", str(lenient), "--out", str(out), cache=cache_dir)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("fwgen: error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert errors[0].startswith("fwgen: error: package evil 1.0-1 (feed openwrt-local): /dev/evil-mem: device node "
                                "c 1,1 mode 0666 owner 0:0: refused by the board's policy.device_nodes"), errors[0]
    assert built.returncode == 0, built.stderr
    assert "  warning: /usr/bin/rootshell: setuid mode 4755 owner 0:0 (from ipk:evil) (policy.setuid: warn)" \
        in built.stderr.splitlines()
    manifest = json.loads((out / "evil" / "manifest.json").read_text())
    policy = {(f["path"], f["kind"]): (f["from"], f["policy"]) for f in manifest["special_files"]}
    assert policy[("/dev/evil-mem", "device node")] == ("ipk:evil", "allow")
    assert policy[("/usr/bin/rootshell", "setuid")] == ("ipk:evil", "warn")
    assert policy[("/usr/bin/su", "setuid")] == ("ipk:evil", "allow")
    assert policy[("/usr/share/drop", "world-writable")] == ("ipk:evil", "warn")
    assert policy[("/dev/console", "device node")] == ("fwgen", None)  # fwgen's own: listed, not judged
    members = {m.name: m for m in read_initramfs(out / "evil" / "initramfs.cpio.gz")}
    assert (members["dev/evil-mem"].mode, members["dev/evil-mem"].rdev) == (0o20666, (1, 1))


def test_a_forged_packages_gz_is_refused_before_its_signature_is_checked():
    # Packages.sig covers the uncompressed Packages: it is inflated first, within a bound
    # that it may reach (the text is held to be checked and parsed), never beyond.
    deflate = zlib.compressobj(1, wbits=31)
    bomb = b"".join(deflate.compress(bytes(MIB)) for _ in range(512)) + deflate.flush()  # 512 MiB of zeros
    assert len(bomb) < 4 * MIB
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match=r"^Packages\.gz: unpacks to more than the index limit \(256 MiB\)$"):
            ipk.verify_index(bomb, b"", {}, "Packages")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ipk.INDEX_SIZE + 32 * MIB, f"peak {peak / MIB:.0f} MiB"


def test_running_out_of_memory_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import fwgen.audit
    from fwgen.cli import main

    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(fwgen.audit, "audit_paths", exhausted)
    result = CliRunner().invoke(main, ["audit", str(tmp_path)])
    assert result.exit_code == 2, result.output  # the host's limit, like a full disk
    assert result.output.splitlines() == [
        "fwgen: error: out of memory (fwgen holds the image in memory: run it with more, or lower the board's "
        "limits.package_size and limits.image_size)"]


def test_an_apk_is_verified_at_download_without_unpacking_its_data(tmp_path):
    # Signature and datahash cover the compressed data: the download is checked without
    # inflating it, and its files are read (and their SHA-1s checked) when it is installed,
    # within the board's limits. A bomb is not unpacked with the default limit on the way in.
    signer = RsaSigner.generate()
    keys = signer.write_public(tmp_path / "keys").parent
    files = [FileSpec(f"./usr/share/z{i:02}", b"\0" * MIB) for i in range(48)]
    built = build_apk(ApkSpec("big", "1.0-r0", "aarch64", files), signer)
    write_alpine_repo(tmp_path / "www", "v3.99/main/aarch64", [built], signer)
    cache = Cache(tmp_path / "cache", attempts=1)
    with serve(tmp_path / "www") as url:
        feed = Feed("alpine-local", "apk", f"{url}/v3.99", components=("main",), keys=(keys,))
        tracemalloc.start()
        try:
            [fetched] = fetch_packages([feed], Arch.AARCH64, ["big"], cache=cache)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 16 * MIB, f"peak {peak / MIB:.0f} MiB while downloading a package of 48 MiB of files"
    with pytest.raises(LimitError, match=r"^package big 1\.0-r0 \(feed alpine-local\): big-1\.0-r0\.apk: data "
                                         r"stream: offset 0x[0-9a-f]+: \./usr/share/z\d\d: unpacks to more than "
                                         r"limits\.package_size \(16 MiB\)$"):
        install_package(RootFS(), fetched, UnpackBudget(16 * MIB, "limits.package_size (16 MiB)"))


def test_fwgen_inspect_quotes_names_with_control_characters(tmp_path):
    # An image made elsewhere may hold any name: its listing stays one line per entry, and
    # no escape sequence reaches the terminal.
    rootfs = RootFS()
    rootfs.add_file("/etc/evil\nroot::0:0", b"x")
    rootfs.add_symlink("/bin/\x1b[2Jclear", "busybox\x07")
    image = tmp_path / "initramfs.cpio.gz"
    write_initramfs(rootfs, image, mtime=0)
    result = run_fwgen("inspect", str(image), cache=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert len(result.stdout.splitlines()) == 5  # /, /bin, /bin/<link>, /etc, /etc/<file>
    assert "/bin/\\x1b[2Jclear' -> 'busybox\\x07'" in result.stdout
    assert "'/etc/evil\\nroot::0:0'" in result.stdout
