"""The QEMU runner and the boot checks.

Unit tests need no QEMU: the command line for the virt-aarch64 profile, the console protocol
(run through a real host shell and parsed back out of interleaved console text), free ports.
The `qemu` tests boot a real aarch64 guest built in the test from Debian's kernel and
busybox-static packages (fetched and verified by fwgen.fetch, packed by fwgen.images.cpio)
and prove every promise of `Machine`: exit statuses, early panic detection, timeouts, no QEMU
left behind, port forwarding, clean power-off.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fwgen.arch import Arch
from fwgen.board import Check, Feed
from fwgen.checks import run_checks
from fwgen.config import load_qemu_profile
from fwgen.errors import BootError, ToolMissingError, UserError
from fwgen.qemu import (
    CONTROL_SEQUENCE,
    BootSpec,
    Machine,
    command_line,
    confine_firmware,
    firmware_search_path,
    locate_firmware,
    parse_reply,
    pick_free_ports,
    qemu_argv,
    release_ports,
)

REPO = Path(__file__).resolve().parents[1]
READY = "test-guest: ready"
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="qemu-system-aarch64 not installed")


@pytest.fixture(scope="module")
def profile():
    return load_qemu_profile("virt-aarch64", [REPO / "qemu"])


# -- the command line ------------------------------------------------------------------------


def test_argv_for_virt_aarch64(profile, tmp_path):
    spec = BootSpec(profile, tmp_path / "Image", tmp_path / "initrd.gz", append="rdinit=/init",
                    drives=(tmp_path / "root,1.img",), forward=(80, 22))
    argv = qemu_argv(spec, {80: 40080, 22: 40022})
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-aarch64"
    assert "-M virt -cpu cortex-a53 -m 512" in joined
    assert "-serial stdio" in joined and "-monitor none" in joined and "-no-reboot" in argv
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "Image")
    assert argv[argv.index("-initrd") + 1] == str(tmp_path / "initrd.gz")
    # The profile's console is added to the caller's arguments.
    assert argv[argv.index("-append") + 1] == "console=ttyAMA0 rdinit=/init"
    # A comma in a file name is doubled for QEMU's option parser; the image is never written.
    drive = argv[argv.index("-drive") + 1]
    assert drive == f"file={tmp_path}/root,,1.img,if=none,id=d0,format=raw,snapshot=on"
    assert "-device virtio-blk-device,drive=d0" in joined
    assert "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:40080-:80,hostfwd=tcp:127.0.0.1:40022-:22" in joined
    assert "-device virtio-net-device,netdev=n0" in joined


def test_argv_keeps_callers_console_and_memory(profile, tmp_path):
    spec = BootSpec(profile, tmp_path / "Image", append="console=ttyS1 quiet", memory=256, sd_card=tmp_path / "sd.img",
                    extra_args=("-smp", "2"))
    argv = qemu_argv(spec)
    assert argv[argv.index("-append") + 1] == "console=ttyS1 quiet"
    assert argv[argv.index("-m") + 1] == "256"
    assert "-initrd" not in argv
    assert f"file={tmp_path}/sd.img,if=sd,format=raw,snapshot=on" in argv
    assert argv[-2:] == ["-smp", "2"]


def test_argv_refuses_forward_without_nic(profile, tmp_path):
    spec = BootSpec(replace(profile, nic=None), tmp_path / "Image", forward=(80,))
    with pytest.raises(UserError, match="no network device"):
        qemu_argv(spec, {80: 1234})


@needs_qemu
def test_argv_is_accepted_by_qemu(profile, tmp_path):
    """QEMU itself parses the generated command line (-S: the CPU never starts)."""
    kernel = tmp_path / "Image"
    kernel.write_bytes(b"\0" * 4096)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 65536)
    spec = BootSpec(profile, kernel, drives=(disk,), forward=(80,))
    argv = qemu_argv(spec, dict(zip((80,), pick_free_ports(1), strict=True))) + ["-S"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()


def test_missing_qemu_binary_is_a_tool_error(profile, tmp_path):
    spec = BootSpec(replace(profile, binary="qemu-system-nonexistent"), tmp_path / "Image")
    with pytest.raises(ToolMissingError, match="qemu-system-nonexistent not found"):
        with Machine(spec, tmp_path) as machine:
            machine.start()


@needs_qemu
def test_qemu_refusing_to_start_says_why(profile, tmp_path):
    spec = BootSpec(profile, tmp_path / "no-such-Image")
    with Machine(spec, tmp_path) as machine:
        machine.start()
        with pytest.raises(BootError, match=r"QEMU exited with code 1 before 'ready'.*no-such-Image"):
            machine.wait_for("ready", timeout=30)


@needs_qemu
def test_taken_host_port_is_retried(profile, tmp_path, monkeypatch):
    """QEMU cannot bind a port taken after it was picked: start() picks again."""
    import fwgen.qemu.process

    kernel = tmp_path / "Image"
    kernel.write_bytes(b"\0" * 4096)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([[taken.getsockname()[1]]])
        real_pick = fwgen.qemu.process.pick_free_ports
        monkeypatch.setattr(fwgen.qemu.process, "pick_free_ports", lambda n: next(picks, None) or real_pick(n))
        # -S: QEMU sets up its devices (and the forward) but never starts the CPU.
        with Machine(BootSpec(profile, kernel, forward=(80,), extra_args=("-S",)), tmp_path) as machine:
            machine.start()
            assert machine.host_port(80) != taken.getsockname()[1]
            assert machine.returncode is None
            with socket.create_connection(("127.0.0.1", machine.host_port(80)), timeout=5):
                pass  # QEMU's slirp accepts on the forwarded port


# -- the console protocol --------------------------------------------------------------------


@pytest.mark.parametrize(("command", "status", "output"), [
    ("echo hello", 0, "hello"),
    ("false", 1, ""),
    ("exit 42", 42, ""),
    ("echo out; echo err >&2; exit 3", 3, "out\nerr"),
    ("printf 'no newline'", 0, "no newline"),
    ("x='it'\"'\"'s'; echo \"$x\" '$HOME'", 0, "it's $HOME"),
    ("for i in 1 2\ndo echo $i\ndone", 0, "1\n2"),
    ("cat; echo after-stdin", 0, "after-stdin"),  # stdin is closed: cat cannot eat our typing
])
def test_command_line_runs_in_a_real_shell(command, status, output):
    token = "t1"
    line = command_line(command, token) + "\n"
    shell = subprocess.run(["sh"], input=line.encode(), capture_output=True, timeout=10)
    reply, end = parse_reply(shell.stdout.decode(), token)
    assert (reply.status, reply.output) == (status, output)
    assert end == len(shell.stdout.decode())


def test_echoed_command_line_never_holds_a_marker():
    token = "42-7"
    line = command_line("echo hi", token)
    # A tty that echoes what we type shows the line; the parser must not take it for a reply.
    assert parse_reply(line + "\n", token) is None
    assert "@@@FWGEN-BEGIN-42-7@@@" not in line and "@@@FWGEN-END-42-7@@@" not in line


def test_reply_parsed_out_of_interleaved_console_text():
    token = "9-3"
    line = command_line("uname -m; false", token)
    console = (
        f"/ # {line}\n"  # the echo
        "[    3.141592] virtio_net virtio1 eth0: link up\n"
        "\n@@@FWGEN-BEGIN-9-3@@@\n"
        "aarch64\n"
        "\n[    3.500000] random: crng init done\n"
        "@@@FWGEN-END-9-3@@@ 1\n"
        "/ # "
    )
    reply, end = parse_reply(console, token)
    assert reply.status == 1
    # A kernel line printed while the command ran is inside the reply; `dmesg -n 1` set on the
    # first command keeps them off the console, and nothing outside the markers leaks in.
    assert reply.output.startswith("aarch64\n")
    assert console[end:] == "/ # "


def test_reply_waits_for_its_own_end_marker():
    text = "\n@@@FWGEN-BEGIN-5@@@\npartial output\n@@@FWGEN-END-4@@@ 0\n"
    assert parse_reply(text, "5") is None  # another command's end marker does not count
    assert parse_reply(text + "@@@FWGEN-END-5@@@ 7", "5") is None  # status line not complete
    reply, _ = parse_reply(text + "\n@@@FWGEN-END-5@@@ 7\n", "5")
    assert reply.status == 7 and reply.output == "partial output\n@@@FWGEN-END-4@@@ 0"


def test_control_sequences_stripped_from_tails():
    # BusyBox's line editor asks the terminal for the cursor position; a tail printed to a
    # terminal must not carry that question (the terminal would type its answer back).
    assert CONTROL_SEQUENCE.sub("", "/ # \x1b[6n\x1b[1;32mok\x1b[0m") == "/ # ok"


def test_free_ports_are_distinct_and_bindable():
    ports = pick_free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_argv_for_a_bootloader_with_a_tftp_folder(profile, tmp_path):
    """U-Boot as -bios loads its kernel from QEMU's TFTP server: no -kernel, the folder served."""
    spec = BootSpec(profile, None, bios=tmp_path / "flash.img", tftp=tmp_path / "out,1", forward=(80,))
    argv = qemu_argv(spec, {80: 40080})
    assert argv[argv.index("-bios") + 1] == str(tmp_path / "flash.img") and "-kernel" not in argv
    assert argv[argv.index("-netdev") + 1] == f"user,id=n0,tftp={tmp_path}/out,,1,hostfwd=tcp:127.0.0.1:40080-:80"


