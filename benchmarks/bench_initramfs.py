"""fwgen's initramfs writer against `find | cpio -o -H newc | gzip -9` on the same tree.

    python benchmarks/bench_initramfs.py [--tree DIR ...] [--initramfs FILE] [--repeat N] [--write-readme]

fwgen reads the host folder into its in-memory model once (`read_folder`, owners squashed
to root, not timed: a build already holds the model) and times `write_initramfs`. The standard
pipeline reads the same folder from disk: `find . | LC_ALL=C sort | cpio -o -H newc -R 0:0
--reproducible | <compressor>`, one row for every compression fwgen's writer has (cpio.COMPRESSIONS;
the benchmark stops if one has no standard command here): gzip -9 -n, the kernel's own
initramfs setting, against fwgen's level 6; xz with a CRC32 check and a 1 MiB dictionary at
preset 6 and zstd -19, as fwgen's; none (cat). Targets: size at most 1.03x, time at most
1.5x of the pipeline; a row that misses one says so ("MISS size", "MISS time"). The pipeline's processes run
concurrently on up to 2 cores; fwgen uses one. "cpu" compares CPU seconds (children summed),
which a busy machine disturbs less than wall time; the best of `--repeat` alternating runs
is kept. The default trees: a built board's initramfs unpacked (out/qemu-aarch64 when it
exists), Python's standard library and its email package.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from readme import best_runs, header, row, tree_size, update_readme  # noqa: E402

from fwgen.images.cpio import COMPRESSIONS as WRITTEN  # noqa: E402
from fwgen.images.cpio import write_initramfs  # noqa: E402
from fwgen.rootfs import RootFS, read_folder  # noqa: E402

EPOCH = 1_700_000_000
COMPRESSORS = {
    "none": "cat",
    "gzip": "gzip -9 -n",
    "xz": "xz --check=crc32 --lzma2=preset=6,dict=1MiB",
    "zstd": "zstd -19 -q",
}
DEFAULT_INITRAMFS = ROOT / "out" / "qemu-aarch64" / "initramfs.cpio.gz"


def time_fwgen(rootfs: RootFS, out: Path, compression: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    write_initramfs(rootfs, out, compression=compression, mtime=EPOCH)
    return time.perf_counter() - started, time.process_time() - cpu


def time_pipeline(src: Path, out: Path, compression: str) -> tuple[float, float]:
    script = (f"find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible "
              f"| {COMPRESSORS[compression]} > {out}")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH), LC_ALL="C")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["sh", "-ec", script], cwd=src, env=env, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def count_members(archive: Path, compression: str) -> int:
    """Members as GNU cpio lists them (an independent reader of fwgen's output)."""
    decompress = {"none": "cat", "gzip": "gzip -dc", "xz": "xz -dc", "zstd": "zstd -dcq"}[compression]
    listing = subprocess.run(["sh", "-ec", f"{decompress} {archive} | cpio --quiet -it"],
                             capture_output=True, text=True, check=True).stdout
    return len(listing.splitlines())


def unpack_initramfs(archive: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    # Device nodes need root to create; without it cpio warns and skips them, which the
    # benchmark can live with (both tools then see the same tree).
    subprocess.run(["sh", "-c", f"gzip -dc {archive} | cpio --quiet -idm --no-absolute-filenames"],
                   cwd=dest, check=False, stderr=subprocess.DEVNULL)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", help="a host folder (repeatable)")
    parser.add_argument("--initramfs", type=Path, help="a gzip initramfs to unpack and use as a tree")
    parser.add_argument("--compression", action="append", choices=list(COMPRESSORS))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--write-readme", action="store_true", help="put the table in benchmarks/README.md")
    args = parser.parse_args()
    missing = [name for name in WRITTEN if name not in COMPRESSORS]
    if missing:
        raise SystemExit(f"no standard compressor command for {', '.join(missing)}: add it to COMPRESSORS")
    for tool in ("cpio", "gzip", "xz", "zstd", "find", "sort"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install it (GNU cpio, gzip, xz-utils, zstd)")

    with tempfile.TemporaryDirectory(prefix="bench-initramfs-") as tmp:
        trees = list(args.tree or [])
        initramfs = args.initramfs
        if not trees and initramfs is None:
            initramfs = DEFAULT_INITRAMFS if DEFAULT_INITRAMFS.exists() else None
            trees = [Path("/usr/lib/python3.11"), Path("/usr/lib/python3.11/email")]
        if initramfs is not None:
            trees.insert(0, unpack_initramfs(initramfs, Path(tmp) / "initramfs"))
        lines = [header(34, "cpio")]
        print(lines[0])
        for src in trees:
            paths, _, total = tree_size(src)
            label = f"{src.name} ({paths} paths, {total / 1e6:.1f} MB)"
            rootfs = read_folder(src, all_root=True)
            for compression in args.compression or list(WRITTEN):
                ours, theirs = Path(tmp) / "fwgen.cpio", Path(tmp) / "gnu.cpio"
                best = best_runs(args.repeat, partial(time_fwgen, rootfs, ours, compression),
                                 partial(time_pipeline, src, theirs, compression))
                members_ours, members_theirs = count_members(ours, compression), count_members(theirs, compression)
                note = "" if members_ours == members_theirs else f"  members {members_ours} vs {members_theirs}"
                lines.append(row(label, 34, compression, (ours.stat().st_size, theirs.stat().st_size), *best) + note)
                print(lines[-1], flush=True)
    if args.write_readme:
        update_readme("initramfs", lines)


if __name__ == "__main__":
    main()
