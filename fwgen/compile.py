"""Overlay builds: an overlay's own programs, cross-compiled with fwgen's Zig toolchain.

An overlay declares `builds:` (fwgen/schema/overlay.schema.json): a source folder inside the
overlay or a tarball pinned by SHA-256, patches, a build system (make, configure, cmake or a
list of C files) and the files to install. `compile_build` runs it with the board's toolchain
in the environment (`toolchain_env`, also what `fwgen sdk` prints) and returns the installed
files; `install_build` puts them into a root filesystem.

Cache layout under `cache_root` (beside BusyBox's, sharing zig's global cache and its lock):
    builds/<key>/files/...     the declared files, as the build left them
    builds/<key>/build.json    the inputs, and every file's SHA-256 and mode
    builds/<key>/build.log     what the build printed
    builds/<key>.lock          flock held while <key> is built: a second build waits, then reuses
    builds/work/<key>/         the build folder while it runs (a fixed path: see _flags)
    builds/failed/<key>.log    the full log of the last failed build
The key hashes every input: the source (the tarball's SHA-256, or every file of the folder),
the patches, the build description, the toolchain's version and the target. A changed file of
one overlay's folder changes only that build's key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .arch import Arch
from .audit import audit_paths
from .board import Build
from .busybox import apply_patches, locked
from .busybox_download import download_source
from .busybox_toolchain import PREFIX, Toolchain, checked_zig_cache, find_toolchain
from .cache import discard_damaged, note_use
from .errors import UserError
from .files import hash_file
from .progress import QUIET, Progress
from .rootfs import RootFS
from .run import kill_group, spawn

if TYPE_CHECKING:
    from .remote_cache import RemoteCache

# Bump when the recipe below changes in a way the other key inputs do not capture.
RECIPE = "fwgen-build-1"
# The default build date when SOURCE_DATE_EPOCH is unset (BusyBox's: one date for fwgen's builds).
SOURCE_DATE_EPOCH = 1640476800
DESTDIR = "_install"  # DESTDIR, inside the source folder, so `install:` can name its files
OPT_FLAGS = ("-Os",)  # zig cc at -O0 adds UBSan traps; every build is optimised for size


class BuildFailed(UserError):
    """An overlay's build failed to unpack, patch, configure or compile (the overlay's code or
    recipe is at fault, so exit code 2, like other bad input)."""


@dataclass(frozen=True)
class BuiltFiles:
    """A finished build in the cache: image path -> (host file, mode); links as declared."""

    key: str
    files: dict[str, tuple[Path, int]]
    links: dict[str, str]
    provenance: str


@dataclass(frozen=True)
class Tarball:
    """A build's pinned source tarball, as fwgen.busybox_download fetches it."""

    sha256: str
    urls: tuple[str, ...]
    filename: str


# -- the toolchain environment ---------------------------------------------------------------


def toolchain_env(arch: Arch, cross: str, *, static: bool = True, prefix_map: Path | None = None) -> dict[str, str]:
    """CC, CXX, AR ... for `arch`, given the wrappers' prefix (Toolchain.write_wrappers): what
    a build sees, and what `fwgen sdk` prints."""
    cflags = [*OPT_FLAGS]
    if prefix_map is not None:  # __FILE__ and any debug info name ./x.c, not the build folder
        cflags.append(f"-ffile-prefix-map={prefix_map}=.")
    ldflags = ["-static"] if static else []
    # Stripped at link time (zig cannot strip afterwards; libraries such as libtomcrypt add -g),
    # and no build id: nothing in the binary is derived from the build machine.
    ldflags += ["-s", "-Wl,--build-id=none"]
    return {
        "CC": f"{cross}cc",
        "CXX": f"{cross}c++",
        "AR": f"{cross}ar",
        "RANLIB": f"{cross}ranlib",
        "STRIP": f"{cross}strip",
        "NM": f"{cross}nm",
        "OBJCOPY": f"{cross}objcopy",
        "CFLAGS": " ".join(cflags),
        "CXXFLAGS": " ".join(cflags),
        "LDFLAGS": " ".join(ldflags),
        "HOST": arch.host_triplet,
    }


