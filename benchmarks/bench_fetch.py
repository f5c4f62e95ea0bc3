"""fwgen's package fetcher against apt-get + dpkg-deb: same packages, same mirror, same run.

    python benchmarks/bench_fetch.py [--arch armv7] [--set default|large | --packages a,b,...]
                                     [--repeat N] [--skip-cold]

fwgen: load the verified index (its compact form from the cache when warm), resolve, download
in parallel into its cache (SHA-256 checked), extract every .deb into the in-memory root
filesystem. apt: `apt-get update` into a private lists folder (apt's own InRelease check),
`apt-get install --download-only` with an empty dpkg status (so it resolves the same
closure), then `dpkg-deb -x` of every .deb. Each side runs as its own processes, timed the
same way (wall clock, and CPU seconds of the children). fwgen's child may write bytecode
(as an installed fwgen has it), whatever PYTHONDONTWRITEBYTECODE says.

Sets: default is a small device's (12 packages with dependencies), large is python3-minimal's
closure with a few tools (50+ packages).

Rows:
  cold          empty caches: both fetch InRelease, Packages.xz and every .deb
  warm          everything cached: fwgen reuses its compact index; apt skips `update`
  warm-noparse  fwgen with its derived files (compact index, zstd copies) deleted
  apt-update    a warm `apt-get update` alone (If-Modified-Since round trips), for reference
Network rows depend on the mirror; the warm rows are the ones that measure the tools.
Each fwgen row is followed by its breakdown: import, index load, resolve, download, extract.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from readme import update_readme  # noqa: E402

from fwgen.arch import Arch  # noqa: E402

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
SETS = {
    "default": "dropbear-bin,busybox-static,libssl3,zlib1g,libstdc++6",
    "large": "python3-minimal,dropbear-bin,busybox-static,libstdc++6,iproute2,curl",
}
KEYRINGS = (Path("/usr/share/keyrings/debian-archive-keyring.gpg"),
            ROOT / "fwgen" / "keys" / "debian-archive-bookworm-automatic.pgp")


# -- fwgen, in a child process like a real build ------------------------------------------
def fwgen_child(cache_root: str, arch: str, names: list[str]) -> None:
    """Run in a fresh interpreter: resolve, download and extract; print timings as JSON."""
    started = time.perf_counter()
    from fwgen.board import Feed
    from fwgen.cache import Cache
    from fwgen.fetch import download_packages, install_package, load_index, resolve
    from fwgen.rootfs import RootFS

    imported = time.perf_counter()
    cache = Cache(Path(cache_root))
    feeds = [Feed("debian", "deb", MIRROR, suite=SUITE)]
    index = load_index(feeds, Arch(arch), cache=cache)
    loaded = time.perf_counter()
    resolution = resolve(index, names)
    resolved = time.perf_counter()
    fetched = download_packages(resolution.packages, cache=cache, jobs=8)
    downloaded = time.perf_counter()
    rootfs = RootFS()
    for item in fetched:
        install_package(rootfs, item)
    extracted = time.perf_counter()
    print(json.dumps({
        "import": imported - started, "index": loaded - imported, "resolve": resolved - loaded,
        "download": downloaded - resolved, "extract": extracted - downloaded,
        "packages": sorted(p.name for p in resolution.packages),
        "bytes": sum(p.size for p in resolution.packages), "paths": len(rootfs.entries),
    }))


def run_fwgen(cache_root: Path, arch: Arch, names: list[str]) -> tuple[float, float, dict]:
    argv = [sys.executable, __file__, "--child", str(cache_root), arch.value, ",".join(names)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    wall, cpu, out = timed(argv, env=env)
    return wall, cpu, json.loads(out)


# -- apt-get + dpkg-deb -----------------------------------------------------------------
class AptRoot:
    """A private apt configuration: its own sources, lists, archives and an empty status."""

    def __init__(self, folder: Path, arch: str) -> None:
        self.folder = folder
        for sub in ("lists/partial", "archives/partial", "cache", "etc/apt.conf.d", "etc/sources.list.d",
                    "etc/preferences.d", "etc/trusted.gpg.d", "state"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "state" / "status").write_text("")
        keyring = next(k for k in KEYRINGS if k.exists())
        (folder / "etc" / "sources.list").write_text(f"deb [signed-by={keyring}] {MIRROR} {SUITE} main\n")
        settings = {
            "Dir::State": folder / "state", "Dir::State::Lists": folder / "lists",
            "Dir::State::status": folder / "state" / "status",
            "Dir::Cache": folder / "cache", "Dir::Cache::archives": folder / "archives",
            "Dir::Etc::SourceList": folder / "etc" / "sources.list",
            "Dir::Etc::SourceParts": folder / "etc" / "sources.list.d",
            "Dir::Etc::Parts": folder / "etc" / "apt.conf.d",  # none of the host's apt.conf.d
            "Dir::Etc::PreferencesParts": folder / "etc" / "preferences.d",
            "Dir::Etc::TrustedParts": folder / "etc" / "trusted.gpg.d",
            "APT::Architecture": arch, "APT::Architectures": arch,
            "APT::Install-Recommends": "false", "Acquire::Languages": "none",
            "Debug::NoLocking": "true", "APT::Sandbox::User": "root",
        }
        lines = [f'{key} "{value}";' for key, value in settings.items()]
        self.config = folder / "apt.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.env = dict(os.environ, APT_CONFIG=str(self.config), LANG="C")

    def update(self) -> tuple[float, float]:
        wall, cpu, _ = timed(["apt-get", "-q", "update"], env=self.env)
        return wall, cpu

    def download_and_extract(self, names: list[str], dest: Path) -> tuple[float, float, list[str]]:
        wall, cpu, _ = timed(["apt-get", "-q", "-y", "install", "--download-only", *names], env=self.env)
        debs = sorted((self.folder / "archives").glob("*.deb"))
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for deb in debs:
            w, c, _ = timed(["dpkg-deb", "-x", str(deb), str(dest)])
            wall, cpu = wall + w, cpu + c
        return wall, cpu, sorted(d.name.split("_", 1)[0] for d in debs)


# -- measuring ----------------------------------------------------------------------------
def timed(argv: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, its stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, done.stdout


def row(label: str, ours: tuple[float, float], theirs: tuple[float, float], facts: dict | None = None) -> str:
    (w1, c1), (w2, c2) = ours, theirs
    line = f"{label:<13} {w1:>8.2f} {w2:>8.2f} {w1 / w2:>6.2f} {c1:>8.2f} {c2:>8.2f} {c1 / c2:>6.2f}"
    if facts is not None:
        line += "  " + breakdown(facts)
    print(line, flush=True)
    return line


def breakdown(facts: dict) -> str:
    return " ".join(f"{part} {facts[part]:.2f}" for part in ("import", "index", "resolve", "download", "extract"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="armv7", choices=[a.value for a in Arch if a.debian])
    parser.add_argument("--set", default="default", choices=sorted(SETS), help="a named package set")
    parser.add_argument("--packages", help="comma-separated names (instead of --set)")
    parser.add_argument("--repeat", type=int, default=3, help="warm runs per tool (best is kept)")
    parser.add_argument("--skip-cold", action="store_true", help="no cold runs (they load the mirror)")
    parser.add_argument("--write-readme", action="store_true", help="put the table in benchmarks/README.md")
    args = parser.parse_args()
    arch, names = Arch(args.arch), (args.packages or SETS[args.set]).split(",")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install apt and dpkg")

    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        lines = measure(Path(tmp), arch, names, args.repeat, args.skip_cold)
    if args.write_readme:
        update_readme(f"fetch-{args.set if not args.packages else 'custom'}", lines)


def measure(tmp: Path, arch: Arch, names: list[str], repeat: int, skip_cold: bool) -> list[str]:
    """Run the rows; print them and return them as lines."""
    cache, apt = tmp / "fwgen-cache", AptRoot(tmp / "apt", arch.debian)
    dest = tmp / "extract"
    lines = [f"{arch.value} ({arch.debian}): {', '.join(names)}",
             f"{'':<13} {'fwgen s':>8} {'apt s':>8} {'ratio':>6} {'fwgen cpu':>8} {'apt cpu':>8} {'ratio':>6}"
             "  fwgen's breakdown (s)"]
    print(*lines, sep="\n", flush=True)
    if skip_cold:
        run_fwgen(cache, arch, names)
        apt.update()
        apt.download_and_extract(names, dest)
    else:
        w, c, facts = run_fwgen(cache, arch, names)
        uw, uc = apt.update()
        aw, ac, apt_names = apt.download_and_extract(names, dest)
        lines.append(row("cold", (w, c), (uw + aw, uc + ac), facts))
    warm_ours, warm_theirs, noparse = [], [], []
    for _ in range(repeat):  # alternate, so a busy machine slows both alike
        w, c, facts = run_fwgen(cache, arch, names)
        warm_ours.append((w, c, facts))
        aw, ac, apt_names = apt.download_and_extract(names, dest)
        warm_theirs.append((aw, ac))
        shutil.rmtree(cache / "derived", ignore_errors=True)
        w, c, no_facts = run_fwgen(cache, arch, names)
        noparse.append((w, c, no_facts))
    best, theirs = min(warm_ours, key=lambda r: r[0]), min(warm_theirs)
    lines.append(row("warm", best[:2], theirs, best[2]))
    slow = min(noparse, key=lambda r: r[0])
    lines.append(row("warm-noparse", slow[:2], theirs, slow[2]))
    update = min(apt.update() for _ in range(repeat))
    lines.append(f"{'apt-update':<13} {'':>8} {update[0]:>8.2f} {'':>6} {'':>8} {update[1]:>8.2f}")
    facts = best[2]
    ours, apt_set = set(facts["packages"]), set(apt_names)
    if ours != apt_set:
        lines.append(f"package sets differ: only fwgen {sorted(ours - apt_set)}, only apt {sorted(apt_set - ours)}")
    else:
        lines.append(f"same {len(ours)} packages, {facts['bytes'] / 1e6:.1f} MB, {facts['paths']} paths")
    print(*lines[-2:], sep="\n", flush=True)
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        fwgen_child(sys.argv[2], sys.argv[3], sys.argv[4].split(","))
    else:
        main()
