"""The linters run as part of the test suite: a lint error fails the build like a test."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from buildutil import REPO


def test_ruff_finds_nothing():
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run(["ruff", "check", "fwgen", "tests", "benchmarks"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_compiles_and_imports_without_the_cli():
    """The library works without the CLI: importing every module must not pull in click."""
    code = (
        "import importlib, pkgutil, sys, fwgen\n"
        "for m in pkgutil.walk_packages(fwgen.__path__, 'fwgen.'):\n"
        "    if m.name != 'fwgen.cli': importlib.import_module(m.name)\n"
        "assert 'click' not in sys.modules, 'a library module imports click'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_fetch_path_imports_no_module_it_does_not_use():
    """A warm fetch is a fraction of a second: importing the board types, the cache, the
    fetcher and the root filesystem must not load the schema validator (loaded when a
    document is validated), the HTTP client (when something is downloaded) or libraries
    of other commands."""
    unused = ("jsonschema", "urllib.request", "http.client", "requests", "oras", "elftools", "license_expression")
    code = (
        "import sys, fwgen.board, fwgen.cache, fwgen.fetch, fwgen.rootfs\n"
        f"print(' '.join(m for m in {unused!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
