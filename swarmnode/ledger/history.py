"""A node's rounds as the chain records them: what `swarmnode status --node` shows.

The round's own state (status, attempt, final digest) is in contract storage, but which
rounds a node joined and what it reported live only in the contract's events: a node that
left a round has no seat in it any more, and a seat keeps the attempt it reported in, not the
digest. So both are read, through the Ledger interface, and any backend answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import LedgerEvent, RoundState, RoundStatus


@dataclass(frozen=True)
class Participation:
    """One round a node joined, and what became of it and of the node's part in it."""

    round: int
    status: str  # the round's: open | closed | final | failed
    fail_reason: str  # none | expired | too_few_live | reports_disagree
    attempt: int  # the round's current attempt; the deciding one once it ended
    part: str  # the node's last step: joined | reported | left | dropped | withdrawn
    report: bytes | None  # the digest of the node's latest report in the round
    report_attempt: int  # the attempt that report was for (0: none)
    final_digest: bytes | None
    agreed: bool | None  # final rounds: its report in the deciding attempt matched (None: none)

    def to_dict(self) -> dict[str, object]:
        return {
            "round": self.round,
            "status": self.status,
            "fail_reason": self.fail_reason,
            "attempt": self.attempt,
            "part": self.part,
            "report": None if self.report is None else "0x" + self.report.hex(),
            "report_attempt": self.report_attempt,
            "final_digest": None if self.final_digest is None else "0x" + self.final_digest.hex(),
            "agreed": self.agreed,
        }


# the events that say what a node did in a round, and the part each leaves it in
_PARTS = {
    "Joined": "joined",
    "Reported": "reported",
    "Left": "left",
    "Dropped": "dropped",
    "Withdrawn": "withdrawn",
}


@dataclass
class _Seen:
    part: str = "joined"
    report: bytes | None = None
    report_attempt: int = 0


def node_rounds(ledger: Ledger, account: str, *, limit: int | None = None) -> list[Participation]:
    """The rounds `account` (checksummed, as ledgers give accounts and event arguments,
    docs/architecture.md#addresses) joined, newest first (at most `limit` of them)."""
    events, _ = ledger.events(ledger.start_cursor())
    seen = _parts(events, account)
    numbers = sorted(seen, reverse=True)[:limit]
    return [_participation(ledger.round(number), seen[number]) for number in numbers]


def _parts(events: list[LedgerEvent], account: str) -> dict[int, _Seen]:
    """What `account` last did in each round it joined, from the events in chain order."""
    seen: dict[int, _Seen] = {}
    for event in events:
        if event.name not in _PARTS:
            continue
        if event.args.get("node", event.args.get("peer")) != account:
            continue
        number = int(event.args["round"])
        if event.name == "Joined":
            seen[number] = _Seen()  # a rejoin after leaving starts over
        elif number not in seen:
            continue
        elif event.name == "Reported":
            entry = seen[number]
            entry.part = "reported"
            entry.report = bytes(event.args["digest"])
            entry.report_attempt = int(event.args["attempt"])
        else:
            seen[number].part = _PARTS[event.name]
    return seen


def _participation(state: RoundState, entry: _Seen) -> Participation:
    agreed = None  # sent no report in the deciding attempt (the quorum came first, ...)
    if state.status == RoundStatus.FINAL and entry.report_attempt == state.attempt:
        agreed = entry.report == state.final_digest
    return Participation(
        round=state.number,
        status=state.status.name.lower(),
        fail_reason=state.fail_reason.name.lower(),
        attempt=state.attempt,
        part=entry.part,
        report=entry.report,
        report_attempt=entry.report_attempt,
        final_digest=state.final_digest,
        agreed=agreed,
    )
