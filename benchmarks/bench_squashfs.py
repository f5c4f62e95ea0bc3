"""fwgen's squashfs writer against mksquashfs: same tree, compressor, block size and cores.

    python benchmarks/bench_squashfs.py [--large DIR] [--small DIR] [--block-size N] [--repeat N]
                                        [--write-readme]

Both tools read the host folder (fwgen through `read_folder`, owners squashed to root
like `-all-root`) and write an image; wall time is the best of `--repeat` alternating runs; "cpu" compares CPU seconds
(all threads), which a busy machine disturbs less. One row per tree and per
compression fwgen's writer has (squashfs_layout.COMPRESSORS), as `mksquashfs -comp NAME`.
Targets: image size within 3% of mksquashfs, wall time at most 1.5x; a row that misses one
says so ("MISS size", "MISS time").
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readme import best_runs, header, row, tree_size, update_readme  # noqa: E402

from fwgen.images import squashfs_layout as L  # noqa: E402
from fwgen.images.squashfs import write_squashfs  # noqa: E402
from fwgen.rootfs import read_folder  # noqa: E402

EPOCH = 1_700_000_000
COMPRESSIONS = tuple(L.COMPRESSORS)


def time_fwgen(src: Path, out: Path, compression: str, block_size: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all threads)."""
    started, cpu = time.perf_counter(), time.process_time()
    rootfs = read_folder(src, all_root=True)
    write_squashfs(rootfs, out, compression=compression, block_size=block_size, mtime=EPOCH, jobs=2)
    return time.perf_counter() - started, time.process_time() - cpu


def time_mksquashfs(src: Path, out: Path, compression: str, block_size: int) -> tuple[float, float]:
    argv = ["mksquashfs", str(src), str(out), "-comp", compression, "-b", str(block_size),
            "-noappend", "-all-root", "-processors", "2", "-quiet", "-no-progress"]
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def bytes_used(image: Path) -> int:
    """The image's size before its 4 KiB padding (superblock bytes_used)."""
    with open(image, "rb") as f:
        return L.SUPERBLOCK.parse(f.read(96)).bytes_used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=Path, default=Path("/usr/lib/python3.11"))
    parser.add_argument("--small", type=Path, default=Path("/usr/lib/python3.11/email"))
    parser.add_argument("--block-size", type=int, default=131072)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--write-readme", action="store_true", help="put the table in benchmarks/README.md")
    args = parser.parse_args()

    lines = [header(32, "mksq")]
    print(lines[0])
    with tempfile.TemporaryDirectory(prefix="bench-squashfs-") as tmp:
        for src in (args.large, args.small):
            _, files, total = tree_size(src)
            label = f"{src.name} ({files} files, {total / 1e6:.1f} MB)"
            for compression in COMPRESSIONS:
                ours, theirs = Path(tmp) / "fwgen.sqfs", Path(tmp) / "mksquashfs.sqfs"
                best = best_runs(args.repeat, partial(time_fwgen, src, ours, compression, args.block_size),
                                 partial(time_mksquashfs, src, theirs, compression, args.block_size))
                lines.append(row(label, 32, compression, (bytes_used(ours), bytes_used(theirs)), *best))
                print(lines[-1], flush=True)
    if args.write_readme:
        update_readme("squashfs", lines)


if __name__ == "__main__":
    main()
