"""Following a swarm's events without rescanning the chain.

A cursor remembers the next block to read, so each poll asks only for blocks mined since
the last one (get_logs over a whole py-evm chain takes seconds; DESIGN.md "The chain").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from swarmnode.exceptions import LedgerError
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import LedgerEvent


class EventTimeout(LedgerError):
    """The awaited event did not come before the deadline."""


class EventCursor:
    """Reads a swarm's events in order, each exactly once."""

    def __init__(self, ledger: Ledger, start: int | None = None) -> None:
        self._ledger = ledger
        self._next = ledger.start_cursor() if start is None else start
        self._pending: deque[LedgerEvent] = deque()  # read from the chain, not yet handed out

    @property
    def position(self) -> int:
        """The next block (or in-memory step) to read; persist it to resume after a restart."""
        return self._next

    def poll(self) -> list[LedgerEvent]:
        """Every event not handed out yet, oldest first."""
        self._fetch()
        events = list(self._pending)
        self._pending.clear()
        return events

    def _fetch(self) -> None:
        events, self._next = self._ledger.events(self._next)
        self._pending.extend(events)

    def wait_for(
        self,
        predicate: Callable[[LedgerEvent], bool],
        timeout: float,
        *,
        interval: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> LedgerEvent:
        """The first new event that satisfies `predicate`; the events before it are consumed."""
        deadline = clock() + timeout
        while True:
            self._fetch()
            while self._pending:
                event = self._pending.popleft()
                if predicate(event):
                    return event  # later events stay pending for the next call
            if clock() >= deadline:
                raise EventTimeout(f"no matching event within {timeout:g} s")
            sleep(interval)
