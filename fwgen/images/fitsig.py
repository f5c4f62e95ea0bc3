"""RSA signatures on a FIT's configurations, as U-Boot checks them (`doc/usage/fit/signature.rst`).

A configuration's `signature-1` node signs *regions* of the flattened tree, not the images'
data: the structure-block tokens of the root, the configuration and the images it names with
their hash nodes (whose `value` covers the data), then a prefix of the strings block. The
nodes are listed in `hashed-nodes`, the prefix length in `hashed-strings = <0 LEN>`. Which
tokens of the structure block count (U-Boot's fdt_find_regions):

- a listed node: its BEGIN_NODE, its properties except `data`, `data-size`, `data-offset`,
  `data-position` (the hash covers the data) and its END_NODE;
- a direct child of a listed node that is not listed itself: only its BEGIN_NODE and
  END_NODE tokens (so the signature node's own properties are not signed);
- anything deeper: nothing; and the closing FDT_END token.

The digest of the regions joined is signed with PKCS#1 v1.5 (deterministic, so the same tree
and key give the same `value`). The signing is the `cryptography` package's; fwgen only picks
the bytes. U-Boot enforces a signature only where its own control DTB holds the public key
under `/signature/key-NAME`; `key_node` writes that node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..dtb import FDT_BEGIN_NODE, FDT_END, FDT_END_NODE, FDT_NOP, FDT_PROP, DeviceTree, Header, Node
from ..errors import FormatError, UserError

SIGNATURE_NODE = "signature-1"
RSA_SIZES = (2048, 3072, 4096)
EXCLUDED_PROPERTIES = {"data", "data-size", "data-offset", "data-position"}
IMAGE_PROPERTIES = ("kernel", "ramdisk", "fdt", "loadables", "firmware", "setup")  # in U-Boot's order


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """An RSA private key from a PEM file (unencrypted: a build cannot ask for a passphrase)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise UserError(f"{path}: cannot read the FIT signing key: {e.strerror}") from e
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size not in RSA_SIZES:
        raise UserError(f"{path}: the FIT signing key must be RSA of {'/'.join(map(str, RSA_SIZES))} bits")
    return key


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """An RSA public key from a PEM file holding a public or a private key."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        key = load_private_key(path).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise UserError(f"{path}: not an RSA public key")
    return key


def fingerprint(key: rsa.RSAPublicKey) -> str:
    """sha256 of the public key's DER SubjectPublicKeyInfo (what `openssl pkey -pubout -outform
    DER | sha256sum` prints), the manifest's record of which key signed."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def algo_name(key: rsa.RSAPublicKey) -> str:
    return f"sha256,rsa{key.key_size}"


def signed_images(config: Node) -> list[str]:
    """The image properties of a configuration that the signature covers (`sign-images`)."""
    return [p for p in IMAGE_PROPERTIES if p in config.properties]


def hashed_nodes(tree: DeviceTree, config_name: str, images: list[str]) -> list[str]:
    """The node paths a configuration's signature covers: root, the configuration, and each
    image it names with that image's hash nodes."""
    config = _config(tree, config_name)
    paths = ["/", f"/configurations/{config_name}"]
    images_node = tree.root.child("images") or Node("images")
    for prop in images:
        for name in config.strings(prop) if prop in config.properties else []:
            image = images_node.child(name)
            if image is None:
                raise FormatError(f"FIT configuration {config_name}: {prop} names image {name!r}, which is absent")
            hashes_of = [f"/images/{name}/{c.name}" for c in image.children if c.name.startswith("hash")]
            if not hashes_of:
                raise UserError(f"FIT image {name} has no hash node: a signature over it would not cover its data")
            paths += [f"/images/{name}", *hashes_of]
    return paths


def signed_data(blob: bytes, nodes: list[str], strings_size: int) -> bytes:
    """The bytes a signature covers: the structure-block regions for `nodes`, then the first
    `strings_size` bytes of the strings block."""
    header = Header.parse(blob)
    if strings_size > header.size_dt_strings:
        raise FormatError(f"FIT signature: hashed-strings {strings_size} exceeds the {header.size_dt_strings}-byte strings block")
    struct = blob[header.off_dt_struct : header.off_dt_struct + header.size_dt_struct]
    strings = blob[header.off_dt_strings : header.off_dt_strings + header.size_dt_strings]
    covered = b"".join(struct[start:end] for start, end in _covered_tokens(struct, strings, set(nodes)))
    return covered + strings[:strings_size]


def _covered_tokens(struct: bytes, strings: bytes, wanted: set[str]) -> Iterator[tuple[int, int]]:
    """(start, end) of every structure-block token the signature covers, in order."""
    path: list[str] = []
    levels: list[int] = []  # how much each open node is wanted: 2 listed, 1 a child of one, 0 not
    last_included = False
    at = 0
    while at < len(struct):
        token = int.from_bytes(struct[at : at + 4], "big")
        end = _token_end(struct, at, token)
        if token == FDT_BEGIN_NODE:
            path.append(_cstring(struct, at + 4))
            level = 2 if "/" + "/".join(path[1:]) in wanted else max((levels[-1] if levels else 0) - 1, 0)
            levels.append(level)
            include = level > 0
        elif token == FDT_END_NODE:
            # an unwanted node's END_NODE still closes a region its last child left open
            include = levels.pop() > 0 or last_included
            path.pop()
        elif token in (FDT_PROP, FDT_NOP):
            include = bool(levels) and levels[-1] >= 2 and (
                token == FDT_NOP or _cstring(strings, int.from_bytes(struct[at + 8 : at + 12], "big"))
                not in EXCLUDED_PROPERTIES)
        elif token == FDT_END:
            include = True
        else:
            raise FormatError(f"FIT signature: unexpected token {token} at struct offset {at:#x}")
        if include:
            yield at, end
        last_included = include
        at = end


def _cstring(data: bytes, start: int) -> str:
    return data[start : data.index(b"\0", start)].decode("utf-8", "replace")


def _token_end(struct: bytes, at: int, token: int) -> int:
    if token == FDT_BEGIN_NODE:
        nul = struct.index(b"\0", at + 4)
        return (nul + 1 + 3) & ~3
    if token == FDT_PROP:
        length = int.from_bytes(struct[at + 4 : at + 8], "big")
        return at + 12 + ((length + 3) & ~3)
    return at + 4


def sign_fit(tree: DeviceTree, key: rsa.RSAPrivateKey, *, key_name: str, timestamp: int,
             signer: tuple[str, str]) -> bytes:
    """Add a `signature-1` node to every configuration of `tree` and return the signed FIT.

    The nodes are added with a placeholder `value` of the signature's length first, so that
    the strings block and every offset are final before the regions are taken; filling in
    the value changes no byte the signature covers."""
    public = key.public_key()
    configs = (tree.root.child("configurations") or Node("configurations")).children
    pending = []
    for config in configs:
        images = signed_images(config)
        node = Node(SIGNATURE_NODE)
        node.set_strings("algo", [algo_name(public)])
        node.set_strings("key-name-hint", [key_name])
        node.set_strings("sign-images", images)
        node.properties["value"] = bytes(key.key_size // 8)
        node.set_cells("timestamp", [timestamp])
        node.set_strings("signer-name", [signer[0]])
        node.set_strings("signer-version", [signer[1]])
        nodes = hashed_nodes(tree, config.name, images)
        node.set_strings("hashed-nodes", nodes)
        node.set_cells("hashed-strings", [0, 0])
        config.children = [c for c in config.children if c.name != SIGNATURE_NODE] + [node]
        pending.append((node, nodes))
    strings_size = Header.parse(tree.to_bytes()).size_dt_strings
    for node, _ in pending:
        node.set_cells("hashed-strings", [0, strings_size])
    draft = tree.to_bytes()
    for node, nodes in pending:
        node.properties["value"] = key.sign(signed_data(draft, nodes, strings_size),
                                            padding.PKCS1v15(), hashes.SHA256())
    return tree.to_bytes()


@dataclass(frozen=True)
class FitSignature:
    config: str
    algo: str
    key_name: str
    signed_images: tuple[str, ...]
    hashed_nodes: tuple[str, ...]
    ok: bool | None  # None: no key given to check it with

    def describe(self) -> dict:
        return {"config": self.config, "algo": self.algo, "key-name-hint": self.key_name,
                "sign-images": list(self.signed_images), "hashed-nodes": list(self.hashed_nodes),
                "verified": self.ok}


def read_signatures(blob: bytes, tree: DeviceTree, key: rsa.RSAPublicKey | None = None) -> list[FitSignature]:
    """Every configuration signature of a FIT; with `key`, whether each one verifies.

    The covered nodes are recomputed from the configuration (as U-Boot does), and must be the
    ones the node lists in `hashed-nodes`: a signature over other nodes does not sign this
    configuration's images."""
    found = []
    for config in (tree.root.child("configurations") or Node("configurations")).children:
        for sig in (c for c in config.children if c.name.startswith("signature")):
            listed = sig.strings("hashed-nodes") if "hashed-nodes" in sig.properties else []
            ok = None
            if key is not None:
                ok = _verifies(blob, tree, config.name, sig, listed, key)
            found.append(FitSignature(config.name, sig.text("algo", "") or "", sig.text("key-name-hint", "") or "",
                                      tuple(sig.strings("sign-images")) if "sign-images" in sig.properties else (),
                                      tuple(listed), ok))
    return found


def _verifies(blob: bytes, tree: DeviceTree, config: str, sig: Node, listed: list[str],
              key: rsa.RSAPublicKey) -> bool:
    if sig.text("algo") != algo_name(key) or "hashed-strings" not in sig.properties:
        return False
    images = sig.strings("sign-images") if "sign-images" in sig.properties else signed_images(_config(tree, config))
    try:
        if set(hashed_nodes(tree, config, images)) - set(listed):
            return False
        cells = sig.cells("hashed-strings")
        if len(cells) != 2:
            return False
        data = signed_data(blob, listed, cells[1])
        key.verify(sig.properties.get("value", b""), data, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, FormatError, UserError, ValueError):
        return False
    return True


def _config(tree: DeviceTree, name: str) -> Node:
    configs = tree.root.child("configurations")
    config = configs.child(name) if configs else None
    if config is None:
        raise UserError(f"the FIT has no configuration {name!r}")
    return config


def key_node(key: rsa.RSAPublicKey, name: str, required: str = "conf") -> Node:
    """U-Boot's control-DTB node for a public key (`/signature/key-NAME`), with the numbers its
    RSA code uses precomputed: n0-inverse = -n^-1 mod 2^32 and r-squared = 2^(2*bits) mod n."""
    numbers = key.public_numbers()
    bits, n = key.key_size, numbers.n
    node = Node(f"key-{name}")
    node.set_cells("rsa,r-squared", _cells(pow(2, 2 * bits, n), bits))
    node.set_cells("rsa,modulus", _cells(n, bits))
    node.set_cells("rsa,exponent", [numbers.e >> 32, numbers.e & 0xFFFFFFFF])
    node.set_cells("rsa,n0-inverse", [(-pow(n, -1, 1 << 32)) % (1 << 32)])
    node.set_cells("rsa,num-bits", [bits])
    node.set_strings("key-name-hint", [name])
    node.set_strings("algo", [algo_name(key)])
    node.set_strings("required", [required])
    return node


def _cells(value: int, bits: int) -> list[int]:
    raw = value.to_bytes(bits // 8, "big")
    return [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4)]


def key_dtb(key: rsa.RSAPublicKey, name: str) -> bytes:
    """A minimal control DTB holding only the key (for `fit_check_sign -k` and for reading)."""
    root = Node("", children=[Node("signature", children=[key_node(key, name)])])
    return DeviceTree(root).to_bytes()
