"""Shared test fixtures and the CI rule that QEMU and network tests never skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The team's shared folder sits beside the checkout (CI always lays a copy there).
SHARED = REPO.parent / "shared"
SAMPLES = SHARED / "samples"


@pytest.fixture(scope="session")
def samples() -> Path:
    """The real sample files in ../shared/samples; skips (saying why) where absent."""
    if not SAMPLES.is_dir():
        pytest.skip(f"real sample files not found at {SAMPLES} (../shared/samples beside the checkout)")
    return SAMPLES


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One package cache for the whole test session, so the mirror is asked once per file.

    FWGEN_TEST_CACHE points it at a lasting folder (developers keep theirs between runs).
    """
    lasting = os.environ.get("FWGEN_TEST_CACHE")
    if lasting:
        Path(lasting).mkdir(parents=True, exist_ok=True)
        return Path(lasting)
    return tmp_path_factory.mktemp("fwgen-cache")


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """One real OCI registry (Debian's docker-registry, tests/registry.py) for the session.
    Tests use repositories of their own; blobs are shared by digest across repositories, so a
    test that tampers with one tampers only with content no other test pushes."""
    import shutil

    from registry import LocalRegistry

    if shutil.which("docker-registry") is None:
        message = "docker-registry not installed (apt-get install docker-registry; .ci/setup does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    local = LocalRegistry(tmp_path_factory.mktemp("registry"))
    yield local
    local.close()


@pytest.fixture
def server():
    """A scripted HTTP server on 127.0.0.1 (tests/localhttp.py), closed after the test."""
    from localhttp import Server

    srv = Server()
    yield srv
    srv.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped `network` or `qemu` test is a failure, not a skip."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    if item.get_closest_marker("mirror_pinned") and call.when == "call":
        return  # its recorded inputs left the mirror: a reason to refresh, not a fault of fwgen
    if item.get_closest_marker("network") or item.get_closest_marker("qemu"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"CI forbids skipping network/qemu tests: {reason}"
