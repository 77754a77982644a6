"""p2pd's sans-IO protocol core: bytes and events in, bytes and events out.

Layers, bottom up: ``canonical`` (msgpack rules) and ``signing`` (Ed25519),
``schema`` (typed wire records), ``credentials``, ``messages``, ``framing``,
``handshake`` (Noise), and ``session`` (the state machine). Nothing here does
I/O or reads a clock. docs/protocol.md is the normative description.

The wire's bounds (``MAX_PRICE``, ``MAX_WH``, ``MIN_SLOT``/``MAX_SLOT``,
``MAX_HOPS``, ``MAX_TIME``, ``ID_PATTERN``) are exported here so that p2pd
validates configuration and control calls against the very same numbers.
"""

from __future__ import annotations

from protocol._states import State as State
from protocol.brokerage import BOOK_CHUNK_MAX as BOOK_CHUNK_MAX
from protocol.brokerage import BookChunk as BookChunk
from protocol.brokerage import BrokerAccepted as BrokerAccepted
from protocol.brokerage import BrokerSubmit as BrokerSubmit
from protocol.brokerage import ClearingAnnounce as ClearingAnnounce
from protocol.brokerage import ClearingSummary as ClearingSummary
from protocol.brokerage import MatchFinal as MatchFinal
from protocol.brokerage import MatchPropose as MatchPropose
from protocol.brokerage import MatchSign as MatchSign
from protocol.canonical import pack as pack
from protocol.canonical import signed_bytes as signed_bytes
from protocol.canonical import unpack as unpack
from protocol.congestion import CATEGORIES as CATEGORIES
from protocol.congestion import STAMP_DOMAIN as STAMP_DOMAIN
from protocol.congestion import AimdPacer as AimdPacer
from protocol.congestion import CongestionFeedback as CongestionFeedback
from protocol.congestion import FeedbackEcho as FeedbackEcho
from protocol.congestion import FeedbackStamper as FeedbackStamper
from protocol.congestion import StampError as StampError
from protocol.congestion import TokenBucket as TokenBucket
from protocol.congestion import compute_stamp as compute_stamp
from protocol.credentials import CREDENTIAL_DOMAIN as CREDENTIAL_DOMAIN
from protocol.credentials import ID_PATTERN as ID_PATTERN
from protocol.credentials import ROLES as ROLES
from protocol.credentials import Credential as Credential
from protocol.credentials import TrustPolicy as TrustPolicy
from protocol.credentials import check_credential as check_credential
from protocol.delegation import AgentAccepted as AgentAccepted
from protocol.delegation import AgentOrder as AgentOrder
from protocol.delegation import AgentOrderGossip as AgentOrderGossip
from protocol.delegation import AgentReceipt as AgentReceipt
from protocol.delegation import AgentTake as AgentTake
from protocol.delegation import AgentTerms as AgentTerms
from protocol.delegation import BoundsError as BoundsError
from protocol.delegation import Delegation as Delegation
from protocol.delegation import DelegationGossip as DelegationGossip
from protocol.delegation import DelegationRevoke as DelegationRevoke
from protocol.delegation import DelegationRevokeGossip as DelegationRevokeGossip
from protocol.delegation import MeterReport as MeterReport
from protocol.delegation import MeterReportMsg as MeterReportMsg
from protocol.delegation import AgentRefused as AgentRefused
from protocol.delegation import check_agent_receipt as check_agent_receipt
from protocol.delegation import check_delegation_bounds as check_delegation_bounds
from protocol.discovery import ADDRESS_DOMAIN as ADDRESS_DOMAIN
from protocol.discovery import AddressAnnouncement as AddressAnnouncement
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
from protocol.receipt_log import RECEIPT_V1 as RECEIPT_V1
from protocol.receipt_log import RECEIPT_V2 as RECEIPT_V2
from protocol.receipt_log import EquivocationGossip as EquivocationGossip
from protocol.receipt_log import EquivocationProof as EquivocationProof
from protocol.receipt_log import HeadGossip as HeadGossip
from protocol.receipt_log import LogHead as LogHead
from protocol.receipt_log import ReceiptChain as ReceiptChain
from protocol.receipt_log import ReceiptReplica as ReceiptReplica
from protocol.receipt_log import entry_hash as entry_hash
from protocol.revocation import REVOCATION_DOMAIN as REVOCATION_DOMAIN
from protocol.revocation import RevocationAnnounce as RevocationAnnounce
from protocol.revocation import RevocationList as RevocationList
from protocol.revocation import issue_revocation as issue_revocation
from protocol.schema import U32 as U32
from protocol.schema import Int as Int
from protocol.schema import f as f
from protocol.session import Session as Session
from protocol.session import Timeouts as Timeouts
from protocol.signing import SIGNATURE_LEN as SIGNATURE_LEN
from protocol.signing import SigningKey as SigningKey
from protocol.signing import digest as digest
from protocol.signing import verify as verify
from protocol.trading import BATCH_MAX as BATCH_MAX
from protocol.trading import GOSSIP_ALL as GOSSIP_ALL
from protocol.trading import GOSSIP_NONE as GOSSIP_NONE
from protocol.trading import GOSSIP_SOME as GOSSIP_SOME
from protocol.trading import MAX_HOPS as MAX_HOPS
from protocol.trading import MAX_PRICE as MAX_PRICE
from protocol.trading import MAX_SLOT as MAX_SLOT
from protocol.trading import MAX_TIME as MAX_TIME
from protocol.trading import MAX_WH as MAX_WH
from protocol.trading import MIN_SLOT as MIN_SLOT
from protocol.trading import SNAPSHOT_MAX as SNAPSHOT_MAX
from protocol.trading import Cancel as Cancel
from protocol.trading import CancelGossip as CancelGossip
from protocol.trading import GossipBatch as GossipBatch
from protocol.trading import GossipControl as GossipControl
from protocol.trading import Order as Order
from protocol.trading import OrderGossip as OrderGossip
from protocol.trading import OrdersRequest as OrdersRequest
from protocol.trading import OrdersSnapshot as OrdersSnapshot
from protocol.trading import Receipt as Receipt
from protocol.trading import Take as Take
from protocol.trading import TradeAccepted as TradeAccepted
from protocol.trading import TradeRefused as TradeRefused
from protocol.trading import TradeTerms as TradeTerms
from protocol.trading import parties as parties
