"""The ledger interface every backend implements: the contract, seen from one account.

Three backends stand behind it: the embedded py-evm chain and a JSON-RPC chain (anvil, or
any node), both through `ContractLedger`, and `InMemoryLedger` for fast tests of the layers
above. One behaviour suite (tests/test_ledger_behaviour.py) runs against every one of them
(docs/architecture.md#backends-and-behaviour-suites).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from swarmnode.ledger.types import LedgerEvent, NodeRecord, RoundState
from swarmnode.rules import SwarmParams

Clock = Callable[[], float]


class ChainChanges:
    """Wakes the threads that wait for a chain in this process to change.

    A count of changes (a block mined, the clock moved by a test) under a Condition. A waiter
    takes `mark()` before it reads the chain and waits past that mark, so a change that
    lands between its read and its wait still wakes it at once: no notification is missed
    (docs/chain.md#waiting-for-blocks)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0

    def mark(self) -> int:
        with self._changed:
            return self._count

    def changed(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def wait(self, mark: int, timeout: float) -> bool:
        """Until a change after `mark`, or `timeout` seconds; True if the chain changed."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count != mark, timeout)


class Ledger(ABC):
    """One account's handle on one swarm contract.

    Calls that depend on a deadline (close, drop, expire) are decided by the caller from the
    start times the chain stores and `now()`; a "too early" revert that the caller's clock
    disagrees with is retried by the backend, never surfaced as fatal.
    """

    @property
    @abstractmethod
    def account(self) -> str:
        """This handle's checksummed account address; every account a backend returns is
        checksummed too, so callers compare with `==` (docs/architecture.md#addresses)."""

    @property
    @abstractmethod
    def address(self) -> str:
        """The contract's address."""

    def sign(self, message: bytes) -> bytes:
        """This account's signature over keccak256(`message`): 65 bytes r || s || v, v in
        {0, 1}; anyone recovers the account from it (secure aggregation signs its masked
        roots so: docs/secure-aggregation.md#checks). A ledger without the key refuses."""
        from swarmnode.exceptions import LedgerError

        raise LedgerError(f"{type(self).__name__} holds no key to sign with for {self.account}")

    @abstractmethod
    def now(self) -> int:
        """The clock this node decides deadlines by, in chain seconds."""

    def head(self) -> int | None:
        """A mark of how far the chain has moved, for `wait_change`; None where this backend
        cannot wake a waiter (a remote chain: its waiters poll)."""
        return None

    def wait_change(self, mark: int, timeout: float) -> bool:
        """Blocks until the chain has moved past `mark` (from `head()`), or for `timeout`
        seconds; True if it moved. Where `head()` is None this only sleeps."""
        time.sleep(timeout)
        return False

    @property
    def gas_used(self) -> int:
        """Gas of every mined transaction this handle sent, from the receipts; 0 where
        there is no gas (the in-memory ledger), so a round can report what it cost."""
        return 0

    # roster
    @abstractmethod
    def register(self, endpoint: str, certificate: bytes) -> None: ...

    @abstractmethod
    def update_endpoint(self, endpoint: str) -> None: ...

    @abstractmethod
    def deregister(self) -> None: ...

    @abstractmethod
    def allow(self, account: str) -> None: ...

    @abstractmethod
    def revoke(self, account: str) -> None: ...

    @abstractmethod
    def node(self, account: str) -> NodeRecord | None:
        """The roster entry of `account`, or None if it never registered."""

    @abstractmethod
    def active_nodes(self) -> list[NodeRecord]: ...

    @abstractmethod
    def is_allowed(self, account: str) -> bool: ...

    # parameters
    @abstractmethod
    def params(self) -> SwarmParams: ...

    @abstractmethod
    def owner(self) -> str: ...

    # rounds
    @abstractmethod
    def current_round(self) -> int: ...

    @abstractmethod
    def round(self, number: int) -> RoundState: ...

    @abstractmethod
    def latest_model(self) -> tuple[int, bytes]:
        """(last final round or 0, its digest or the initial model's)."""

    @abstractmethod
    def drop_votes(self, number: int, attempt: int, peer: str) -> int: ...

    @abstractmethod
    def join(self, number: int, commitment: bytes, weight: int, val_loss: int) -> None: ...

    @abstractmethod
    def leave(self, number: int) -> None: ...

    @abstractmethod
    def close(self, number: int) -> None: ...

    @abstractmethod
    def drop(self, number: int, attempt: int, peer: str) -> None: ...

    @abstractmethod
    def withdraw(self, number: int) -> None: ...

    @abstractmethod
    def report(self, number: int, attempt: int, digest: bytes) -> None: ...

    @abstractmethod
    def expire(self, number: int) -> None: ...

    @abstractmethod
    def finish(self) -> None:
        """Says this node's training is over: no round waits for it any more; an open
        round it joined is left, and one every node still training has joined closes. A
        later join makes it train again (docs/round-protocol.md#closing)."""

    @abstractmethod
    def training_nodes(self) -> list[str]:
        """The active nodes that have not finished, in roster order."""

    # events
    @abstractmethod
    def events(self, cursor: int) -> tuple[list[LedgerEvent], int]:
        """Events from `cursor` on, and the cursor to pass next time.

        Cursors are block numbers on a real chain; each call reads only the blocks mined
        since the last one, never the whole chain.
        """

    @abstractmethod
    def start_cursor(self) -> int:
        """The cursor of the contract's first event (its deployment)."""