def sdk_script(arch: Arch, cache_root: Path) -> str:
    """Shell lines exporting the toolchain for `arch` (`eval "$(fwgen sdk --board B)"`).

    The wrappers live in the cache under a name made from the toolchain and the target, written
    once into a temporary folder and renamed, so concurrent calls never see half a script.
    """
    toolchain = find_toolchain()
    digest = hashlib.sha256("\0".join([RECIPE, toolchain.version, str(toolchain.zig), arch.zig_target,
                                       *arch.zig_cpu]).encode()).hexdigest()[:16]
    home = Path(cache_root) / "sdk" / f"{arch.value}-{digest}"
    if not home.is_dir():
        home.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=home.parent))
        toolchain.write_wrappers(tmp / "bin", arch)
        try:
            os.replace(tmp, home)
        except OSError:  # another call made it first
            shutil.rmtree(tmp, ignore_errors=True)
    env = toolchain_env(arch, str(home / "bin" / PREFIX))
    env["ZIG_GLOBAL_CACHE_DIR"] = str(Path(cache_root) / "zig")  # musl built once, shared with fwgen's builds
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return "\n".join([f"# fwgen's toolchain for {arch.value}: zig {toolchain.version}, static musl", *lines]) + "\n"


# -- the public steps ------------------------------------------------------------------------


def compile_build(build: Build, arch: Arch, *, cache_root: Path, progress: Progress = QUIET,
                  jobs: int = 2, remote: RemoteCache | None = None) -> BuiltFiles:
    """Build (or find in the cache, or take from the `remote` cache) `build` for `arch`;
    return its files. What is built or found is offered to the remote cache."""
    toolchain = find_toolchain()
    key = cache_key(build, arch, toolchain)
    root = Path(cache_root) / "builds"
    entry = root / key
    root.mkdir(parents=True, exist_ok=True)
    label = f"{build.overlay}/{build.name} for {arch.value}"
    with locked(root / f"{key}.lock"):
        note_use(cache_root, entry)
        if entry.is_dir() and _published_intact(entry, progress):
            progress.step(f"{label}: cached ({key})")
        elif remote is None or not _pull_build(remote, entry, arch, progress):
            progress.step(f"compiling {label} (zig {toolchain.version}, {build.system})")
            _compile(build, arch, toolchain, Path(cache_root), key, progress, jobs)
        if remote is not None:
            remote.push(f"build-{key}", sorted(p for p in entry.rglob("*") if p.is_file()), progress, base=entry)
        meta = json.loads((entry / "build.json").read_text())
    files = {path: (entry / "files" / path.lstrip("/"), int(mode, 8)) for path, (_, mode) in meta["files"].items()}
    return BuiltFiles(key, files, dict(build.links), f"build:{build.overlay}/{build.name}")


def install_build(rootfs: RootFS, built: BuiltFiles) -> None:
    """Add a build's files and links to `rootfs`, with their parent folders."""
    for path, (host, mode) in sorted(built.files.items()):
        _add_parents(rootfs, path, built.provenance)
        rootfs.add_file(path, host.read_bytes(), mode, provenance=built.provenance)
    for path, target in sorted(built.links.items()):
        _add_parents(rootfs, path, built.provenance)
        rootfs.add_symlink(path, target, provenance=built.provenance)


def _add_parents(rootfs: RootFS, path: str, provenance: str) -> None:
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        folder = "/" + "/".join(parts[:i])
        if folder not in rootfs:
            rootfs.add_dir(folder, 0o755, provenance=provenance)


def cache_key(build: Build, arch: Arch, toolchain: Toolchain) -> str:
    """A short hash of everything that decides the build's files."""
    h = hashlib.sha256()
    recipe = {
        "recipe": RECIPE, "system": build.system, "configure_args": build.configure_args,
        "make_args": build.make_args, "sources": build.sources, "program": build.program,
        "static": build.static, "install": sorted(build.install.items()),
        "zig": toolchain.version, "target": arch.zig_target, "cpu": arch.zig_cpu,
        "source": build.sha256 or _folder_digest(build.folder),
        "patches": [[p.name, hash_file(p)] for p in build.patches],
        "epoch": _epoch(),
    }
    h.update(json.dumps(recipe, sort_keys=True).encode())
    return f"{build.name}-{arch.value}-{h.hexdigest()[:16]}"


def _folder_digest(folder: Path | None) -> str:
    """The SHA-256 of every file's path, mode bits and content under `folder` (symlinks by target)."""
    assert folder is not None
    h = hashlib.sha256()
    for dirpath, dirnames, names in os.walk(folder):
        dirnames.sort()
        for name in sorted(names):
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                h.update(f"L {rel} {os.readlink(path)}\0".encode())
                continue
            executable = os.access(path, os.X_OK)
            h.update(f"F {rel} {int(executable)} {hash_file(path)}\0".encode())
    return h.hexdigest()


def _epoch() -> str:
    return os.environ.get("SOURCE_DATE_EPOCH", str(SOURCE_DATE_EPOCH))


