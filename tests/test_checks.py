"""Checks against servers on the host (no guest): what is retried and what is final.

A server that has not answered yet (refused, closed without a response: the guest's daemon is
still starting) is asked again until the check's timeout; an answer is final, so a wrong
status, body or banner fails at once instead of after the whole timeout."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

from localhttp import send

from fwgen.board import Check
from fwgen.checks import run_check

# Far longer than any of these tests may take: a check that waits for it has retried an answer.
PATIENT = 60.0


class HostMachine:
    """What a check needs of a Machine: guest port 80 is a server on the host."""

    timeout_factor = 1.0

    def __init__(self, port: int, returncode: int | None = None) -> None:
        self.port = port
        self.returncode = returncode  # QEMU's exit code once it has exited

    def host_port(self, guest_port: int) -> int:
        return self.port

    def console_tail(self) -> str:
        return "httpd: listening"


def http_check(**fields) -> Check:
    return Check(kind="http", name="http: /", path="/", port=80, timeout=PATIENT, **fields)


def test_an_http_check_that_gets_the_wrong_status_fails_at_once(server):
    server.routes["/"] = lambda handler, _count: send(handler, b"bad request", status=400)
    machine = HostMachine(urlsplit(server.url).port)
    result = run_check(machine, http_check(status=200))
    assert not result.passed
    assert "expected status 200, got 400" in result.detail
    assert result.console_tail == "httpd: listening"  # what the guest said when the check failed
    assert server.hits["/"] == 1
    assert result.seconds < 10


def test_an_http_check_that_gets_the_wrong_body_fails_at_once(server):
    server.serve("/", b"It works!")
    machine = HostMachine(urlsplit(server.url).port)
    result = run_check(machine, http_check(contains="fwgen"))
    assert not result.passed
    assert "expected body containing 'fwgen'" in result.detail
    assert server.hits["/"] == 1 and result.seconds < 10


def test_an_http_check_retries_while_the_server_gives_no_answer(server):
    def starting_up(handler, count):
        if count < 3:  # hang up without a status line, as slirp does while nothing listens
            handler.close_connection = True
            return
        send(handler, b"fwgen")

    server.routes["/"] = starting_up
    result = run_check(HostMachine(urlsplit(server.url).port), http_check(contains="fwgen"))
    assert result.passed, result.detail
    assert server.hits["/"] == 3


def test_an_http_check_with_no_server_fails_after_its_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    check = Check(kind="http", name="http: /", path="/", port=80, timeout=1.0)
    result = run_check(HostMachine(port), check)
    assert not result.passed
    assert "no answer" in result.detail
    assert result.seconds >= 1.0


def test_a_tcp_check_that_gets_the_wrong_banner_fails_at_once():
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.sendall(b"220 ftp ready\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        check = Check(kind="tcp", name="tcp: 22", port=22, banner="SSH-2.0-", timeout=PATIENT)
        started = time.monotonic()
        result = run_check(HostMachine(listener.getsockname()[1]), check)
    finally:
        listener.close()
    assert not result.passed
    assert "expected a banner starting 'SSH-2.0-', got '220 ftp ready'" in result.detail
    assert len(accepted) == 1 and time.monotonic() - started < 10


def test_no_check_waits_for_a_guest_whose_qemu_has_exited():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens: a live guest's daemon would be retried
    result = run_check(HostMachine(port, returncode=0), http_check(status=200))
    assert not result.passed
    assert result.detail == "not run: QEMU had exited with code 0"
    assert result.seconds < 5
