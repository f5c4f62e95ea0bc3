"""The command line: parses arguments, calls the library, prints results.

Every FwgenError becomes one line on stderr and its exit code (fwgen/errors.py: 1 a check
failed, 2 bad input, 3 the guest never became ready or QEMU died, 4 an internal error);
tracebacks only with --verbose. No library code lives here.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import click
import yaml

from . import __version__
from .errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    BootError,
    FormatError,
    FwgenError,
    host_file_error,
    out_of_memory,
    quoted,
    writing,
)
from .files import replacing

pass_state = click.make_pass_decorator(dict, ensure=True)


def _fail(error: FwgenError, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(error)
    click.echo(f"fwgen: error: {error}", err=True)
    if isinstance(error, BootError) and error.console_tail:
        click.echo("--- console tail ---", err=True)
        click.echo(error.console_tail.rstrip(), err=True)
    sys.exit(error.exit_code)


def handle_errors(command):
    """Map library errors to one-line messages and exit codes."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        verbose = click.get_current_context().find_root().params.get("verbose", False)
        try:
            return command(*args, **kwargs)
        except FwgenError as e:
            _fail(e, verbose)
        except OSError as e:
            error = host_file_error(e)
            if error is None:
                raise
            if verbose:
                traceback.print_exception(e)
            _fail(error, verbose=False)
        except MemoryError as e:
            _fail(out_of_memory(e), verbose)
        except KeyboardInterrupt:
            click.echo("fwgen: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException:
            raise
        except Exception as e:  # a bug: one line (the traceback with --verbose), its own exit code
            if verbose:
                traceback.print_exception(e)
            click.echo(f"fwgen: internal error: {type(e).__name__}: {e}", err=True)
            if not verbose:
                click.echo("fwgen: this is a bug: run with --verbose for the traceback", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


def _progress(as_json: bool):
    from .progress import Progress

    return Progress(enabled=not as_json)


def _cache():
    from .cache import Cache

    cache = Cache.default()
    cache.remote = _remote_cache()
    return cache


def _remote_cache():
    """The registry named by FWGEN_REMOTE_CACHE, else by the project's `[cache] remote`
    (fwgen.toml); FWGEN_REMOTE_CACHE_PUSH=1 lets fwgen push to it."""
    from .project import active_projects

    address, where = os.environ.get("FWGEN_REMOTE_CACHE"), "FWGEN_REMOTE_CACHE"
    if not address:
        project = next((p for p in active_projects() if p.remote_cache), None)
        if project is None or project.remote_cache is None:
            return None
        address, where = project.remote_cache, f"{project.source}: cache.remote"
    from .remote_cache import RemoteCache

    return RemoteCache.from_address(address, push=os.environ.get("FWGEN_REMOTE_CACHE_PUSH") == "1", where=where)


def _epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        from .errors import UserError

        raise UserError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds") from None


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


board_dirs_option = click.option(
    "--boards-dir", "boards_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
    help="Another folder of board files (repeatable); searched before fwgen's own boards/.",
)
overlay_dirs_option = click.option(
    "--overlays-dir", "overlay_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
    help="Another folder of overlays (repeatable); searched before fwgen's own overlays/.",
)
qemu_dirs_option = click.option(
    "--qemu-dir", "qemu_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
    help="Another folder of QEMU machine profiles (repeatable).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
out_option = click.option(
    "--out", "out_root", type=click.Path(path_type=Path, file_okay=False),
    help="Outputs go to OUT/<board>/ (default: the project's `out` in fwgen.toml, else ./out).",
)


def _out_root(given: Path | None) -> Path:
    from .project import active_projects

    if given is not None:
        return given
    return next((project.out for project in active_projects() if project.out), Path("out"))


sign_option = click.option(
    "--sign", "sign_key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A secret key from fwgen keygen (usign/signify, unencrypted): sign the update bundle with it.",
)


def _secret_key(path: Path | None):
    """The secret key in `path`, read once before any board runs (None without one)."""
    from .usign import load_secret_key

    return load_secret_key(path) if path is not None else None


def _load_board(board_name, boards_dirs, overlay_dirs, qemu_dirs):
    from .config import load_board

    return load_board(board_name, boards_dirs=list(boards_dirs), qemu_dirs=list(qemu_dirs),
                      overlay_dirs=list(overlay_dirs))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fwgen")
@click.option("--verbose", "-v", is_flag=True, help="Log every external command; tracebacks on errors.")
def main(verbose: bool) -> None:
    """fwgen: embedded Linux firmware for ARM and MIPS boards, proven to boot under QEMU."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")


def many_boards(command):
    """The options that pick boards and say how to run and report them (build and boot)."""
    options = [
        click.argument("board_args", metavar="[BOARD]...", nargs=-1),
        click.option("--board", "-b", "board_names", multiple=True,
                     help="A board name or a board file path (repeatable; boards may also be given as arguments)."),
        click.option("--all", "all_boards", is_flag=True, help="Every board found (as 'fwgen boards' lists them)."),
        click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
                     help="How many boards to run at once."),
        click.option("--junit", "junit_file", type=click.Path(path_type=Path, dir_okay=False),
                     help="Write a JUnit XML report for CI (one test case per step and check) to this file."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _board_list(board_args, board_names, all_boards, boards_dirs) -> list[str]:
    from .batch import unique
    from .config import list_boards
    from .errors import UserError

    names = [*board_names, *board_args]
    if all_boards:
        names += [str(path) for _, path, _ in list_boards(list(boards_dirs))]
    if not names:
        raise UserError("no board given", "name boards (or --board BOARD), or use --all for every board found")
    return list(unique(names, key=lambda name: _board_file(name, boards_dirs)))


def _board_file(name: str, boards_dirs) -> str:
    """The file a board name or path stands for (itself when there is none: its run says so),
    so a board given twice (by name, by path, through --all) runs once."""
    from .config import find_board

    try:
        return str(find_board(name, list(boards_dirs)).resolve())
    except FwgenError:
        return name


def _run_boards(action: str, names: list[str], jobs: int, junit_file: Path | None, as_json: bool,
                load, work, pipelines, show) -> None:
    """Run `work` on every board, print each result as it comes (and a summary table for
    several), write the JUnit report, and exit with the highest of the boards' exit codes."""
    from datetime import datetime

    from .batch import exit_code, run_board, run_boards

    single = len(names) == 1
    verbose = click.get_current_context().find_root().params.get("verbose", False)
    started = datetime.now()

    def done(outcome) -> None:
        if outcome.error is not None:
            named = single or outcome.message.startswith(outcome.board)
            _report_error(outcome, verbose, prefix="" if named else f"{outcome.board}: ")
        elif not as_json:
            show(outcome.result)

    outcomes = run_boards(names, lambda name: run_board(name, action, load, work, pipelines),
                          jobs=jobs, on_done=done)
    if junit_file is not None:
        from .junit import write_junit

        write_junit(junit_file, outcomes, action=action, started=started)
    if as_json:
        records = [_outcome_json(o) for o in outcomes]
        _emit_json(records[0] if single else records)
    if not single:
        _print_summary(outcomes, err=as_json)
    code = exit_code(outcomes)
    if code:
        sys.exit(code)


def _report_error(outcome, verbose: bool, prefix: str) -> None:
    if verbose:
        traceback.print_exception(outcome.error)
    click.echo(f"fwgen: error: {prefix}{outcome.message}", err=True)
    if outcome.console_tail:
        click.echo(f"--- {prefix}console tail ---", err=True)
        click.echo(outcome.console_tail.rstrip(), err=True)
    if not isinstance(outcome.error, FwgenError) and not verbose:
        click.echo("fwgen: this is a bug: run with --verbose for the traceback", err=True)


def _print_summary(outcomes, *, err: bool) -> None:
    width = max(len("BOARD"), *(len(o.board) for o in outcomes))
    steps = max(len("STEP"), *(len(o.step) for o in outcomes))
    click.echo(f"{'BOARD':{width}}  {'STEP':{steps}}  RESULT  SECONDS", err=err)
    for o in outcomes:
        click.echo(f"{o.board:{width}}  {o.step:{steps}}  {o.verdict.upper():6}  {o.seconds:7.1f}", err=err)
    failed = sum(o.exit_code != 0 for o in outcomes)
    click.echo(f"{len(outcomes) - failed}/{len(outcomes)} boards passed", err=err)


def _outcome_json(outcome) -> dict:
    """One board's result: what `fwgen build/boot --json` printed for it, with the verdict,
    the step and the exit code; on an error, the error, where it points and the step."""
    record = {"board": outcome.board, "action": outcome.action, "result": outcome.verdict,
              "exit_code": outcome.exit_code, "step": outcome.step, "seconds": round(outcome.seconds, 2)}
    if outcome.error is not None:
        record.update(error=outcome.message, where=outcome.where, console_tail=outcome.console_tail or None)
    elif outcome.action == "build":
        record.update(_build_json(outcome.result))
    else:
        record.update(_boot_json(outcome.result))
    return record


def _build_json(result) -> dict:
    inputs = result.manifest["inputs"]
    return {"outdir": str(result.outdir), "build_seconds": round(result.seconds, 2), "up_to_date": result.up_to_date,
            "outputs": result.manifest["outputs"], "packages": inputs["packages"], "kernel": inputs["kernel"]}


def _boot_json(result) -> dict:
    return {"passed": result.passed, "ready_seconds": round(result.ready_seconds, 2), "died": result.died or None,
            "console_log": str(result.console_log),
            "checks": [{"name": c.name, "kind": c.kind, "passed": c.passed, "seconds": round(c.seconds, 2),
                        "detail": c.detail} for c in result.checks]}


@main.command()
@many_boards
@board_dirs_option
@overlay_dirs_option
@qemu_dirs_option
@out_option
@click.option("--compression", type=click.Choice(["gzip", "xz", "zstd", "none"]), default="gzip",
              show_default=True, help="Initramfs compression.")
@sign_option
@click.option("--force", is_flag=True, help="Build even when the published build is up to date.")
@click.option("--locked", "lock_file", is_flag=False, flag_value="", default=None, metavar="[FILE]",
              help="Build exactly what the lock file pins (default ./<board>.lock; put the option after the "
                   "boards when it takes no FILE).")
@json_option
@handle_errors
def build(board_args, board_names, all_boards, jobs, junit_file, boards_dirs, overlay_dirs, qemu_dirs,
          out_root, compression, sign_key, force, lock_file, as_json):
    """Build boards' firmware, each into OUT/<board>/."""
    from .build import build as build_board
    from .errors import UserError
    from .lock import default_lock_path, read_lock
    from .progress import Progress

    names = _board_list(board_args, board_names, all_boards, boards_dirs)
    cache, epoch, out_root, key = _cache(), _epoch(), _out_root(out_root), _secret_key(sign_key)
    if lock_file and len(names) > 1:
        raise UserError(f"--locked {lock_file}: one lock file for {len(names)} boards",
                        "give --locked without a file: each board reads ./<board>.lock")

    def work(board):
        progress = Progress(enabled=not as_json, prefix="" if len(names) == 1 else f"[{board.name}] ")
        lock = None if lock_file is None else read_lock(Path(lock_file) if lock_file else default_lock_path(board), board)
        result = build_board(board, outdir=out_root / board.name, cache=cache, progress=progress,
                             source_date_epoch=epoch, compression=compression, signing_key=key, force=force,
                             lock=lock)
        return result, 0, "publish_outputs"

    def show(result) -> None:
        if result.up_to_date:
            click.echo(f"{result.board} is up to date ({result.seconds:.2f} s) -> {result.outdir}/")
            return
        click.echo(f"built {result.board} in {result.seconds:.1f} s -> {result.outdir}/")
        for name, info in result.manifest["outputs"].items():
            click.echo(f"  {name:10} {info['file']:24} {info['size']:>10,} bytes  sha256:{info['sha256'][:16]}")

    _run_boards("build", names, jobs, junit_file, as_json,
                lambda name: _load_board(name, boards_dirs, overlay_dirs, qemu_dirs), work, [build_board], show)


@main.command()
@click.argument("board_name", metavar="BOARD")
@board_dirs_option
@overlay_dirs_option
@qemu_dirs_option
@click.option("--dest", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="A new (or empty) folder for the sources, sources.json and SHA256SUMS.")
@click.option("--max-size", type=click.FloatRange(min=0), default=100, show_default=True,
              help="MiB: a source package larger than this is listed as skipped, not downloaded.")
@click.option("--skip", "skip", multiple=True, help="A source package not to download (repeatable).")
@json_option
@handle_errors
def sources(board_name, boards_dirs, overlay_dirs, qemu_dirs, dest, max_size, skip, as_json):
    """Fetch the source of everything in the board's image (verified), with a checksummed index."""
    import time

    from .sources import MIB, fetch_sources

    started = time.monotonic()
    board = _load_board(board_name, boards_dirs, overlay_dirs, qemu_dirs)
    with writing(dest.parent, f"the sources of board {board.name}"):
        index = fetch_sources(board, dest, cache=_cache(), progress=_progress(as_json), max_size=int(max_size * MIB),
                              skip=skip)
    if as_json:
        _emit_json(index)
        return
    by_source = {(r.get("source", r["package"]), r.get("source_version", r["version"])): r for r in index["packages"]}
    for (name, version), record in sorted(by_source.items()):
        reason = f": {record['reason']}" if "reason" in record else ""
        click.echo(f"  {record['status']:9} {name} {version}{reason}")
    fetched = [r for r in by_source.values() if r["status"] == "fetched"]
    size = sum(r["size"] for r in fetched) + sum((dest / f).stat().st_size for f in (index["busybox"] or {}).get("files", []))
    click.echo(f"{len(fetched)} source packages and BusyBox ({size / MIB:.1f} MiB) in "
               f"{time.monotonic() - started:.0f} s -> {dest}/ (sources.json, SHA256SUMS)")


@main.command()
@click.argument("a", type=click.Path(path_type=Path, exists=True))
@click.argument("b", type=click.Path(path_type=Path, exists=True))
@json_option
@handle_errors
def diff(a, b, as_json):
    """What changed from build A to build B (build folders or manifest.json files)."""
    from .diff import diff_builds, format_diff

    changes = diff_builds(a, b)
    if as_json:
        _emit_json(changes)
        return
    for line in format_diff(changes):
        click.echo(line)


@main.command()
@click.argument("board_name", metavar="BOARD")
@board_dirs_option
@overlay_dirs_option
@qemu_dirs_option
@click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False),
              help="The lock file to write (default: ./<board>.lock, beside out/).")
@handle_errors
def lock(board_name, boards_dirs, overlay_dirs, qemu_dirs, out_file):
    """Pin every package (feed, version, SHA-256, URL), the kernel, U-Boot and BusyBox's inputs."""
    import time

    from .build import lock_board
    from .lock import default_lock_path, write_lock

    started = time.monotonic()
    board = _load_board(board_name, boards_dirs, overlay_dirs, qemu_dirs)
    record = lock_board(board, cache=_cache(), progress=_progress(False))
    path = out_file or default_lock_path(board)
    with writing(path, f"lock file {path}"):
        write_lock(path, board, record)
    click.echo(f"locked {board.name}: {len(record['packages'])} packages in {time.monotonic() - started:.1f} s "
               f"-> {path} ({path.stat().st_size:,} bytes)")


@main.command()
@many_boards
@board_dirs_option
@overlay_dirs_option
@qemu_dirs_option
@out_option
@click.option("--timeout-factor", type=float, default=None,
              help="Multiply every boot and check timeout (slow machines); default FWGEN_TIMEOUT_FACTOR or 1.")
@click.option("--fresh-disk", is_flag=True,
              help="Reset the device: its disk (SD card, flash) in OUT/.state/BOARD/ starts again as a copy of "
                   "the built image, so the data partition (a router's overlay) is empty and what earlier boots "
                   "wrote is gone. Console logs are kept. Without it the disk is kept across boots, and its data "
                   "partition across rebuilds.")
@click.option("--shell", "interactive", is_flag=True,
              help="Log in: boot one board, print its forwarded ports (ssh, http) and attach its console "
                   "instead of running the checks; Ctrl-] powers it off.")
@click.option("--build", "build_first", is_flag=True,
              help="Build each board first (nothing is rebuilt when its build is up to date).")
@json_option
@handle_errors
def boot(board_args, board_names, all_boards, jobs, junit_file, boards_dirs, overlay_dirs, qemu_dirs,
         out_root, timeout_factor, fresh_disk, interactive, build_first, as_json):
    """Boot built boards under QEMU and run their checks (each with its own forwarded ports)."""
    from .boot import boot as boot_board
    from .build import build as build_board
    from .errors import EXIT_BOOT_FAILED, EXIT_CHECK_FAILED
    from .progress import Progress

    names = _board_list(board_args, board_names, all_boards, boards_dirs)
    out_root = _out_root(out_root)
    factor = timeout_factor or float(os.environ.get("FWGEN_TIMEOUT_FACTOR", "1"))
    if interactive:
        _shell(names, out_root, factor, fresh_disk, (boards_dirs, overlay_dirs, qemu_dirs))
        return

    def work(board):
        progress = Progress(enabled=not as_json, prefix="" if len(names) == 1 else f"[{board.name}] ")
        if build_first:
            build_board(board, outdir=out_root / board.name, cache=_cache(), progress=progress,
                        source_date_epoch=_epoch())
        result = boot_board(board, out_root / board.name, timeout_factor=factor, fresh_disk=fresh_disk,
                            progress=progress)
        if result.died:
            return result, EXIT_BOOT_FAILED, "run_checks"
        return result, 0 if result.passed else EXIT_CHECK_FAILED, "run_checks"

    def show(result) -> None:
        for c in result.checks:
            click.echo(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}  ({c.seconds:.1f} s)"
                       + ("" if c.passed else f": {c.detail}"))
        if result.died:
            click.echo(f"  {result.died}")
        verdict = "PASS" if result.passed else "FAIL"
        click.echo(f"{verdict} {result.board}: ready after {result.ready_seconds:.1f} s, "
                   f"{sum(c.passed for c in result.checks)}/{len(result.checks)} checks passed "
                   f"(console: {result.console_log})")

    _run_boards("boot", names, jobs, junit_file, as_json,
                lambda name: _load_board(name, boards_dirs, overlay_dirs, qemu_dirs), work,
                [build_board, boot_board] if build_first else [boot_board], show)


