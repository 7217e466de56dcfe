"""Shared reads and wake-ups for the handles on a chain that only this process writes to.

In process, every virtual node has a handle of its own on one chain (the embedded py-evm
chain, or the simulator's private anvil). The views a waiting round reads (the current round,
the round itself, who is still training) do not depend on who asks, so one read per change
of the chain serves every handle; and since every transaction comes from one of these
handles, the handle that sent it knows the chain changed and can wake the others at once
instead of leaving them to poll (docs/chain.md#waiting-for-blocks).

Both only hold for a chain no other process writes to: a transaction sent from elsewhere
would change the chain without moving the mark, and the handles would go on reading their
cached copy. Whoever builds a `SharedChain` says why that holds for its chain. Time passing
is not a change: no view read through the cache depends on the block's time, and a round's
waits wake at least every round.WAKE_RECHECK to judge its deadlines by the clock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from web3.contract.contract import ContractFunction

from swarmnode.ledger.base import ChainChanges
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.types import RoundState

_V = TypeVar("_V")


class SharedChain:
    """What every handle on one chain in this process shares: a count of its changes, which
    wakes waiters (`ChainChanges`), and the last value of each view read, with the change it
    was read at."""

    def __init__(self, lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self.changes = ChainChanges()
        self.reads: dict[tuple[str, ...], tuple[int, Any]] = {}
        # the embedded chain passes its own lock, under which a read is one state; elsewhere
        # this lock only makes the handles that want the same view wait for the first reader
        self.lock: contextlib.AbstractContextManager[Any] = (
            lock if lock is not None else threading.RLock()
        )

    def read(self, key: tuple[str, ...], read: Callable[[], _V]) -> _V:
        """`read()`, or the value another handle read since the chain last changed.

        The mark is taken before the read, and a handle moves it only once its transaction
        is mined: a value read between a block and its wake-up is newer than its mark, never
        older, and a handle's own transaction moves the mark before the handle reads again."""
        with self.lock:
            mark = self.changes.mark()
            hit = self.reads.get(key)
            if hit is not None and hit[0] == mark:
                return cast(_V, hit[1])
            value = read()
            self.reads[key] = (mark, value)
            return value


class SharedLedger(ContractLedger):
    """A ContractLedger whose round views are read once per change for all handles on its
    chain, and whose transactions wake the rounds waiting on it (`head`, `wait_change`).

    Measured at n = 8 on the embedded chain, reading the round was most of a full-fidelity
    round's wall time before its views were shared: every node woken by a block read the
    same state again (docs/simulator.md#full-fidelity)."""

    def __init__(self, shared: SharedChain, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shared = shared

    def round(self, number: int) -> RoundState:
        return self._shared.read(
            (self.address, "round", str(number)), lambda: super(SharedLedger, self).round(number)
        )

    def current_round(self) -> int:
        return self._shared.read((self.address, "current"), super().current_round)

    def training_nodes(self) -> list[str]:
        return list(self._shared.read((self.address, "training"), super().training_nodes))

    def head(self) -> int | None:
        return self._shared.changes.mark()

    def wait_change(self, mark: int, timeout: float) -> bool:
        return self._shared.changes.wait(mark, timeout)

    def _transact_once(self, fn: ContractFunction) -> Any:
        try:
            return super()._transact_once(fn)
        finally:  # mined or refused: a refused preflight only wakes a waiter for nothing
            self._shared.changes.changed()
