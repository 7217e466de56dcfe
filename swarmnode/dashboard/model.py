"""What the dashboard shows of a swarm, folded from the contract's events as they come.

The events alone say who registered, was admitted, joined, reported, was dropped or
withdrew, and how each round ended; the contract's views add what is true now (the active
roster, the current round, the latest model). Seconds and gas are not in any event: where
the chain can say (`ChainFacts`, a JSON-RPC chain), they come from the blocks' timestamps
and the receipts of the transactions that emitted a round's events. A node's validation
metrics (accuracy) are not on the chain at all; they come from its Prometheus page where
the operator named it (`--metrics URL`). The loss curve needs no metrics: every node joins
a round with its validation loss, scaled by 1e6, in the Joined event.

An `EventCursor` reads only new blocks each refresh; when the chain takes back blocks it
had read (a restarted dev chain), everything is folded again from the deployment
(docs/chain.md#events-and-the-roster-feed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from swarmnode.dashboard.scrape import Sample, scrape
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.events import ChainRewound, EventCursor
from swarmnode.ledger.types import FailReason, LedgerEvent

LOSS_SCALE = 1e6  # the chain stores validation losses as uint64, the loss times 1e6
SHOWN_ROUNDS = 50  # the newest rounds the page lists; older ones stay in the curves

_FAIL_NAMES = {int(r): r.name.lower() for r in FailReason}


class ChainFacts(Protocol):
    """What blocks say beyond the events: when they were mined and what their calls cost."""

    def timestamp(self, block: int) -> int | None:
        """The block's time in chain seconds; None where the chain has no such block."""

    def gas(self, block: int) -> list[tuple[int, list[int]]]:
        """Each transaction to the swarm's contract in `block`: its gas used and the log
        indices of the events it emitted."""


class Web3Facts:
    """ChainFacts read over JSON-RPC, cached: a block's facts do not change unless the chain
    rewinds, and then `forget` is called."""

    def __init__(self, w3: Any, address: str) -> None:
        self._w3 = w3
        self._address = address.lower()
        self._times: dict[int, int | None] = {}
        self._gas: dict[int, list[tuple[int, list[int]]]] = {}

    def timestamp(self, block: int) -> int | None:
        if block not in self._times:
            try:
                self._times[block] = int(self._w3.eth.get_block(block)["timestamp"])
            except Exception:  # web3's BlockNotFound: the chain lost it
                return None
        return self._times[block]

    def gas(self, block: int) -> list[tuple[int, list[int]]]:
        if block not in self._gas:
            found = []
            for tx in self._w3.eth.get_block(block)["transactions"]:
                receipt = self._w3.eth.get_transaction_receipt(tx)
                if str(receipt.get("to") or "").lower() != self._address:
                    continue
                logs = [int(entry["logIndex"]) for entry in receipt["logs"]]
                found.append((int(receipt["gasUsed"]), logs))
            self._gas[block] = found
        return self._gas[block]

    def forget(self) -> None:
        self._times.clear()
        self._gas.clear()


@dataclass
class NodeRow:
    account: str
    endpoint: str
    admitted: bool
    active: bool = True
    finished: bool = False


@dataclass
class RoundRow:
    number: int
    status: str = "open"
    fail_reason: str = "none"
    attempts: int = 0
    joined: list[str] = field(default_factory=list)
    participants: list[str] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    reports: int = 0
    digest: str | None = None
    first_block: int | None = None
    last_block: int | None = None
    gas: int | None = None

    def to_dict(self, seconds: int | None) -> dict[str, Any]:
        losses = list(self.losses.values())
        return {
            "round": self.number,
            "status": self.status,
            "fail_reason": self.fail_reason,
            "attempts": self.attempts,
            "participants": self.participants or self.joined,
            "dropped": self.dropped,
            "withdrawn": self.withdrawn,
            "left": self.left,
            "reports": self.reports,
            "digest": self.digest,
            "seconds": seconds,
            "gas": self.gas,
            "mean_loss": sum(losses) / len(losses) if losses else None,
        }


