"""p2pd's sans-IO protocol core: bytes and events in, bytes and events out.

Layers, bottom up: ``canonical`` (msgpack rules) and ``signing`` (Ed25519),
``schema`` (typed wire records), ``credentials``, ``messages``, ``framing``,
``handshake`` (Noise), and ``session`` (the state machine). Nothing here does
I/O or reads a clock. docs/protocol.md is the normative description.
"""

from __future__ import annotations

from protocol._states import State as State
from protocol.canonical import pack as pack
from protocol.canonical import signed_bytes as signed_bytes
from protocol.canonical import unpack as unpack
from protocol.credentials import CREDENTIAL_DOMAIN as CREDENTIAL_DOMAIN
from protocol.credentials import ROLES as ROLES
from protocol.credentials import Credential as Credential
from protocol.credentials import TrustPolicy as TrustPolicy
from protocol.credentials import check_credential as check_credential
from protocol.errors import CredentialError as CredentialError
from protocol.errors import DecodeError as DecodeError
from protocol.errors import LocalProtocolError as LocalProtocolError
from protocol.errors import ProtocolError as ProtocolError
from protocol.errors import RemoteProtocolError as RemoteProtocolError
from protocol.errors import SignatureError as SignatureError
from protocol.events import NEED_DATA as NEED_DATA
from protocol.events import ConnectionClosed as ConnectionClosed
from protocol.events import Event as Event
from protocol.events import HandshakeComplete as HandshakeComplete
from protocol.framing import HANDSHAKE_MAX_FRAME as HANDSHAKE_MAX_FRAME
from protocol.framing import NOISE_MAX_FRAME as NOISE_MAX_FRAME
from protocol.framing import FrameDecoder as FrameDecoder
from protocol.framing import frame as frame
from protocol.handshake import NOISE_PROTOCOL_NAME as NOISE_PROTOCOL_NAME
from protocol.handshake import NoiseHandshake as NoiseHandshake
from protocol.handshake import prologue as prologue
from protocol.messages import MESSAGE_TYPES as MESSAGE_TYPES
from protocol.messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from protocol.messages import Close as Close
from protocol.messages import Hello as Hello
from protocol.messages import Message as Message
from protocol.messages import Ping as Ping
from protocol.messages import Pong as Pong
from protocol.messages import Rekey as Rekey
from protocol.messages import decode_message as decode_message
from protocol.messages import encode_message as encode_message
from protocol.messages import register as register
from protocol.reasons import Reason as Reason
from protocol.session import Session as Session
from protocol.session import Timeouts as Timeouts
from protocol.signing import SigningKey as SigningKey
from protocol.signing import digest as digest
from protocol.signing import verify as verify
from protocol.discovery import ADDRESS_DOMAIN as ADDRESS_DOMAIN
from protocol.discovery import AddressAnnouncement as AddressAnnouncement
from protocol.congestion import CATEGORIES as CATEGORIES
from protocol.congestion import STAMP_DOMAIN as STAMP_DOMAIN
from protocol.congestion import AimdPacer as AimdPacer
from protocol.congestion import CongestionFeedback as CongestionFeedback
from protocol.congestion import FeedbackEcho as FeedbackEcho
from protocol.congestion import FeedbackStamper as FeedbackStamper
from protocol.congestion import StampError as StampError
from protocol.congestion import TokenBucket as TokenBucket
from protocol.congestion import compute_stamp as compute_stamp
from protocol.revocation import REVOCATION_DOMAIN as REVOCATION_DOMAIN
from protocol.revocation import RevocationAnnounce as RevocationAnnounce
from protocol.revocation import RevocationList as RevocationList
from protocol.revocation import issue_revocation as issue_revocation
from protocol.delegation import AgentOrder as AgentOrder
from protocol.delegation import AgentReceipt as AgentReceipt
from protocol.delegation import AgentTerms as AgentTerms
from protocol.delegation import Delegation as Delegation
from protocol.delegation import DelegationRevoke as DelegationRevoke
from protocol.delegation import MeterReport as MeterReport
from protocol.delegation import check_agent_receipt as check_agent_receipt
from protocol.brokerage import ClearingSummary as ClearingSummary
from protocol.receipt_log import EquivocationProof as EquivocationProof
from protocol.receipt_log import LogHead as LogHead
from protocol.receipt_log import ReceiptChain as ReceiptChain
