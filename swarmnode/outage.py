"""Training through an outage of the chain's JSON-RPC endpoint.

A node's training needs no chain, only its rounds do. When the endpoint stops answering (a
restarted dev chain, a provider's hiccup, a cut network), the daemon trains on, asks the
chain again with growing pauses between tries, and goes back to its rounds once it
answers. The outage is two log lines, its start and its end, however long it lasts: a node
that logged every retry of a day-long outage would bury everything else in its log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from swarmnode.exceptions import ChainUnavailable

if TYPE_CHECKING:
    from swarmnode.node import SwarmNode

log = logging.getLogger(__name__)

# Batches trained between two looks at the clock: small enough that a try is never late by
# much, large enough that the per-call overhead of train_batches does not matter.
CHUNK = 8


@dataclass(frozen=True)
class Outage:
    """What one outage cost and what the node did meanwhile."""

    seconds: float
    tries: int
    batches: int
    ended: bool  # False: the node was asked to stop before the chain came back


class ChainOutage:
    """Rides out outages of one chain: `probe` raises while the chain does not answer."""

    def __init__(
        self,
        probe: Callable[[], object],
        *,
        where: str = "the chain",
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._probe = probe
        self._where = where
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._clock = clock
        self._on_change = on_change or (lambda down: None)

    def ride_out(self, node: SwarmNode, stop: threading.Event, error: Exception) -> Outage:
        """Trains `node` until the chain answers again (or `stop` is set)."""
        started = self._clock()
        first_batch = node.trainer.batches_done
        fields = {"event": "chain_down", "error": str(error), "batches_done": first_batch}
        log.warning(
            "%s is unreachable: training goes on, trying again with backoff",
            self._where,
            extra={"fields": fields},
        )
        self._on_change(True)
        delay = self._first_delay
        next_try = started + delay
        tries = 0
        ended = False
        try:
            while not stop.is_set():
                node.trainer.train_batches(min(CHUNK, max(1, node.syncer.policy.interval)))
                if self._clock() < next_try:
                    continue
                tries += 1
                if self._answers():
                    ended = True
                    break
                delay = min(delay * 2, self._max_delay)
                next_try = self._clock() + delay
        finally:
            self._on_change(False)
        outage = Outage(
            self._clock() - started, tries, node.trainer.batches_done - first_batch, ended
        )
        fields = {
            "event": "chain_up" if ended else "chain_still_down",
            "seconds": round(outage.seconds, 3),
            "tries": outage.tries,
            "batches": outage.batches,
        }
        if ended:
            log.info(
                "%s answers again after %.1f s and %d tries; trained %d batches meanwhile; "
                "joining the next round",
                self._where,
                outage.seconds,
                outage.tries,
                outage.batches,
                extra={"fields": fields},
            )
        else:
            log.warning(
                "stopping while %s is still unreachable (%.1f s, %d tries)",
                self._where,
                outage.seconds,
                outage.tries,
                extra={"fields": fields},
            )
        return outage

    def _answers(self) -> bool:
        try:
            self._probe()
        except (ChainUnavailable, ConnectionError, OSError, TimeoutError):
            return False
        return True
