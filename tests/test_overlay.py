"""Overlays: the invalid-overlay corpus, layering, variables and templates, accounts, services,
the shipped overlays, `fwgen show --files` and `fwgen new-overlay`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from buildutil import REPO, run_fwgen

import fwgen.document
from fwgen.config import load_board
from fwgen.errors import ConfigError
from fwgen.overlay import (
    apply_layers,
    list_layer_files,
    plan_layers,
    render,
    scaffold_overlay,
)
from fwgen.rootfs import EntryType, RootFS

CORPUS = Path(__file__).parent / "invalid_overlays"
INVALID = sorted(p for p in CORPUS.iterdir() if (p / "board.yaml").is_file())
EXPECT = re.compile(r"^# expect: (\S+) (.+)$", re.M)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def plan(board_file: Path):
    board = load_board(board_file)
    return board, plan_layers(board.overlays, board.values, board.arch)


def make_board(folder: Path, overlays: list[str], extra: str = "") -> Path:
    return write(folder / "board.yaml", f"arch: aarch64\noverlays: [{', '.join(overlays)}]\n{extra}")


# --- the corpus: each case a board and its overlays, failing with file:line:column -------------


@pytest.mark.parametrize("case", INVALID, ids=lambda p: p.name)
def test_invalid_overlay(case, monkeypatch):
    text = (case / "board.yaml").read_text()
    assert text.startswith("# why: "), "each case says why it is invalid on its first line"
    where, substring = EXPECT.search(text).groups()
    monkeypatch.chdir(case)
    with pytest.raises(ConfigError) as caught:
        plan(Path("./board.yaml"))
    message = str(caught.value)
    shown = message.replace(str(case.resolve()) + "/", "")
    assert shown.startswith(f"{where}:") or shown.startswith(f"{where} "), message
    assert substring in shown, message
    assert "\n" not in message


@pytest.mark.parametrize("case", [c for c in INVALID if c.name in (
    "undefined_variable", "conflict", "unknown_overlay", "symlink_escape", "owner_no_user", "dotdot_path",
    "gecos_newline", "command_newline_from_variable")],
    ids=lambda p: p.name)
def test_invalid_overlay_build_fails_in_one_line_and_writes_nothing(case, tmp_path):
    out = tmp_path / "out"
    result = run_fwgen("build", "--board", str(case / "board.yaml"), "--out", str(out), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.deb"))


# --- layering ------------------------------------------------------------------------------------


def test_later_overlay_replaces_when_it_says_so_and_identical_files_merge(tmp_path):
    write(tmp_path / "overlays/one/overlay.yaml", "description: one\n")
    write(tmp_path / "overlays/one/files/etc/motd", "one\n")
    write(tmp_path / "overlays/one/files/etc/same", "same\n")
    write(tmp_path / "overlays/two/overlay.yaml", "depends: [one]\nfiles:\n  /etc/motd: {replaces: true}\n")
    write(tmp_path / "overlays/two/files/etc/motd", "two\n")
    write(tmp_path / "overlays/two/files/etc/same", "same\n")
    _, layers = plan(make_board(tmp_path, ["two"]))
    assert layers.entries["/etc/motd"].data == b"two\n"
    assert layers.entries["/etc/motd"].provenance == "overlay:two"
    files = {path: layer for path, _, _, layer in list_layer_files(layers)}
    assert files["/etc/same"] == "overlay:two" and files["/etc"] == "overlay:one"


def test_dependencies_come_first_and_cycles_are_named(tmp_path):
    write(tmp_path / "overlays/a/overlay.yaml", "depends: [b]\n")
    write(tmp_path / "overlays/b/overlay.yaml", "depends: [c]\n")
    write(tmp_path / "overlays/c/overlay.yaml", "description: c\n")
    board = load_board(make_board(tmp_path, ["a"]))
    assert [o.name for o in board.overlays] == ["c", "b", "a"]
    write(tmp_path / "overlays/c/overlay.yaml", "depends: [a]\n")
    with pytest.raises(ConfigError, match="cycle: a -> b -> c -> a"):
        load_board(tmp_path / "board.yaml")


def test_load_board_reads_each_overlay_yaml_once_and_nothing_after_it_does(tmp_path):
    """A board's overlays are read once, by load_board, even one that two others depend on;
    planning the image and listing the checks to boot with use what was loaded, so an
    overlay.yaml spoiled after loading goes unnoticed (before, build and boot read it again)."""
    write(tmp_path / "overlays/common/overlay.yaml",
          "variables:\n  port: {default: \"8080\"}\nusers:\n  web: {uid: 80}\n"
          "services:\n  web:\n    command: httpd -f -p {{ port }}\n    user: web\n"
          "checks:\n  - run: cat /etc/port\n    expect: '{{ port }}'\n")
    write(tmp_path / "overlays/common/files/etc/port.tmpl", "{{ port }}\n")
    write(tmp_path / "overlays/left/overlay.yaml", "depends: [common]\n")
    write(tmp_path / "overlays/right/overlay.yaml", "depends: [common]\n")
    reads = []
    original = fwgen.document._read_text
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fwgen.document, "_read_text", lambda path, file: reads.append(Path(path).parent.name)
                      or original(path, file))
        board = load_board(make_board(tmp_path, ["left", "right"], "variables:\n  port: \"9000\"\n"))
    assert sorted(reads) == sorted([tmp_path.name, "common", "left", "right"])
    for overlay in board.overlays:
        (overlay.path / "overlay.yaml").write_text("{{ not: [yaml\n")
    layers = plan_layers(board.overlays, board.values)
    assert layers.entries["/etc/port"].data == b"9000\n"
    assert "exec /sbin/fwgen-service as web httpd -f -p 9000" in layers.entries["/etc/service/web/run"].data.decode()
    assert [(c.command, c.expect) for c in board.all_checks] == [("cat /etc/port", "9000")]


def test_vendor_overlays_dir_and_folders_beside_the_board(tmp_path):
    vendor = tmp_path / "vendor-overlays"
    write(vendor / "acme/overlay.yaml", "depends: [base]\n")
    write(vendor / "acme/files/etc/acme", "acme\n")
    board_file = make_board(tmp_path / "product", ["acme", "./local"])
    write(tmp_path / "product/local/overlay.yaml", "description: beside the board\n")
    board = load_board(board_file, overlay_dirs=[vendor])
    assert [o.name for o in board.overlays] == ["base", "acme", "local"]


# --- variables and templates ---------------------------------------------------------------------


def test_board_variables_override_defaults_and_builtins_are_there(tmp_path):
    write(tmp_path / "overlays/one/overlay.yaml",
          "variables:\n  greeting: {default: hello}\n  names: {default: [a, b]}\n")
    write(tmp_path / "overlays/one/files/etc/motd.tmpl",
          "{{ greeting }} from {{hostname}} ({{ board }}, {{ arch }}, fwgen {{ fwgen_version }})\n{{ names }}\n")
    board_file = make_board(tmp_path, ["one"], "hostname: box\nvariables:\n  greeting: bonjour\n")
    board, layers = plan(board_file)
    text = layers.entries["/etc/motd"].data.decode()
    assert text.startswith(f"bonjour from box (board, aarch64, fwgen {__import__('fwgen').__version__})")
    assert text.endswith("a\nb\n")
    assert "/etc/motd.tmpl" not in layers.entries


def test_variables_use_other_variables_in_one_pass(tmp_path):
    """A default that refers to another variable gets that variable's final value, the board's
    where it sets one; board values may refer to variables too."""
    write(tmp_path / "overlays/one/overlay.yaml",
          'depends: [base]\nvariables:\n  url: {default: "http://{{ host }}:{{ port }}/"}\n'
          '  host: {default: "{{ hostname }}.local"}\n  port: {default: "80"}\n  tag: {default: x}\n'
          "services:\n  web:\n    command: fetch {{ url }}\n")
    write(tmp_path / "overlays/one/files/etc/url.tmpl", "{{ url }}\n")
    extra = "hostname: box\nvariables:\n  port: \"8080\"\n  tag: '{{ port }}-{{ hostname }}'\n"
    board, layers = plan(make_board(tmp_path, ["one"], extra))
    assert layers.entries["/etc/url"].data == b"http://box.local:8080/\n"
    assert "exec fetch http://box.local:8080/" in layers.entries["/etc/service/web/run"].data.decode()
    assert board.values["tag"] == "8080-box"


def test_variable_values_are_not_rendered_again(tmp_path):
    """Text a value brings in is final: a board value holding '{{' after its own rendering
    stays as it is (no second pass that could expand it)."""
    write(tmp_path / "overlays/one/overlay.yaml",
          'variables:\n  brace: {default: "{"}\n  both: {default: "{{ brace }}{{ brace }} x }}"}\n')
    board = load_board(make_board(tmp_path, ["one"]))
    assert board.values["both"] == "{{ x }}"


def test_overlay_checks_use_the_board_variables(tmp_path):
    """The httpd overlay's http check follows httpd_port; a vendor's run check is rendered."""
    write(tmp_path / "overlays/vendor/overlay.yaml",
          "variables:\n  vendor_conf: {default: /etc/vendor.conf}\n  vendor_port: {default: \"80\"}\n"
          "checks:\n  - run: grep -c port={{ vendor_port }} {{ vendor_conf }}\n    expect: \"1\"\n"
          "    name: '{{ vendor_conf }} names port {{ vendor_port }}'\n")
    board = load_board(make_board(tmp_path, ["httpd", "vendor"],
                                  'variables:\n  httpd_port: "8080"\n  vendor_port: "8080"\n'
                                  "qemu: {profile: virt-aarch64, forward: [8080]}\n"))
    checks = {c.kind: c for c in board.all_checks[len(board.checks):] if c.kind in ("http", "run")}
    assert (checks["http"].port, checks["http"].name) == (8080, "http: / (port 8080)")
    assert checks["run"].command == "grep -c port=8080 /etc/vendor.conf"
    assert checks["run"].name == "/etc/vendor.conf names port 8080"
    _, layers = plan(board.source)
    assert [c.port for c in layers.checks if c.kind == "http"] == [8080]


def test_board_checks_are_rendered_too(tmp_path):
    board = load_board(make_board(tmp_path, ["httpd"], "hostname: box\nvariables:\n  httpd_port: \"8080\"\n"
                                  "qemu: {profile: virt-aarch64, forward: [8080]}\nchecks:\n"
                                  "  - run: wget -qO- http://127.0.0.1:{{ httpd_port }}/\n    contains: '{{ hostname }}'\n"))
    assert board.checks[0].command == "wget -qO- http://127.0.0.1:8080/"
    assert board.checks[0].contains == "box"
    assert board.checks[0].name == "run: wget -qO- http://127.0.0.1:8080/"


def test_shipped_board_with_httpd_on_another_port_loads(tmp_path):
    """The issue's case: setting httpd_port was refused because the check still said 80."""
    text = (REPO / "boards/qemu-aarch64.yaml").read_text().replace("forward: [80, 22]", "forward: [8080, 22]")
    text = text.replace("    port: 80\n", "    port: 8080\n") + 'variables:\n  httpd_port: "8080"\n'
    board = load_board(write(tmp_path / "boards/qemu-aarch64.yaml", text))
    assert board.qemu.forward == (8080, 22)