def test_argv_without_a_nic_asks_for_none(profile, tmp_path):
    """Malta adds a pcnet NIC (needing efi-pcnet.rom) when no network option is given."""
    argv = qemu_argv(BootSpec(replace(profile, nic=None), tmp_path / "Image"))
    assert argv[argv.index("-nic") + 1] == "none" and "-netdev" not in argv


# -- firmware: what QEMU may load besides the kernel -------------------------------------------

needs_qemu_mips = pytest.mark.skipif(shutil.which("qemu-system-mipsel") is None,
                                     reason="qemu-system-mipsel not installed")


@needs_qemu_mips
def test_declared_firmware_missing_is_named_with_its_package(tmp_path):
    malta = load_qemu_profile("malta-mipsel", [REPO / "qemu"])
    declared = replace(malta, firmware=("vgabios-fwgen-test.bin", "efi-fwgen-test.rom"),
                       args=("-L", str(tmp_path), *malta.args))
    with pytest.raises(ToolMissingError) as e:
        with Machine(BootSpec(declared, tmp_path / "vmlinux"), tmp_path / "m") as machine:
            machine.start()
    assert "malta-mipsel.yaml: firmware vgabios-fwgen-test.bin, efi-fwgen-test.rom not found" in str(e.value)
    assert str(tmp_path) in str(e.value) and e.value.hint == "install ipxe-qemu, seabios"
    assert not (tmp_path / "m").exists(), "QEMU was not started"
    (tmp_path / "vgabios-fwgen-test.bin").write_bytes(b"vga")
    (tmp_path / "efi-fwgen-test.rom").write_bytes(b"rom")
    assert locate_firmware(declared) == {"vgabios-fwgen-test.bin": tmp_path / "vgabios-fwgen-test.bin",
                                         "efi-fwgen-test.rom": tmp_path / "efi-fwgen-test.rom"}


