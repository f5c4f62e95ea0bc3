"""A content-addressed download cache shared by builds, and the retrying HTTP client behind it.

Layout under the root (FWGEN_CACHE, else ~/.cache/fwgen):
    sha256/<aa>/<hash>    verified files, named by their SHA-256 (packages, indexes)
    url/<aa>/<hash>       files fetched without a known hash (InRelease), by SHA-256 of the URL
    url-sha256/<aa>/<hash>  the SHA-256 each of those had when it was downloaded
    locks/<key>.lock      one flock(2) lock per entry, so concurrent builds never interleave
    derived/<aa>/<hash>.<kind>  files computed from a verified file (a parsed index), by its hash
Downloads go to a temporary file in the entry's folder and are renamed into place only after
size and hash verify, so the cache never holds a partial or a wrong file.

Retry policy (one for every download): a failure that may pass is retried with exponential
backoff (1 s, 2 s, 4 s ... `attempts` tries in all): HTTP 408, 429 and 5xx, a refused or
reset connection, a timeout, a truncated body, a size other than the index says (a mirror in
mid-sync). Any other HTTP 4xx (400, 401, 403, 404, 410 ...) is the server's definite answer
about that URL: it fails at once, and a wrong SHA-256 too. A mirror sync takes minutes, not
the seconds of the backoff, so a 404 is not retried either.

Every entry is checked again when it is read: a file against its name or recorded SHA-256,
a derived file against the hash in its header. A damaged entry is removed with a one-line
warning (`discard_damaged`) and computed again, so damage costs time, never a wrong result
or a build that keeps failing.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import STORAGE_ERRNOS, FetchError, IntegrityError, writing
from .files import hash_file, replacing
from .progress import QUIET, Progress
from .project import active_projects

if TYPE_CHECKING:
    from .remote_cache import RemoteCache

_CHUNK = 1 << 16
# The mode downloads and derived files get in the cache: mkstemp's, which they always had.
CACHED_MODE = 0o600
_USER_AGENT = "fwgen/0.1 (+https://github.com/fwgen)"
_CHECKED_MAGIC = b"fwgen-checked sha256 "


# The HTTP statuses that may pass (the module docstring has the whole policy).
RETRIED_STATUSES = frozenset({408, 429})


class _Retry(Exception):
    """A failure worth another attempt (connection trouble, 5xx, a short body)."""


class Cache:
    """Content-addressed download cache. `Cache.default()` honours FWGEN_CACHE.

    `unhashed_ttl`: how long a file fetched without a known hash (a signed index such as
    InRelease) is reused before it is fetched again, in seconds. `remote`: a registry asked
    for verified downloads and shared derived files before they are made (remote_cache.py).
    """

    def __init__(
        self,
        root: Path,
        *,
        attempts: int = 4,
        backoff: float = 1.0,
        timeout: float = 60.0,
        unhashed_ttl: float = 600.0,
        remote: RemoteCache | None = None,
    ) -> None:
        self.root = Path(root)
        self.remote = remote
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.unhashed_ttl = unhashed_ttl

    @classmethod
    def default(cls) -> Cache:
        """The user's cache: $FWGEN_CACHE, else the project's `[cache] dir` (fwgen.toml), else
        $XDG_CACHE_HOME/fwgen, else ~/.cache/fwgen."""
        root = os.environ.get("FWGEN_CACHE") or next(
            (str(project.cache_dir) for project in active_projects() if project.cache_dir), None)
        if not root:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
            root = os.path.join(base, "fwgen")
        return cls(Path(root))

    def path_for(self, sha256: str) -> Path:
        """Where the verified file with this SHA-256 lives (whether or not it is there yet)."""
        return self.root / "sha256" / sha256[:2] / sha256

    @classmethod
    def holding(cls, path: Path) -> Cache | None:
        """The cache that keeps `path` as one of its content-addressed files, or None."""
        path = Path(path)
        folder = path.parent
        if folder.parent.name == "sha256" and len(path.name) == 64 and folder.name == path.name[:2]:
            return cls(folder.parent.parent)
        return None

    def derived_path(self, sha256: str, kind: str) -> Path:
        """Where a file derived from the verified file `sha256` is kept (a parsed index, a
        re-compressed archive member). `kind` names what it is and its format version, so a
        reader that changes its format never reads an older one: "deb-index.v1.json"."""
        path = self.root / "derived" / sha256[:2] / f"{sha256}.{kind}"
        note_use(self.root, path)
        return path

    @staticmethod
    def store_derived(path: Path, data: bytes) -> None:
        """Write a derived file atomically (a temporary file, then a rename).

        A derived file is only a shortcut, so a cache that cannot take it (full, read-only)
        costs time on the next build, not this build.
        """
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            with replacing(path, mode=CACHED_MODE, suffix=".part") as out:
                out.write(data)

    @staticmethod
    def store_checked(path: Path, data: bytes) -> None:
        """Write a derived file with a header holding the SHA-256 of `data` (see read_checked)."""
        header = _CHECKED_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n"
        Cache.store_derived(path, header + data)

    @staticmethod
    def read_checked(path: Path, progress: Progress = QUIET) -> bytes | None:
        """The data of a file written by store_checked, or None if there is none. A file whose
        data no longer matches its header is discarded with a warning: the caller recomputes."""
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            discard_damaged(path, f"unreadable ({e.strerror})", "computing it again", progress)
            return None
        header, _, data = blob.partition(b"\n")
        if header != _CHECKED_MAGIC + hashlib.sha256(data).hexdigest().encode():
            discard_damaged(path, "content does not match the SHA-256 in its header", "computing it again", progress)
            return None
        return data

    def fetch(
        self, url: str, *, sha256: str | None, size: int | None, progress: Progress = QUIET
    ) -> Path:
        """Return the path of `url`'s content in the cache, downloading it if needed.

        With `sha256`, the file is content-addressed and verified (size and hash) before it
        enters the cache; a cached copy is re-verified and reused. Without it, the file is
        kept by URL and fetched again once older than `unhashed_ttl`.
        Raises FetchError (after retries) or IntegrityError (hash mismatch; nothing cached).
        """
        if sha256 is not None:
            sha256 = sha256.lower()
            dest = self.path_for(sha256)
        else:
            key = hashlib.sha256(url.encode()).hexdigest()
            dest = self.root / "url" / key[:2] / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(dest.name):
            note_use(self.root, dest)
            if self._reusable(dest, sha256, size, progress):
                if sha256 is not None:  # a file by URL is fetched again, never shared
                    self.share(dest, progress)
                return dest
            if sha256 is not None and self.pull_shared(dest, progress, sha256=sha256, remedy="downloading it"):
                return dest
            with writing(dest, f"the download of {url}"):
                self._download(url, dest, sha256=sha256, size=size, progress=progress)
            if sha256 is not None:
                self.share(dest, progress)
        return dest

    # -- the remote cache ----------------------------------------------------------------------
    def remote_tag(self, path: Path) -> str:
        """The remote cache's tag of a file entry: sha256-<hash>, derived-<hash>.<kind>."""
        rel = Path(path).relative_to(self.root).parts
        return f"{rel[0]}-{rel[-1]}"

    def pull_shared(self, path: Path, progress: Progress = QUIET, *, remedy: str,
                    sha256: str | None = None) -> bool:
        """Fill the missing file entry `path` from the remote cache; whether it did. `sha256`:
        the entry is a download named by its SHA-256, and only that content is taken."""
        if self.remote is None:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = self.remote.pull(self.remote_tag(path), path.parent, progress, remedy=remedy, sha256=sha256)
        if folder is None:
            return False
        try:
            [pulled] = list(folder.iterdir())
            os.replace(pulled, path)
        except (ValueError, OSError) as e:
            progress.warn(f"remote cache {self.remote}: {self.remote_tag(path)}: not one file ({e}); refused, {remedy}")
            return False
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return True

    def share(self, path: Path, progress: Progress = QUIET) -> None:
        """Push the file entry `path` to the remote cache, if pushing is allowed and it lacks it."""
        if self.remote is not None and path.is_file():
            self.remote.push(self.remote_tag(path), [path], progress)

    @contextlib.contextmanager
    def shared_derived(self, path: Path, progress: Progress = QUIET) -> Iterator[Path]:
        """Around the code that reads or computes the derived file `path`: it is pulled from the
        remote cache first if missing, and pushed after if the remote cache lacks it."""
        if not path.exists():
            self.pull_shared(path, progress, remedy="computing it")
        yield path
        self.share(path, progress)

    # -- internals -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{key}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _reusable(self, dest: Path, sha256: str | None, size: int | None, progress: Progress) -> bool:
        try:
            st = dest.stat()
        except FileNotFoundError:
            return False
        if sha256 is None:
            if time.time() - st.st_mtime >= self.unhashed_ttl:
                return False
            sha256 = self._recorded_hash(dest)
            if sha256 is None:  # kept by an older fwgen, or its record is gone: fetch it again
                return False
        if size is not None and st.st_size != size:
            problem = f"{st.st_size} bytes, expected {size}"
        elif (actual := hash_file(dest)) != sha256:
            problem = f"SHA-256 {actual}, expected {sha256}"
        else:
            return True
        discard_damaged(dest, problem, "downloading it again", progress)
        return False

    def forget(self, path: Path) -> None:
        """Remove a file fetched into the cache that its caller refused (a bad signature), with
        its record: the next fetch asks the server again."""
        path.unlink(missing_ok=True)
        if path.parent.parent.name == "url":
            self._record_path(path).unlink(missing_ok=True)

    def _record_path(self, dest: Path) -> Path:
        return self.root / "url-sha256" / dest.parent.name / dest.name

    def _recorded_hash(self, dest: Path) -> str | None:
        try:
            text = self._record_path(dest).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if len(text) == 64 else None

    def _record_hash(self, dest: Path, digest: str) -> None:
        # Written like a derived file: a record the cache cannot take costs a download later.
        self.store_derived(self._record_path(dest), digest.encode() + b"\n")

    def _download(
        self, url: str, dest: Path, *, sha256: str | None, size: int | None, progress: Progress
    ) -> None:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                self._download_once(url, dest, sha256=sha256, size=size, progress=progress)
                return
            except _Retry as e:
                if attempt == self.attempts:
                    raise FetchError(f"{url}: {e} (gave up after {attempt} attempts)") from e
                progress.info(f"{url}: {e}; retrying in {delay:.1f}s")
                time.sleep(delay)
                delay *= 2

    def _download_once(
        self, url: str, dest: Path, *, sha256: str | None, size: int | None, progress: Progress
    ) -> None:
        with replacing(dest, mode=CACHED_MODE, suffix=".part") as out:
            digest, received = self._stream(url, out, size, progress)
            if size is not None and received != size:
                # A mirror in mid-sync serves a file of another generation than its index.
                raise _Retry(f"file has unexpected size {received} (the index says {size}; mirror syncing?)")
            if sha256 is not None and digest != sha256:
                raise IntegrityError(
                    f"{url}: SHA-256 mismatch: expected {sha256}, got {digest}",
                    "the file was refused and nothing was cached",
                )
            if sha256 is None:
                # Recorded first: a crash between the two renames leaves a mismatch, which
                # costs a download, never a damaged file taken for a good one.
                self._record_hash(dest, digest)

    def _stream(self, url: str, out, size: int | None, progress: Progress) -> tuple[str, int]:
        import http.client  # here, not at the top: a warm build downloads nothing

        from . import connections

        digest = hashlib.sha256()
        received = 0
        label = url.rsplit("/", 1)[-1]
        try:
            with connections.get(url, {"User-Agent": _USER_AGENT}, self.timeout) as response:
                status = response.status or 200  # None: a file: URL
                if status >= 300:
                    if status >= 500 or status in RETRIED_STATUSES:
                        raise _Retry(f"HTTP {status} {response.reason}")
                    raise FetchError(f"{url}: HTTP {status} {response.reason} (a definite answer: not retried)")
                announced = response.headers.get("Content-Length")
                total = int(announced) if announced else size
                progress.advance(label, 0, total)
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    progress.advance(label, received, total)
                if announced is not None and received != int(announced):
                    raise _Retry(f"truncated body: {received} of {announced} bytes")
        except http.client.IncompleteRead as e:
            raise _Retry(f"truncated body: {len(e.partial) + received} bytes then the connection closed") from e
        except (OSError, http.client.HTTPException) as e:  # urllib's URLError is an OSError
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
                raise  # our disk is full, not the connection broken: retrying cannot help
            reason = getattr(e, "reason", e)
            raise _Retry(f"connection failed: {reason}") from e
        return digest.hexdigest(), received


