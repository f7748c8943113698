"""Peer identity: Ed25519 keys, peer ids, key files and domain-separated signatures.

A peer id is the hex of the first 20 bytes of SHA-256 of the raw public key
(as CometBFT derives addresses). Every signature covers
``b"multillmn/v1/" + kind + b"\\x00" + canonical_bytes``, so a signature made
for one kind of message can never be replayed as another kind.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "PeerId",
    "KeyPair",
    "peer_id_of",
    "signing_bytes",
    "verify_signature",
    "is_peer_id",
    "KeyFileError",
]

PeerId = str
"""40 lowercase hex characters."""

_DOMAIN = b"multillmn/v1/"


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed or readable by others."""


def peer_id_of(public_key: bytes) -> PeerId:
    """The peer id derived from a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return hashlib.sha256(public_key).digest()[:20].hex()


def is_peer_id(value: object) -> bool:
    """True if ``value`` has the form of a peer id."""
    return (
        isinstance(value, str)
        and len(value) == 40
        and all(c in "0123456789abcdef" for c in value)
    )


def signing_bytes(kind: str, payload: bytes) -> bytes:
    """The exact bytes signed for a message of ``kind`` whose canonical body is ``payload``."""
    return _DOMAIN + kind.encode("ascii") + b"\x00" + payload


def verify_signature(public_key: bytes, kind: str, payload: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature by ``public_key`` over the domain-tagged payload."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signing_bytes(kind, payload))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 signing key with its raw public key and peer id."""

    private: Ed25519PrivateKey
    public_key: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """Deterministic key from a 32-byte seed (tests and simulations only)."""
        return cls.from_private(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> KeyPair:
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private=private, public_key=public)

    @property
    def peer_id(self) -> PeerId:
        return peer_id_of(self.public_key)

    def sign(self, kind: str, payload: bytes) -> bytes:
        """Sign the domain-tagged canonical payload of a message of ``kind``."""
        return self.private.sign(signing_bytes(kind, payload))

    def sign_raw(self, data: bytes) -> bytes:
        """Sign raw bytes (used only by the link handshake, which has its own domain tag)."""
        return self.private.sign(data)

    def save(self, path: Path) -> None:
        """Write the key as PEM (PKCS#8) with owner-only permissions (0600)."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
        finally:
            os.close(fd)
        os.chmod(path, 0o600)

    @classmethod
    def load(cls, path: Path) -> KeyPair:
        """Read a key written by :meth:`save`; refuse one that group or others can read."""
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"key file {path} is accessible by others; run: chmod 600 {path}")
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except ValueError as exc:
            raise KeyFileError(f"key file {path} is not a PEM private key") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(f"key file {path} does not hold an Ed25519 key")
        return cls.from_private(private)
