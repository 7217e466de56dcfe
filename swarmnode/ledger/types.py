"""Plain values the ledger hands out: no web3 types leak past swarmnode.ledger."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmnode.rules import SwarmParams


class RoundStatus(IntEnum):
    NONE = 0
    OPEN = 1
    CLOSED = 2
    FINAL = 3
    FAILED = 4


class FailReason(IntEnum):
    NONE = 0
    EXPIRED = 1
    TOO_FEW_LIVE = 2
    REPORTS_DISAGREE = 3


@dataclass(frozen=True)
class NodeRecord:
    """One roster entry. `fingerprint` is the SHA-256 of the node's DER certificate."""

    account: str
    endpoint: str
    fingerprint: bytes
    active: bool


def san_offset(certificate: bytes, account: str) -> int:
    """Where `certificate` carries `account` as its DNS SubjectAltName spells it ("0x" and
    lowercase hex), for the contract's register check; len(certificate) when it does not, so
    that the contract refuses with CertificateNotBound (docs/trust.md#the-roster)."""
    found = certificate.find(account.lower().encode("ascii"))
    return len(certificate) if found < 0 else found


@dataclass(frozen=True)
class Seat:
    """One participant of a round, in join order."""

    account: str
    commitment: bytes
    weight: int
    val_loss: int
    dropped_at: int
    reported_at: int

    @property
    def live(self) -> bool:
        return self.dropped_at == 0


@dataclass(frozen=True)
class RoundState:
    """A round as the chain has it at one moment."""

    number: int
    status: RoundStatus
    fail_reason: FailReason
    attempt: int
    joined: int
    live: int
    reports: int
    first_join_at: int
    closed_at: int
    attempt_start: int
    seats: tuple[Seat, ...] = ()
    final_digest: bytes | None = None
    # The round's seed: the hash of the block it closed in (32 bytes), b"" while open. Nobody
    # in the round chooses it, so what is drawn from it is not theirs to pick
    # (docs/chain.md#the-round-seed).
    seed: bytes = b""
    # Nodes still training when this was read (registered and not finished): the chain's
    # count now, whichever round was asked about. None where the backend cannot say. A round
    # closes once all of them have joined (docs/round-protocol.md#closing).
    training: int | None = None

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(s.account for s in self.seats)

    @property
    def live_participants(self) -> tuple[str, ...]:
        """Live participants in the contract's order: segment j belongs to the j-th of these."""
        return tuple(s.account for s in self.seats if s.live)

    # Deadlines, from the start times the chain stores (docs/round-protocol.md#clocks): a node
    # compares these with its own clock before sending, instead of waiting for chain time to
    # move.

    def close_allowed_at(self, params: SwarmParams) -> int | None:
        """When anyone may close this round; None unless open with min_peers joined."""
        if self.status != RoundStatus.OPEN or self.joined < params.min_peers:
            return None
        return self.first_join_at + params.join_window

    def drop_allowed_at(self, params: SwarmParams) -> int | None:
        """When drop votes start to count in the current attempt; None unless closed."""
        if self.status != RoundStatus.CLOSED:
            return None
        return self.attempt_start + params.transfer_deadline

    def report_overdue_at(self, params: SwarmParams) -> int | None:
        """When a participant that has not reported in this attempt may be voted out."""
        if self.status != RoundStatus.CLOSED:
            return None
        return self.attempt_start + 2 * params.transfer_deadline

    def expires_at(self, params: SwarmParams) -> int | None:
        """When anyone may expire this round; None if it has ended or nobody joined."""
        if self.status == RoundStatus.CLOSED:
            return self.closed_at + params.round_deadline
        if self.status == RoundStatus.OPEN and self.joined > 0:
            return self.first_join_at + params.round_deadline
        return None


@dataclass(frozen=True)
class LedgerEvent:
    """A contract event. `position` orders events on one chain: (block, log index).
    `removed`: a log filter says a reorganization took it back
    (docs/chain.md#events-and-the-roster-feed)."""

    name: str
    position: tuple[int, int]
    args: Mapping[str, Any] = field(default_factory=dict)
    removed: bool = False
