"""A real OCI registry for the tests: Debian's docker-registry (the CNCF distribution
registry) serving plain HTTP on 127.0.0.1, its storage in a folder the tests can tamper with."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
http:
  addr: 127.0.0.1:{port}
  secret: fwgen-tests
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    """`docker-registry serve CONFIG` on a free port, started and stopped by the tests (the
    package's systemd service is not used)."""

    def __init__(self, folder: Path) -> None:
        self.storage = folder / "storage"
        self.port = free_port()
        config = folder / "config.yml"
        config.write_text(CONFIG.format(storage=self.storage, port=self.port))
        self.log = (folder / "registry.log").open("wb")
        self.proc = subprocess.Popen([shutil.which("docker-registry") or "docker-registry", "serve", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def address(self, repository: str) -> str:
        return f"oci://{self.host}/{repository}"

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps the blob `digest` (sha256:...) on disk."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"docker-registry did not answer on {self.host}: see {self.log.name}")
            time.sleep(0.1)