def test_render_reports_line_and_column_of_the_undefined_name():
    with pytest.raises(ConfigError) as caught:
        render("a\nb {{ x }}", {}, file="t.tmpl", line=10, column=5)
    assert str(caught.value).startswith("t.tmpl:11:3: undefined variable 'x'")


# --- accounts, files rules, services, sysctl, modules ------------------------------------------------


def test_accounts_owners_services_sysctl_modules(tmp_path):
    write(tmp_path / "overlays/app/overlay.yaml", """\
depends: [base]
packages: [dropbear-bin]
modules: [tun]
sysctl: {net.ipv4.ip_forward: 1}
users:
  app: {uid: 1000, groups: [daemon], password_hash: "$6$salt$abc", authorized_keys: "{{ keys }}"}
  root: {authorized_keys_file: keys.pub}
variables:
  keys: {default: ["ssh-ed25519 AAAA one", "ssh-ed25519 AAAA two"]}
  port: {default: "8080"}
files:
  /etc/app.conf: {owner: app, mode: "0640"}
services:
  db: {command: sleep 1000}
  app: {command: "app --port {{ port }}", user: app, depends: [db], setup: mkdir -p /run/app}
  port-holder: {command: "true"}
""")
    write(tmp_path / "overlays/app/keys.pub", "ssh-ed25519 AAAA root\n")
    write(tmp_path / "overlays/app/files/etc/app.conf", "x\n")
    board, layers = plan(make_board(tmp_path, ["app"]))
    passwd = layers.entries["/etc/passwd"].data.decode().splitlines()
    assert "app:x:1000:1000:app:/home/app:/bin/false" in passwd
    assert "root:x:0:0:root:/root:/bin/sh" in passwd
    shadow = layers.entries["/etc/shadow"]
    assert shadow.mode == 0o600 and "app:$6$salt$abc:" in shadow.data.decode()
    assert "root:!:" in shadow.data.decode()
    assert "daemon:x:1:app" in layers.entries["/etc/group"].data.decode()
    conf = layers.entries["/etc/app.conf"]
    assert (conf.uid, conf.gid, conf.mode) == (1000, 1000, 0o640)
    keys = layers.entries["/home/app/.ssh/authorized_keys"]
    assert keys.data == b"ssh-ed25519 AAAA one\nssh-ed25519 AAAA two\n" and (keys.uid, keys.mode) == (1000, 0o600)
    assert layers.entries["/home/app/.ssh"].mode == 0o700
    assert layers.entries["/root/.ssh/authorized_keys"].data == b"ssh-ed25519 AAAA root\n"
    run = layers.entries["/etc/service/app/run"].data.decode()
    assert run.splitlines()[-3:] == ["/sbin/fwgen-service need db || exit 1", "mkdir -p /run/app",
                                     "exec /sbin/fwgen-service as app app --port 8080"]
    assert layers.entries["/etc/service/app/log/run"].data.decode().endswith("exec logger -t app\n")
    assert layers.entries["/etc/sysctl.d/50-app.conf"].data.decode().endswith("net.ipv4.ip_forward = 1\n")
    assert layers.packages == ["dropbear-bin"] and layers.modules == ["tun"]
    rootfs = RootFS()
    apply_layers(rootfs, layers)
    assert rootfs["/etc/service/app/run"].mode == 0o755
    assert rootfs["/sbin/fwgen-service"].type is EntryType.FILE