# -- building --------------------------------------------------------------------------------


def _compile(build: Build, arch: Arch, toolchain: Toolchain, cache_root: Path, key: str,
             progress: Progress, jobs: int) -> None:
    """Unpack, patch, build and publish `build` into builds/<key>; the caller holds the lock."""
    root = cache_root / "builds"
    work = root / "work" / key  # fixed: the same inputs compile in the same folder
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        tree = _unpack(build, work / "src", cache_root, progress)
        apply_patches(tree, build.patches)
        cross = toolchain.write_wrappers(work / "bin", arch)
        env = toolchain_env(arch, cross, static=build.static, prefix_map=tree)
        env.update(ZIG_GLOBAL_CACHE_DIR=str(cache_root / "zig"), ZIG_LOCAL_CACHE_DIR=str(work / "zig-local"),
                   SOURCE_DATE_EPOCH=_epoch(), DESTDIR=str(tree / DESTDIR))
        log = work / "build.log"
        with checked_zig_cache(cache_root / "zig", progress), log.open("wb") as out:
            for argv in build_commands(build, arch, env, jobs):
                _run_logged(argv, tree, env, out, log, root / "failed" / f"{key}.log", build, arch, progress)
        _publish(build, arch, tree, log, root / key, toolchain)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_commands(build: Build, arch: Arch, env: Mapping[str, str], jobs: int) -> list[list[str]]:
    """The commands that build `build`, run in its source folder with `env`."""
    make = ["make", f"-j{max(1, jobs)}", *build.make_args]
    tools = [f"{name}={env[name]}" for name in ("CC", "CXX", "AR", "RANLIB", "STRIP")]
    flags = [f"CFLAGS={env['CFLAGS']}", f"LDFLAGS={env['LDFLAGS']}"]
    if build.system == "make":
        return [[*make, *tools, *flags]]
    if build.system == "configure":
        return [["./configure", f"--host={arch.host_triplet}", "--prefix=/usr", *tools, *flags,
                 *build.configure_args], make]
    if build.system == "cmake":
        cmake_vars = [
            "-DCMAKE_SYSTEM_NAME=Linux", f"-DCMAKE_SYSTEM_PROCESSOR={arch.uname_m}",
            f"-DCMAKE_C_COMPILER={env['CC']}", f"-DCMAKE_CXX_COMPILER={env['CXX']}",
            f"-DCMAKE_AR={env['AR']}", f"-DCMAKE_RANLIB={env['RANLIB']}",
            f"-DCMAKE_C_FLAGS={env['CFLAGS']}", f"-DCMAKE_EXE_LINKER_FLAGS={env['LDFLAGS']}",
            "-DCMAKE_BUILD_TYPE=MinSizeRel", "-DCMAKE_INSTALL_PREFIX=/usr",
        ]
        return [["cmake", "-S", ".", "-B", "_build", *cmake_vars, *build.configure_args],
                ["cmake", "--build", "_build", f"-j{max(1, jobs)}"]]
    assert build.system == "cc" and build.program is not None
    return [[env["CC"], *shlex.split(env["CFLAGS"]), "-o", build.program, *build.sources,
             *shlex.split(env["LDFLAGS"])]]


def _unpack(build: Build, dest: Path, cache_root: Path, progress: Progress) -> Path:
    """The build's source tree under `dest`: a copy of its folder, or its tarball's one top folder."""
    if build.folder is not None:
        shutil.copytree(build.folder, dest, symlinks=True)
        return dest
    assert build.sha256 is not None  # the overlay's loading requires urls with sha256
    tarball = download_source(Tarball(build.sha256, build.urls, build.filename), cache_root, progress)
    try:
        with tarfile.open(tarball) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise BuildFailed(f"{build.filename}: cannot unpack ({e})") from e
    tops = list(dest.iterdir())
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else dest


# A compiler's diagnostic: file:line:column: error: message (clang's format).
_DIAGNOSTIC = re.compile(rb"^[^\s:][^:]*:\d+:\d+: (fatal )?error: ")
_COMPILE_LINE = re.compile(rb"(^|\s)-c(\s|$)|^\s*(CC|CXX)\s|Building C")


