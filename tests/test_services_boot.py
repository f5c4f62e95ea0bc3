"""qemu-aarch64 with base, network, httpd and ssh under QEMU: every overlay check passes
(SSH banner through the forwarded port, services restarted after a kill), and a real OpenSSH
client logs in as root with the key the board's variable carries, and only with it."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from buildutil import REPO, run_fwgen

from fwgen.boot import READY_MARKER, boot_spec_for
from fwgen.config import load_board
from fwgen.qemu import Machine

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture(scope="module")
def keyed_board(tmp_path_factory, cache_dir):
    """The shipped board with a fresh key pair in ssh_authorized_keys and httpd moved to port
    8080 (the httpd overlay's own check must follow httpd_port), built once."""
    folder = tmp_path_factory.mktemp("services")
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fwgen-test", "-f", str(key)], check=True)
    text = (REPO / "boards" / "qemu-aarch64.yaml").read_text()
    public = key.with_suffix(".pub").read_text().strip()
    board_file = folder / "qemu-aarch64.yaml"
    text = text.replace("forward: [80, 22]", "forward: [8080, 22]").replace("    port: 80\n", "    port: 8080\n")
    board_file.write_text(text + f"\nvariables:\n  ssh_authorized_keys: \"{public}\"\n  httpd_port: \"8080\"\n")
    out = folder / "out"
    result = run_fwgen("build", "--board", str(board_file), "--out", str(out), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return board_file, out, key


def test_fwgen_boot_passes_every_board_and_overlay_check(keyed_board, cache_dir):
    board_file, out, _ = keyed_board
    result = run_fwgen("boot", "--board", str(board_file), "--out", str(out), "--json", cache=cache_dir)
    report = json.loads(result.stdout)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert result.returncode == 0 and not failed, failed or result.stderr
    kinds = {c["kind"] for c in report["checks"]}
    assert {"run", "http", "tcp", "service"} <= kinds
    names = [c["name"] for c in report["checks"]]
    assert "tcp: 22" in names and "service: httpd" in names and "service: dropbear" in names
    assert names.count("http: / (port 8080)") == 2, "the board's and the httpd overlay's http checks"


def test_root_logs_in_by_key_only_and_services_log_to_syslog(keyed_board):
    board_file, out, key = keyed_board
    board = load_board(board_file)
    spec = boot_spec_for(board, out / board.name)
    manifest = json.loads((out / board.name / "manifest.json").read_text())
    assert not [p for p in manifest["files"] if "host_key" in p], "no host key is baked into the image"
    # dropbear is compiled from source, static musl: the default image holds no glibc at all.
    assert manifest["files"]["/usr/sbin/dropbearmulti"] == "build:ssh/dropbear"
    assert "glibc" not in manifest["elf_libc"] and manifest["elf_libc"]["musl"] >= 2, manifest["elf_libc"]
    with Machine(spec, out / "ssh-machine") as machine:
        machine.start()
        machine.wait_for(READY_MARKER, timeout=120)
        port = machine.host_port(22)
        ssh = ["ssh", "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
        # The console is ready before the supervisor has started dropbear (and before its
        # first-boot host key exists): wait for its process, then for its answer.
        assert machine.run("fwgen-service need dropbear", timeout=40)[0] == 0
        for _ in range(20):
            login = subprocess.run([*ssh, "-i", str(key), "root@127.0.0.1", "uname -m; id -u"],
                                   capture_output=True, text=True, timeout=120)
            if "kex_exchange_identification" not in login.stderr:
                break
            time.sleep(1)
        assert login.returncode == 0, login.stderr
        assert login.stdout.split() == ["aarch64", "0"]
        refused = subprocess.run([*ssh, "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=yes",
                                  "root@127.0.0.1", "true"], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        status, keys = machine.run("ls /etc/dropbear")
        assert status == 0 and "dropbear_ed25519_host_key" in keys
        status, log = machine.run("logread | grep -c 'dropbear'")
        assert status == 0 and int(log) >= 1, "dropbear's output reaches syslog"
        machine.poweroff()