def _shell(names: list[str], out_root: Path, factor: float, fresh_disk: bool, folders) -> None:
    from .boot import shell
    from .errors import UserError
    from .progress import Progress

    if len(names) != 1:
        raise UserError(f"--shell attaches one console: {len(names)} boards given", "name one board")
    board = _load_board(names[0], *folders)
    ended = shell(board, out_root / board.name, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer,
                  timeout_factor=factor, progress=Progress(), fresh_disk=fresh_disk)
    click.echo(f"\nfwgen: console closed ({ended}); {board.name} powered off", err=True)


@main.command()
@click.argument("board_name", metavar="BOARD")
@board_dirs_option
@overlay_dirs_option
@qemu_dirs_option
@out_option
@click.option("--deny", "deny", multiple=True, metavar="LICENSES",
              help="Fail (exit 1) naming each component that cannot do without one of these licences "
                   "(comma-separated SPDX ids, repeatable), e.g. --deny GPL-3.0-only,AGPL-3.0-or-later.")
@json_option
@handle_errors
def licenses(board_name, boards_dirs, overlay_dirs, qemu_dirs, out_root, deny, as_json):
    """Print the licence of every package, the kernel, BusyBox and U-Boot of a built board."""
    from .licenses import build_licenses, check_denied, parse_deny

    board = _load_board(board_name, boards_dirs, overlay_dirs, qemu_dirs)
    denied = parse_deny(deny)
    rows = build_licenses(out_root / board.name)
    if as_json:
        _emit_json(rows)
    else:
        widths = [max((len(r[key]) for r in rows), default=0) for key in ("name", "version")]
        click.echo(f"{'PACKAGE':{widths[0]}}  {'VERSION':{widths[1]}}  LICENCE  (SOURCE)")
        for r in rows:
            click.echo(f"{r['name']:{widths[0]}}  {r['version']:{widths[1]}}  {r['license']}  ({r['source']})")
    check_denied(board.name, rows, denied)


