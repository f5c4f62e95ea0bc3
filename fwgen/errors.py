"""One error hierarchy for the whole library.

The CLI maps every `FwgenError` to a one-line message and its class's exit code (the table
below, documented in the README); library code never calls `sys.exit()`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Iterator

from construct import ConstructError

# What a construct parser raises on bad bytes: its own errors, and struct.error from a
# compiled parser reading past the end of its buffer.
PARSE_ERRORS = (ConstructError, struct.error)


def quoted(name: str) -> str:
    """`name` (a path or a package name from outside input) fit for a one-line message:
    itself when printable, else its Python repr, newlines and escape bytes escaped."""
    return name if name.isprintable() else repr(name)


# fwgen's exit codes, one per kind of failure, so a CI job can tell them apart. With several
# boards in one call the highest code of any board is the exit code.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the guest booted, and one of its checks failed; or a licence is denied
EXIT_BAD_INPUT = 2  # a broken board file, a tampered package, a dead mirror, a full disk, no memory
EXIT_BOOT_FAILED = 3  # the guest never became ready, or QEMU died or hung
EXIT_INTERNAL = 4  # a bug, or a tool that failed where it should not (a compiler, mksquashfs)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class FwgenError(Exception):
    """Base of every error fwgen raises on purpose. Errors that are neither bad input nor a
    failed boot are internal: fwgen or a tool it runs broke."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UserError(FwgenError):
    """Bad input from the user or the outside world: exit code 2."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(UserError):
    """A board, overlay or profile file is wrong. Carries file:line:column and the key path."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        keypath: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = file or "<board>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        prefix = f"{where}: "
        if keypath:
            prefix += f"{keypath}: "
        super().__init__(prefix + message, hint)
        self.file, self.line, self.column, self.keypath = file, line, column, keypath


def out_of_memory(error: MemoryError) -> UserError:
    """The one-line error for a MemoryError: the image is modelled in memory, so a machine (or a
    ulimit) too small for the board is the host's limit, told with what to change, not a
    traceback from wherever it ran out."""
    problem = UserError("out of memory", "fwgen holds the image in memory: run it with more, or lower "
                        "the board's limits.package_size and limits.image_size")
    problem.__cause__ = error
    return problem


class FormatError(UserError):
    """A binary or text format is malformed: says which file and where."""


class IntegrityError(UserError):
    """A signature or hash does not verify: the input is refused."""


class LimitError(UserError):
    """Input beyond a configured bound (a package that unpacks to more than the board allows).

    `where` is the file inside the archive, `bound` the limit it broke ("limits.image_size
    (512 MiB)"), so a caller that knows the package can say which one it was."""

    def __init__(self, where: str, bound: str) -> None:
        super().__init__(f"{where}: unpacks to more than {bound}")
        self.where, self.bound = where, bound


class FetchError(UserError):
    """A download failed after its retries (dead mirror, 404, truncated body)."""


class ResolveError(UserError):
    """Package dependencies cannot be satisfied; the message explains the chain."""


class ToolMissingError(UserError):
    """An external program is not installed."""


class RunError(FwgenError):
    """An external program failed. Carries argv, exit code and the tail of its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr_tail: str) -> None:
        import shlex

        super().__init__(
            f"{shlex.join(argv)} failed with exit code {returncode}"
            + (f": {stderr_tail}" if stderr_tail else "")
        )
        self.argv, self.returncode, self.stderr_tail = argv, returncode, stderr_tail


class StorageError(UserError):
    """A host file or folder cannot be used: the disk is full or read-only, the name is too
    long, permission is denied. Names the path (and what was being written); nothing
    half-written stays behind, as every writer works atomically."""


# The errors a full or read-only disk gives, whichever write hit it.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EFBIG: "file too large for the filesystem", errno.EROFS: "read-only filesystem"}


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn a full (or read-only) disk under the block into a one-line StorageError naming the
    file (the one the OSError names, else `path`) and `what` was being written."""
    try:
        yield
    except OSError as e:
        reason = STORAGE_ERRNOS.get(e.errno or 0)
        if reason is None:
            raise
        where = os.fsdecode(e.filename) if e.filename else os.fspath(path)
        raise StorageError(f"{where}: {reason} while writing {what}") from e


def host_file_error(error: OSError) -> StorageError | None:
    """The one-line StorageError for an OSError that names a host path (ENAMETOOLONG on an
    --out folder, EACCES on a board file...); None when it names none (a bug, not the user's)."""
    if not error.filename:
        return None
    where = os.fsdecode(error.filename)
    if error.filename2:
        where += f" -> {os.fsdecode(error.filename2)}"
    reason = STORAGE_ERRNOS.get(error.errno or 0) or (error.strerror or str(error)).lower()
    return StorageError(f"{where}: {reason}")


class BootError(FwgenError):
    """A guest did not become ready, died or hung: carries the console tail. (A check that
    fails is a result, not an error: it gives EXIT_CHECK_FAILED.)"""

    exit_code = EXIT_BOOT_FAILED

    def __init__(self, message: str, console_tail: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.console_tail = console_tail


def describe_parse_error(error: Exception) -> str:
    """A construct error on one line: "field -> subfield: what went wrong".

    construct puts "Error in path (parsing) -> header -> c_mode" on a line of its own and
    compiled parsers raise bare struct.error or message-less errors; a user sees one line.
    """
    if isinstance(error, struct.error):
        return f"truncated ({error})"
    where, _, what = str(error).partition("\n")
    for prefix in ("Error in path (parsing) -> ", "Error in path (building) -> "):
        where = where.removeprefix(prefix)
    text = f"{where}: {what}" if what else where
    return " ".join(text.split()) or error.__class__.__name__


def parse_error(where: str, what: str, error: Exception) -> FormatError:
    """The one wrapping of a construct error: `where` names the file and offset, `what` the
    structure being read (`/tmp/x.deb: offset 0x8: bad ar member header: ar_fmag: ...`)."""
    return FormatError(f"{where}: {what}: {describe_parse_error(error)}")
