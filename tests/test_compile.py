"""Overlay builds (fwgen/compile.py): an overlay's own C code compiled with fwgen's Zig
toolchain, cached by its inputs, shared between concurrent builds, reproducible, and a
compile error reported with the compiler's own line; `fwgen sdk` gives a shell the same
toolchain. Everything targets aarch64 and runs the results under qemu-aarch64-static."""

from __future__ import annotations

import io
import os
import subprocess
import threading
from pathlib import Path

import pytest
from buildutil import REPO, run_fwgen

from fwgen.arch import Arch
from fwgen.compile import BuildFailed, compile_build
from fwgen.errors import EXIT_BAD_INPUT, ConfigError
from fwgen.overlay import load_overlay, plan_layers
from fwgen.progress import Progress

ARCH = Arch.AARCH64

HELLO = """#include <stdio.h>
#include "greeting.h"
int main(void) { printf("%s from %s\\n", GREETING, __FILE__); return 0; }
"""


def overlay(folder: Path, files: dict[str, str], builds: str | None = None) -> Path:
    """An overlay folder with `files` under src/ and a cc build of main.c named hello."""
    for name, text in files.items():
        (folder / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "src" / name).write_text(text)
    (folder / "overlay.yaml").write_text(builds or (
        "builds:\n  hello:\n    source: {folder: src}\n    system: cc\n    sources: [main.c]\n"
        "    program: hello\n    install:\n      /usr/bin/hello: hello\n"))
    return folder


def cache_root(folder: Path, cache_dir: Path) -> Path:
    """A fresh fwgen cache sharing the session's zig cache (musl is built once per target)."""
    folder.mkdir(parents=True)
    (cache_dir / "zig").mkdir(parents=True, exist_ok=True)
    (folder / "zig").symlink_to(cache_dir / "zig")
    return folder


def build_of(folder: Path, cache: Path, arch: Arch = ARCH):
    """(BuiltFiles, progress text) of the overlay's one build."""
    ov, _ = load_overlay(folder)
    out = io.StringIO()
    built = compile_build(ov.builds[0], arch, cache_root=cache, progress=Progress(out))
    return built, out.getvalue()


def run_built(built, path: str, tmp_path: Path, arch: Arch = ARCH) -> str:
    host, mode = built.files[path]
    assert mode == 0o755
    copy = tmp_path / f"run-{os.getpid()}-{host.name}"
    copy.write_bytes(host.read_bytes())
    copy.chmod(0o755)
    return subprocess.run([arch.qemu_user, str(copy)], capture_output=True, text=True, check=True, timeout=60).stdout


def test_a_folder_build_is_compiled_once_then_reused(tmp_path, cache_dir):
    cache = cache_root(tmp_path / "cache", cache_dir)
    folder = overlay(tmp_path / "vendor", {"main.c": HELLO, "greeting.h": '#define GREETING "hello"\n'})
    first, log = build_of(folder, cache)
    assert "compiling vendor/hello for aarch64" in log and "compiling hello for aarch64: 1 files" in log
    assert run_built(first, "/usr/bin/hello", tmp_path) == "hello from main.c\n"
    again, log = build_of(folder, cache)
    assert f"vendor/hello for aarch64: cached ({first.key})" in log and "compiling" not in log
    assert again.files["/usr/bin/hello"][0].read_bytes() == first.files["/usr/bin/hello"][0].read_bytes()
    # A header is an input like any file of the folder: changing it rebuilds.
    (folder / "src" / "greeting.h").write_text('#define GREETING "hi"\n')
    changed, log = build_of(folder, cache)
    assert changed.key != first.key and "compiling vendor/hello" in log
    assert run_built(changed, "/usr/bin/hello", tmp_path) == "hi from main.c\n"


def test_a_changed_file_rebuilds_only_its_own_overlays_build(tmp_path, cache_dir):
    cache = cache_root(tmp_path / "cache", cache_dir)
    one = overlay(tmp_path / "one", {"main.c": HELLO, "greeting.h": '#define GREETING "one"\n'})
    two = overlay(tmp_path / "two", {"main.c": HELLO, "greeting.h": '#define GREETING "two"\n'})
    build_of(one, cache)
    kept, _ = build_of(two, cache)
    (one / "src" / "main.c").write_text(HELLO.replace("return 0;", "return 0; /* edited */"))
    _, log_one = build_of(one, cache)
    again, log_two = build_of(two, cache)
    assert "compiling one/hello" in log_one
    assert "cached" in log_two and "compiling" not in log_two and again.key == kept.key


