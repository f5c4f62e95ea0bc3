"""Board and QEMU-profile loading: shipped files, the invalid corpus, lookup and defaults."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from fwgen import config
from fwgen.arch import Arch
from fwgen.board import Board, BusyboxSpec, Check, Feed, KernelSpec, QemuSpec
from fwgen.config import (
    board_digest,
    board_to_dict,
    default_dirs,
    find_board,
    list_boards,
    load_board,
    load_qemu_profile,
    read_yaml,
)
from fwgen.errors import ConfigError, UserError
from fwgen.outputs import guest_ram
from fwgen.qemu import BootSpec, qemu_argv

REPO = Path(__file__).resolve().parents[1]
INVALID = sorted((Path(__file__).parent / "invalid_boards").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+) (.+)$", re.M)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_overlay(folder: Path, name: str) -> Path:
    return write(folder / name / "overlay.yaml", f"description: {name}\n").parent


# --- shipped files ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "boards").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_board_loads(path):
    board = load_board(path)
    assert board.name == path.stem
    assert board.source == path.resolve()
    for overlay in board.overlays:
        assert (overlay.path / "overlay.yaml").is_file()
    if board.qemu:
        assert board.qemu.profile.arch is board.arch


@pytest.mark.parametrize("path", sorted((REPO / "qemu").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_qemu_profile_loads(path):
    profile = load_qemu_profile(path.stem)
    assert profile.name == path.stem
    assert profile.source == path
    assert profile.binary.startswith("qemu-system-")


def test_shipped_aarch64_board_in_full():
    board = load_board("qemu-aarch64")
    assert board.arch is Arch.AARCH64
    assert board.feeds == (Feed("debian", "deb", "http://deb.debian.org/debian", "bookworm", ("main",)),)
    assert board.kernel.package == "linux-image-cloud-arm64"
    assert board.kernel.modules == ("virtio_mmio", "failover", "net_failover", "virtio_net")
    assert [o.name for o in board.overlays] == ["base", "network", "httpd", "ssh", "ntp", "watchdog"]
    assert board.qemu.profile.machine == "virt" and board.qemu.forward == (80, 22)
    assert [c.name for c in board.checks] == ["run: uname -m", "run: cat /proc/cmdline", "http: / (port 80)"]
    assert board.checks[2] == Check(kind="http", name="http: / (port 80)", path="/", port=80,
                                    contains="fwgen", status=200)


# --- the invalid corpus -----------------------------------------------------------------------


def test_invalid_corpus_is_large_enough():
    assert len(INVALID) >= 15


@pytest.mark.parametrize(("name", "hint"), [
    ("arm64", "fwgen calls it 'aarch64'"),
    ("armhf", "fwgen calls it 'armv7' ('armhf' is Debian's ARMv7 hard-float port; Alpine's armhf is fwgen's armv6)"),
    ("armel", "fwgen calls it 'armv6'"),
    ("mips64le", "fwgen calls it 'mips64el' ('mips64le' is the Go name)"),
    ("mipsle", "fwgen calls it 'mipsel'"),
    ("x86_64", "x86-64 is not an architecture fwgen builds for"),
    ("i386", "32-bit x86 is not an architecture fwgen builds for"),
    ("powerpc", "32-bit PowerPC is not an architecture fwgen builds for"),
    ("riscv64", "64-bit RISC-V is not an architecture fwgen builds for"),
    ("armv7l", "fwgen calls it 'armv7'"),
])
def test_other_tools_arch_names_are_answered_with_fwgens(tmp_path, name, hint):
    board = write(tmp_path / "b.yaml", f"arch: {name}\n")
    with pytest.raises(ConfigError) as caught:
        load_board(board)
    assert f"b.yaml:1:7: arch: unknown arch '{name}' ({hint}" in str(caught.value)
    with pytest.raises(UserError, match=re.escape(hint)):
        Arch.from_name(name)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_board(path, monkeypatch):
    text = path.read_text()
    assert text.startswith("# why: "), "each case says why it is invalid on its first line"
    line, column, substring = EXPECT.search(text).groups()
    monkeypatch.chdir(path.parent)
    with pytest.raises(ConfigError) as caught:
        load_board(f"./{path.name}")
    message = str(caught.value)
    assert message.startswith(f"{path.name}:{line}:{column}: "), message
    assert substring in message
    assert caught.value.exit_code == 2
    assert "\n" not in message


# --- positions, messages and hints ------------------------------------------------------------


def test_positions_of_keys_values_and_items(tmp_path):
    doc = read_yaml(write(tmp_path / "b.yaml", "arch: aarch64\nkernel:\n  modules: [a,  b]\nchecks:\n  - run: x\n"))
    assert doc.keys[("kernel", "modules")] == (3, 3)
    assert doc.values[("kernel", "modules", 1)] == (3, 17)
    assert doc.values[("checks", 0)] == (5, 5)
    assert doc.values[("checks", 0, "run")] == (5, 10)


def test_merge_keys_are_not_duplicates(tmp_path):
    text = "common: &c {timeout: 5}\n"
    doc = read_yaml(write(tmp_path / "m.yaml", text + "check:\n  <<: *c\n  timeout: 9\n"))
    assert doc.data["check"] == {"timeout": 9}


def test_did_you_mean_for_unknown_board(tmp_path):
    with pytest.raises(UserError, match=r"unknown board 'qemu-aarch46' \(did you mean 'qemu-aarch64'\?\)"):
        find_board("qemu-aarch46")


def test_unknown_board_without_close_match_lists_boards():
    with pytest.raises(UserError) as caught:
        find_board("zzzzzz")
    assert "qemu-aarch64" in caught.value.hint


def test_did_you_mean_for_unknown_qemu_profile():
    with pytest.raises(UserError, match=r"did you mean 'virt-aarch64'"):
        load_qemu_profile("virt-arch64")


def test_missing_board_file():
    with pytest.raises(ConfigError, match=r"^/nonexistent/board.yaml: file not found$") as caught:
        load_board("/nonexistent/board.yaml")
    assert caught.value.exit_code == 2


def test_arch_enum_in_schemas_matches_arch_table():
    names = [a.value for a in Arch]
    assert config.load_schema("board")["properties"]["arch"]["enum"] == names
    assert config.load_schema("qemu")["properties"]["arch"]["enum"] == names


def test_every_schema_field_has_a_description():
    def walk(schema, where):
        for key, sub in schema.get("properties", {}).items():
            assert "description" in sub, f"{where}.{key} has no description"
            walk(sub, f"{where}.{key}")
        for key, sub in schema.get("$defs", {}).items():
            walk(sub, f"$defs.{key}")

    walk(config.load_schema("board"), "board")
    walk(config.load_schema("qemu"), "qemu")
    walk(config.load_schema("manifest"), "manifest")


# --- lookup -----------------------------------------------------------------------------------


def test_board_found_by_name_path_and_extra_dir(tmp_path, monkeypatch):
    in_tree = REPO / "boards" / "qemu-aarch64.yaml"
    assert find_board("qemu-aarch64") == in_tree
    assert find_board(in_tree) == in_tree
    monkeypatch.chdir(REPO)
    assert find_board("boards/qemu-aarch64.yaml") == Path("boards/qemu-aarch64.yaml")

    extra = tmp_path / "more"
    write(extra / "lab.yaml", "description: a lab board\narch: aarch64\n")
    # An extra folder comes first, so it can also shadow an in-tree board of the same name.
    write(extra / "qemu-aarch64.yaml", "description: shadow\narch: aarch64\n")
    assert find_board("lab", [extra]) == extra / "lab.yaml"
    assert load_board("lab", boards_dirs=[extra]).description == "a lab board"
    assert load_board("qemu-aarch64", boards_dirs=[extra]).description == "shadow"
    listed = {name: (path, text) for name, path, text in list_boards([extra])}
    assert listed["lab"] == (extra / "lab.yaml", "a lab board")
    assert listed["qemu-aarch64"][1] == "shadow"


def test_list_boards_includes_shipped_boards():
    names = [name for name, _, _ in list_boards()]
    assert names == sorted(p.stem for p in (REPO / "boards").glob("*.yaml"))


def test_default_dirs_are_the_tree_folders():
    dirs = default_dirs()
    assert dirs.boards == (REPO / "boards",)
    assert dirs.qemu == (REPO / "qemu",)
    assert dirs.overlays == (REPO / "overlays",)


def test_vendor_board_outside_the_tree(tmp_path):
    vendor = tmp_path / "acme"
    make_overlay(vendor / "overlays", "acme-web")
    local = make_overlay(vendor / "extra", "acme-extra")
    write(vendor / "keys" / "acme.pub", "not really a key\n")
    write(vendor / "kernel" / "Image", "kernel bytes\n")
    board_file = write(vendor / "router.yaml", """\
