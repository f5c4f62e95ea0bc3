"""HTTP GETs over kept-alive connections, each host looked up once per process.

A build asks the mirror for InRelease, an index and dozens of packages. A connection per
file costs a DNS lookup per file, and a resolver that drops one query now and then stalls
that file for its retry timeout (glibc's is 5 s: measured here, one lookup in forty, and
seven of one build's 61 packages waited 5 s each). apt keeps one connection per host. Here
each downloading thread takes an idle connection to the host from a shared pool, or opens
one, and gives it back once the response is read to its end; the host's addresses are
looked up once per process (again only after connecting to them failed).

URLs other than http/https (file://), and those a proxy serves (http_proxy ...), go
through urllib as before.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_IDLE_PER_HOST = 8  # as many as download_packages runs at once by default, and then some

_lock = threading.Lock()
_lookup_lock = threading.Lock()  # held across a lookup: one at a time, the resolver is the slow part
_addresses: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
_idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
_tls: list[ssl.SSLContext] = []


def _forget_connections() -> None:
    # A forked child must not write on its parent's sockets: it opens its own.
    _idle.clear()


os.register_at_fork(after_in_child=_forget_connections)


@contextlib.contextmanager
def get(url: str, headers: dict[str, str], timeout: float) -> Iterator[Any]:
    """The response to GET `url`, redirects followed: `.status` (None for a file: URL),
    `.reason`, `.headers`, `.read(n)`. An HTTP error status is a response like any other
    (the caller decides what it means); connection trouble raises OSError or
    http.client.HTTPException."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or _proxied(parts):
            with _urllib_get(url, headers, timeout) as response:
                yield response
            return
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        connection, response = _request(key, target, headers, timeout)
        location = response.getheader("Location")
        if response.status in REDIRECTS and location:
            response.read()
            _give_back(key, connection, response)
            url = urllib.parse.urljoin(url, location)
            continue
        try:
            yield response
        finally:
            _give_back(key, connection, response)
        return
    raise http.client.HTTPException(f"more than {MAX_REDIRECTS} redirects")


def _request(key: tuple[str, str, int], target: str, headers: dict[str, str],
             timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection, reused = _take(key, timeout)
    try:
        return connection, _send(connection, target, headers)
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        if not reused:
            raise
    # The server closed the idle connection meanwhile (its keep-alive timeout): a GET can be
    # sent again, once, on a new one.
    connection = _open(key, timeout)
    return connection, _send(connection, target, headers)


def _send(connection: http.client.HTTPConnection, target: str,
          headers: dict[str, str]) -> http.client.HTTPResponse:
    """GET `target` on `connection` and its response's head; the connection is closed when
    that fails."""
    try:
        connection.request("GET", target, headers=headers)
        return connection.getresponse()
    except BaseException:
        connection.close()
        raise


def _take(key: tuple[str, str, int], timeout: float) -> tuple[http.client.HTTPConnection, bool]:
    with _lock:
        idle = _idle.get(key)
        if idle:
            connection = idle.pop()
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            return connection, True
    return _open(key, timeout), False


def _open(key: tuple[str, str, int], timeout: float) -> http.client.HTTPConnection:
    scheme, host, port = key
    if scheme == "https":
        return _TLSConnection(host, port, timeout=timeout, context=_tls_context())
    return _PlainConnection(host, port, timeout=timeout)


def _give_back(key: tuple[str, str, int], connection: http.client.HTTPConnection,
               response: http.client.HTTPResponse) -> None:
    # Only a response read to its end leaves the connection ready for the next request.
    if not response.isclosed() or response.will_close or connection.sock is None:
        connection.close()
        return
    with _lock:
        idle = _idle.setdefault(key, [])
        if len(idle) < _IDLE_PER_HOST:
            idle.append(connection)
            return
    connection.close()


def _proxied(parts: urllib.parse.SplitResult) -> bool:
    proxies = urllib.request.getproxies()
    return parts.scheme in proxies and not urllib.request.proxy_bypass(parts.netloc)


@contextlib.contextmanager
def _urllib_get(url: str, headers: dict[str, str], timeout: float) -> Iterator[Any]:
    import urllib.error

    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        response = e  # a response too: status, reason, headers, body
    with response:
        yield response


def open_socket(host: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to `host`, its addresses looked up once per process (as
    socket.create_connection, which looks them up every time)."""
    error: OSError | None = None
    for family, kind, proto, _name, address in _addresses_of(host, port):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            error = e
    with _lock:  # none answered: the next attempt looks the host up again
        _addresses.pop((host, port), None)
    raise error or OSError(f"no address for {host}")


def _addresses_of(host: str, port: int) -> list[tuple[Any, ...]]:
    """The host's addresses, looked up by the first thread that asks; threads starting
    together wait for its answer instead of each asking the resolver (and each risking its
    stall)."""
    with _lookup_lock:
        with _lock:
            cached = _addresses.get((host, port))
        if cached is None:
            cached = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            with _lock:
                _addresses[(host, port)] = cached
        return cached


def _tls_context() -> ssl.SSLContext:
    with _lock:
        if not _tls:
            _tls.append(ssl.create_default_context())
        return _tls[0]


class _PlainConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = open_socket(self.host, self.port, self.timeout)


class _TLSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.tls = context

    def connect(self) -> None:
        self.sock = self.tls.wrap_socket(open_socket(self.host, self.port, self.timeout), server_hostname=self.host)