def test_two_concurrent_builds_of_one_key_compile_once(tmp_path, cache_dir):
    cache = cache_root(tmp_path / "cache", cache_dir)
    folder = overlay(tmp_path / "vendor", {"main.c": HELLO, "greeting.h": '#define GREETING "x"\n'})
    logs: list[str] = []
    threads = [threading.Thread(target=lambda: logs.append(build_of(folder, cache)[1])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted("compiling vendor" in log for log in logs) == [False, True], logs


def test_a_compile_error_shows_the_compilers_line_and_writes_nothing(tmp_path, cache_dir):
    cache = cache_root(tmp_path / "cache", cache_dir)
    broken = HELLO.replace("return 0;", "return missing_variable;")
    folder = overlay(tmp_path / "vendor", {"main.c": broken, "greeting.h": '#define GREETING "x"\n'})
    with pytest.raises(BuildFailed) as caught:
        build_of(folder, cache)
    message = str(caught.value)
    assert "main.c:3:" in message and "error: use of undeclared identifier 'missing_variable'" in message
    assert str(tmp_path) not in message.split("(full log")[0], "the file is named as in the source folder"
    assert caught.value.exit_code == EXIT_BAD_INPUT
    builds = cache / "builds"
    assert sorted(p.name for p in builds.iterdir() if not p.name.endswith(".lock")) == ["failed", "work"]
    assert list((builds / "work").iterdir()) == [] and len(list((builds / "failed").iterdir())) == 1


def test_the_cli_reports_a_compile_error_with_exit_code_2(tmp_path, cache_dir):
    broken = HELLO.replace("return 0;", "return missing_variable;")
    overlay(tmp_path / "overlays" / "vendor", {"main.c": broken, "greeting.h": '#define GREETING "x"\n'})
    board = (REPO / "boards" / "qemu-aarch64.yaml").read_text()
    board = board.replace("overlays: [base, network, httpd, ssh, ntp, watchdog]", "overlays: [base, vendor]")
    (tmp_path / "b.yaml").write_text(board.replace("forward: [80, 22]", "forward: [80]"))
    result = run_fwgen("build", "--board", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "out"),
                       cache=cache_dir, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "main.c:3:" in result.stderr and "missing_variable" in result.stderr
    assert not (tmp_path / "out").exists()


def test_two_builds_in_different_folders_give_the_same_bytes(tmp_path, cache_dir):
    # A Makefile naming its source by absolute path puts the build folder into __FILE__;
    # -ffile-prefix-map takes it out. (__DATE__ is refused by zig's clang: -Werror=date-time.)
    makefile = "hello: main.c\n\t$(CC) $(CFLAGS) -o hello $(CURDIR)/main.c $(LDFLAGS)\n"
    files = {"main.c": HELLO, "greeting.h": '#define GREETING "same"\n', "Makefile": makefile}
    recipe = "builds:\n  hello:\n    source: {folder: src}\n    install:\n      /usr/bin/hello: hello\n"
    a, _ = build_of(overlay(tmp_path / "a" / "vendor", files, recipe), cache_root(tmp_path / "cache-a", cache_dir))
    b, _ = build_of(overlay(tmp_path / "b" / "vendor", files, recipe), cache_root(tmp_path / "cache-b", cache_dir))
    data = a.files["/usr/bin/hello"][0].read_bytes()
    assert data == b.files["/usr/bin/hello"][0].read_bytes()
    assert run_built(a, "/usr/bin/hello", tmp_path) == "same from main.c\n"
    assert str(tmp_path).encode() not in data and b".note.gnu.build-id" not in data


def test_fwgen_sdk_compiles_a_program_that_runs_under_qemu_user(tmp_path, cache_dir):
    result = run_fwgen("sdk", "--board", "qemu-armv7", cache=cache_dir)
    assert result.returncode == 0, result.stderr
    (tmp_path / "greeting.h").write_text('#define GREETING "sdk"\n')
    (tmp_path / "main.c").write_text(HELLO)
    script = result.stdout + '$CC $CFLAGS -o hello main.c $LDFLAGS && echo "$HOST"\n'
    built = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == "arm-linux-musleabihf"
    ran = subprocess.run([Arch.ARMV7.qemu_user, str(tmp_path / "hello")], capture_output=True, text=True, timeout=60)
    assert ran.stdout == "sdk from main.c\n"


# -- declaring builds -----------------------------------------------------------------------


def test_a_build_with_both_a_folder_and_a_tarball_is_refused_at_its_line(tmp_path):
    folder = overlay(tmp_path / "vendor", {"main.c": HELLO}, builds=(
        "builds:\n  hello:\n    source:\n      folder: src\n      urls: [http://x.invalid/a.tar.gz]\n"
        "      sha256: " + "a" * 64 + "\n    install:\n      /usr/bin/hello: hello\n"))
    with pytest.raises(ConfigError, match=r"overlay.yaml:4:7: builds.hello.source: give either folder, or urls with sha256"):
        load_overlay(folder)


def test_a_built_path_that_an_overlay_file_also_supplies_is_refused(tmp_path):
    folder = overlay(tmp_path / "vendor", {"main.c": HELLO})
    (folder / "files" / "usr" / "bin").mkdir(parents=True)
    (folder / "files" / "usr" / "bin" / "hello").write_text("#!/bin/sh\n")
    ov, _ = load_overlay(folder)
    with pytest.raises(ConfigError, match=r"'/usr/bin/hello' is also a file of the overlays"):
        plan_layers([ov], {})