def test_a_later_overlay_may_not_change_a_user(tmp_path):
    write(tmp_path / "overlays/one/overlay.yaml", "depends: [base]\nusers:\n  root: {shell: /bin/ash}\n")
    with pytest.raises(ConfigError, match=r"overlay.yaml:3:\d+: users.root.shell: user 'root' already has shell"):
        plan(make_board(tmp_path, ["one"]))


# --- shipped overlays --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(str(p.parent.relative_to(REPO / "overlays"))
                                         for p in (REPO / "overlays").rglob("overlay.yaml")))
def test_shipped_overlay_plans_cleanly(name, tmp_path):
    extra = "qemu:\n  profile: virt-aarch64\n  forward: [80, 22, 8081]\n"  # 8081: examples/statusd
    board, layers = plan(make_board(tmp_path, [str(REPO / "overlays" / name)], extra))
    assert "/etc/passwd" in layers.entries and "/sbin/fwgen-service" in layers.entries
    assert layers.checks, f"overlay {name} declares checks"


def test_shipped_shell_scripts_parse(tmp_path):
    scripts = [p for p in (REPO / "overlays").rglob("*") if p.is_file() and p.read_bytes().startswith(b"#!/bin/sh")]
    assert len(scripts) >= 8
    for script in scripts:
        subprocess.run(["sh", "-n", str(script)], check=True)


