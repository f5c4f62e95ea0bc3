"""A cache that CI runners share through an OCI registry (`FWGEN_REMOTE_CACHE=oci://HOST/REPO`).

Each cache entry is one artifact in the repository, tagged by the entry's key:

    sha256-<hash>                 a verified download (a package, a Packages index): one layer
                                  whose digest must be sha256:<hash>, the key itself
    derived-<hash>.<kind>         a file computed from the verified file <hash> (a parsed index)
    busybox-<key>                 a BusyBox build: busybox, config, build.log, build.json
    build-<key>                   an overlay build: build.json, build.log, files/...

Before fwgen computes or downloads an entry it asks the registry. What it pulls is streamed to
a temporary file and kept only if it matches the manifest's SHA-256 (for a download, the
SHA-256 that names it); a BusyBox build also passes the functional gate and the ELF audit
again, as a local one does, and an overlay build the audit. Anything refused is warned about in one line and made locally.

The registry is trusted like the local cache for the entries keyed by their inputs (BusyBox
and overlay builds, parsed indexes): whoever may push can change what they hold. Downloads cannot be
changed that way (their key is their content). So give push rights (FWGEN_REMOTE_CACHE_PUSH=1
with the registry's write credentials) only to trusted jobs, such as builds of the main branch.

A registry that cannot be reached costs one warning; the build goes on without it.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from .errors import FetchError, IntegrityError
from .oci import Layer, Reference, Registry, RegistryUnreachable, layer_file_name, parse_reference
from .progress import QUIET, Progress

ARTIFACT_TYPE = "application/vnd.fwgen.cache-entry.v1"
ENTRY = "org.fwgen.cache.entry"  # manifest annotation: the tag it was pushed as


class RemoteCache:
    """The registry repository behind a cache; safe to use from the download threads."""

    def __init__(self, reference: Reference, *, push: bool) -> None:
        self.reference = reference
        self.push_allowed = push
        self._local = threading.local()
        self._lock = threading.Lock()
        self._down = False
        self._push_failed = False

    @classmethod
    def from_address(cls, address: str, *, push: bool, where: str) -> RemoteCache:
        return cls(parse_reference(address, where=where, tagged=False), push=push)

    def __str__(self) -> str:
        return str(self.reference)

    def pull(self, tag: str, into: Path, progress: Progress = QUIET, *, remedy: str,
             sha256: str | None = None, nested: bool = False) -> Path | None:
        """Pull entry `tag` into a new folder inside `into` (the caller renames or removes it),
        each file named by its layer's title; None when the registry lacks the entry, cannot be
        reached, or served something refused. `sha256`: the entry is one file with this hash.
        `nested`: titles may be relative paths (files/usr/bin/x)."""
        if self._down:
            return None
        folder: Path | None = None
        try:
            manifest = self._registry().manifest(tag)
            if manifest is None:
                return None
            layers = _checked_layers(manifest, tag, sha256, nested)
            folder = Path(tempfile.mkdtemp(prefix=f".remote-{tag[:40]}-", dir=into))
            for title, layer in layers:
                (folder / title).parent.mkdir(parents=True, exist_ok=True)
                self._registry().pull_layer(layer, folder / title)
            progress.info(f"{tag}: from the remote cache {self.reference}")
            return folder
        except RegistryUnreachable as e:
            self._went_down(e, progress)
        except (FetchError, IntegrityError, OSError) as e:  # an HTTP refusal, a blob or manifest that does not verify, titles that clash
            progress.warn(f"remote cache {self.reference}: {tag}: {e}; refused, {remedy}")
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return None

    def push(self, tag: str, files: list[Path], progress: Progress = QUIET, *, base: Path | None = None) -> None:
        """Push `files` as entry `tag` when pushing is allowed and the registry lacks it;
        titled by name, or by their path below `base`."""
        if not self.push_allowed or self._down or self._push_failed:
            return
        try:
            registry = self._registry()
            if registry.has(tag):
                return
            registry.push(tag, [Layer(path, path.relative_to(base).as_posix() if base else path.name) for path in files],
                          artifact_type=ARTIFACT_TYPE, annotations={ENTRY: tag})
            progress.info(f"{tag}: pushed to the remote cache {self.reference}")
        except RegistryUnreachable as e:
            self._went_down(e, progress)
        except (FetchError, IntegrityError, OSError) as e:
            self._push_failed = True  # a refusal (rights, quota) would repeat for every entry
            progress.warn(f"remote cache {self.reference}: pushing {tag} failed: {e}; not pushing any more")

    # -- internals -------------------------------------------------------------------------
    def _registry(self) -> Registry:
        # One client per thread: a requests session is not meant to be shared between threads.
        registry = getattr(self._local, "registry", None)
        if registry is None:
            registry = self._local.registry = Registry(self.reference)
        return registry

    def _went_down(self, error: Exception, progress: Progress) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        progress.warn(f"remote cache {self.reference} unreachable ({error}); going on without it")


def _checked_layers(manifest: dict, tag: str, sha256: str | None, nested: bool) -> list[tuple[str, dict]]:
    """(file name, descriptor) of each layer, after checking the manifest is the entry asked for."""
    if (manifest.get("annotations") or {}).get(ENTRY) != tag:
        raise IntegrityError(f"the manifest is not the one of entry {tag}")
    layers = [(layer_file_name(layer, nested=nested), layer) for layer in manifest["layers"]]
    if sha256 is not None and [layer.get("digest") for _, layer in layers] != [f"sha256:{sha256}"]:
        raise IntegrityError(f"the entry is not the one file sha256:{sha256}")
    if len({title for title, _ in layers}) != len(layers):
        raise IntegrityError("two layers with one file name")
    return layers