class SwarmModel:
    """The dashboard's state of one swarm: `refresh` reads what is new and returns the
    snapshot the page draws (also what `GET /api/swarm` answers)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        chain_id: int | None = None,
        facts: ChainFacts | None = None,
        metrics: Sequence[str] = (),
        scraper: Callable[[str], list[Sample] | None] = scrape,
    ) -> None:
        self._ledger = ledger
        self._chain_id = chain_id
        self._facts = facts
        self._metrics = list(metrics)
        self._scraper = scraper
        self._cursor = EventCursor(ledger)
        self._restricted = ledger.params().restricted
        self._metric_rows: list[dict[str, Any]] = []
        self.rewinds = 0  # how often the chain took back blocks already folded
        self._reset()

    def _reset(self) -> None:
        self._nodes: dict[str, NodeRow] = {}
        self._allowed: set[str] = set()
        self._rounds: dict[int, RoundRow] = {}
        self._by_log: dict[tuple[int, int], int] = {}  # event position -> its round
        self._accuracy: dict[str, dict[int, float]] = {url: {} for url in self._metrics}

    def refresh(self) -> dict[str, Any]:
        """Reads the new events (all of them again after a rewind) and the views, scrapes
        the metrics pages, and returns the snapshot."""
        try:
            events = self._cursor.poll()
        except ChainRewound:
            self.rewinds += 1
            self._reset()
            if isinstance(self._facts, Web3Facts):
                self._facts.forget()
            events = self._cursor.poll()
        for event in events:
            self._fold(event)
        self._add_gas(events)
        return self._snapshot()

    # ------------------------------------------------------------------ events

    def _fold(self, event: LedgerEvent) -> None:
        args, name = event.args, event.name
        if name == "Registered":
            account = str(args["node"])
            admitted = not self._restricted or account in self._allowed
            self._nodes[account] = NodeRow(account, str(args["endpoint"]), admitted)
        elif name == "EndpointUpdated" and args["node"] in self._nodes:
            self._nodes[args["node"]].endpoint = str(args["endpoint"])
        elif name == "Deregistered" and args["node"] in self._nodes:
            self._nodes[args["node"]].active = False
        elif name == "Finished" and args["node"] in self._nodes:
            self._nodes[args["node"]].finished = True
        elif name in ("Allowed", "Revoked"):
            account = str(args["account"])
            (self._allowed.add if name == "Allowed" else self._allowed.discard)(account)
            if account in self._nodes:
                self._nodes[account].admitted = name == "Allowed"
        if "round" in args:
            self._fold_round(event, self._round(int(args["round"]), event.position[0]))

    def _round(self, number: int, block: int) -> RoundRow:
        row = self._rounds.setdefault(number, RoundRow(number))
        row.first_block = block if row.first_block is None else row.first_block
        row.last_block = block
        return row

    def _fold_round(self, event: LedgerEvent, row: RoundRow) -> None:
        args, name = event.args, event.name
        self._by_log[event.position] = row.number
        if name == "Joined":
            account = str(args["node"])
            if account in row.left:
                row.left.remove(account)  # a rejoin after leaving
            if account not in row.joined:
                row.joined.append(account)
            row.losses[account] = int(args["valLoss"]) / LOSS_SCALE
            if account in self._nodes:
                self._nodes[account].finished = False  # a join makes it train again
        elif name == "Left":
            account = str(args["node"])
            row.left.append(account)
            if account in row.joined:
                row.joined.remove(account)
            row.losses.pop(account, None)
        elif name == "RoundClosed":
            row.status = "closed"
            row.participants = [str(a) for a in args["participants"]]
        elif name == "AttemptStarted":
            row.attempts = max(row.attempts, int(args["attempt"]))
        elif name == "Dropped":
            row.dropped.append(str(args["peer"]))
        elif name == "Withdrawn":
            row.withdrawn.append(str(args["node"]))
        elif name == "Reported":
            row.reports += 1
        elif name == "RoundFinalized":
            row.status = "final"
            row.attempts = max(row.attempts, int(args["attempt"]))
            row.digest = "0x" + bytes(args["digest"]).hex()
        elif name == "RoundFailed":
            row.status = "failed"
            row.fail_reason = _FAIL_NAMES.get(int(args["reason"]), str(args["reason"]))

    def _add_gas(self, events: list[LedgerEvent]) -> None:
        """Each transaction's gas goes to the round of the first event it emitted."""
        if self._facts is None:
            return
        for block in sorted({e.position[0] for e in events if e.position in self._by_log}):
            for used, logs in self._facts.gas(block):
                number = next(
                    (self._by_log[(block, i)] for i in logs if (block, i) in self._by_log), None
                )
                if number is not None:
                    row = self._rounds[number]
                    row.gas = (row.gas or 0) + used

    # ------------------------------------------------------------------ snapshot

    def _seconds(self, row: RoundRow) -> int | None:
        """From its first event to the one that ended it; None while it runs."""
        if self._facts is None or row.status not in ("final", "failed"):
            return None
        assert row.first_block is not None and row.last_block is not None
        start, end = self._facts.timestamp(row.first_block), self._facts.timestamp(row.last_block)
        return None if start is None or end is None else end - start

    def _snapshot(self) -> dict[str, Any]:
        active = {n.account: n for n in self._ledger.active_nodes()}
        for account, record in active.items():
            if account not in self._nodes:  # registered before a window it did not read
                self._nodes[account] = NodeRow(account, record.endpoint, True)
        for account, row in self._nodes.items():
            row.active = account in active
            if account in active:
                row.endpoint = active[account].endpoint
        latest_round, latest_digest = self._ledger.latest_model()
        numbers = sorted(self._rounds, reverse=True)
        rounds = [self._rounds[n].to_dict(self._seconds(self._rounds[n])) for n in numbers]
        return {
            "swarm": {
                "address": self._ledger.address,
                "chain_id": self._chain_id,
                "restricted": self._restricted,
                "current_round": self._ledger.current_round(),
                "latest_model": {"round": latest_round, "digest": "0x" + latest_digest.hex()},
                "rewinds": self.rewinds,
                "updated_at": time.time(),
            },
            "nodes": [
                {
                    "account": n.account,
                    "endpoint": n.endpoint,
                    "admitted": n.admitted,
                    "active": n.active,
                    "finished": n.finished,
                }
                for n in self._nodes.values()
            ],
            "rounds": rounds[:SHOWN_ROUNDS],
            "curves": {
                "loss": [
                    [r["round"], r["mean_loss"]]
                    for r in reversed(rounds)
                    if r["mean_loss"] is not None
                ],
                "accuracy": self._scrape_all(),
            },
            "metrics": self._metric_rows,
        }

    def _scrape_all(self) -> dict[str, list[list[float]]]:
        """Scrapes every metrics page; keeps each node's accuracy per final round."""
        self._metric_rows = []
        for url in self._metrics:
            samples = self._scraper(url)
            if samples is None:
                self._metric_rows.append({"url": url, "reachable": False, "values": {}})
                continue
            values = shown_values(samples)
            self._metric_rows.append({"url": url, "reachable": True, "values": values})
            accuracy = _accuracy(samples)
            number = next((v for k, v in values.items() if "last_final_round" in k), None)
            if accuracy is not None and number is not None and number > 0:
                self._accuracy[url][int(number)] = accuracy
        return {
            url: [[n, v] for n, v in sorted(points.items())]
            for url, points in self._accuracy.items()
            if points
        }


def shown_values(samples: list[Sample]) -> dict[str, float]:
    """The node's own numbers worth a glance: swarmnode_ samples that are not histogram
    buckets, named with their labels."""
    shown: dict[str, float] = {}
    for s in samples:
        if not s.name.startswith("swarmnode_") or s.name.endswith(("_bucket", "_created")):
            continue
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        shown[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return shown


def _accuracy(samples: list[Sample]) -> float | None:
    """A validation accuracy among the samples: a metric named so, or labelled so."""
    for s in samples:
        if not s.name.startswith("swarmnode_"):
            continue
        if "accuracy" in s.name or "accuracy" in s.labels.values():
            return s.value
    return None