def test_ssh_overlay_bakes_no_host_key_and_allows_keys_only(tmp_path):
    board_file = make_board(tmp_path, ["ssh"], "variables:\n  ssh_authorized_keys: ssh-ed25519 AAAAC3 me@host\n"
                            "qemu:\n  profile: virt-aarch64\n  forward: [80, 22]\n")
    _, layers = plan(board_file)
    assert not [p for p in layers.entries if "host_key" in p]
    run = layers.entries["/etc/service/dropbear/run"].data.decode()
    assert "dropbear -F -E -R -s -p 22" in run
    assert layers.entries["/root/.ssh/authorized_keys"].data == b"ssh-ed25519 AAAAC3 me@host\n"
    # dropbear is compiled from its pinned source (static musl), not Debian's glibc package.
    assert layers.packages == [] and [b.name for b in layers.builds] == ["dropbear"]
    assert layers.builds[0].links["/usr/sbin/dropbear"] == "dropbearmulti"


# --- CLI -------------------------------------------------------------------------------------------


def test_show_files_lists_each_path_with_its_layer(tmp_path):
    result = run_fwgen("show", "--files", "qemu-aarch64", cache=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines() if line.startswith("/")}
    assert rows["/etc/inittab"] == "overlay:base"
    assert rows["/etc/service/httpd/run"] == "overlay:httpd"
    assert rows["/etc/passwd"] == "fwgen:accounts"