@main.command()
@board_dirs_option
@json_option
@handle_errors
def boards(boards_dirs, as_json):
    """List the boards found."""
    from .config import list_boards

    found = list_boards(list(boards_dirs))
    if as_json:
        _emit_json([{"name": n, "path": str(p), "description": d} for n, p, d in found])
        return
    width = max((len(n) for n, _, _ in found), default=4)
    click.echo(f"{'BOARD':{width}}  DESCRIPTION")
    for name, path, description in found:
        click.echo(f"{name:{width}}  {description}  ({path})")


@main.command()
@click.argument("board_name", metavar="BOARD")
@board_dirs_option
@overlay_dirs_option
@qemu_dirs_option
@click.option("--files", "list_files", is_flag=True,
              help="List every path the overlays supply, with the layer that supplied it.")
@click.option("--origins", is_flag=True,
              help="Every setting the board file (and the boards it extends) gives, with its file:line.")
@json_option
@handle_errors
def show(board_name, boards_dirs, overlay_dirs, qemu_dirs, list_files, origins, as_json):
    """Print the fully resolved board (YAML, or JSON with --json)."""
    from .config import board_to_dict

    board = _load_board(board_name, boards_dirs, overlay_dirs, qemu_dirs)
    if list_files:
        _show_files(board, as_json)
        return
    if origins:
        _show_origins(board, boards_dirs, as_json)
        return
    data = board_to_dict(board)
    if as_json:
        _emit_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


