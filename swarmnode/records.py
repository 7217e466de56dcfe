"""One node's round as a record: what the daemon logs, the simulators report, tests read.

The daemon writes one per round to its JSON log (node.jsonl, under `"event": "round"`); the
process simulator reads them back from there; the in-process engine builds the same record
from the node's own result; metrics.jsonl holds them one per line. Written in one place, the
field names cannot drift apart between the three (docs/simulator.md#reports).

Only the standard library is imported here, not even the node it describes (it reads a
node's step through the `Step` protocol): this sits at the bottom of the package
(docs/architecture.md#layers), and a log reader (a test, a notebook) reads the records
without loading torch, web3 or grpc.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sized
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class _Split(Protocol):
    @property
    def payload(self) -> int: ...
    @property
    def hashes(self) -> int: ...
    @property
    def framing(self) -> int: ...


class _Traffic(Protocol):
    @property
    def sent(self) -> int: ...
    @property
    def received(self) -> int: ...
    @property
    def sent_split(self) -> _Split: ...
    @property
    def received_split(self) -> _Split: ...


class _Result(Protocol):
    """What the record reads of a swarmnode.round.RoundResult."""

    @property
    def round(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def participants(self) -> Sized: ...
    @property
    def digest(self) -> bytes | None: ...
    @property
    def seconds(self) -> Mapping[str, float]: ...
    @property
    def traffic(self) -> _Traffic: ...
    @property
    def transactions(self) -> int: ...
    @property
    def gas(self) -> int: ...
    @property
    def checked(self) -> int: ...
    @property
    def accused(self) -> Iterable[str]: ...


class Step(Protocol):
    """What the record reads of a node's step (swarmnode.node.NodeRound)."""

    @property
    def result(self) -> _Result: ...
    @property
    def batches(self) -> int: ...
    @property
    def val_loss(self) -> float: ...


ROUND_EVENT = "round"
"""The `event` of a round's line in the daemon's JSON log."""

_OPTIONAL = ("receipts", "time", "node", "pid", "epsilon")  # left out of the JSON while unknown


@dataclass(frozen=True)
class NodeRoundRecord:
    """What one round did for one node, in the units its JSON form carries.

    `status` is the round's outcome as a string (final, caught_up, failed_too_few, ...; for
    a simulated node that took no part: down, sat_out or crashed)."""

    round: int
    status: str
    attempt: int = 0
    digest: str = ""  # hex of the model the node ended the round holding; "" without one
    seconds: dict[str, float] = field(default_factory=dict)  # per phase of the round
    # bytes the node's transport counted on the wire in its all-reduce attempts (messages
    # and gRPC's 5-byte prefixes; HTTP/2 and TLS framing not included)
    bytes_sent: int = 0
    bytes_received: int = 0
    # the same bytes in parts (swarmnode.p2p.transport.ByteSplit): float32 payload, chunk
    # hashes and proofs, framing (headers, requests, acks, prefixes); each trio sums to its
    # total
    sent_payload: int = 0
    sent_hashes: int = 0
    sent_framing: int = 0
    received_payload: int = 0
    received_hashes: int = 0
    received_framing: int = 0
    participants: int = 0
    batches: int = 0  # trained since the previous round
    transactions: int = 0  # this node sent in the round
    gas: int = 0  # what those of them that were mined used, from their receipts
    val_loss: float | None = None
    checked: int = 0  # segments its all-reduce re-merged itself (owners disagreed or silent)
    accused: list[str] = field(default_factory=list)  # peers it saw fail it (evidence)
    receipts: int | None = None  # mined transactions the daemon counted from its receipts
    time: float | None = None  # when the daemon logged it (seconds since the epoch)
    node: int | None = None  # the simulator's number for the node, from 0
    pid: int | None = None  # the process simulator's daemon
    epsilon: float | None = None  # privacy spent by the round's end, for a node with DP

    @classmethod
    def from_round(cls, outcome: Step, **known: Any) -> NodeRoundRecord:
        """The record of `outcome`, a node's step; `known` adds what only the caller knows
        (the node's number, the receipts counted)."""
        result = outcome.result
        return cls(
            round=result.round,
            status=str(result.status),
            attempt=result.attempt,
            digest=(result.digest or b"").hex(),
            seconds=dict(result.seconds),
            bytes_sent=result.traffic.sent,
            bytes_received=result.traffic.received,
            sent_payload=result.traffic.sent_split.payload,
            sent_hashes=result.traffic.sent_split.hashes,
            sent_framing=result.traffic.sent_split.framing,
            received_payload=result.traffic.received_split.payload,
            received_hashes=result.traffic.received_split.hashes,
            received_framing=result.traffic.received_split.framing,
            participants=len(result.participants),
            batches=outcome.batches,
            transactions=result.transactions,
            gas=result.gas,
            val_loss=outcome.val_loss,
            checked=result.checked,
            accused=list(result.accused),
            **known,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object: every field, less the optional ones not known."""
        value = asdict(self)
        value["status"] = str(self.status)
        return {k: v for k, v in value.items() if not (k in _OPTIONAL and v is None)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> NodeRoundRecord:
        """The record in a JSON object; keys that are not fields (a log line's `event`,
        `level`, `message`) are passed over, and missing fields take their defaults."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in value.items() if k in names})


def round_records(events: Iterable[Mapping[str, Any]]) -> list[NodeRoundRecord]:
    """The round records among a daemon's JSON log events, in the order logged."""
    return [NodeRoundRecord.from_json(e) for e in events if e.get("event") == ROUND_EVENT]