@needs_qemu_mips
def test_confined_qemu_searches_only_the_declared_files(tmp_path):
    roms = tmp_path / "roms"
    roms.mkdir()
    (roms / "vgabios-fwgen-test.bin").write_bytes(b"vga")
    (roms / "undeclared.rom").write_bytes(b"x")
    malta = load_qemu_profile("malta-mipsel", [REPO / "qemu"])
    declared = replace(malta, firmware=("vgabios-fwgen-test.bin",), args=("-L", str(roms), *malta.args))
    confined = confine_firmware(declared, tmp_path / "confined")
    firmware = tmp_path / "confined" / "firmware"
    assert confined.args == ("-L", str(firmware), "-vga", "none")
    assert Path(confined.binary).read_bytes() == Path(shutil.which("qemu-system-mipsel")).read_bytes()
    assert sorted(p.name for p in firmware.iterdir()) == ["vgabios-fwgen-test.bin"]
    search = firmware_search_path(confined.binary, confined.args)
    assert search[0] == firmware and len(search) > 1
    assert not [p for p in search[1:] if p.exists()], search  # the host's ROM folders are out of reach


# -- a real guest ----------------------------------------------------------------------------

DEBIAN = "http://deb.debian.org/debian"
# cloud-arm64 load order (QEMU.md): virtio core first, then the MMIO transport, then the NIC.
MODULES = ("virtio", "virtio_ring", "virtio_mmio", "failover", "net_failover", "virtio_net")