def _run_logged(argv: list[str], tree: Path, env: Mapping[str, str], out, log: Path, failed_log: Path,
                build: Build, arch: Arch, progress: Progress) -> None:
    """Run one build command, its output into the log; count compiled files for `progress`."""
    label = f"compiling {build.name} for {arch.value}"
    out.write(f"+ {shlex.join(argv)}\n".encode())
    out.flush()
    compiled = sum(a.endswith((".c", ".cc", ".cpp")) for a in argv)  # a direct compiler call (system cc)
    proc = spawn(argv, cwd=tree, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            out.write(line)
            if _COMPILE_LINE.search(line):
                compiled += 1
                progress.advance(label, compiled, None, unit="files")
                if not progress.tty and compiled % 50 == 0:
                    progress.info(f"{label}: {compiled} files")
        returncode = proc.wait()
    finally:
        kill_group(proc)
    out.flush()
    if compiled:
        progress.advance(label, compiled, compiled, unit="files")
    if returncode != 0:
        failed_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, failed_log)
        raise BuildFailed(
            f"{build.overlay}/{build.name} for {arch.value}: {argv[0].rsplit('/', 1)[-1]} failed "
            f"(exit {returncode}): {' | '.join(_error_lines(log, tree))}",
            hint=f"full log: {failed_log}",
        )


def _error_lines(log: Path, tree: Path, count: int = 5) -> list[str]:
    """The compiler's own error lines (file:line:column: error: ...), else the log's last lines."""
    lines = log.read_bytes().splitlines()
    errors = [line for line in lines if _DIAGNOSTIC.match(line)]
    chosen = errors[:count] if errors else [line for line in lines if line.strip()][-count:]
    return [line.decode(errors="replace").strip().replace(f"{tree}/", "") for line in chosen]


def _publish(build: Build, arch: Arch, tree: Path, log: Path, dest: Path, toolchain: Toolchain) -> None:
    """Copy the declared files to a staging folder, audit them, then rename it to `dest`."""
    with tempfile.TemporaryDirectory(prefix=f"publish-{dest.name}-", dir=dest.parent) as tmp:
        stage = Path(tmp) / dest.name
        files = {}
        for image_path, built in sorted(build.install.items()):
            source = tree / built
            if not source.is_file() or source.is_symlink():
                raise BuildFailed(f"{build.overlay}/{build.name} for {arch.value}: the build made no file {built} "
                                  f"(install: {image_path})")
            target = stage / "files" / image_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            mode = 0o755 if source.stat().st_mode & stat.S_IXUSR else 0o644
            target.chmod(mode)
            files[image_path] = [hash_file(target), f"{mode:o}"]
        report = audit_paths([p for p in (stage / "files").rglob("*") if p.is_file()], arch)
        if report.errors:
            raise BuildFailed(f"{build.overlay}/{build.name} for {arch.value} fails the ELF audit: {report.errors[0]}")
        shutil.copyfile(log, stage / "build.log")
        meta = {"build": build.name, "overlay": build.overlay, "arch": arch.value, "zig": toolchain.version,
                "source": build.sha256 or str(build.folder), "files": files}
        (stage / "build.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if dest.exists():  # a damaged leftover (the caller holds the lock)
            shutil.rmtree(dest)
        os.replace(stage, dest)


def _pull_build(remote: RemoteCache, dest: Path, arch: Arch, progress: Progress) -> bool:
    """Take build `dest` from the remote cache: its files verified by digest, against the
    SHA-256 build.json records, and by the ELF audit, as a local build's. Whether it did."""
    folder = remote.pull(f"build-{dest.name}", dest.parent, progress, remedy="compiling it locally", nested=True)
    if folder is None:
        return False
    try:
        pulled = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        try:
            listed = {"files/" + path.lstrip("/") for path in json.loads((folder / "build.json").read_text())["files"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            listed = set()
        if pulled != listed | {"build.json", "build.log"}:
            problem = "its files are not the ones its build.json lists"
        elif not _published_intact(folder, progress):
            return False
        elif (report := audit_paths([folder / p for p in sorted(listed)], arch)).errors:
            problem = f"fails the ELF audit: {report.errors[0]}"
        else:
            os.replace(folder, dest)
            return True
        progress.warn(f"remote cache {remote}: build-{dest.name}: {problem}; refused, compiling it locally")
        return False
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _published_intact(entry: Path, progress: Progress) -> bool:
    """Whether every file of a published build matches its SHA-256 in build.json; if not, the
    entry is discarded with a warning and the caller builds again."""
    try:
        meta = json.loads((entry / "build.json").read_text())
        for image_path, (digest, _) in meta["files"].items():
            data = (entry / "files" / image_path.lstrip("/")).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                problem = f"{image_path} does not match the SHA-256 in build.json"
                break
        else:
            return True
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"unreadable ({type(e).__name__}: {e})"
    discard_damaged(entry, problem, "building it again", progress)
    return False
