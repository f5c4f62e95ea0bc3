"""U-Boot on the console: the boot spec's commands typed at its prompt, as a test lab drives a
board's bootloader over its serial line."""

from __future__ import annotations

import re
import time

from .console import Console
from .spec import BootSpec

# What U-Boot prints when a command typed at its prompt failed (cmd/net.c, net/tftp.c,
# cmd/bootm.c, common/command.c): the next command would act on nothing.
BOOTLOADER_FAILED = re.compile(r"Unknown command '[^']*'|TFTP error|Retry count exceeded|"
                               r"Wrong Image Format|Bad Magic Number|ERROR: can't get kernel image|"
                               r"## Error|Error: inflate\(\) returned|No ethernet found|"
                               r"Could not get PHY|DHCP client could not|Not enough space")
# U-Boot's autoboot countdown: any key stops it at the prompt.
AUTOBOOT = "Hit any key to stop autoboot"


def drive_bootloader(console: Console, spec: BootSpec) -> float:
    """Type `spec`'s bootloader commands at its prompt: stop the autoboot countdown if there
    is one, then one command per prompt, the last (bootm) without waiting for a prompt again.
    Returns the seconds to the first prompt. A command U-Boot answers with a failure fails
    the boot at once, with U-Boot's line."""
    assert spec.bootloader_prompt is not None
    prompt = re.compile(re.escape(AUTOBOOT) + "|" + re.escape(spec.bootloader_prompt))
    started = time.monotonic()
    console.wait_for(prompt, 60)
    if console.seen().endswith(AUTOBOOT):
        console.send("\n")
        console.wait_for(spec.bootloader_prompt, 30)
    first = time.monotonic() - started
    for number, command in enumerate(spec.bootloader_commands):
        since = console.mark()
        console.send(command + "\n")
        if number == len(spec.bootloader_commands) - 1:
            return first
        console.wait_for(spec.bootloader_prompt, 120)
        failed = BOOTLOADER_FAILED.search(console.seen(since))
        if failed:
            raise console.error(f"the bootloader failed at {command!r}: {console.line_at(since + failed.start())}")
    return first
