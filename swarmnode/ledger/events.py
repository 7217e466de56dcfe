"""Following a swarm's events without rescanning the chain.

A cursor remembers the next block to read, so each poll asks only for blocks mined since
the last one: get_logs over a whole py-evm chain takes seconds. Where the ledger offers
node-side log filters (a JSON-RPC chain), the cursor polls a filter instead, and when the
node has forgotten it (filters do not survive a restart) falls back to get_logs from the
last block it saw and opens a new one. Events are handed out in chain order, each once,
whichever path brought them (docs/chain.md#events-and-the-roster-feed).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from swarmnode.exceptions import LedgerError
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import LedgerEvent

log = logging.getLogger(__name__)


class EventTimeout(LedgerError):
    """The awaited event did not come before the deadline."""


@runtime_checkable
class SupportsFilters(Protocol):
    def open_filter(self, from_block: int) -> str: ...

    def filter_changes(self, filter_id: str) -> list[LedgerEvent]: ...


class EventCursor:
    """Reads a swarm's events in order, each exactly once."""

    def __init__(
        self, ledger: Ledger, start: int | None = None, *, use_filters: bool = True
    ) -> None:
        self._ledger = ledger
        self._next = ledger.start_cursor() if start is None else start
        self._pending: deque[LedgerEvent] = deque()  # read from the chain, not yet handed out
        self._last: tuple[int, int] = (-1, -1)  # position of the newest event read
        self._filters = ledger if use_filters and isinstance(ledger, SupportsFilters) else None
        self._filter_id: str | None = None
        self.filter_fallbacks = 0  # how often a forgotten filter sent us back to get_logs

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
        if self._filters is None:
            self._take(self._scan())
            return
        if self._filter_id is not None:
            try:
                self._take(self._filters.filter_changes(self._filter_id))
                return
            except LedgerError as exc:
                log.warning("event filter lost (%s): reading logs from block %d", exc, self._next)
                self.filter_fallbacks += 1
                self._filter_id = None
        # Open the filter first, then scan: an event mined in between comes twice, not never.
        self._filter_id = self._filters.open_filter(self._next)
        self._take(self._scan())

    def _scan(self) -> list[LedgerEvent]:
        events, self._next = self._ledger.events(self._next)
        return events

    def _take(self, events: list[LedgerEvent]) -> None:
        for event in events:
            if event.position <= self._last:
                continue  # already read through the other path
            self._last = event.position
            self._next = max(self._next, event.position[0] + 1)
            self._pending.append(event)

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
