"""The transport's own types, and the one place they meet protobuf.

The Transport interface (transport.py) and the all-reduce above it speak these small frozen
values; grpc_transport.py, memory.py and shaping.py convert them to and from peer_pb2 here,
so that the generated code stays inside swarmnode/p2p (docs/architecture.md#generated-code).
Frame headers stay protobuf: only the codec (frames.py) and the Inbox read them.
Secure-aggregation messages are carried as opaque bodies: swarmnode/secagg/wire.py lays
them out and reads them.

Accounts a peer writes into a message enter the node here or in the Inbox, and are
normalized on the way in (docs/architecture.md#addresses).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from swarmnode.address import is_address, normalize
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import InvalidMessage


class Kind(IntEnum):
    """What a frame carries, which decides how the receiver checks it (the wire's values)."""

    UPDATE = peer_pb2.KIND_UPDATE  # reduce-scatter: a slice of the sender's own update
    MERGED = peer_pb2.KIND_MERGED  # all-gather: a slice of the segment the sender merged
    MODEL = peer_pb2.KIND_MODEL  # catch-up: a slice of a round's final model
    MERGED_HASHES = peer_pb2.KIND_MERGED_HASHES  # all-gather check: a checker's chunk hashes


MAX_SECAGG_BODY = 1 << 20
"""The largest secure-aggregation body taken or sent: its messages are a few KiB (shares,
roots, reveals for a few dozen peers), so anything near this is a mistake or an attack."""


class SecAggKind(IntEnum):
    """What a secure-aggregation message is (the wire's values; swarmnode/secagg/wire.py
    lays out each kind's body)."""

    ANNOUNCE = peer_pb2.SECAGG_ANNOUNCE  # join opening, announcement, the recipient's shares
    MASKED_ROOT = peer_pb2.SECAGG_MASKED_ROOT  # the sender's signed masked-vector root
    ROWS_COMPLETE = peer_pb2.SECAGG_ROWS_COMPLETE  # an owner holds every row of an attempt
    REVEAL = peer_pb2.SECAGG_REVEAL  # a reveal request; its answer is the reply
    FETCH_ANNOUNCEMENT = peer_pb2.SECAGG_FETCH_ANNOUNCEMENT  # a peer's opening, without shares


@dataclass(frozen=True)
class SecAggMessage:
    """One secure-aggregation request. p2p carries `body` and never reads it; the size
    limit is checked here, where a message is made or enters the node."""

    round: int
    attempt: int
    kind: SecAggKind
    body: bytes

    def __post_init__(self) -> None:
        if len(self.body) > MAX_SECAGG_BODY:
            raise InvalidMessage(
                f"secure-aggregation {self.kind.name} body of {len(self.body)} bytes exceeds "
                f"the limit of {MAX_SECAGG_BODY}"
            )


def secagg_to_wire(message: SecAggMessage) -> peer_pb2.SecAggRequest:
    return peer_pb2.SecAggRequest(
        round=message.round,
        attempt=message.attempt,
        kind=int(message.kind),  # type: ignore[arg-type]
        body=message.body,
    )


def secagg_request_bytes(data: bytes) -> peer_pb2.SecAggRequest:
    """A serialized SecAggRequest, parsed; InvalidMessage before parsing when it is larger
    than any request within MAX_SECAGG_BODY can be, or when it does not parse."""
    if len(data) > MAX_SECAGG_BODY + SECAGG_OVERHEAD:
        raise InvalidMessage(
            f"secure-aggregation request of {len(data)} bytes exceeds the limit of "
            f"{MAX_SECAGG_BODY} bytes of body"
        )
    try:
        return peer_pb2.SecAggRequest.FromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise InvalidMessage(f"malformed SecAggRequest: {exc}") from exc


def secagg_from_wire(request: peer_pb2.SecAggRequest) -> SecAggMessage:
    """The request as the node's own type; InvalidMessage for an unknown kind or a body
    over MAX_SECAGG_BODY."""
    try:
        kind = SecAggKind(request.kind)
    except ValueError:
        raise InvalidMessage(f"unknown secure-aggregation kind {request.kind}") from None
    return SecAggMessage(request.round, request.attempt, kind, bytes(request.body))


def secagg_reply_body(data: bytes) -> bytes:
    """A serialized SecAggReply's body; InvalidMessage when it is too large or malformed."""
    if len(data) > MAX_SECAGG_BODY + SECAGG_OVERHEAD:
        raise InvalidMessage(
            f"secure-aggregation reply of {len(data)} bytes exceeds the limit of "
            f"{MAX_SECAGG_BODY} bytes of body"
        )
    try:
        return bytes(peer_pb2.SecAggReply.FromString(data).body)
    except Exception as exc:  # protobuf's DecodeError
        raise InvalidMessage(f"malformed SecAggReply: {exc}") from exc


SECAGG_OVERHEAD = 64
"""Bytes of a serialized SecAggRequest or SecAggReply beside its body: field tags, the
body's length, round, attempt and kind (at most 30)."""


@dataclass(frozen=True)
class PeerInfo:
    """Who a peer is and, when asked about a round, whose update segments it still waits
    for: what a node missing that peer's merged segment needs in order to blame the right
    one (docs/round-protocol.md#faults-and-votes)."""

    account: str
    round: int
    version: str
    serving: bool
    waiting_for: tuple[str, ...] = ()


def wire_account(value: str) -> str:
    """An account as a peer wrote it, normalized; InvalidMessage if it is not one."""
    if not is_address(value):
        raise InvalidMessage(f"not an account address: {value[:50]!r}")
    return normalize(value)


def info_to_wire(info: PeerInfo) -> peer_pb2.InfoReply:
    return peer_pb2.InfoReply(
        account=info.account,
        round=info.round,
        version=info.version,
        serving=info.serving,
        waiting_for=info.waiting_for,
    )


def info_from_wire(reply: peer_pb2.InfoReply) -> PeerInfo:
    """The reply with its accounts normalized; InvalidMessage if one is not an account."""
    return PeerInfo(
        wire_account(reply.account),
        reply.round,
        reply.version,
        reply.serving,
        tuple(wire_account(account) for account in reply.waiting_for),
    )
