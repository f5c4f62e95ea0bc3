"""OCI registries: files pushed as one artifact and pulled back verified, through oras-py.

An address is `oci://HOST[:PORT]/REPO[:TAG]`. 127.0.0.1, ::1 and localhost are spoken to in
plain HTTP, every other host in HTTPS. Credentials come from where docker, podman and oras
keep them (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: `auths`,
`credsStore`, `credHelpers`; `docker login HOST` or `oras login HOST` writes them); a
private certificate authority from `REQUESTS_CA_BUNDLE`, as for every requests client.

oras-py speaks the distribution API (upload sessions, manifests, token and basic auth) but
trusts the network: it neither checks what it downloads against its digest nor writes files
atomically, and it retries every failure for two minutes. Here each blob is streamed to a
temporary file, hashed on the way, and renamed into place only when its SHA-256 and size
are the manifest's; a request fails at once when the registry cannot be reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import oras.provider
import requests
import requests.adapters

from .errors import FetchError, IntegrityError, UserError
from .files import hash_file, replacing

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
# OCI 1.1's way of saying "this artifact has no configuration": the two bytes "{}".
EMPTY_CONFIG = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
TITLE = "org.opencontainers.image.title"
TIMEOUT = 30.0  # seconds for a connection or a read; a cache that hangs is a cache that is down

_PLAIN_HTTP_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
# The distribution spec's grammar for repository names and tags.
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20


class RegistryUnreachable(FetchError):
    """The registry did not answer (refused, reset, timed out) or answered 5xx."""


@dataclass(frozen=True)
class Reference:
    """A repository in a registry, and optionally a tag in it."""

    host: str
    repository: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci://{self.host}/{self.repository}" + (f":{self.tag}" if self.tag else "")

    @property
    def plain_http(self) -> bool:
        return self.host.rsplit(":", 1)[0] in _PLAIN_HTTP_HOSTS or self.host in _PLAIN_HTTP_HOSTS

    def at(self, tag: str) -> Reference:
        return Reference(self.host, self.repository, tag)


def parse_reference(text: str, *, where: str, tagged: bool) -> Reference:
    """Read `oci://HOST[:PORT]/REPO[:TAG]`; `tagged` says whether a tag must (True) or must
    not (False) be given. `where` names the source in the one-line error."""
    rest = text.removeprefix("oci://")
    host, slash, path = rest.partition("/")
    repository, colon, tag = path.rpartition(":") if ":" in path else (path, "", "")
    if text == rest or not host or not slash:
        raise UserError(f"{where}: {text!r} is not an oci://HOST/REPO address")
    if not _REPOSITORY.fullmatch(repository):
        raise UserError(f"{where}: {repository!r} is not a repository name (lower-case a-z, 0-9, . _ - and /)")
    if colon and not _TAG.fullmatch(tag):
        raise UserError(f"{where}: {tag!r} is not a tag (A-Z a-z 0-9 . _ -, at most 128, not starting with . or -)")
    if tagged and not colon:
        raise UserError(f"{where}: {text!r} names no tag", "write oci://HOST/REPO:TAG")
    if not tagged and colon:
        raise UserError(f"{where}: {text!r} names a tag; a cache is a whole repository", "write oci://HOST/REPO")
    return Reference(host, repository, tag or None)


@dataclass(frozen=True)
class Layer:
    """A file of an artifact: its title (the file name it is pulled as) and media type."""

    path: Path
    title: str
    media_type: str = "application/octet-stream"
    annotations: dict[str, str] = field(default_factory=dict)


class _TimedAdapter(requests.adapters.HTTPAdapter):
    # requests has no session-wide timeout and oras passes none: without one a registry that
    # accepts the connection and never answers would hang the build.
    def send(self, request, **kwargs):  # type: ignore[override]
        kwargs["timeout"] = kwargs.get("timeout") or TIMEOUT
        return super().send(request, **kwargs)


class _OrasClient(oras.provider.Registry):
    """oras's client with one attempt per request: its own retries (5 over ~130 s) would make
    a cache that is down cost two minutes per entry instead of one warning."""

    def __init__(self, reference: Reference) -> None:
        super().__init__(hostname=reference.host, insecure=reference.plain_http)
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, _TimedAdapter())

    def do_request(self, url, method="GET", data=None, headers=None, json=None, stream=False):
        unretried = oras.provider.Registry.do_request.__wrapped__
        try:
            response = unretried(self, url, method, data, headers, json, stream)
        except requests.RequestException as e:
            raise RegistryUnreachable(f"{_host_of(url)}: {_reason(e)}") from e
        except ValueError as e:  # oras: an authentication it could not answer
            raise FetchError(f"{_host_of(url)}: {e}", "log in with `docker login` or `oras login`") from e
        if response.status_code >= 500:
            raise RegistryUnreachable(f"{_host_of(url)}: HTTP {response.status_code} {response.reason}")
        return response


class Registry:
    """One repository of a registry: manifests by tag, blobs by digest."""

    def __init__(self, reference: Reference) -> None:
        self.reference = reference
        self._client = _OrasClient(reference)
        self._container = self._client.get_container(f"{reference.host}/{reference.repository}")
        self._client.auth.load_configs(self._container)

    def manifest(self, tag: str) -> dict | None:
        """The image manifest tagged `tag`, or None if there is none."""
        response = self._client.do_request(
            f"{self._client.prefix}://{self._container.manifest_url(tag)}", "GET",
            headers={"Accept": MANIFEST_TYPE})
        if response.status_code == 404:
            return None
        self._check(response, f"manifest {tag}")
        try:
            manifest = response.json()
        except ValueError as e:
            raise IntegrityError(f"{self.reference.at(tag)}: the manifest is not JSON") from e
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            raise IntegrityError(f"{self.reference.at(tag)}: not an OCI image manifest")
        return manifest

    def has(self, tag: str) -> bool:
        response = self._client.do_request(
            f"{self._client.prefix}://{self._container.manifest_url(tag)}", "HEAD",
            headers={"Accept": MANIFEST_TYPE})
        return response.status_code == 200

    def pull_layer(self, descriptor: dict, dest: Path) -> None:
        """Download the blob `descriptor` names to `dest`, renamed into place only once its
        SHA-256 and size are the descriptor's (IntegrityError otherwise, nothing written)."""
        digest, size = _descriptor_digest(descriptor, self.reference), descriptor.get("size")
        with replacing(dest, mode=0o600, suffix=".part") as out:  # 0600: as mkstemp made it before
            actual, received = self._stream_blob(digest, out)
            if actual != digest or received != size:
                raise IntegrityError(
                    f"{_title(descriptor)}: the registry served {received} bytes with SHA-256 "
                    f"{actual.removeprefix('sha256:')[:16]}..., not the manifest's {size} bytes "
                    f"with {digest.removeprefix('sha256:')[:16]}...")

    def push(self, tag: str, layers: list[Layer], *, artifact_type: str, annotations: dict[str, str]) -> str:
        """Upload `layers` (each skipped if the registry has it) and a manifest tagged `tag`;
        return the manifest's digest."""
        descriptors = []
        for layer in layers:
            digest, size = _file_digest(layer.path)
            descriptor = {"mediaType": layer.media_type, "digest": digest, "size": size,
                          "annotations": {TITLE: layer.title, **layer.annotations}}
            self._check(self._client.upload_blob(str(layer.path), self._container, descriptor), f"blob {layer.title}")
            descriptors.append(descriptor)
        config_path = self._empty_config()
        try:
            self._check(self._client.upload_blob(str(config_path), self._container, dict(EMPTY_CONFIG)), "empty config")
        finally:
            config_path.unlink()
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": artifact_type,
                    "config": EMPTY_CONFIG, "layers": descriptors, "annotations": annotations}
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        response = self._client.do_request(
            f"{self._client.prefix}://{self._container.manifest_url(tag)}", "PUT",
            data=body, headers={"Content-Type": MANIFEST_TYPE})
        self._check(response, f"manifest {tag}")
        return "sha256:" + hashlib.sha256(body).hexdigest()

    # -- internals -------------------------------------------------------------------------
    def _stream_blob(self, digest: str, out) -> tuple[str, int]:
        h, received = hashlib.sha256(), 0
        try:
            with self._client.get_blob(self._container, digest, stream=True) as response:
                self._check(response, f"blob {digest}")
                for chunk in response.iter_content(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
        except requests.RequestException as e:
            raise RegistryUnreachable(f"{self.reference.host}: {_reason(e)}") from e
        return "sha256:" + h.hexdigest(), received

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code in (200, 201, 202, 204):
            return
        detail = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason
        raise FetchError(f"{self.reference}: {what}: HTTP {response.status_code} {detail}")

    @staticmethod
    def _empty_config() -> Path:
        fd, name = tempfile.mkstemp(prefix="fwgen-oci-config-")
        with os.fdopen(fd, "wb") as f:
            f.write(b"{}")
        return Path(name)


def _descriptor_digest(descriptor: dict, reference: Reference) -> str:
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest) \
            or not isinstance(descriptor.get("size"), int):
        raise IntegrityError(f"{reference}: a layer without a sha256 digest and size: {descriptor!r:.120}")
    return digest


def layer_file_name(layer: object, *, nested: bool = False) -> str:
    """The file name a layer is pulled as (its title): a plain name, or with `nested` a
    relative path down (a/b/c), never one that climbs out or starts at the root."""
    name = (layer.get("annotations") or {}).get(TITLE) if isinstance(layer, dict) else None
    parts = name.split("/") if isinstance(name, str) and nested else [name]
    if not isinstance(name, str) or "\0" in name or any(
            not isinstance(part, str) or part in ("", ".", "..") or "/" in part for part in parts):
        raise IntegrityError(f"a layer without a plain file name ({name!r})")
    return name


def _title(descriptor: dict) -> str:
    return str((descriptor.get("annotations") or {}).get(TITLE, "untitled"))


def _file_digest(path: Path) -> tuple[str, int]:
    return f"sha256:{hash_file(path)}", path.stat().st_size


def _host_of(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _reason(error: Exception) -> str:
    # requests nests the socket error two or three levels deep; its innermost words say it.
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text) or re.search(r"(Read timed out|timed out)", text)
    return found.group(1) if found else type(error).__name__
