"""musl-linked static BusyBox, built from pinned source with Zig, cached, and proven to run.

`build_busybox` returns the path of a binary that passed the functional gate
(`fwgen.busybox_gate`) and the ELF audit; `install_busybox` puts it into a root filesystem
with the applet links the binary itself lists (`busybox_gate.list_applets`, run under
qemu-user as the gate runs it).

Cache layout under `cache_root`:
    sha256/..                        the source tarball, in fwgen.fetch's download cache
    busybox/<key>/busybox            the published binary, with its .config and build.log
    busybox/<key>/build.json         what it was built from, and the binary's SHA-256
    busybox/<key>.lock               flock held while <key> is built
    busybox/trees/<tree>/            the patched source tree per (source, target, toolchain),
                                     kept so a changed fragment recompiles only what it affects
    busybox/trees/<tree>/manifest.json  the SHA-256 of every file of src/ and zig-local/
    busybox/failed/<key>.log         the full log of the last failed build
    zig/                             ZIG_GLOBAL_CACHE_DIR: zig's musl and compiler_rt per target
    zig/fwgen-link-inputs.json       their SHA-256, checked before each compile (busybox_toolchain)
    zig.lock                         shared while compiling, exclusive to wipe or record zig/
The key hashes everything that decides the binary: source, patches, configuration, target
and toolchain version. A key that exists is a finished, verified build: nothing compiles.
Both are checked when reused: the binary against the SHA-256 in build.json, the tree against
its manifest. A damaged one is discarded with a warning and made again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .arch import Arch
from .audit import audit_paths
from .busybox_download import download_source
from .busybox_gate import check_busybox, list_applets
from .busybox_toolchain import Toolchain, checked_zig_cache, find_toolchain
from .cache import discard_damaged, note_use
from .errors import ConfigError, FwgenError
from .files import hash_file, replacing
from .progress import QUIET, Progress
from .rootfs import EntryType, RootFS
from .run import kill_group, run, spawn

if TYPE_CHECKING:
    from .remote_cache import RemoteCache

DATA = Path(__file__).parent / "data" / "busybox"
BASE_FRAGMENT = DATA / "fwgen.config"
PATCHES = DATA / "patches"

# Bump when the build recipe changes in a way the other key inputs do not capture.
RECIPE = "fwgen-busybox-1"
# The default build date: BusyBox 1.35.0's release day (2021-12-26).
SOURCE_DATE_EPOCH = 1640476800


@dataclass(frozen=True)
class BusyboxSource:
    """A pinned BusyBox release: version, SHA-256 of the tarball, mirrors tried in order."""

    version: str
    sha256: str
    urls: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"busybox-{self.version}.tar.bz2"


DEFAULT_SOURCE = BusyboxSource(
    version="1.35.0",
    sha256="faeeb244c35a348a334f4a59e44626ee870fb07b6884d68c10ae8bc19f83a694",
    urls=(
        "https://busybox.net/downloads/busybox-1.35.0.tar.bz2",
        # Debian's pool carries the pristine upstream tarball (same SHA-256).
        "http://deb.debian.org/debian/pool/main/b/busybox/busybox_1.35.0.orig.tar.bz2",
    ),
)


class BusyboxBuildError(FwgenError):
    """BusyBox failed to configure, compile or pass its functional gate."""


# -- the public steps -------------------------------------------------------------------------


def build_busybox(
    arch: Arch,
    *,
    source: BusyboxSource = DEFAULT_SOURCE,
    fragments: Sequence[Path] = (),
    cache_root: Path,
    progress: Progress = QUIET,
    jobs: int = 2,
    remote: RemoteCache | None = None,
) -> Path:
    """Build (or find in the cache) a static musl BusyBox for `arch`; return the binary's path.

    `fragments` are Kconfig fragments (`CONFIG_X=y`, `# CONFIG_X is not set`) applied in
    order after `make defconfig` and fwgen's own settings. A fresh build must pass the
    functional gate under qemu-user and the ELF audit before it is published; so must one
    pulled from the `remote` cache, which is asked before compiling and offered what was built.
    """
    toolchain = find_toolchain()
    fragment_texts = [_read_fragment(f) for f in (BASE_FRAGMENT, *fragments)]
    patches = patches_for(source)
    key = cache_key(arch, source, patches, fragment_texts, toolchain)
    root = Path(cache_root) / "busybox"
    published = root / key / "busybox"
    (root / "trees").mkdir(parents=True, exist_ok=True)
    with locked(root / f"{key}.lock"):
        note_use(cache_root, root / key)
        if published.is_file() and _published_intact(root / key, progress):
            progress.step(f"busybox {source.version} for {arch.value}: cached ({key})")
            _share_build(remote, root / key, progress)
            return published
        if remote is not None and _pull_build(remote, root / key, arch, progress):
            return published
        tarball = download_source(source, Path(cache_root), progress)
        progress.step(f"building busybox {source.version} for {arch.value} (zig {toolchain.version})")
        tree_root = root / "trees" / tree_key(arch, source, patches, toolchain)
        with locked(tree_root.with_name(tree_root.name + ".lock")):
            note_use(cache_root, tree_root)
            tree = _prepare_tree(tarball, tree_root, source, patches, progress)
            make = _make_command(toolchain, arch, tree_root / "bin", jobs)
            env = _build_env(Path(cache_root), tree_root)
            with checked_zig_cache(Path(cache_root) / "zig", progress), _changing(tree_root):
                _configure(tree, make, env, fragments=list(zip((BASE_FRAGMENT, *fragments), fragment_texts, strict=True)))
                _compile(tree, make, env, tree_root / "build.log", root / "failed" / f"{key}.log", arch, progress)
            meta = _describe(arch, source, toolchain, fragments, tree / "busybox")
            _verify_and_publish(tree, tree_root / "build.log", root / key, arch, meta, progress)
            _share_build(remote, root / key, progress)
    progress.info(f"busybox for {arch.value}: {published.stat().st_size} bytes")
    return published


def install_busybox(rootfs: RootFS, binary: bytes, arch: Arch, *, provenance: str = "busybox",
                    sysroot: Mapping[str, bytes] | None = None) -> list[str]:
    """Add /bin/busybox and a symlink for every applet the binary lists; return the links.

    The applet list comes from the binary's own `--list-full` run under qemu-user, so it
    always matches the configuration: what `busybox --install -s` does on the device
    (Alpine's busybox runs it as its .post-install). A path the root filesystem already
    holds (a package's real program) is left alone, as --install leaves it. A dynamically
    linked BusyBox (Alpine's) runs with `sysroot`: image path -> bytes of its loader and
    libraries.
    """
    rootfs.add_file("/bin/busybox", binary, 0o755, provenance=provenance)
    installed = []
    for applet in list_applets(binary, arch, sysroot):
        path = "/" + applet
        if path in rootfs:
            continue
        rootfs.add_symlink(path, "/bin/busybox", provenance=provenance)
        installed.append(path)
    return installed


def export_busybox(binary: Path, out: Path) -> None:
    """Copy a built binary to `out` (for `fwgen busybox --out`): whole, or not at all."""
    with open(binary, "rb") as src, replacing(out, mode=0o755) as dst:
        shutil.copyfileobj(src, dst)


def tree_key(arch: Arch, source: BusyboxSource, patches: Sequence[Path], toolchain: Toolchain) -> str:
    """The build tree a key compiles in: everything but the configuration."""
    return cache_key(arch, source, patches, [], toolchain)


def cache_key(arch: Arch, source: BusyboxSource, patches: Sequence[Path], fragments: Sequence[str], toolchain: Toolchain) -> str:
    """A short hash of everything that decides the binary."""
    h = hashlib.sha256()
    parts = [RECIPE, source.version, source.sha256, arch.zig_target, *arch.zig_cpu, toolchain.version]
    parts += [p.name + "\0" + p.read_text() for p in patches]
    parts += list(fragments)
    for part in parts:
        h.update(part.encode() + b"\0\0")
    return f"{source.version}-{arch.value}-{h.hexdigest()[:16]}"


# -- configuration ----------------------------------------------------------------------------

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_fragment(path: Path, text: str) -> dict[str, str | None]:
    """Symbol -> value (None for "is not set") of a Kconfig fragment; ConfigError on junk."""
    settings: dict[str, str | None] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if m := _SET.match(line):
            settings[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            settings[m.group(1)] = None
        elif line and not line.startswith("#"):
            raise ConfigError(
                f"not a Kconfig setting: {line!r}", file=str(path), line=number,
                hint="write CONFIG_NAME=value or '# CONFIG_NAME is not set'",
            )
    return settings


def _read_fragment(path: Path) -> str:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read BusyBox config fragment: {e.strerror}", file=str(path)) from e
    parse_fragment(path, text)
    return text


def _configure(tree: Path, make: list[str], env: dict[str, str], *, fragments: list[tuple[Path, str]]) -> None:
    run([*make, "defconfig"], cwd=tree, env=env)
    wanted: dict[str, tuple[str | None, Path]] = {}
    for path, text in fragments:
        for symbol, value in parse_fragment(path, text).items():
            wanted[symbol] = (value, path)
    config = tree / ".config"
    kept = [line for line in config.read_text().splitlines() if _symbol(line) not in wanted]
    added = [f"{s}={v}" if v is not None else f"# {s} is not set" for s, (v, _) in wanted.items()]
    config.write_text("\n".join(kept + added) + "\n")
    # oldconfig asks about symbols a fragment newly exposed: Enter takes their defaults.
    run([*make, "oldconfig"], cwd=tree, env=env, input=b"\n" * 4000)
    final = {s: v for line in config.read_text().splitlines() if (s := _symbol(line)) for v in [_value(line)]}
    for symbol, (value, path) in wanted.items():
        if final.get(symbol) != value:
            raise ConfigError(
                f"{symbol}={value if value is not None else 'n'} did not take effect "
                f"(BusyBox's Kconfig left it {final.get(symbol) or 'unset'})",
                file=str(path), hint="check the symbol's dependencies in BusyBox's Config.in",
            )


def _symbol(line: str) -> str | None:
    m = _SET.match(line) or _UNSET.match(line)
    return m.group(1) if m else None


def _value(line: str) -> str | None:
    m = _SET.match(line)
    return m.group(2) if m else None


# -- building ---------------------------------------------------------------------------------


def patches_for(source: BusyboxSource) -> list[Path]:
    """fwgen's patches for a BusyBox release, in the order they are applied."""
    return sorted(PATCHES.glob(f"{source.version}-*.patch"))


def _prepare_tree(tarball: Path, tree_root: Path, source: BusyboxSource, patches: Sequence[Path], progress: Progress) -> Path:
    """The patched source tree in `tree_root`, unpacked once and kept between builds.

    Kbuild records which CONFIG_ symbols each object depends on (fixdep), so a build with a
    changed fragment recompiles only the affected files. The tree is unpacked into a temporary
    folder and renamed into place, so a half-unpacked tree is never reused; a kept tree that
    no longer matches its manifest is discarded with a warning and unpacked again.
    """
    tree = tree_root / "src" / f"busybox-{source.version}"
    if tree_root.exists():
        problem = _tree_damage(tree_root)
        if problem is None:
            return tree
        discard_damaged(tree_root, problem, "unpacking the source again (a full build)", progress)
    shutil.rmtree(tree_root, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{tree_root.name}-", dir=tree_root.parent))
    try:
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp / "src", filter="data")
        if not (tmp / "src" / tree.name / "Makefile").is_file():
            raise BusyboxBuildError(f"{source.filename}: no {tree.name}/Makefile inside")
        apply_patches(tmp / "src" / tree.name, patches)
        _write_manifest(tmp)
        os.replace(tmp, tree_root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tree


# -- the kept tree's manifest -----------------------------------------------------------------
# The SHA-256 of every file (the target of every symlink) under src/ and zig-local/, which
# is what make and zig read. bin/ (the toolchain wrappers) and build.log are rewritten by
# every build. Hashing the ~5,300 files (25-30 MB) of a built tree takes 0.4-1.2 s, paid
# twice (checked before make, written after) and only by builds that compile.
_MANIFEST = "manifest.json"
_MANIFEST_FOLDERS = ("src", "zig-local")


def _tree_files(tree_root: Path) -> dict[str, str]:
    files = {}
    for folder in _MANIFEST_FOLDERS:
        for dirpath, _, names in os.walk(tree_root / folder):
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, tree_root)
                if os.path.islink(path):
                    files[rel] = "-> " + os.readlink(path)
                else:
                    files[rel] = hash_file(Path(path))
    return files


def _write_manifest(tree_root: Path) -> None:
    listing = json.dumps(_tree_files(tree_root), sort_keys=True, indent=0) + "\n"  # before the temporary file exists
    with replacing(tree_root / _MANIFEST, suffix=".part") as out:
        out.write(listing.encode())


def _tree_damage(tree_root: Path) -> str | None:
    """What differs between a kept tree and its manifest (None: nothing)."""
    try:
        recorded = json.loads((tree_root / _MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (an interrupted build, or made by an older fwgen)"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    if not isinstance(recorded, dict):
        return "unreadable manifest (not an object)"
    found = _tree_files(tree_root)
    if missing := sorted(recorded.keys() - found.keys()):
        return f"{len(missing)} file(s) missing, first {missing[0]}"
    if extra := sorted(found.keys() - recorded.keys()):
        return f"{len(extra)} file(s) not in the manifest, first {extra[0]}"
    if changed := sorted(rel for rel, digest in found.items() if recorded[rel] != digest):
        return f"{len(changed)} file(s) changed, first {changed[0]}"
    return None


@contextmanager
def _changing(tree_root: Path) -> Iterator[None]:
    """Kbuild is about to change the kept tree: its manifest is dropped until make has
    finished, so a tree left by a killed build is never taken for a consistent one."""
    (tree_root / _MANIFEST).unlink(missing_ok=True)
    try:
        yield
    except FwgenError:
        _write_manifest(tree_root)  # Kbuild recovers from a failed configure or compile: keep the objects
        raise
    except BaseException:
        shutil.rmtree(tree_root, ignore_errors=True)  # interrupted: the next build starts clean
        raise
    _write_manifest(tree_root)


def _published_intact(entry: Path, progress: Progress) -> bool:
    """Whether a published build's binary still matches the SHA-256 and size in its
    build.json; if not, the entry is discarded with a warning (the caller builds again)."""
    try:
        meta = json.loads((entry / "build.json").read_text())
        expected = (meta["sha256"], meta["size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"build.json unreadable ({type(e).__name__}: {e})"
    else:
        data = (entry / "busybox").read_bytes()
        if (hashlib.sha256(data).hexdigest(), len(data)) == expected:
            return True
        problem = "busybox does not match the SHA-256 in build.json"
    discard_damaged(entry, problem, "building it again", progress)
    return False


def apply_patches(tree: Path, patches: Sequence[Path]) -> None:
    for patch in patches:
        run(["patch", "-p1", "--batch", "--forward", "-i", patch], cwd=tree)


def _make_command(toolchain: Toolchain, arch: Arch, bindir: Path, jobs: int) -> list[str]:
    cross = toolchain.write_wrappers(bindir, arch)
    return [
        "make", f"-j{max(1, jobs)}", f"CROSS_COMPILE={cross}", f"HOSTCC={toolchain.host_cc(bindir)}",
        "SKIP_STRIP=y",  # see busybox_toolchain: zig cannot strip, and adds no symbols
    ]


def _build_env(cache_root: Path, work: Path) -> dict[str, str]:
    return {
        # Kconfig stamps the build date into the binary (the version banner): take a fixed
        # one unless the caller sets it, so identical inputs give identical binaries.
        "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", str(SOURCE_DATE_EPOCH)),
        # zig builds musl and compiler_rt once per target; share them across builds and arches.
        "ZIG_GLOBAL_CACHE_DIR": str(cache_root / "zig"),
        "ZIG_LOCAL_CACHE_DIR": str(work / "zig-local"),
    }


def _compile(tree: Path, make: list[str], env: dict[str, str], log: Path, failed_log: Path, arch: Arch, progress: Progress) -> None:
    """Run make, streaming its output to `log` and counting compiled files for `progress`."""
    argv = [*make, "busybox"]
    compiled = 0
    with log.open("wb") as out:
        # make and its compilers form one process group that dies with fwgen (run.spawn).
        proc = spawn(argv, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                if line.startswith(b"  CC "):
                    compiled += 1
                    progress.advance(f"compiling for {arch.value}", compiled, None, unit="files")
                    if not progress.tty and compiled % 100 == 0:  # a log gets a line now and then
                        progress.info(f"compiling for {arch.value}: {compiled} files")
            returncode = proc.wait()
        finally:
            kill_group(proc)  # what make left behind, or all of it on an exception
    progress.advance(f"compiling for {arch.value}", compiled, compiled, unit="files")
    if returncode != 0 or not (tree / "busybox").is_file():
        failed_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, failed_log)
        raise BusyboxBuildError(
            f"busybox for {arch.value} failed to compile: {' | '.join(error_lines(log))}",
            hint=f"full log: {failed_log}",
        )


def error_lines(log: Path, count: int = 5) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()
    errors = [line.strip() for line in lines if "error:" in line or "Error " in line]
    return (errors or [line.strip() for line in lines if line.strip()])[-count:]


def _describe(arch: Arch, source: BusyboxSource, toolchain: Toolchain, fragments: Sequence[Path], binary: Path) -> dict:
    return {
        "version": source.version,
        "source_sha256": source.sha256,
        "arch": arch.value,
        "zig": toolchain.version,
        "zig_target": arch.zig_target,
        "zig_cpu": list(arch.zig_cpu),
        "fragments": [str(f) for f in fragments],
        "sha256": hash_file(binary),
        "size": binary.stat().st_size,
    }


def _verify_and_publish(tree: Path, log: Path, dest: Path, arch: Arch, meta: dict, progress: Progress) -> None:
    """Copy the results to a staging folder, run the gate and the audit on that copy, then
    rename it to `dest` in one step: readers see a verified build or nothing."""
    with tempfile.TemporaryDirectory(prefix=f"publish-{dest.name}-", dir=dest.parent) as tmp:
        stage = Path(tmp) / dest.name
        stage.mkdir()
        shutil.copy2(tree / "busybox", stage / "busybox")
        shutil.copyfile(tree / ".config", stage / "config")
        shutil.copyfile(log, stage / "build.log")
        (stage / "build.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _check_and_publish(stage, dest, arch, progress)


def _check_and_publish(stage: Path, dest: Path, arch: Arch, progress: Progress) -> None:
    """Run the functional gate and the audit on the build in `stage`, then rename it to `dest`."""
    progress.step(f"checking busybox for {arch.value} under {arch.qemu_user}")
    check_busybox(stage / "busybox", arch)
    report = audit_paths([stage / "busybox"], arch)
    if report.errors:
        raise BusyboxBuildError(f"busybox for {arch.value} fails the ELF audit: {report.errors[0]}")
    if dest.exists():  # a leftover without its binary (the caller holds the lock)
        shutil.rmtree(dest)
    os.replace(stage, dest)


# -- the remote cache -------------------------------------------------------------------------
_BUILD_FILES = ("busybox", "build.json", "config", "build.log")


def _share_build(remote: RemoteCache | None, entry: Path, progress: Progress) -> None:
    if remote is not None:
        remote.push(f"busybox-{entry.name}", [entry / name for name in _BUILD_FILES], progress)


def _pull_build(remote: RemoteCache, dest: Path, arch: Arch, progress: Progress) -> bool:
    """Take build `dest` from the remote cache: its files verified by digest, the binary by the
    SHA-256 in its build.json, then the gate and the audit as for a local build. Whether it did."""
    folder = remote.pull(f"busybox-{dest.name}", dest.parent, progress, remedy="building it locally")
    if folder is None:
        return False
    try:
        if sorted(p.name for p in folder.iterdir()) != sorted(_BUILD_FILES):
            progress.warn(f"remote cache {remote}: busybox-{dest.name}: not the files of a build; refused, building it locally")
            return False
        if not _published_intact(folder, progress):
            return False
        (folder / "busybox").chmod(0o755)
        try:
            _check_and_publish(folder, dest, arch, progress)
        except FwgenError as e:  # the gate's or the audit's verdict, or qemu-user failing
            progress.warn(f"remote cache {remote}: busybox-{dest.name}: {e}; refused, building it locally")
            return False
        return True
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`: a second build of the same key waits, then finds it cached."""
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def applet_entries(rootfs: RootFS) -> list[str]:
    """Paths in `rootfs` that are symlinks to /bin/busybox (for reports and tests)."""
    return [e.path for e in rootfs if e.type is EntryType.SYMLINK and e.target == "/bin/busybox"]