arch: aarch64
feeds:
  - {name: acme, type: apk, url: "http://127.0.0.1:8000/acme", suite: v3.20, keys: [keys/acme.pub]}
kernel:
  image: kernel/Image
  modules_from: ./kernel
overlays: [base, acme-web, ./extra/acme-extra]
""")
    board = load_board(str(board_file))
    assert board.name == "router"
    assert [o.path for o in board.overlays] == [REPO / "overlays" / "base", vendor / "overlays" / "acme-web", local]
    assert board.feeds[0].keys == (vendor / "keys" / "acme.pub",)
    assert board.kernel.image == vendor / "kernel" / "Image"
    assert board.kernel.modules_from == vendor / "kernel"


def test_vendor_tree_with_its_own_qemu_profile_and_overlay_dirs(tmp_path):
    vendor = tmp_path / "vendor"
    write(vendor / "qemu" / "acme-mips.yaml", "arch: mipsel\nmachine: malta\nconsole: ttyS0\nmemory: 256\n")
    write(vendor / "boards" / "nas.yaml", "arch: mipsel\noverlays: [nasd]\nqemu: {profile: acme-mips}\n")
    extra = tmp_path / "elsewhere"
    make_overlay(extra, "nasd")
    board = load_board("nas", boards_dirs=[vendor / "boards"], overlay_dirs=[extra])
    assert board.qemu.profile.name == "acme-mips"
    # The binary defaults from the arch table.
    assert board.qemu.profile.binary == "qemu-system-mipsel"
    assert [o.path for o in board.overlays] == [extra / "nasd"]
    with pytest.raises(ConfigError, match=r"unknown overlay 'nasd'"):
        load_board(vendor / "boards" / "nas.yaml")


# --- defaults and output ----------------------------------------------------------------------


def test_defaults_come_from_the_schema(tmp_path):
    path = write(tmp_path / "tiny.yaml", """\
