"""Noise XX handshake and transport ciphers, wrapped bytes-in/bytes-out.

We use ``Noise_XX_25519_ChaChaPoly_BLAKE2b`` (docs/protocol.md explains the
choice). ``noiseprotocol`` does all Noise work; this module only hides its two
sharp edges:

* When the handshake completes, noiseprotocol deletes its handshake state, and
  with it the remote static key. We keep a reference to the handshake state
  before every read and take ``rs`` from it afterwards.
* Its exceptions are many and unrelated; we turn every failure caused by
  received bytes into :class:`RemoteProtocolError`.
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidTag
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseProtocolNameError,
    NoisePSKError,
    NoiseValidationError,
    NoiseValueError,
)

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.reasons import Reason

# noiseprotocol has no common base class for its errors.
NoiseError = (
    NoiseHandshakeError, NoiseInvalidMessage, NoiseMaxNonceError, NoiseProtocolNameError,
    NoisePSKError, NoiseValidationError, NoiseValueError,
)

NOISE_PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
PROLOGUE_PREFIX = b"p2pd/1\n"
NOISE_TAG_LEN = 16
DH_LEN = 32


def prologue(community: str) -> bytes:
    """Bytes mixed into the handshake hash: protocol name, version, community."""
    return PROLOGUE_PREFIX + community.encode("utf-8")


class NoiseHandshake:
    """One side of a Noise XX handshake.

    ``ephemeral_private`` fixes the ephemeral key; only for test vectors and
    the worked example in docs/protocol.md. Never set it in production.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes,
        community: str,
        ephemeral_private: bytes | None = None,
    ) -> None:
        conn = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        if initiator:
            conn.set_as_initiator()
        else:
            conn.set_as_responder()
        try:
            conn.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
            if ephemeral_private is not None:
                conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral_private)
        except NoiseError as exc:
            raise LocalProtocolError(f"bad local key: {exc}") from exc
        conn.set_prologue(prologue(community))
        conn.start_handshake()
        self._conn = conn
        self.initiator = initiator
        self.remote_static: bytes | None = None

    @property
    def finished(self) -> bool:
        return bool(self._conn.handshake_finished)

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce our next handshake message carrying ``payload``.

        Raises RemoteProtocolError (HANDSHAKE_FAILED) when the peer's keys make
        a DH fail (e.g. a low-order X25519 point gives an all-zero secret).
        """
        try:
            return bytes(self._conn.write_message(payload))
        except ValueError as exc:
            raise RemoteProtocolError(
                "peer's handshake key rejected", Reason.HANDSHAKE_FAILED
            ) from exc
        except NoiseError as exc:
            raise LocalProtocolError(f"handshake write failed: {exc}") from exc

    def read_message(self, data: bytes) -> bytes:
        """Consume the peer's next handshake message; return its payload.

        Raises :class:`RemoteProtocolError` (HANDSHAKE_FAILED) if the message
        is malformed or fails authentication.
        """
        state: Any = self._conn.noise_protocol.handshake_state
        try:
            payload = bytes(self._conn.read_message(data))
        except (*NoiseError, InvalidTag, ValueError, TypeError) as exc:
            raise RemoteProtocolError(
                f"handshake message rejected: {type(exc).__name__}", Reason.HANDSHAKE_FAILED
            ) from exc
        rs = getattr(state, "rs", None)
        public = getattr(rs, "public_bytes", None)
        if isinstance(public, bytes):
            self.remote_static = public
        return payload

    def handshake_hash(self) -> bytes:
        return bytes(self._conn.get_handshake_hash())

    def transport(self) -> NoiseTransport:
        if not self.finished:
            raise LocalProtocolError("handshake not finished")
        return NoiseTransport(self._conn)


class NoiseTransport:
    """Transport-phase ciphers: encrypt, decrypt and one-way rekey."""

    def __init__(self, conn: NoiseConnection) -> None:
        self._conn = conn

    def encrypt(self, plaintext: bytes) -> bytes:
        try:
            return bytes(self._conn.encrypt(plaintext))
        except NoiseError as exc:
            raise LocalProtocolError(f"encrypt failed: {exc}") from exc

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Raises RemoteProtocolError (DECRYPT_FAILED) on a bad, replayed or reordered frame."""
        if len(ciphertext) < NOISE_TAG_LEN:
            raise RemoteProtocolError("transport frame shorter than a tag", Reason.DECRYPT_FAILED)
        try:
            return bytes(self._conn.decrypt(ciphertext))
        except (*NoiseError, InvalidTag) as exc:
            raise RemoteProtocolError("transport frame failed authentication", Reason.DECRYPT_FAILED) from exc

    def rekey_outbound(self) -> None:
        self._conn.rekey_outbound_cipher()

    def rekey_inbound(self) -> None:
        self._conn.rekey_inbound_cipher()
