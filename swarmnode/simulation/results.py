"""What a simulated run gives: a record per round, the run, a baseline's accuracy curve.

Plain values, made by the runners (engine.py in process, processes.py as daemons,
baselines.py) and read by the reports (report.py, sweep_report.py); kept here, below both,
so that a report needs no runner to read a run (docs/simulator.md#layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swarmnode.records import NodeRoundRecord


@dataclass
class RoundRecord:
    """One round of the swarm: the nodes' own records and what the chain shows of it."""

    round: int
    participants: int
    seconds: float
    bytes_sent_per_node: float
    model_bytes: int
    digest_agreed: bool
    transactions: int
    gas_used: int
    accuracy: float
    loss: float
    per_node: list[NodeRoundRecord] = field(default_factory=list)
    digest: str = ""  # the round's final digest (hex) when every node holds it, else ""
    # faults: who crashed, was down, sat out, restarted, caught up, was voted out (chain)
    faults: dict[str, Any] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # the contract's, for this round
    calls: dict[str, int] = field(default_factory=dict)  # mined transactions, from receipts
    # what the protocol did against liars: segments the honest nodes checked themselves
    # (re-merged from their rows), and the nodes some honest node accused
    checked: int = 0
    accused: list[int] = field(default_factory=list)

    @property
    def bytes_split_per_node(self) -> dict[str, int]:
        """What the node that sent most (bytes_sent_per_node) sent, in parts: payload,
        hashes (chunk hashes and proofs), framing; empty without per-node records."""
        if not self.per_node:
            return {}
        busiest = max(self.per_node, key=lambda r: r.bytes_sent)
        return {
            "payload": busiest.sent_payload,
            "hashes": busiest.sent_hashes,
            "framing": busiest.sent_framing,
        }


@dataclass
class SwarmRun:
    rounds: list[RoundRecord]
    accuracy: float
    loss: float
    transactions: int
    gas_used: int

    @classmethod
    def of(cls, rounds: list[RoundRecord]) -> SwarmRun:
        """The run these rounds make: the last round's model, the chain's totals."""
        return cls(
            rounds=rounds,
            accuracy=rounds[-1].accuracy,
            loss=rounds[-1].loss,
            transactions=sum(r.transactions for r in rounds),
            gas_used=sum(r.gas_used for r in rounds),
        )

    @property
    def digest(self) -> str:
        """The last round's final digest (hex); "" if the nodes did not all end holding it."""
        return self.rounds[-1].digest if self.rounds else ""


@dataclass
class Curve:
    """Test accuracy after each round's worth of training; the last value is the result."""

    accuracy: list[float]

    @property
    def final(self) -> float:
        return self.accuracy[-1]
