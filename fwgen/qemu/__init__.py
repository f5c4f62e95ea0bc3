"""Boot a guest under QEMU and drive its serial console.

The harness follows Buildroot's `emulator.py`: QEMU runs with the guest's serial console on
its stdio (plain pipes, no wrapper library); a reader thread appends every byte to
`console.log` and to an in-memory buffer that `wait_for` searches for sentinel markers.
Commands run through the guest's shell on that console and report their exit status back
through it between begin/end markers. Every timeout is multiplied by `timeout_factor`.

A guest never outlives its `Machine`: QEMU runs in its own process group, which `kill()`
ends on every way out (context-manager exit, exceptions, Ctrl-C, SIGTERM, interpreter exit).

One job per module, each importing only those above it in this list:
    spec.py      BootSpec (what one run boots) and the QEMU command line for it
    firmware.py  the BIOS and ROM files a profile declares: found, or QEMU confined to them
    ports.py     free host ports for the forwards, never one to two machines at once
    process.py   the QEMU process: launched through run.spawn, its ports, exit, kill
    console.py   the serial console: reader thread, log, wait_for, tail, the lines that
                 mean a dead guest, a person attached
    shell.py     commands run through the guest's shell between markers
    uboot.py     the boot spec's commands typed at U-Boot's prompt
    machine.py   Machine: the three composed (start, run, poweroff, reboot, attach)
"""

from .console import CONTROL_SEQUENCE
from .firmware import confine_firmware, firmware_search_path, locate_firmware
from .machine import Machine
from .ports import pick_free_ports, release_ports
from .shell import Reply, command_line, parse_reply
from .spec import BootSpec, qemu_argv

__all__ = ["CONTROL_SEQUENCE", "BootSpec", "Machine", "Reply", "command_line", "confine_firmware",
           "firmware_search_path", "locate_firmware", "parse_reply", "pick_free_ports",
           "qemu_argv", "release_ports"]
