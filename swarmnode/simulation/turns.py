"""Joins in node order, so that a simulated run gives the same bits on every backend.

The participant list of a round is the order of its joins, and the merge is computed in that
order (the weighted mean and centered clipping sum anchored differences in participant order;
float addition is not associative), so two runs whose nodes joined in different orders end
with models that differ in the last bits and with different digests. Threads racing on two
busy cores join in whatever order the scheduler picks, so the simulator makes virtual node k
wait, just before its join, until the nodes ranked below it this round have joined. The wait
is bounded: a node that never joins (crashed, skipped the round) delays the others by at most
`wait` seconds and then the order is whatever it is. Nothing else about the round changes:
the contract still closes the round on its own rule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import LedgerEvent, NodeRecord, RoundState
from swarmnode.rules import SwarmParams


class JoinTurns:
    """Who has joined in the current step of the simulation, shared by every virtual node."""

    def __init__(self, wait: float = 10.0) -> None:
        self.wait = wait
        self._cond = threading.Condition()
        self._expected: frozenset[int] = frozenset()
        self._done: set[int] = set()

    def expect(self, ranks: Iterable[int]) -> None:
        """Starts a step in which `ranks` will join, each after every lower expected rank."""
        with self._cond:
            self._expected = frozenset(ranks)
            self._done = set()
            self._cond.notify_all()

    def wait_turn(self, rank: int) -> bool:
        """Blocks until every expected rank below `rank` is done; False if the wait ran out."""
        deadline = time.monotonic() + self.wait
        with self._cond:
            while not all(r in self._done for r in self._expected if r < rank):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def done(self, rank: int) -> None:
        with self._cond:
            self._done.add(rank)
            self._cond.notify_all()


class OrderedJoins(Ledger):
    """One node's ledger whose `join` waits for the node's turn; everything else passes on."""

    def __init__(self, inner: Ledger, turns: JoinTurns, rank: int) -> None:
        self.inner = inner
        self._turns = turns
        self._rank = rank

    def join(self, number: int, commitment: bytes, weight: int, val_loss: int) -> None:
        self._turns.wait_turn(self._rank)
        try:
            self.inner.join(number, commitment, weight, val_loss)
        finally:
            self._turns.done(self._rank)

    @property
    def account(self) -> str:
        return self.inner.account

    @property
    def address(self) -> str:
        return self.inner.address

    def sign(self, message: bytes) -> bytes:
        return self.inner.sign(message)

    def now(self) -> int:
        return self.inner.now()

    def head(self) -> int | None:
        return self.inner.head()

    def wait_change(self, mark: int, timeout: float) -> bool:
        return self.inner.wait_change(mark, timeout)

    @property
    def gas_used(self) -> int:
        return self.inner.gas_used

    def register(self, endpoint: str, certificate: bytes) -> None:
        self.inner.register(endpoint, certificate)

    def update_endpoint(self, endpoint: str) -> None:
        self.inner.update_endpoint(endpoint)

    def deregister(self) -> None:
        self.inner.deregister()

    def allow(self, account: str) -> None:
        self.inner.allow(account)

    def revoke(self, account: str) -> None:
        self.inner.revoke(account)

    def node(self, account: str) -> NodeRecord | None:
        return self.inner.node(account)

    def active_nodes(self) -> list[NodeRecord]:
        return self.inner.active_nodes()

    def is_allowed(self, account: str) -> bool:
        return self.inner.is_allowed(account)

    def params(self) -> SwarmParams:
        return self.inner.params()

    def owner(self) -> str:
        return self.inner.owner()

    def current_round(self) -> int:
        return self.inner.current_round()

    def round(self, number: int) -> RoundState:
        return self.inner.round(number)

    def latest_model(self) -> tuple[int, bytes]:
        return self.inner.latest_model()

    def drop_votes(self, number: int, attempt: int, peer: str) -> int:
        return self.inner.drop_votes(number, attempt, peer)

    def leave(self, number: int) -> None:
        self.inner.leave(number)

    def close(self, number: int) -> None:
        self.inner.close(number)

    def drop(self, number: int, attempt: int, peer: str) -> None:
        self.inner.drop(number, attempt, peer)

    def withdraw(self, number: int) -> None:
        self.inner.withdraw(number)

    def report(self, number: int, attempt: int, digest: bytes) -> None:
        self.inner.report(number, attempt, digest)

    def expire(self, number: int) -> None:
        self.inner.expire(number)

    def finish(self) -> None:
        self.inner.finish()

    def training_nodes(self) -> list[str]:
        return self.inner.training_nodes()

    def events(self, cursor: int) -> tuple[list[LedgerEvent], int]:
        return self.inner.events(cursor)

    def start_cursor(self) -> int:
        return self.inner.start_cursor()