arch: aarch64
feeds: [{name: d, type: deb, url: "http://deb.debian.org/debian"}]
qemu: {profile: virt-aarch64}
checks: [{run: "true"}, {console: "login:"}]
""")
    board = load_board(path)
    assert board.name == "tiny" and board.description == "" and board.hostname == "fwgen"
    assert board.feeds[0].suite == "bookworm" and board.feeds[0].components == ("main",)
    assert board.kernel == KernelSpec(package=None)
    assert board.busybox == BusyboxSpec()  # fwgen builds its own musl BusyBox
    assert board.outputs == ("initramfs",)
    assert board.qemu.forward == () and board.qemu.timeout == 120.0 and board.qemu.memory is None
    assert board.checks[0] == Check(kind="run", name="run: true", command="true", exit=0, timeout=30.0)
    assert board.checks[1] == Check(kind="console", name="console: login:", contains="login:")


def test_schema_defaults_agree_with_dataclass_defaults():
    """board.py's field defaults must not drift from the schema, the source of truth."""
    schema = config.load_schema("board")
    props = schema["properties"]

    def default_of(cls, name):
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()

    assert default_of(Board, "hostname") == props["hostname"]["default"]
    assert default_of(Board, "outputs") == tuple(props["outputs"]["default"])
    assert default_of(BusyboxSpec, "package") == props["busybox"]["properties"]["package"]["default"]
    assert default_of(QemuSpec, "timeout") == props["qemu"]["properties"]["timeout"]["default"]
    feed = schema["$defs"]["feed"]["properties"]
    assert default_of(Feed, "suite") == feed["suite"]["default"]
    assert default_of(Feed, "components") == tuple(feed["components"]["default"])
    check = schema["$defs"]["check"]["properties"]
    for name in ("status", "exit", "timeout"):
        assert default_of(Check, name) == check[name]["default"]


