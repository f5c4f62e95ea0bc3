"""The remote cache (fwgen/remote_cache.py) against a real registry (tests/registry.py):
entries pushed by one cache are pulled into an empty one instead of being downloaded or
compiled; a blob the registry serves corrupted is refused with a warning and never enters the
cache; a registry that is down costs one warning line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from localhttp import Server
from registry import free_port

import fwgen.busybox as busybox
from fwgen.arch import Arch
from fwgen.cache import Cache
from fwgen.cli import main
from fwgen.progress import Progress
from fwgen.remote_cache import RemoteCache


def remote(registry, repository: str, *, push: bool) -> RemoteCache:
    return RemoteCache.from_address(registry.address(repository), push=push, where="test")


def recorded() -> Progress:
    return Progress(io.StringIO(), enabled=True)


def lines(progress: Progress) -> list[str]:
    return progress.stream.getvalue().splitlines()  # type: ignore[attr-defined]


def served(server: Server, name: str, body: bytes) -> tuple[str, str]:
    server.serve(f"/{name}", body)
    return f"{server.url}/{name}", hashlib.sha256(body).hexdigest()


def test_a_download_pushed_by_one_cache_is_pulled_by_an_empty_one(registry, server, tmp_path):
    body = os.urandom(50_000)
    url, digest = served(server, "pkg.deb", body)
    pusher = Cache(tmp_path / "a", remote=remote(registry, "dl", push=True))
    pusher.fetch(url, sha256=digest, size=len(body))
    assert server.hits == {"/pkg.deb": 1}

    progress = recorded()
    puller = Cache(tmp_path / "b", remote=remote(registry, "dl", push=False))
    path = puller.fetch(url, sha256=digest, size=len(body), progress=progress)
    assert path.read_bytes() == body
    assert server.hits == {"/pkg.deb": 1}  # the second cache never asked the origin
    assert any(f"sha256-{digest}: from the remote cache" in line for line in lines(progress))


def test_a_file_fetched_by_url_is_never_pushed(registry, server, tmp_path):
    """InRelease and the like are fetched from the mirror and verified each time: a registry
    copy would only go stale."""
    url, _ = served(server, "InRelease", b"-----BEGIN PGP SIGNED MESSAGE-----\n")
    cache = Cache(tmp_path / "a", remote=remote(registry, "by-url", push=True))
    for _ in range(2):  # downloaded, then reused
        cache.fetch(url, sha256=None, size=None)
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://{registry.host}/v2/by-url/tags/list", timeout=10)


def test_a_parsed_index_is_shared_like_a_download(registry, tmp_path):
    source = hashlib.sha256(b"some index").hexdigest()
    first = Cache(tmp_path / "a", remote=remote(registry, "derived", push=True))
    with first.shared_derived(first.derived_path(source, "test-index.v1")) as path:
        Cache.store_checked(path, b"parsed")
    second = Cache(tmp_path / "b", remote=remote(registry, "derived", push=False))
    with second.shared_derived(second.derived_path(source, "test-index.v1")) as path:
        assert Cache.read_checked(path) == b"parsed"


def test_a_corrupted_blob_is_refused_and_the_file_downloaded(registry, server, tmp_path):
    body = os.urandom(40_000)
    url, digest = served(server, "tampered.deb", body)
    Cache(tmp_path / "a", remote=remote(registry, "tamper", push=True)).fetch(url, sha256=digest, size=len(body))
    blob = registry.blob_path(f"sha256:{digest}")
    blob.write_bytes(b"\x00" + body[1:])  # same size, one byte changed, in the registry's own storage

    progress = recorded()
    cache = Cache(tmp_path / "b", remote=remote(registry, "tamper", push=False))
    path = cache.fetch(url, sha256=digest, size=len(body), progress=progress)
    assert path.read_bytes() == body  # downloaded from the origin after the refusal
    assert server.hits == {"/tampered.deb": 2}
    [warning] = [line for line in lines(progress) if line.startswith("warning:")]
    assert f"sha256-{digest}" in warning and "refused, downloading it" in warning
    leftovers = [p for p in (tmp_path / "b").rglob("*") if p.is_file() and p != path and "locks" not in p.parts]
    assert leftovers == []


def test_an_unreachable_registry_costs_one_warning(server, tmp_path):
    down = RemoteCache.from_address(f"oci://127.0.0.1:{free_port()}/cache", push=True, where="test")
    cache = Cache(tmp_path / "c", remote=down)
    progress = recorded()
    for n in range(3):
        url, digest = served(server, f"f{n}", f"file {n}".encode())
        assert cache.fetch(url, sha256=digest, size=None, progress=progress).read_bytes() == f"file {n}".encode()
    warnings = [line for line in lines(progress) if line.startswith("warning:")]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "going on without it" in warnings[0]


# -- BusyBox builds: taken from the shared test cache, never compiled here ---------------------

def _published_build(cache_dir: Path) -> Path:
    """The aarch64 BusyBox build of the shared test cache (built once per session if missing)."""
    return busybox.build_busybox(Arch.AARCH64, cache_root=cache_dir).parent


def _no_compiling(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("compiled BusyBox instead of taking it from the remote cache")

    monkeypatch.setattr(busybox, "download_source", refuse)


def test_a_busybox_build_is_pulled_instead_of_compiled(registry, cache_dir, tmp_path, monkeypatch):
    entry = _published_build(cache_dir)
    busybox.build_busybox(Arch.AARCH64, cache_root=cache_dir, remote=remote(registry, "bb", push=True))

    _no_compiling(monkeypatch)
    progress = recorded()
    binary = busybox.build_busybox(Arch.AARCH64, cache_root=tmp_path, progress=progress,
                                   remote=remote(registry, "bb", push=False))
    assert binary == tmp_path / "busybox" / entry.name / "busybox"
    assert binary.read_bytes() == (entry / "busybox").read_bytes()
    assert json.loads((binary.parent / "build.json").read_text()) == json.loads((entry / "build.json").read_text())
    assert os.access(binary, os.X_OK)
    assert any("checking busybox for aarch64" in line for line in lines(progress))  # the gate ran


def test_a_corrupted_busybox_build_is_refused_and_never_cached(registry, cache_dir, tmp_path, monkeypatch):
    entry = _published_build(cache_dir)
    # A copy whose build.log is this test's own, so the tampered blob is no other test's.
    copy = tmp_path / "seed" / "busybox" / entry.name
    shutil.copytree(entry, copy)
    log = copy / "build.log"
    log.write_bytes(log.read_bytes() + os.urandom(16).hex().encode())
    seed = Cache(tmp_path / "seed", remote=remote(registry, "bb-tamper", push=True))
    busybox._share_build(seed.remote, copy, recorded())
    digest = "sha256:" + hashlib.sha256(log.read_bytes()).hexdigest()
    registry.blob_path(digest).write_bytes(b"tampered" + log.read_bytes()[8:])

    def compile_instead(*_args, **_kwargs):
        raise RuntimeError("building locally")

    monkeypatch.setattr(busybox, "download_source", compile_instead)
    progress = recorded()
    with pytest.raises(RuntimeError, match="building locally"):
        busybox.build_busybox(Arch.AARCH64, cache_root=tmp_path / "empty", progress=progress,
                              remote=remote(registry, "bb-tamper", push=False))
    [warning] = [line for line in lines(progress) if line.startswith("warning:")]
    assert f"busybox-{entry.name}" in warning and "build.log" in warning and "refused, building it locally" in warning
    assert sorted(p.name for p in (tmp_path / "empty" / "busybox").iterdir()) == [f"{entry.name}.lock", "trees"]


def test_fwgen_busybox_takes_the_build_from_the_projects_remote_cache(registry, cache_dir, tmp_path, monkeypatch):
    """The CLI reads `[cache] remote` of fwgen.toml: an empty local cache gets the build from
    the registry (a compile would take minutes and print 'building busybox')."""
    entry = _published_build(cache_dir)
    busybox.build_busybox(Arch.AARCH64, cache_root=cache_dir, remote=remote(registry, "cli", push=True))
    (tmp_path / "fwgen.toml").write_text(f'[cache]\nremote = "{registry.address("cli")}"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FWGEN_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("FWGEN_REMOTE_CACHE", raising=False)
    _no_compiling(monkeypatch)
    result = CliRunner().invoke(main, ["busybox", "--arch", "aarch64", "--out", str(tmp_path / "bb")])
    assert result.exit_code == 0, result.stderr
    assert "from the remote cache" in result.stderr and "building busybox" not in result.stderr
    assert (tmp_path / "bb").read_bytes() == (entry / "busybox").read_bytes()


def test_a_malformed_FWGEN_REMOTE_CACHE_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("FWGEN_CACHE", str(tmp_path))
    monkeypatch.setenv("FWGEN_REMOTE_CACHE", "https://registry.example/cache")
    result = CliRunner().invoke(main, ["busybox", "--arch", "aarch64", "--out", str(tmp_path / "bb")])
    assert result.exit_code == 2
    assert result.stderr == ("fwgen: error: FWGEN_REMOTE_CACHE: 'https://registry.example/cache' "
                             "is not an oci://HOST/REPO address\n")


# -- overlay builds: one small C program, compiled once into the shared test cache ------------

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from the remote cache"); return 0; }\n'


def _hello_build(tmp_path: Path):
    from fwgen.overlay import load_overlay

    folder = tmp_path / "ov"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.c").write_text(HELLO_C)
    (folder / "overlay.yaml").write_text(
        "builds:\n  hello:\n    source: {folder: src}\n    system: cc\n    sources: [main.c]\n"
        "    program: hello\n    install:\n      /usr/bin/hello: hello\n")
    return load_overlay(folder)[0].builds[0]


def test_an_overlay_build_is_pulled_instead_of_compiled(registry, cache_dir, tmp_path, monkeypatch):
    import fwgen.compile as compile_module

    build = _hello_build(tmp_path)
    built = compile_module.compile_build(build, Arch.AARCH64, cache_root=cache_dir,
                                         remote=remote(registry, "overlay-builds", push=True))

    def refuse(*_args, **_kwargs):
        raise AssertionError("compiled instead of taking the build from the remote cache")

    monkeypatch.setattr(compile_module, "_compile", refuse)
    progress = recorded()
    pulled = compile_module.compile_build(build, Arch.AARCH64, cache_root=tmp_path / "empty", progress=progress,
                                          remote=remote(registry, "overlay-builds", push=False))
    assert pulled.key == built.key
    assert {p: (f.read_bytes(), m) for p, (f, m) in pulled.files.items()} == \
           {p: (f.read_bytes(), m) for p, (f, m) in built.files.items()}
    assert pulled.files["/usr/bin/hello"][0] == tmp_path / "empty" / "builds" / built.key / "files" / "usr" / "bin" / "hello"
    assert any(f"build-{built.key}: from the remote cache" in line for line in lines(progress))


def test_an_overlay_build_listing_other_files_is_refused(registry, cache_dir, tmp_path, monkeypatch):
    """A pushed build whose build.json does not list exactly the files it carries (here one
    more, which an installer would never look at) is not taken."""
    import fwgen.compile as compile_module

    build = _hello_build(tmp_path)
    built = compile_module.compile_build(build, Arch.AARCH64, cache_root=cache_dir)
    entry = cache_dir / "builds" / built.key
    extra = tmp_path / "seed" / built.key
    shutil.copytree(entry, extra)
    (extra / "files" / "etc").mkdir()
    (extra / "files" / "etc" / "smuggled").write_bytes(os.urandom(16))
    remote(registry, "overlay-extra", push=True).push(
        f"build-{built.key}", sorted(p for p in extra.rglob("*") if p.is_file()), recorded(), base=extra)

    def compile_instead(*_args, **_kwargs):
        raise RuntimeError("compiling locally")

    monkeypatch.setattr(compile_module, "_compile", compile_instead)
    progress = recorded()
    with pytest.raises(RuntimeError, match="compiling locally"):
        compile_module.compile_build(build, Arch.AARCH64, cache_root=tmp_path / "empty", progress=progress,
                                     remote=remote(registry, "overlay-extra", push=False))
    [warning] = [line for line in lines(progress) if line.startswith("warning:")]
    assert "not the ones its build.json lists; refused, compiling it locally" in warning
    assert not (tmp_path / "empty" / "builds" / built.key).exists()