INIT = """\
#!/bin/sh
export PATH=/bin:/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do insmod /lib/modules/$m.ko; done
exec /sbin/init
"""
INITTAB = """\
::sysinit:/etc/rcS
::respawn:-/bin/sh
"""
RCS = f"""\
#!/bin/sh
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
httpd -p 80 -h /www
echo "{READY}"
"""
# PID 1 that exits: the kernel panics with "Attempted to kill init".
INIT_EXIT = "#!/bin/sh\necho init-exit: leaving\nexit 3\n"
# A guest that boots and then says nothing, ever.
INIT_SILENT = "#!/bin/sh\nexec /bin/busybox sleep 100000\n"


def _fetch_guest_parts(cache_dir: Path) -> tuple[bytes, dict[str, bytes], bytes]:
    from fwgen.fetch import Cache, fetch_packages, read_package_entries

    feeds = [Feed("debian", "deb", DEBIAN)]
    cache = Cache(cache_dir)
    names = ["linux-image-cloud-arm64", "busybox-static"]
    meta, busybox_pkg = fetch_packages(feeds, Arch.AARCH64, names, nodeps=names, cache=cache)
    image_name = next(r.name for group in meta.package.depends for r in group if r.name.startswith("linux-image-"))
    (kernel_pkg,) = fetch_packages(feeds, Arch.AARCH64, [image_name], nodeps=[image_name], cache=cache)
    kernel, modules = b"", {}
    for entry in read_package_entries(kernel_pkg.path):
        name = entry.path.rsplit("/", 1)[-1]
        if entry.path.startswith("/boot/vmlinuz-"):
            kernel = entry.data
        elif name.endswith(".ko") and name[:-3] in MODULES:
            modules[name[:-3]] = entry.data
    busybox = next(e.data for e in read_package_entries(busybox_pkg.path) if e.path == "/bin/busybox")
    assert kernel and set(modules) == set(MODULES)
    return kernel, modules, busybox


