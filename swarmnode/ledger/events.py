"""Following a swarm's events without rescanning the chain, and noticing when it rewinds.

A cursor remembers the next block to read, so each poll asks only for blocks mined since
the last one: get_logs over a whole py-evm chain takes seconds. Where the ledger offers
node-side log filters (a JSON-RPC chain), the cursor polls a filter instead, and when the
node has forgotten it (filters do not survive a restart) falls back to get_logs from the
last block it saw and opens a new one. Events are handed out in chain order, each once,
whichever path brought them.

A chain can also take back blocks the cursor has read: a reorganization, or a dev chain
that comes back from an older state (anvil after SIGKILL, or evm_revert). Where the ledger
can name its blocks, the cursor remembers the number and hash of the newest block it has
read and checks them on the next poll; a head below it, another hash there, or a log
flagged `removed` means what was handed out may be untrue. The cursor then starts over
from the deployment and says so with ChainRewound, so that whoever built state from its
events rebuilds it (docs/chain.md#events-and-the-roster-feed).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import NoReturn, Protocol, runtime_checkable

from swarmnode.exceptions import LedgerError
from swarmnode.ledger.background import in_background
from swarmnode.ledger.types import LedgerEvent

log = logging.getLogger(__name__)

BlockId = tuple[int, bytes]  # (number, hash)


class EventTimeout(LedgerError):
    """The awaited event did not come before the deadline."""


class ChainRewound(LedgerError):
    """Blocks this cursor had read are no longer on the chain. The cursor has started over
    from the deployment: its next poll hands out the chain's events as they are now."""


class LogSource(Protocol):
    """What a cursor reads: every Ledger is one; tests feed it by hand."""

    def events(self, cursor: int) -> tuple[list[LedgerEvent], int]: ...

    def start_cursor(self) -> int: ...


@runtime_checkable
class SupportsFilters(Protocol):
    def open_filter(self, from_block: int) -> str: ...

    def filter_changes(self, filter_id: str) -> list[LedgerEvent]: ...


@runtime_checkable
class SupportsBlockIds(Protocol):
    def block_id(self, height: int | None = None) -> BlockId | None:
        """The block at `height` (the head when None); None where the chain has none."""


class EventCursor:
    """Reads a swarm's events in order, each exactly once, as long as the chain keeps the
    blocks it read; raises ChainRewound, once, when it does not."""

    def __init__(
        self, source: LogSource, start: int | None = None, *, use_filters: bool = True
    ) -> None:
        self._source = source
        self._next = source.start_cursor() if start is None else start
        self._pending: deque[LedgerEvent] = deque()  # read from the chain, not yet handed out
        self._last: tuple[int, int] = (-1, -1)  # position of the newest event read
        self._filters = source if use_filters and isinstance(source, SupportsFilters) else None
        self._filter_id: str | None = None
        self._blocks = source if isinstance(source, SupportsBlockIds) else None
        self._tip: BlockId | None = None  # the newest block whose events are all read
        self._rescan = False  # the filter ran ahead of the head: read those blocks by get_logs
        self.filter_fallbacks = 0  # how often a forgotten filter sent us back to get_logs
        self.rewinds = 0  # how often the chain took back blocks this cursor had read

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
        head = self._head()  # read before the logs: nothing newer is handed out this time
        events, following = self._read()
        self._take(events, head)
        if head is None:
            self._next = max(self._next, following)
        else:
            self._next = max(self._next, head[0] + 1)
            self._tip = head

    def _head(self) -> BlockId | None:
        """The chain's head, once the newest block read is checked to be still on it."""
        if self._blocks is None:
            return None
        head = self._blocks.block_id()
        if head is None:
            raise LedgerError("the chain named no head block")
        if self._tip is not None:
            height, digest = self._tip
            if head[0] < height:
                self._rewind(f"the head went back from block {height} to {head[0]}")
            now = head if head[0] == height else self._blocks.block_id(height)
            if now is None or now[1] != digest:
                self._rewind(f"block {height} is not the one read any more")
        return head

    def _read(self) -> tuple[list[LedgerEvent], int]:
        """New logs, and where get_logs would go on (this cursor's own next, for a filter)."""
        if self._filters is None:
            return self._source.events(self._next)
        if self._filter_id is not None and not self._rescan:
            try:
                return self._filters.filter_changes(self._filter_id), self._next
            except LedgerError as exc:
                level = logging.DEBUG if in_background() else logging.WARNING
                log.log(
                    level, "event filter lost (%s): reading logs from block %d", exc, self._next
                )
                self.filter_fallbacks += 1
                self._filter_id = None
        if self._filter_id is None:
            # Open the filter first, then scan: an event mined in between comes twice, not never.
            self._filter_id = self._filters.open_filter(self._next)
        self._rescan = False
        return self._source.events(self._next)

    def _take(self, events: list[LedgerEvent], head: BlockId | None) -> None:
        for event in events:
            if event.removed:  # the node says so itself: a reorganization took it back
                self._rewind(f"the {event.name} log at {event.position} was removed")
        for event in events:
            if head is not None and event.position[0] > head[0]:
                # mined after the head was read: its block is unchecked, read it again later
                self._rescan = self._filters is not None
                break
            if event.position <= self._last:
                continue  # already read through the other path
            self._last = event.position
            self._next = max(self._next, event.position[0] + 1)
            self._pending.append(event)

    def restart(self) -> None:
        """Back to the deployment, as if new: the next poll hands out every event again."""
        self._next = self._source.start_cursor()
        self._pending.clear()
        self._last = (-1, -1)
        self._tip = None
        self._filter_id = None  # the node drops a filter nobody polls
        self._rescan = False

    def _rewind(self, why: str) -> NoReturn:
        log.warning("the chain took back blocks already read (%s): reading it again", why)
        self.rewinds += 1
        self.restart()
        raise ChainRewound(why)

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
