"""Free TCP ports on 127.0.0.1 for QEMU's port forwards, never the same one to two machines of
this process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

from ..errors import BootError

# Ports this process has handed to its machines and not released yet. A port is free again
# for the kernel the moment its probe socket closes, and it may hand it out again before QEMU
# binds it: parallel boots in one fwgen (`fwgen boot --all -j N`) must not share a port.
_RESERVED_PORTS: set[int] = set()
_PORTS_LOCK = threading.Lock()
# How many ports one call may probe before giving up on finding `count` unreserved ones.
PORT_PROBES = 256


def pick_free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago and that no other
    machine of this process holds; reserved until `release_ports`.

    The kernel picks them (bind to port 0); all sockets stay open until every port is chosen
    so the same port is not handed out twice. Another program may still take one before QEMU
    binds it: `Machine` retries with new ports when QEMU cannot bind.
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    with _PORTS_LOCK:
        try:
            while len(ports) < count:
                if len(sockets) >= PORT_PROBES:
                    raise BootError(f"no {count} free TCP ports on 127.0.0.1 after {PORT_PROBES} tries")
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                if port not in _RESERVED_PORTS and port not in ports:
                    ports.append(port)
        finally:
            for s in sockets:
                s.close()
        _RESERVED_PORTS.update(ports)
    return ports


def release_ports(ports: Iterable[int]) -> None:
    """Give ports from `pick_free_ports` back once their QEMU has exited."""
    with _PORTS_LOCK:
        _RESERVED_PORTS.difference_update(ports)