@pytest.fixture(scope="module")
def guest(cache_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(kernel, initramfs) of a BusyBox guest with several inits (chosen by rdinit=)."""
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed (apt-get install qemu-system-arm)")
    from fwgen.images.cpio import write_initramfs
    from fwgen.rootfs import EntryType, RootFS

    kernel, modules, busybox = _fetch_guest_parts(cache_dir)
    rootfs = RootFS()
    for folder in ("/bin", "/sbin", "/dev", "/proc", "/sys", "/etc", "/www", "/tmp", "/lib", "/lib/modules"):
        rootfs.add_dir(folder)
    rootfs.add_device("/dev/console", EntryType.CHARDEV, 5, 1)
    rootfs.add_file("/bin/busybox", busybox, 0o755)
    rootfs.add_symlink("/bin/sh", "busybox")
    rootfs.add_symlink("/sbin/init", "/bin/busybox")
    for name, data in modules.items():
        rootfs.add_file(f"/lib/modules/{name}.ko", data)
    rootfs.add_file("/init", INIT.format(modules=" ".join(MODULES)).encode(), 0o755)
    rootfs.add_file("/init-exit", INIT_EXIT.encode(), 0o755)
    rootfs.add_file("/init-silent", INIT_SILENT.encode(), 0o755)
    rootfs.add_file("/etc/inittab", INITTAB.encode())
    rootfs.add_file("/etc/rcS", RCS.encode(), 0o755)
    rootfs.add_file("/www/index.html", b"<h1>fwgen test guest</h1>\n")
    folder = tmp_path_factory.mktemp("guest")
    (folder / "Image").write_bytes(kernel)
    write_initramfs(rootfs, folder / "initrd.gz", mtime=0)
    return folder / "Image", folder / "initrd.gz"


def _spec(profile, guest, init="/init", **kw) -> BootSpec:
    kernel, initrd = guest
    return BootSpec(profile, kernel, initrd, append=f"rdinit={init}", **kw)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.qemu
@pytest.mark.network
def test_run_statuses_output_checks_and_poweroff(profile, guest, tmp_path):
    with Machine(_spec(profile, guest, forward=(80,)), tmp_path) as machine:
        machine.start()
        ready = machine.wait_for(READY, timeout=120)
        assert ready < 60
        assert machine.run("true") == (0, "")
        assert machine.run("false") == (1, "")
        assert machine.run("exit 42") == (42, "")
        assert machine.run("uname -m") == (0, "aarch64")
        assert machine.run("echo out; echo err >&2; exit 3") == (3, "out\nerr")
        status, cmdline = machine.run("cat /proc/cmdline")
        assert status == 0 and cmdline == "console=ttyAMA0 rdinit=/init"
        # The console shell survives `exit` and `cd` in a command.
        assert machine.run("cd /proc && pwd") == (0, "/proc")
        assert machine.run("pwd") == (0, "/")
        # Panic text in a command's output is output, not a dead kernel.
        fake = "echo '[ 1.0] Kernel panic - not syncing: fake'; echo '---[ end Kernel panic - fake ]---'"
        assert machine.run(fake)[0] == 0
        results = run_checks(machine, [
            Check("run", "arch", command="uname -m", expect="aarch64"),
            Check("run", "wrong exit", command="ls /nonexistent", exit=0),
            Check("http", "index", path="/", port=80, contains="fwgen test guest"),
            Check("http", "missing page", path="/nope.html", port=80, status=200, timeout=2),
            Check("http", "unforwarded", path="/", port=8080),
            Check("console", "printed at boot", contains="Run /init as init process"),
            Check("run", "background", command="(sleep 1; echo late-$((6 * 7)) >/dev/console) &"),
            Check("console", "printed later", contains="late-42", timeout=10),
            Check("console", "never printed", contains="no-such-line", timeout=2),
        ])
        verdicts = {r.name: (r.passed, r.detail) for r in results}
        assert verdicts["arch"] == (True, "")
        assert verdicts["wrong exit"][0] is False
        assert "expected exit status 0, got " in verdicts["wrong exit"][1]
        assert verdicts["index"] == (True, "")
        assert verdicts["missing page"][0] is False
        assert "expected status 200, got 404" in verdicts["missing page"][1]
        assert verdicts["unforwarded"] == (False, "guest port 8080 is not forwarded (forwarded: 80)")
        assert verdicts["printed at boot"] == (True, "")
        assert verdicts["printed later"] == (True, "")
        assert verdicts["never printed"][0] is False
        assert "'no-such-line'" in verdicts["never printed"][1]
        pid = machine.pid
        machine.poweroff()
        assert machine.returncode == 0
    assert _gone(pid)
    log = (tmp_path / "console.log").read_text(errors="replace")
    assert READY in log and "reboot: Power down" in log


@pytest.mark.qemu
@pytest.mark.network
@pytest.mark.parametrize(("init", "reason"), [
    ("/nonexistent", "Unable to mount root"),  # no such rdinit: the kernel looks for a root fs
    ("/init-exit", "Attempted to kill init"),
])
def test_dead_guest_is_reported_early_with_the_tail(profile, guest, tmp_path, init, reason):
    started = time.monotonic()
    with Machine(_spec(profile, guest, init), tmp_path) as machine:
        machine.start()
        with pytest.raises(BootError) as caught:
            machine.wait_for(READY, timeout=300)
        pid = machine.pid
    assert time.monotonic() - started < 60  # not the full 300 s
    assert reason in caught.value.message
    assert "Kernel panic" in caught.value.console_tail
    assert _gone(pid)


@pytest.mark.qemu
@pytest.mark.network
def test_panic_during_a_command_is_reported_early(profile, guest, tmp_path):
    with Machine(_spec(profile, guest), tmp_path) as machine:
        machine.start()
        machine.wait_for(READY, timeout=120)
        started = time.monotonic()
        with pytest.raises(BootError, match="the kernel panicked while running") as caught:
            machine.run("echo c > /proc/sysrq-trigger", timeout=120)
        assert time.monotonic() - started < 30
        assert "sysrq triggered crash" in caught.value.console_tail


@pytest.mark.qemu
@pytest.mark.network
def test_silent_guest_is_a_hang(profile, guest, tmp_path):
    with Machine(_spec(profile, guest, "/init-silent"), tmp_path, silence=4) as machine:
        machine.start()
        started = time.monotonic()
        with pytest.raises(BootError, match=r"guest silent for \d+ s while waiting for 'test-guest: ready'"):
            machine.wait_for(READY, timeout=300)
        assert 4 <= time.monotonic() - started < 60
        pid = machine.pid
    assert _gone(pid)


@pytest.mark.qemu
@pytest.mark.network
def test_timeout_with_factor_and_no_qemu_left(profile, guest, tmp_path):
    with Machine(_spec(profile, guest, "/init-silent"), tmp_path, timeout_factor=2, silence=100) as machine:
        machine.start()
        started = time.monotonic()
        with pytest.raises(BootError, match=r"no 'test-guest: ready' on the console after \d+ s") as caught:
            machine.wait_for(READY, timeout=3)
        assert 6 <= time.monotonic() - started < 15  # 3 s times the factor 2
        assert "Run /init-silent as init process" in caught.value.console_tail
        pid = machine.pid
        assert not _gone(pid)
    assert _gone(pid)


@pytest.mark.qemu
@pytest.mark.network
def test_qemu_exiting_is_reported(profile, guest, tmp_path):
    with Machine(_spec(profile, guest, "/init-silent"), tmp_path) as machine:
        machine.start()
        threading.Timer(2, os.kill, (machine.pid, signal.SIGKILL)).start()
        with pytest.raises(BootError, match=r"QEMU exited with code -9 before 'never'"):
            machine.wait_for("never", timeout=60)


@pytest.mark.qemu
@pytest.mark.network
def test_ctrl_c_kills_qemu(profile, guest, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with Machine(_spec(profile, guest, "/init-silent"), tmp_path) as machine:
            machine.start()
            pid = machine.pid
            threading.Timer(2, os.kill, (os.getpid(), signal.SIGINT)).start()
            machine.wait_for("never", timeout=60)
    assert _gone(pid)


@pytest.mark.qemu
@pytest.mark.network
def test_sigterm_to_fwgen_kills_qemu(profile, guest, tmp_path):
    """A killed fwgen (SIGTERM, as CI runners send) takes its QEMU with it."""
    kernel, initrd = guest
    script = textwrap.dedent(f"""
        from pathlib import Path
        from fwgen.config import load_qemu_profile
        from fwgen.qemu import CONTROL_SEQUENCE, BootSpec, Machine
        profile = load_qemu_profile("virt-aarch64", [Path({str(REPO / "qemu")!r})])
        spec = BootSpec(profile, Path({str(kernel)!r}), Path({str(initrd)!r}), append="rdinit=/init-silent")
        machine = Machine(spec, Path({str(tmp_path)!r}))
        machine.start()
        print(machine.pid, flush=True)
        machine.wait_for("never", timeout=600, silence=600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        qemu_pid = int(child.stdout.readline())
        assert not _gone(qemu_pid)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        child.kill()
    deadline = time.monotonic() + 10
    while not _gone(qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(qemu_pid)



def test_ports_held_by_this_process_are_not_handed_out_again(monkeypatch):
    """The kernel may offer a just-closed port again; parallel boots in one fwgen must not get
    the same one (the probes stand in for the kernel's choices)."""
    import types

    import fwgen.qemu.ports

    offered = iter([40001, 40001, 40001, 40002, 40001])

    class Probe:
        def __init__(self, *args):
            self.port = next(offered)

        def bind(self, address):
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            pass

    monkeypatch.setattr(fwgen.qemu.ports, "socket", types.SimpleNamespace(socket=Probe, AF_INET=2, SOCK_STREAM=1))
    first = pick_free_ports(1)
    second = pick_free_ports(1)
    release_ports(first)
    third = pick_free_ports(1)
    release_ports(second + third)
    assert (first, second, third) == ([40001], [40002], [40001])