def test_board_to_dict_round_trips_through_json_and_yaml():
    board = load_board("qemu-aarch64")
    data = board_to_dict(board)
    assert json.loads(json.dumps(data)) == data
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    assert data["arch"] == "aarch64"
    assert data["qemu"]["profile"]["source"] == str(REPO / "qemu" / "virt-aarch64.yaml")
    assert data["checks"][0]["name"] == "run: uname -m"


def test_board_digest_is_sha256_of_the_file(tmp_path):
    import hashlib

    path = write(tmp_path / "d.yaml", "arch: aarch64\n")
    board = load_board(path)
    assert board_digest(board) == hashlib.sha256(b"arch: aarch64\n").hexdigest()


# --- errors in files a board refers to --------------------------------------------------------


def test_error_in_a_qemu_profile_points_into_the_profile(tmp_path):
    profile = write(tmp_path / "qemu" / "odd.yaml",
                    "arch: aarch64\nmachine: virt\nconsole: ttyAMA0\nmemory: 512\ncpus: 2\n")
    write(tmp_path / "board.yaml", "arch: aarch64\nqemu:\n  profile: odd\n")
    with pytest.raises(ConfigError) as caught:
        load_board(tmp_path / "board.yaml")
    assert str(caught.value) == f"{profile}:5:1: unknown key 'cpus' (did you mean 'cpu'?)"


def test_whole_number_floats_become_ints(tmp_path):
    write(tmp_path / "qemu" / "p.yaml", "arch: aarch64\nmachine: virt\nconsole: ttyAMA0\nmemory: 512.0\n")
    board = load_board(write(tmp_path / "b.yaml", "arch: aarch64\nqemu: {profile: p, memory: 256.0}\n"))
    assert board.qemu.memory == 256 and type(board.qemu.memory) is int
    assert type(board.qemu.profile.memory) is int


def test_declared_ram_is_what_the_guest_gets(tmp_path):
    write(tmp_path / "qemu" / "p.yaml", "arch: aarch64\nmachine: virt\nconsole: ttyAMA0\nmemory: 512\n")
    board = load_board(write(tmp_path / "b.yaml", "arch: aarch64\nqemu: {profile: p}\nlimits: {ram: 64}\n"))
    assert board.limits.ram == 64 and board.qemu.memory == 64
    assert board.limits.image_size == 64  # an initramfs root unpacks into that RAM
    same = load_board(write(tmp_path / "s.yaml", "arch: aarch64\nqemu: {profile: p, memory: 64}\nlimits: {ram: 64}\n"))
    assert same.qemu.memory == 64
    path = write(tmp_path / "c.yaml", "arch: aarch64\nqemu: {profile: p, memory: 128}\nlimits:\n  ram: 64\n")
    with pytest.raises(ConfigError) as caught:
        load_board(path)
    assert str(caught.value).startswith(f"{path}:4:8: limits.ram: ")
    assert "ram 64 MiB, but qemu.memory says 128 MiB" in str(caught.value)