# -- last use, for `fwgen cache prune` (cache_usage.py) -------------------------------------------
# Every entry read records the time as its modification time; not its access time, which
# relatime moves on any read after a day (prune's own look at a file would count as a use).
# A download fetched by URL keeps its own (its age decides when it is fetched again): its
# recorded hash carries the use. Before its first record a process registers as a user of
# the cache: locks/users/<pid>-<random>, flock'ed until the process ends, dated when it
# started using the cache. Prune keeps every entry used since the oldest live user started.
USERS = "locks/users"
_registered: dict[Path, int] = {}  # cache root -> the descriptor holding this process's user lock


def note_use(root: Path, entry: Path) -> None:
    """Record that `entry` (a file or a folder of the cache at `root`) is used now."""
    root = Path(root)
    _register_user(root)
    if entry.parent.parent.name == "url" and entry.parent.parent.parent == root:
        entry = root / "url-sha256" / entry.parent.name / entry.name
    with contextlib.suppress(OSError):  # missing (about to be made), or a read-only cache
        os.utime(entry)


def _register_user(root: Path) -> None:
    if root in _registered:
        return
    try:
        folder = root / USERS
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", dir=folder)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until this process ends; kept open for that
    except OSError:
        return  # a read-only cache is never pruned by this process's doing
    _registered[root] = fd
    atexit.register(Path(name).unlink, missing_ok=True)  # a killed process's file: prune removes it


def discard_damaged(entry: Path, problem: str, remedy: str, progress: Progress = QUIET) -> None:
    """Remove a damaged cache entry (a file or a folder), saying so in one line that names it.

    The caller holds the entry's lock, or the entry is only ever replaced whole by a rename.
    """
    progress.warn(f"damaged cache entry {entry}: {problem}; discarded, {remedy}")
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # a read-only cache: the entry is ignored, not fixed
            entry.unlink(missing_ok=True)
