"""Reason codes carried in Close messages and in every ProtocolError.

The numeric values are part of the wire format (docs/protocol.md, section
"Reason codes"); never renumber, only append.
"""

from __future__ import annotations

import enum


class Reason(enum.IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    UNSUPPORTED_VERSION = 2
    FRAME_TOO_LARGE = 3
    DECRYPT_FAILED = 4
    HANDSHAKE_FAILED = 5
    UNTRUSTED_ISSUER = 6
    BAD_SIGNATURE = 7
    CREDENTIAL_EXPIRED = 8
    CREDENTIAL_NOT_YET_VALID = 9
    WRONG_COMMUNITY = 10
    KEY_MISMATCH = 11
    REVOKED = 12
    DUPLICATE_SESSION = 13
    TIMEOUT = 14
    RATE_LIMITED = 15
    BANNED = 16
    TOO_MANY_CONNECTIONS = 17
    SHUTDOWN = 18
    INVALID_MESSAGE = 19
    UNEXPECTED_MESSAGE = 20
    NOT_A_MEMBER = 21
    EXPIRED = 22
    INSUFFICIENT = 23
    NOT_FOUND = 24
    REPLAY = 25
    BAD_ROLE = 26
    OUT_OF_BOUNDS = 27
    INTERNAL_ERROR = 28
    STORAGE_UNAVAILABLE = 29
