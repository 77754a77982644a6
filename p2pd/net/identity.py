"""Node and issuer key files, and credential files.

Layout of a node's key directory (all written owner-only, never overwritten):

* ``signing.key`` — hex of the 32-byte Ed25519 seed (signs orders, receipts,
  statements)
* ``noise.key`` — hex of the 32-byte X25519 private key (Noise static key)
* ``node.pub`` — JSON with both public keys in hex, to hand to the issuer
* ``credential`` — hex of the encoded credential, once issued

An issuer directory has ``issuer.key`` and ``issuer.pub``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from p2pd.errors import KeyFileError
from protocol import Credential, DecodeError, SigningKey


@dataclass(frozen=True)
class NodeKeys:
    signing: SigningKey
    noise_private: bytes

    @property
    def noise_public(self) -> bytes:
        return noise_public_key(self.noise_private)

    @classmethod
    def generate(cls) -> NodeKeys:
        key = X25519PrivateKey.generate()
        return cls(SigningKey.generate(), key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))


@dataclass(frozen=True)
class NodeIdentity:
    """Everything a node needs to be itself in a session."""

    keys: NodeKeys
    credential: Credential

    @property
    def member_id(self) -> str:
        return self.credential.member_id


def noise_public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600; refuse to overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; refusing to overwrite keys") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _read_hex(path: Path, length: int | None = None, *, secret: bool = False) -> bytes:
    try:
        st = path.stat()
        if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path} is readable by others; run: chmod 600 {path}")
        if st.st_size > 65536:
            raise KeyFileError(f"{path} is too large to be a key file")
        text = path.read_text(encoding="ascii").strip()
        data = bytes.fromhex(text)
    except KeyFileError:
        raise
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path} does not exist") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path} is not a hex key file: {exc}") from exc
    if length is not None and len(data) != length:
        raise KeyFileError(f"{path}: expected {length} bytes, found {len(data)}")
    return data


def write_node_keys(directory: Path, keys: NodeKeys | None = None) -> NodeKeys:
    """Generate (or write given) node keys into ``directory``; never overwrite."""
    keys = keys or NodeKeys.generate()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in ("signing.key", "noise.key"):
        if (directory / name).exists():
            raise KeyFileError(f"{directory / name} exists; refusing to overwrite keys")
    _write_new(directory / "signing.key", keys.signing.seed().hex() + "\n")
    _write_new(directory / "noise.key", keys.noise_private.hex() + "\n")
    pub = {"sign_pk": keys.signing.public.hex(), "noise_pk": keys.noise_public.hex()}
    _write_new(directory / "node.pub", json.dumps(pub, indent=2) + "\n")
    return keys


def load_node_keys(directory: Path) -> NodeKeys:
    seed = _read_hex(directory / "signing.key", 32, secret=True)
    noise = _read_hex(directory / "noise.key", 32, secret=True)
    return NodeKeys(SigningKey.from_seed(seed), noise)


def write_issuer_key(directory: Path) -> SigningKey:
    key = SigningKey.generate()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_new(directory / "issuer.key", key.seed().hex() + "\n")
    _write_new(directory / "issuer.pub", key.public.hex() + "\n")
    return key


def load_issuer_key(path: Path) -> SigningKey:
    return SigningKey.from_seed(_read_hex(path, 32, secret=True))


def read_public_hex(path_or_hex: str) -> bytes:
    """A 32-byte public key given as hex or as a path to a hex file."""
    candidate = Path(path_or_hex)
    if len(path_or_hex) != 64 and candidate.exists():
        return _read_hex(candidate, 32)
    try:
        data = bytes.fromhex(path_or_hex)
    except ValueError as exc:
        raise KeyFileError(f"{path_or_hex!r} is neither a file nor 64 hex digits") from exc
    if len(data) != 32:
        raise KeyFileError(f"public key must be 32 bytes, got {len(data)}")
    return data


def read_node_pub(path: Path) -> tuple[bytes, bytes]:
    """Return (sign_pk, noise_pk) from a node.pub file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")[:4096])
        return bytes.fromhex(data["sign_pk"]), bytes.fromhex(data["noise_pk"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a node.pub file: {exc}") from exc


def write_credential(path: Path, cred: Credential) -> None:
    _write_new(path, cred.encode().hex() + "\n")


def load_credential(path: Path) -> Credential:
    try:
        return Credential.decode(_read_hex(path))
    except DecodeError as exc:
        raise KeyFileError(f"{path} is not a valid credential: {exc}") from exc
