"""Publishing a build (fwgen/publish.py): out/<board> is a link replaced atomically, leftovers
of killed builds and unused versions are removed, versions in use are kept, and output
modes follow the umask."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from buildutil import REPO, run_fwgen

from fwgen.bootstate import BootState
from fwgen.publish import create_staging, publish, use_build

BOARD = "qemu-aarch64"  # the cheapest board to build: initramfs only


def _stage_and_publish(outdir: Path, label: str) -> Path:
    staging = create_staging(outdir)
    for name in ("kernel", "initramfs.cpio.gz"):
        (staging.path / name).write_text(label)
    (staging.path / "manifest.json").write_text(json.dumps({"label": label}))
    return publish(staging, outdir)


def test_concurrent_publishes_always_show_one_whole_build(tmp_path):
    """Four builders publishing 25 times each while a reader reads out/<board> without pause:
    the reader never finds it missing (the old swap moved the folder aside first), no
    publisher fails (ENOTEMPTY in the old swap), and in the end one version remains."""
    outdir = tmp_path / "out" / "board"
    _stage_and_publish(outdir, "first")
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = 0

    def build(worker: int) -> None:
        try:
            for round_ in range(25):
                _stage_and_publish(outdir, f"{worker}-{round_}")
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            errors.append(e)

    def read() -> None:
        nonlocal reads
        try:
            while not stop.is_set():
                with open(outdir / "manifest.json") as f:
                    json.load(f)
                reads += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    builders = [threading.Thread(target=build, args=(w,)) for w in range(4)]
    for t in builders:
        t.start()
    for t in builders:
        t.join()
    stop.set()
    reader.join()
    assert errors == [] and reads > 0
    assert _others(outdir) == 1, "only the version replaced last stays beside the current one"


def test_a_build_in_use_is_kept_until_released(tmp_path):
    outdir = tmp_path / "out" / "board"
    first = _stage_and_publish(outdir, "first")
    with use_build(outdir) as folder:
        assert folder == first
        (folder / "boot").mkdir()  # fwgen boot's state of the device
        second = _stage_and_publish(outdir, "second")
        assert outdir.resolve() == second and (first / "boot").is_dir(), "a booting build stays"
    third = _stage_and_publish(outdir, "third")
    assert not first.exists() and second.exists() and outdir.resolve() == third
    _stage_and_publish(outdir, "fourth")
    assert not second.exists() and third.exists() and _others(outdir) == 1


def test_an_output_folder_from_before_versioning_is_replaced(tmp_path):
    outdir = tmp_path / "out" / "board"
    (outdir / "boot").mkdir(parents=True)
    (outdir / "manifest.json").write_text("{}")
    version = _stage_and_publish(outdir, "new")
    assert outdir.is_symlink() and outdir.resolve() == version
    [old] = outdir.parent.glob(".board.old-*")  # kept as the version replaced last
    assert (old / "boot").is_dir()
    newer = _stage_and_publish(outdir, "newer")
    assert not old.exists() and sorted(p.name for p in outdir.parent.iterdir()) == sorted(["board", version.name, newer.name])


def _others(outdir: Path) -> int:
    """How many folders of the board other than the current build are left (at most one
    version is kept after it is replaced: a reader may have just followed the link to it)."""
    names = {p.name for p in outdir.parent.iterdir()} - {outdir.name, os.readlink(outdir)}
    assert all(n.startswith(f".{outdir.name}.v-") for n in names), names
    return len(names)


def _build(out: Path, cache_dir: Path, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    if umask is None:
        return run_fwgen("build", "--board", BOARD, "--out", str(out), cache=cache_dir)
    return subprocess.run(
        [sys.executable, "-m", "fwgen.cli", "build", "--board", BOARD, "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, FWGEN_CACHE=str(cache_dir)),
        preexec_fn=lambda: os.umask(umask), timeout=900,
    )


def test_leftovers_of_killed_builds_and_unused_versions_are_removed(tmp_path, cache_dir):
    """Ten killed builds' staging folders, a folder of the old swap, an unused version and a
    temporary link go; a version a boot holds and another board's files stay."""
    out = tmp_path / "out"
    out.mkdir()
    leftovers = [out / f".{BOARD}.tmp-kill{n}" for n in range(10)]
    leftovers += [out / f".{BOARD}.old-4242", out / f".{BOARD}.v-unused1"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "kernel").write_bytes(b"half written")
    (out / f".{BOARD}.link-zz9").symlink_to(f".{BOARD}.v-unused1")
    in_use = out / f".{BOARD}.v-booting"
    in_use.mkdir()
    others = [out / f".{BOARD}-disk.tmp-abc", out / f".{BOARD}.v-x.v-1"]  # other boards' folders
    for folder in others:
        folder.mkdir()
    lock = os.open(in_use, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_SH)
    try:
        result = _build(out, cache_dir)
    finally:
        os.close(lock)
    assert result.returncode == 0, result.stderr
    current = os.readlink(out / BOARD)
    assert sorted(p.name for p in out.iterdir()) == sorted([BOARD, current, in_use.name, *(p.name for p in others)])