def test_new_overlay_scaffold_loads_and_is_used_by_a_board(tmp_path):
    folder = scaffold_overlay("acme-web", tmp_path / "overlays")
    assert (folder / "overlay.yaml").read_text().startswith("# Overlay acme-web")
    board, layers = plan(make_board(tmp_path, ["acme-web"], "variables:\n  acme_web_port: \"9000\"\n"))
    assert b"port=9000" in layers.entries["/etc/acme-web.conf"].data
    assert "httpd -f -p 9000" in layers.entries["/etc/service/acme-web/run"].data.decode()
    with pytest.raises(ConfigError, match="already exists"):
        scaffold_overlay("acme-web", tmp_path / "overlays")
    result = run_fwgen("new-overlay", "other", "--dir", str(tmp_path / "overlays"), cache=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "overlays/other/overlay.yaml").is_file()


def test_overlays_extend_the_busybox_configuration_in_stack_order(tmp_path):
    board = load_board("qemu-aarch64")
    layers = plan_layers(board.overlays, board.values)
    names = [(p.parent.name, p.read_text().split("\n")[1]) for p in layers.busybox_config]
    assert names == [("httpd", "CONFIG_HTTPD=y"), ("ntp", "CONFIG_NTPD=y"),
                     ("watchdog", "CONFIG_WATCHDOG=y")]


def test_a_busybox_fragment_outside_the_overlay_folder_is_refused(tmp_path):
    from fwgen.errors import ConfigError
    from fwgen.overlay import load_overlay

    (tmp_path / "outside.config").write_text("CONFIG_NTPD=y\n")
    folder = tmp_path / "sneaky"
    folder.mkdir()
    (folder / "overlay.yaml").write_text("description: x\nbusybox_config: [../outside.config]\n")
    with pytest.raises(ConfigError, match=r"overlay.yaml:2:\d+: busybox_config\[0\]: '../outside.config' escapes"):
        load_overlay(folder)


def test_an_overlays_persist_check_is_refused_on_a_board_that_keeps_nothing(tmp_path):
    """The overlay serves disk boards; on an initramfs-only board its persist check could only
    fail after a build and a boot, so loading the board refuses it at the overlay's line."""
    write(tmp_path / "overlays/state/overlay.yaml", "description: keeps state\nchecks:\n  - persist: /etc/state\n")
    write(tmp_path / "ram.yaml", "arch: aarch64\noverlays: [state]\noutputs: [initramfs]\n")
    with pytest.raises(ConfigError) as caught:
        load_board(tmp_path / "ram.yaml", overlay_dirs=[tmp_path / "overlays"])
    assert str(caught.value).startswith(f"{tmp_path}/overlays/state/overlay.yaml:3:5: checks[0]: "
                                        "a persist check needs storage that survives a reboot")
    write(tmp_path / "disk.yaml", "arch: aarch64\noverlays: [state]\noutputs: [initramfs, disk]\n")
    assert load_board(tmp_path / "disk.yaml", overlay_dirs=[tmp_path / "overlays"]).name == "disk"
