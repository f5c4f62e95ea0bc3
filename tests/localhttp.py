"""A local HTTP server whose answers the tests script, and what the download cache holds."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from pathlib import Path

from fwgen.cache import Cache


class Server:
    """An HTTP server on 127.0.0.1 whose routes are functions of the request count.

    `keep_alive`: HTTP/1.1, connections kept open between requests (`send` leaves them
    open); `connections` counts the connections accepted."""

    def __init__(self, *, keep_alive: bool = False) -> None:
        self.routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler, int], None]] = {}
        self.hits: dict[str, int] = {}
        self.connections = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
            kept_alive = keep_alive

            def setup(self):
                server.connections += 1
                super().setup()

            def do_GET(self):  # noqa: N802 (http.server's name)
                count = server.hits.get(self.path, 0) + 1
                server.hits[self.path] = count
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                route(self, count)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, path: str, body: bytes) -> None:
        self.routes[path] = lambda handler, _count: send(handler, body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler, body: bytes, status: int = 200, length: int | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()
    handler.close_connection = not getattr(handler, "kept_alive", False)


def content_files(cache: Cache) -> list[Path]:
    """The verified files in the cache's content-addressed store."""
    folder = cache.root / "sha256"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