def test_a_killed_build_leaves_a_folder_the_next_build_removes(tmp_path, cache_dir):
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "fwgen.cli", "build", "--board", BOARD, "--out", str(out)],
                             cwd=REPO, env=dict(os.environ, FWGEN_CACHE=str(cache_dir)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob(f".{BOARD}.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    [killed] = list(out.glob(f".{BOARD}.tmp-*"))
    assert _build(out, cache_dir).returncode == 0
    assert not killed.exists()
    assert _others(out / BOARD) == 0


def test_concurrent_builds_all_succeed_and_readers_never_miss_the_output(tmp_path, cache_dir):
    """Three `fwgen build` of one board at once (after a first one), read all the while."""
    out = tmp_path / "out"
    assert _build(out, cache_dir).returncode == 0
    stop, misses, reads = threading.Event(), [], 0

    def read() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                json.loads((out / BOARD / "manifest.json").read_text())
                reads += 1
            except (OSError, ValueError) as e:
                misses.append(repr(e))

    reader = threading.Thread(target=read)
    reader.start()
    # --force: the board is unchanged, and each build must publish (not find it up to date).
    builds = [subprocess.Popen([sys.executable, "-m", "fwgen.cli", "build", "--force", "--board", BOARD, "--out", str(out)],
                               cwd=REPO, env=dict(os.environ, FWGEN_CACHE=str(cache_dir)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(b.wait(timeout=900), b.stderr.read()) for b in builds]
    stop.set()
    reader.join()
    assert [code for code, _ in results] == [0, 0, 0], results
    assert misses == [] and reads > 0, misses[:3]
    assert _others(out / BOARD) == 1


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_output_modes_follow_the_umask(tmp_path, cache_dir, umask, folder_mode, file_mode):
    out = tmp_path / "out"
    result = _build(out, cache_dir, umask)
    assert result.returncode == 0, result.stderr
    folder = (out / BOARD).resolve()
    assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    files = ["kernel", "initramfs.cpio.gz", "manifest.json", "sbom.spdx.json", "sbom.cdx.json"]
    assert modes == {**dict.fromkeys(files, file_mode), ".fwgen": folder_mode}  # .fwgen: the up-to-date record
    assert stat.S_IMODE((folder / ".fwgen" / "inputs.json").stat().st_mode) == file_mode


@pytest.mark.parametrize("umask, file_mode", [(0o022, 0o644), (0o077, 0o600)])
def test_boot_copy_of_the_disk_follows_the_umask(tmp_path, umask, file_mode):
    built = tmp_path / "disk.img"
    built.write_bytes(b"\1" * 70_000)
    old = os.umask(umask)
    try:
        copy = BootState(tmp_path / "state").copy(built, "disk.img")
    finally:
        os.umask(old)
    assert stat.S_IMODE(copy.stat().st_mode) == file_mode and copy.read_bytes() == built.read_bytes()