def _show_origins(board, boards_dirs, as_json: bool) -> None:
    from .config import board_origins

    rows = board_origins(board.source, list(boards_dirs))
    if as_json:
        _emit_json([{"key": key, "value": value, "origin": origin} for key, value, origin in rows])
        return
    width = max((len(key) for key, _, _ in rows), default=3)
    for key, value, origin in rows:
        click.echo(f"{key:{width}}  {json.dumps(value, default=str):40}  {origin}")


def _show_files(board, as_json: bool) -> None:
    from .overlay import list_layer_files, plan_layers

    rows = list_layer_files(plan_layers(board.overlays, board.values, board.arch))
    if as_json:
        _emit_json([{"path": p, "type": t, "mode": m, "layer": layer} for p, t, m, layer in rows])
        return
    width = max((len(p) for p, _, _, _ in rows), default=4)
    for path, kind, mode, layer in rows:
        click.echo(f"{path:{width}}  {kind:7} {mode}  {layer}")
    click.echo("(packages, BusyBox links and fwgen's own files are listed in the build's manifest.json)")


@main.command("new-overlay")
@click.argument("name")
@click.option("--dir", "folder", default="overlays", show_default=True,
              type=click.Path(path_type=Path, file_okay=False), help="Folder to create NAME/ in.")
