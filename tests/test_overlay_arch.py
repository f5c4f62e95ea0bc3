"""Files for one architecture in an overlay (`files-<arch>/`), and programs for another
architecture refused before anything is fetched or compiled."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from buildutil import run_fwgen

from fwgen.arch import Arch
from fwgen.config import load_board
from fwgen.errors import ConfigError
from fwgen.overlay import apply_layers, plan_layers
from fwgen.rootfs import RootFS

HELLO = '#include <stdio.h>\nint main(void) { puts("hello from " ARCH); return 0; }\n'


def compile_hello(arch: Arch, folder: Path, cache: Path) -> Path:
    """A static musl program for `arch`, from the Zig toolchain fwgen itself uses (with the
    test cache's zig folder, where the BusyBox builds already made musl for the target)."""
    source = folder / "hello.c"
    source.write_text(HELLO)
    out = folder / f"hello-{arch.value}"
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", arch.zig_target, *arch.zig_cpu, "-static",
                    "-Os", f'-DARCH="{arch.value}"', "-o", str(out), str(source)], check=True, timeout=600,
                   env=dict(os.environ, ZIG_GLOBAL_CACHE_DIR=str(cache / "zig")))
    return out


@pytest.fixture(scope="module")
def programs(tmp_path_factory, cache_dir) -> dict[Arch, Path]:
    folder = tmp_path_factory.mktemp("hello")
    return {arch: compile_hello(arch, folder, cache_dir) for arch in (Arch.AARCH64, Arch.ARMV7)}


def vendor_overlay(root: Path, programs: dict[Arch, Path]) -> Path:
    overlay = root / "overlays" / "acme-hello"
    (overlay / "files" / "usr" / "bin").mkdir(parents=True)
    (overlay / "overlay.yaml").write_text("description: one overlay, a program per architecture\n")
    (overlay / "files" / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho no program for this architecture\n")
    for arch, program in programs.items():
        (overlay / f"files-{arch.value}" / "usr" / "bin").mkdir(parents=True)
        shutil.copy(program, overlay / f"files-{arch.value}" / "usr" / "bin" / "hello")
    return overlay


def board(root: Path, arch: str, overlays: str = "base, acme-hello") -> Path:
    path = root / "boards" / f"acme-{arch}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"arch: {arch}\noverlays: [{overlays}]\n")
    return path


def image_file(board_file: Path, path: str) -> bytes:
    loaded = load_board(board_file)
    rootfs = RootFS()
    apply_layers(rootfs, plan_layers(loaded.overlays, loaded.values, loaded.arch))
    entry = rootfs.get(path)
    assert entry is not None and entry.data is not None
    return entry.data


def test_one_overlay_serves_two_architectures_with_its_files_per_arch(tmp_path, programs):
    vendor_overlay(tmp_path, programs)
    for arch in (Arch.AARCH64, Arch.ARMV7):
        data = image_file(board(tmp_path, arch.value), "/usr/bin/hello")
        assert data == programs[arch].read_bytes()  # the board's own architecture's program
        ran = subprocess.run([arch.qemu_user, str(programs[arch])], capture_output=True, text=True, timeout=60)
        assert ran.stdout.strip() == f"hello from {arch.value}"
    # A board of a third architecture gets the overlay's generic file.
    assert image_file(board(tmp_path, "mipsel"), "/usr/bin/hello").startswith(b"#!/bin/sh")


def test_a_program_for_another_architecture_in_files_is_refused_before_any_work(tmp_path, programs):
    overlay = vendor_overlay(tmp_path, {})
    shutil.copy(programs[Arch.ARMV7], overlay / "files" / "usr" / "bin" / "hello")
    board_file = board(tmp_path, "aarch64")
    with pytest.raises(ConfigError, match=r"files/usr/bin/hello: an ELF program for armv6/armv7, but the board is "
                                          r"aarch64 \(put it in files-armv6/ of the overlay"):
        image_file(board_file, "/usr/bin/hello")
    out = tmp_path / "out"
    result = run_fwgen("build", "--board", str(board_file), "--out", str(out), cache=tmp_path / "cache", timeout=120)
    assert result.returncode == 2
    assert "an ELF program for armv6/armv7, but the board is aarch64" in result.stderr
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing fetched or compiled first


def test_a_files_folder_naming_no_architecture_is_a_mistake(tmp_path, programs):
    overlay = vendor_overlay(tmp_path, {})
    (overlay / "files-aarch46").mkdir()
    with pytest.raises(ConfigError, match=r"files-aarch46/ names no architecture fwgen knows .*did you mean 'aarch64'"):
        image_file(board(tmp_path, "aarch64"), "/usr/bin/hello")
