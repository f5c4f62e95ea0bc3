"""The download cache against a local HTTP server that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from localhttp import content_files, send

from fwgen.cache import Cache
from fwgen.errors import FetchError, IntegrityError

PAYLOAD = b"fwgen payload " * 5000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache", attempts=3, backoff=0.01, timeout=10)


def test_fetch_verifies_and_stores_by_content(server, cache):
    server.serve("/pkg.deb", PAYLOAD)
    path = cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert path == cache.root / "sha256" / PAYLOAD_SHA[:2] / PAYLOAD_SHA
    assert path.read_bytes() == PAYLOAD
    again = cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA.upper(), size=len(PAYLOAD))
    assert again == path and server.hits["/pkg.deb"] == 1  # a verified hit is not downloaded


def test_damaged_cache_entry_is_downloaded_again(server, cache):
    server.serve("/pkg.deb", PAYLOAD)
    path = cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    path.write_bytes(b"X" + PAYLOAD[1:])
    assert cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD)).read_bytes() == PAYLOAD
    assert server.hits["/pkg.deb"] == 2


def test_hash_mismatch_raises_and_leaves_nothing(server, cache):
    server.serve("/pkg.deb", PAYLOAD)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(IntegrityError) as caught:
        cache.fetch(f"{server.url}/pkg.deb", sha256=wrong, size=len(PAYLOAD))
    message = str(caught.value)
    assert f"{server.url}/pkg.deb" in message and wrong in message and PAYLOAD_SHA in message
    assert server.hits["/pkg.deb"] == 1  # a wrong hash is not retried
    # locks/ holds lock files and the registrations of processes using the cache (prune's).
    leftovers = [p for p in cache.root.rglob("*") if p.is_file() and "locks" not in p.relative_to(cache.root).parts]
    assert leftovers == []


@pytest.mark.parametrize(("status", "reason"), [
    (400, "Bad Request"), (401, "Unauthorized"), (403, "Forbidden"), (404, "Not Found"), (410, "Gone"),
])
def test_a_definite_client_error_fails_at_once_with_one_line(server, cache, status, reason):
    server.routes["/missing.deb"] = lambda h, _c: h.send_error(status)
    with pytest.raises(FetchError) as caught:
        cache.fetch(f"{server.url}/missing.deb", sha256=PAYLOAD_SHA, size=1)
    assert str(caught.value) == f"{server.url}/missing.deb: HTTP {status} {reason} (a definite answer: not retried)"
    assert server.hits["/missing.deb"] == 1
    assert content_files(cache) == []


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_a_status_that_may_pass_is_retried_with_backoff(server, cache, status):
    server.routes["/pkg.deb"] = lambda h, _c: h.send_error(status)
    cache.backoff = 0.05
    started = time.monotonic()
    with pytest.raises(FetchError, match=rf"/pkg.deb: HTTP {status} .*\(gave up after 3 attempts\)"):
        cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert server.hits["/pkg.deb"] == 3
    assert time.monotonic() - started >= 0.05 + 0.1  # slept 0.05 s, then twice that


def test_truncated_body_is_retried_then_succeeds(server, cache):
    def flaky(handler, count):
        if count == 1:  # announce everything, send half, hang up
            send(handler, PAYLOAD[: len(PAYLOAD) // 2], length=len(PAYLOAD))
        else:
            send(handler, PAYLOAD)

    server.routes["/pkg.deb"] = flaky
    path = cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert path.read_bytes() == PAYLOAD and server.hits["/pkg.deb"] == 2


def test_always_truncated_body_gives_clear_fetch_error(server, cache):
    server.routes["/pkg.deb"] = lambda h, _c: send(h, PAYLOAD[:1000], length=len(PAYLOAD))
    with pytest.raises(FetchError, match=r"/pkg.deb: truncated body: 1000 of 70000 bytes \(gave up after 3 attempts\)"):
        cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert content_files(cache) == []
    assert not [p for p in cache.root.rglob("*.part")]


def test_server_errors_are_retried(server, cache):
    server.routes["/pkg.deb"] = lambda h, c: send(h, b"busy", status=503) if c < 3 else send(h, PAYLOAD)
    assert cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD)).read_bytes() == PAYLOAD
    assert server.hits["/pkg.deb"] == 3


def test_size_other_than_index_says_mirror_may_be_syncing(server, cache):
    server.serve("/pkg.deb", PAYLOAD + b"new generation")
    with pytest.raises(FetchError, match=r"unexpected size 70014 \(the index says 70000; mirror syncing\?\)"):
        cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD))


def test_connection_refused_is_a_fetch_error(cache):
    with pytest.raises(FetchError, match=r"http://127.0.0.1:9/x: connection failed: .*gave up after 3"):
        cache.fetch("http://127.0.0.1:9/x", sha256=None, size=None)


def test_unhashed_files_are_reused_within_ttl(server, cache):
    server.serve("/InRelease", b"v1")
    assert cache.fetch(f"{server.url}/InRelease", sha256=None, size=None).read_bytes() == b"v1"
    server.serve("/InRelease", b"v2")
    assert cache.fetch(f"{server.url}/InRelease", sha256=None, size=None).read_bytes() == b"v1"
    cache.unhashed_ttl = 0
    assert cache.fetch(f"{server.url}/InRelease", sha256=None, size=None).read_bytes() == b"v2"


def test_threads_fetching_the_same_url_download_once(server, cache):
    server.serve("/pkg.deb", PAYLOAD)
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: cache.fetch(f"{server.url}/pkg.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD)), range(8)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == PAYLOAD
    assert server.hits["/pkg.deb"] == 1


def _fetch_in_process(root: str, url: str) -> str:
    return str(Cache(Path(root), attempts=3, backoff=0.01).fetch(url, sha256=PAYLOAD_SHA, size=len(PAYLOAD)))


def test_processes_sharing_the_cache_download_once(server, cache):
    server.serve("/pkg.deb", PAYLOAD)
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        paths = pool.starmap(_fetch_in_process, [(str(cache.root), f"{server.url}/pkg.deb")] * 4)
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == PAYLOAD
    assert server.hits["/pkg.deb"] == 1


@pytest.fixture
def kept_alive_server():
    from localhttp import Server

    srv = Server(keep_alive=True)
    yield srv
    srv.close()


def test_downloads_share_kept_alive_connections_and_one_lookup(kept_alive_server, cache, monkeypatch):
    # A connection per file meant a DNS lookup per file: a resolver dropping one query in
    # forty stalled a build 5 s per dropped query. apt keeps its connections; so does fwgen.
    import socket

    from fwgen import connections

    payloads = {f"/pool/p{i}.deb": PAYLOAD + bytes([i]) for i in range(12)}
    for path, body in payloads.items():
        kept_alive_server.serve(path, body)
    lookups = []
    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(connections.socket, "getaddrinfo", lambda host, *a, **k: lookups.append(host)
                        or real_getaddrinfo(host, *a, **k))
    base = kept_alive_server.url.replace("127.0.0.1", "localhost")
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda item: cache.fetch(base + item[0], sha256=hashlib.sha256(item[1]).hexdigest(),
                                                       size=len(item[1])), payloads.items()))
    assert [p.read_bytes() for p in paths] == list(payloads.values())
    assert lookups == ["localhost"]
    assert 1 <= kept_alive_server.connections <= 3


def test_a_kept_connection_the_server_closed_is_replaced_not_retried(kept_alive_server, cache):
    def then_hang_up(handler, _count):
        send(handler, PAYLOAD)
        handler.close_connection = True  # without saying so: the client finds out on its next request

    kept_alive_server.routes["/a.deb"] = then_hang_up
    cache.attempts = 1  # a retry of the download would hide a failure here
    cache.fetch(f"{kept_alive_server.url}/a.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    time.sleep(0.1)  # the server has closed its end
    for name in ("b", "c"):
        kept_alive_server.serve(f"/{name}.deb", PAYLOAD + name.encode())
        body = PAYLOAD + name.encode()
        assert cache.fetch(f"{kept_alive_server.url}/{name}.deb", sha256=hashlib.sha256(body).hexdigest(),
                           size=len(body)).read_bytes() == body
    assert kept_alive_server.connections == 2  # a's, then one for b and c


def test_redirects_are_followed(kept_alive_server, cache):
    def moved(handler, _count):
        handler.send_response(301)
        handler.send_header("Location", "/pool/new.deb")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    kept_alive_server.routes["/old.deb"] = moved
    kept_alive_server.serve("/pool/new.deb", PAYLOAD)
    path = cache.fetch(f"{kept_alive_server.url}/old.deb", sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert path.read_bytes() == PAYLOAD
    assert kept_alive_server.hits == {"/old.deb": 1, "/pool/new.deb": 1} and kept_alive_server.connections == 1