def test_a_fixed_ram_machine_holds_the_kernel_to_the_declared_ram(tmp_path):
    """raspi0 takes only -m 512: a board declaring 64 gets -m 512 and mem=64M, a board
    declaring more than the machine has is refused at its line."""
    write(tmp_path / "qemu" / "pi.yaml",
          "arch: armv6\nmachine: raspi0\nconsole: ttyAMA0\nmemory: 512\nfixed_memory: true\n")
    board = load_board(write(tmp_path / "b.yaml", "arch: armv6\nqemu: {profile: pi}\nlimits: {ram: 64}\n"))
    memory, append = guest_ram(board, "console=ttyAMA0")
    assert (memory, append) == (512, "console=ttyAMA0 mem=64M")
    argv = qemu_argv(BootSpec(profile=board.qemu.profile, kernel=Path("k"), memory=memory, append=append))
    assert argv[argv.index("-m") + 1] == "512" and argv[argv.index("-append") + 1].endswith(" mem=64M")
    full = load_board(write(tmp_path / "f.yaml", "arch: armv6\nqemu: {profile: pi}\nlimits: {ram: 512}\n"))
    assert guest_ram(full, "console=ttyAMA0") == (512, "console=ttyAMA0")
    path = write(tmp_path / "big.yaml", "arch: armv6\nqemu: {profile: pi}\nlimits:\n  ram: 1024\n")
    with pytest.raises(ConfigError) as caught:
        load_board(path)
    assert str(caught.value).startswith(f"{path}:4:8: limits.ram: ram 1024 MiB, but QEMU's raspi0 machine has 512 MiB")


def test_overlay_path_without_overlay_yaml(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError) as caught:
        load_board(write(tmp_path / "b.yaml", "arch: aarch64\noverlays:\n  - ./half\n"))
    assert str(caught.value).startswith(f"{tmp_path}/b.yaml:3:5: overlays[0]: no overlay at './half'")


def test_list_boards_survives_a_broken_board(tmp_path):
    write(tmp_path / "broken.yaml", "arch: [unclosed\n")
    listed = {name: text for name, _, text in list_boards([tmp_path])}
    assert "unreadable" in listed["broken"]
    with pytest.raises(ConfigError, match=r"broken.yaml:2:1: YAML syntax error"):
        load_board("broken", boards_dirs=[tmp_path])


def test_busybox_version_needs_its_sha256_and_fragments_resolve_beside_the_board(tmp_path):
    (tmp_path / "extra.config").write_text("CONFIG_FEATURE_EDITING_HISTORY=32\n")
    path = write(tmp_path / "bb.yaml", """\
arch: armv7
busybox:
  version: 1.36.1
  config: [extra.config]
""")
    with pytest.raises(ConfigError, match=r"bb\.yaml:3:3: busybox"):
        load_board(path)
    path.write_text(path.read_text().replace("  config:", "  sha256: " + "ab" * 32 + "\n  config:"))
    board = load_board(path)
    assert board.busybox.version == "1.36.1" and board.busybox.sha256 == "ab" * 32
    assert board.busybox.config == ((tmp_path / "extra.config").resolve(),)


def test_board_named_by_a_file_name_with_a_line_break_is_refused(tmp_path):
    """Without `name:` the file's name becomes the board's name, which reaches /etc/os-release."""
    path = write(tmp_path / "evil\nFWGEN_BOARD=other.yaml", "arch: aarch64\n")
    with pytest.raises(ConfigError, match=r"the file name 'evil\\nFWGEN_BOARD=other' is not letters, digits"):
        load_board(path)
    assert load_board(write(tmp_path / "fine.yaml", "arch: aarch64\n")).name == "fine"


def test_update_section_resolves_keys_and_defaults_compatible_to_the_board_name(tmp_path):
    write(tmp_path / "release.pub", "untrusted comment: fwgen release key\nRWQAAAAAAAAAAA==\n")
    board = write(tmp_path / "acme-router.yaml", "arch: aarch64\noutputs: [disk]\nversion: '2.1'\nupdate:\n  keys: [release.pub]\n")
    loaded = load_board(str(board))
    assert loaded.version == "2.1"
    assert loaded.update is not None
    assert loaded.update.keys == ((tmp_path / "release.pub").resolve(),)
    assert (loaded.update.slots, loaded.update.trials, loaded.update.compatible) == ("ab", 3, ("acme-router",))
    assert load_board("qemu-aarch64").update is None


def test_update_key_that_does_not_exist_points_at_its_line(tmp_path):
    board = write(tmp_path / "b.yaml", "arch: aarch64\noutputs: [disk]\nupdate:\n  slots: ab\n  keys: [missing.pub]\n")
    with pytest.raises(ConfigError, match=r"b\.yaml:5:\d+: .*missing\.pub not found"):
        load_board(str(board))