@handle_errors
def new_overlay(name, folder):
    """Create a commented overlay NAME (overlay.yaml and a files/ tree) to start from."""
    from .overlay import scaffold_overlay

    folder.mkdir(parents=True, exist_ok=True)
    created = scaffold_overlay(name, folder)
    click.echo(f"created overlay {name} in {created}/: edit overlay.yaml, then add '{name}' to a "
               f"board's overlays (with --overlays-dir {folder} when it is outside the board's folder)")


@main.command()
@click.option("--arch", "arch_name", required=True, help="Target architecture (armv6, armv7, aarch64, mips, mipsel, mips64el).")
@click.argument("packages", nargs=-1, required=True)
@click.option("--dest", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder to copy the verified packages into.")
@click.option("--mirror", default="http://deb.debian.org/debian", show_default=True, help="Debian mirror URL.")
@click.option("--suite", default="bookworm", show_default=True)
@click.option("--component", "components", multiple=True, default=("main",), show_default=True)
@click.option("--exclude", multiple=True, help="Never fetch this package (repeatable).")
@click.option("--nodeps", multiple=True, help="Fetch this package without its dependencies (repeatable).")
@json_option
@handle_errors
def fetch(arch_name, packages, dest, mirror, suite, components, exclude, nodeps, as_json):
    """Download and verify packages and their dependencies."""
    import shutil

    from .arch import Arch
    from .board import Feed
    from .fetch import fetch_packages

    arch = Arch.from_name(arch_name)
    feed = Feed(name="debian", type="deb", url=mirror, suite=suite, components=tuple(components))
    fetched = fetch_packages([feed], arch, list(packages), exclude=exclude, nodeps=nodeps,
                             cache=_cache(), progress=_progress(as_json), extracting=False)
    dest.mkdir(parents=True, exist_ok=True)
    records = []
    for f in fetched:
        target = dest / Path(f.package.url).name
        with writing(target, f"a copy of package {f.package.name}"), open(f.path, "rb") as src, \
                replacing(target) as copy:
            shutil.copyfileobj(src, copy)
        records.append({"name": f.package.name, "version": f.package.version, "arch": f.package.arch,
                        "sha256": f.package.sha256, "file": str(target)})
    if as_json:
        _emit_json(records)
    else:
        for r in records:
            click.echo(f"{r['name']} {r['version']} {r['arch']}  {r['file']}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--keys", "--key", "keys_dirs", multiple=True, type=click.Path(path_type=Path, exists=True),
              help="A key file or folder of trusted keys (repeatable); default: the keys fwgen ships "
                   "(for an update bundle: none, and its signature is not checked).")
@click.option("--board", "board_name", help="An update bundle must name this board among its compatible ones.")
@json_option
@handle_errors
def verify(path, keys_dirs, board_name, as_json):
    """Check a .deb, .apk, .ipk or index file (what it is, whether it verifies, with which
    key), an update bundle (its signature, then every part's size and sha256) or a sysupgrade
    image (its fwtool trailers, signature and metadata)."""
    from .bundle import is_bundle
    from .fetch.verify import verify_file
    from .sysupgrade import is_sysupgrade

    if is_bundle(path):
        _verify_bundle(path, keys_dirs, board_name, as_json)
        return
    if is_sysupgrade(path):
        _verify_sysupgrade(path, keys_dirs, board_name, as_json)
        return
    report = verify_file(path, list(keys_dirs))
    if as_json:
        _emit_json({"file": str(path), "kind": report.kind, "ok": report.ok, "key": report.key,
                    "detail": report.detail})
    else:
        click.echo(str(report))
    if not report.ok:
        sys.exit(2)


def _update_keys(keys_dirs):
    """The usign/signify keys an update is checked against; None when none are given."""
    from .errors import UserError
    from .usign import load_keys

    keys = load_keys(list(keys_dirs)) if keys_dirs else None
    if keys_dirs and not keys:
        raise UserError(f"no usign/signify public key in {', '.join(map(str, keys_dirs))}")
    return keys


def _verify_bundle(path: Path, keys_dirs, board_name: str | None, as_json: bool) -> None:
    from .bundle import verify_bundle

    _show_bundle(verify_bundle(path, _update_keys(keys_dirs), board=board_name), as_json)


def _verify_sysupgrade(path: Path, keys_dirs, board_name: str | None, as_json: bool) -> None:
    from .sysupgrade import verify_sysupgrade

    keys = _update_keys(keys_dirs)
    _show_sysupgrade(verify_sysupgrade(path, keys, board=board_name), checked=keys is not None, as_json=as_json)


def _show_sysupgrade(image, *, checked: bool, as_json: bool) -> None:
    key = image.signature.key_id if image.signature else None
    if as_json:
        _emit_json({"file": str(image.path), "kind": "sysupgrade", "ok": True, "signed_by": key if checked else None,
                    "signature_key": key, "metadata": image.metadata, "members": image.members})
        return
    version = image.metadata.get("version", {})
    signature = ("unsigned" if key is None else
                 f"signed by key {key}, signature {'verified' if checked else 'NOT checked (give --key)'}")
    click.echo(f"{image.path.name}: sysupgrade image for {image.board} (supported devices: "
               f"{', '.join(image.metadata.get('supported_devices', []))}), version {version.get('version')}, "
               f"revision {version.get('revision')}: {signature}; {', '.join(image.members)}")


def _show_bundle(report, as_json: bool) -> None:
    if as_json:
        _emit_json({"file": str(report.path), "kind": "update bundle", "ok": True, "signed_by": report.signed_by,
                    "signature_key": report.signature_key, **report.metadata})
        return
    click.echo(report.summary())
    for part in report.parts:
        click.echo(f"  {part['name']:8} {part['file']:18} {part['size']:>12,} bytes  sha256:{part['sha256'][:16]}")


@main.command()
@click.argument("name", type=click.Path(path_type=Path, dir_okay=False))
@handle_errors
def keygen(name):
    """Write a new Ed25519 key pair, NAME.key (secret, mode 0600) and NAME.pub, in the
    usign/signify format (OpenWrt's usign and OpenBSD's signify read both). Never overwrites."""
    from .usign import load_secret_key, write_key_pair

    secret, public = write_key_pair(name)
    click.echo(f"{secret}: secret key {load_secret_key(secret).key_id} (keep it off the build machines "
               f"and out of images)\n{public}: public key: list it in a board's update.keys")


@main.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The secret key (fwgen keygen's NAME.key, or signify -G -n's .sec).")
@json_option
@handle_errors
def sign(path, key_file, as_json):
    """Sign an update bundle or a sysupgrade image built unsigned (replacing any signature it
    had), after checking it; or a build folder: its bundle and sysupgrade image, then
    SHA256SUMS over every file in it and SHA256SUMS.sig (signify-openbsd -C -p KEY.pub -x
    SHA256SUMS.sig checks them). Every file is rewritten atomically."""
    from .bundle import is_bundle, sign_bundle
    from .errors import UserError
    from .sums import summed_files, write_signed_sums
    from .sysupgrade import is_sysupgrade, sign_sysupgrade

    key = _secret_key(key_file)
    if path.is_dir():
        bundles = [sign_bundle(p, key) for p in summed_files(path) if is_bundle(p)]
        images = [sign_sysupgrade(p, key) for p in summed_files(path) if is_sysupgrade(p)]
        with writing(path, f"the checksums of {path}"):
            sums, signature = write_signed_sums(path, key)
        files = [p.name for p in summed_files(path)]
        if as_json:
            _emit_json({"folder": str(path), "sums": str(sums), "signature": str(signature), "files": files,
                        "signed_by": key.key_id, "signed": [str(b.path) for b in bundles] + [str(i.path) for i in images]})
            return
        for report in bundles:
            _show_bundle(report, as_json)
        for image in images:
            _show_sysupgrade(image, checked=True, as_json=as_json)
        click.echo(f"{sums}: {len(files)} files; {signature}: signed by key {key.key_id}")
    elif path.is_file() and is_bundle(path):
        _show_bundle(sign_bundle(path, key), as_json)
    elif path.is_file() and is_sysupgrade(path):
        _show_sysupgrade(sign_sysupgrade(path, key), checked=True, as_json=as_json)
    else:
        raise UserError(f"{path}: not an update bundle, a sysupgrade image or a build folder",
                        "fwgen sign signs a build folder (out/<board>), its update.bundle or sysupgrade.bin")


@main.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--comp", type=click.Choice(["gzip", "xz", "zstd"]), default="gzip", show_default=True)
@click.option("--block-size", type=int, default=131072, show_default=True)
@click.option("--all-root", is_flag=True, help="Make every entry owned by root (as mksquashfs -all-root).")
@handle_errors
def squashfs(src, out, comp, block_size, all_root):
    """Pack a host folder into a squashfs image (never following its symlinks)."""
    from .images.squashfs import write_squashfs
    from .rootfs import read_folder

    rootfs = read_folder(src, all_root=all_root)
    with writing(out, f"the squashfs image of {src}"):
        write_squashfs(rootfs, out, compression=comp, block_size=block_size, mtime=_epoch() or 0)
    click.echo(f"{out}: {len(rootfs)} entries, {out.stat().st_size:,} bytes")


@main.command()
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--extract", "extract_path", help="Write this file of the image to stdout.")
@click.option("--key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A PEM RSA key (public or private): verify a FIT's signatures with it.")
@json_option
@handle_errors
def inspect(image, extract_path, key, as_json):
    """List a squashfs image or an initramfs (modes, owners, sizes, link targets), describe a
    FIT or uImage and check its hashes and CRCs (exit code 2 when one does not match; with
    --key, a FIT's signatures too), or list
    the partitions of a flash image (flash.img, firmware.bin) and the images inside them."""
    from .images.flash import describe_flash, load_layout, scanned_layout
    from .images.inspect import describe_boot_image, format_boot_image, list_image, read_image_file
    from .images.read import is_squashfs

    if extract_path:
        sys.stdout.buffer.write(read_image_file(image, extract_path))
        return
    layout = load_layout(image)
    if layout is not None:
        _print_flash(image, layout, describe_flash(image.read_bytes(), layout), as_json)
        return
    boot = describe_boot_image(image, key)
    if boot is not None:
        kind, facts, ok = boot
        if as_json:
            _emit_json({"image": str(image), "kind": kind, "ok": ok, **facts})
        else:
            click.echo("\n".join(format_boot_image(kind, facts)))
        if not ok:
            sys.exit(2)
        return
    try:
        kind, rows = list_image(image)
    except FormatError:
        if is_squashfs(image):
            raise  # a damaged squashfs, not a flash dump that happens to start with one
        # Neither filesystem: a flash dump, if images sit on its erase-block boundaries.
        layout = scanned_layout(image.stat().st_size)
        found = describe_flash(image.read_bytes(), layout)
        if not found[0]["found"]:
            raise
        _print_flash(image, layout, found, as_json)
        return
    if as_json:
        _emit_json({"image": str(image), "kind": kind, "entries": rows})
        return
    for r in rows:
        owner = f"{r['uid']}/{r['gid']}"
        # Names come from the image: one with a newline or an escape sequence is shown quoted.
        target = f" -> {quoted(r['target'])}" if r["target"] else ""
        click.echo(f"{r['mode']} {owner:>11} {r['size']:>10} {quoted(r['path'])}{target}")


def _print_flash(image: Path, layout: dict, rows: list[dict], as_json: bool) -> None:
    from .images.flash import format_flash

    if as_json:
        _emit_json({"image": str(image), "kind": layout["kind"], "layout": layout, "partitions": rows})
    else:
        click.echo("\n".join(format_flash(image, layout, rows)))


@main.command("publish")
@click.argument("board_name", metavar="BOARD")
@click.argument("address", metavar="oci://HOST/REPO:TAG")
@board_dirs_option
@overlay_dirs_option
@qemu_dirs_option
@out_option
@json_option
@handle_errors
def publish_command(board_name, address, boards_dirs, overlay_dirs, qemu_dirs, out_root, as_json):
    """Push BOARD's build (images, manifest, SBOMs, signatures) to a registry as one artifact."""
    from .artifact import publish_build
    from .oci import parse_reference
    from .publish import use_build

    reference = parse_reference(address, where="publish", tagged=True)
    board = _load_board(board_name, boards_dirs, overlay_dirs, qemu_dirs)
    outdir = _out_root(out_root) / board.name
    with use_build(outdir) as folder:
        if not (folder / "manifest.json").is_file():
            from .errors import UserError

            raise UserError(f"{outdir}: no build of {board.name} to publish", f"run: fwgen build {board_name}")
        digest, files = publish_build(folder, reference, version=board.version)
    if as_json:
        _emit_json({"reference": str(reference), "digest": digest, "files": files})
    else:
        click.echo(f"{reference}@{digest}: {len(files)} files ({', '.join(files)})")


@main.command("pull")
@click.argument("address", metavar="oci://HOST/REPO:TAG")
@click.option("--dest", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="A new (or empty) folder for the files; written whole and verified, or not at all.")
@json_option
@handle_errors
def pull_command(address, dest, as_json):
    """Fetch a published build, every file verified by its digest."""
    from .artifact import pull_build
    from .oci import parse_reference

    files = pull_build(parse_reference(address, where="pull", tagged=True), dest)
    if as_json:
        _emit_json({"dest": str(dest), "files": files})
    else:
        click.echo(f"{dest}: {len(files)} files ({', '.join(files)})")


@main.group("cache", invoke_without_command=True)
@json_option
@click.pass_context
@handle_errors
def cache_group(ctx, as_json):
    """Show the cache's size by kind (packages, indexes, BusyBox builds and trees ...)."""
    if ctx.invoked_subcommand is not None:
        return
    from .cache_usage import usage

    root = _cache().root
    totals = usage(root)
    if as_json:
        _emit_json({"root": str(root), "kinds": {k: {"entries": n, "bytes": b} for k, (n, b) in totals.items()},
                    "bytes": sum(b for _, b in totals.values())})
        return
    click.echo(f"{root}:")
    for kind, (count, size) in totals.items():
        click.echo(f"  {kind:<20} {count:>6} {size / 1e6:>10.1f} MB")
    click.echo(f"  {'total':<20} {sum(n for n, _ in totals.values()):>6} {sum(b for _, b in totals.values()) / 1e6:>10.1f} MB")


@cache_group.command("prune")
@click.option("--older-than", "days", type=click.FloatRange(min=0), help="Remove what no build used in DAYS days.")
@click.option("--max-size", "megabytes", type=click.FloatRange(min=0),
              help="Then remove the least recently used until the cache holds at most MB megabytes.")
@json_option
@handle_errors
def cache_prune(days, megabytes, as_json):
    """Remove what no recent build used; safe while builds run (what they use is kept)."""
    from .cache_usage import prune
    from .errors import UserError

    if days is None and megabytes is None:
        raise UserError("cache prune: say what to remove", "give --older-than DAYS and/or --max-size MB")
    root = _cache().root
    result = prune(root, older_than=None if days is None else days * 86400,
                   max_size=None if megabytes is None else int(megabytes * 1e6))
    if as_json:
        _emit_json({"removed": [str(e.path) for e in result.removed], "freed_bytes": result.freed,
                    "kept_in_use": [str(e.path) for e in result.in_use]})
        return
    kept = f"; {len(result.in_use)} kept because a build is using them" if result.in_use else ""
    click.echo(f"{root}: removed {len(result.removed)} entries, {result.freed / 1e6:.1f} MB{kept}")


@main.command("busybox")
@click.option("--arch", "arch_name", required=True, help="Target architecture (armv6, armv7, aarch64, mips, mipsel, mips64el).")
@click.option("--config", "fragments", multiple=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A Kconfig fragment applied after defconfig (repeatable, in order).")
@click.option("--out", "out_file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the binary.")
@json_option
@handle_errors
def busybox_command(arch_name, fragments, out_file, as_json):
    """Build a static musl BusyBox (cached, checked under qemu-user) and write it to OUT."""
    from .arch import Arch
    from .busybox import build_busybox, export_busybox

    arch = Arch.from_name(arch_name)
    cache = _cache()
    binary = build_busybox(arch, fragments=list(fragments), cache_root=cache.root, remote=cache.remote,
                           progress=_progress(as_json))
    with writing(out_file, f"busybox for {arch.value}"):
        export_busybox(binary, out_file)
    if as_json:
        _emit_json({"arch": arch.value, "out": str(out_file), "size": out_file.stat().st_size,
                    "build": binary.parent.name})
    else:
        click.echo(f"{out_file}: busybox for {arch.value}, {out_file.stat().st_size:,} bytes")


@main.command()
@click.option("--board", "board_name", required=True, help="The board whose architecture to target.")
@board_dirs_option
@overlay_dirs_option
@qemu_dirs_option
@handle_errors
def sdk(board_name, boards_dirs, overlay_dirs, qemu_dirs):
    """Print the board's cross toolchain as shell exports: eval "$(fwgen sdk --board B)"."""
    from .compile import sdk_script

    board = _load_board(board_name, boards_dirs, overlay_dirs, qemu_dirs)
    click.echo(sdk_script(board.arch, _cache().root), nl=False)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--arch", "arch_name", help="Check that every ELF file fits this architecture.")
@json_option
@handle_errors
def audit(paths, arch_name, as_json):
    """Report every ELF file of files, folders or images: machine, ABI, libc, libraries, hardening."""
    from .arch import Arch
    from .audit import audit_paths

    report = audit_paths(list(paths), Arch.from_name(arch_name) if arch_name else None)
    if as_json:
        click.echo(report.to_json())
    else:
        click.echo(report.to_text())
    if report.errors:
        sys.exit(2)


if __name__ == "__main__":
    main()
