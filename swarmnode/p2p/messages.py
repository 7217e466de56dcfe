"""The transport's own types, and the one place they meet protobuf.

The Transport interface (transport.py) and the all-reduce above it speak these small frozen
values; grpc_transport.py, memory.py and shaping.py convert them to and from peer_pb2 here,
so that the generated code stays inside swarmnode/p2p (docs/architecture.md#generated-code).
Frame headers stay protobuf: only the codec (frames.py) and the Inbox read them.

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
