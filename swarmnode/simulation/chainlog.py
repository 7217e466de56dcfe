"""Each round's chain figures as the chain itself gives them: the receipts of the
transactions the nodes sent (which call, how much gas) and the contract's events.

The report's per-round joins, reports, drops and finalizations are counted here, from events
that the contract emitted, not inferred from what the nodes believe happened.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from swarmnode.ledger.base import Ledger
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.events import EventCursor


class ChainLog:
    """Follows one swarm's receipts (every node's ledger handle) and events (one reader)."""

    def __init__(self, ledgers: list[Ledger]) -> None:
        self._receipts = [led for led in ledgers if isinstance(led, ContractLedger)]
        self._seen = [len(led.gas_log) for led in self._receipts]
        self._cursor = EventCursor(ledgers[0], use_filters=False)
        self._by_round: defaultdict[int, Counter[str]] = defaultdict(Counter)

    def calls(self) -> dict[str, int]:
        """Mined transactions per contract function since the last call, from the receipts
        (empty on the in-memory ledger, which has none)."""
        counted: Counter[str] = Counter()
        for j, led in enumerate(self._receipts):
            counted.update(name for name, _ in led.gas_log[self._seen[j] :])
            self._seen[j] = len(led.gas_log)
        return dict(sorted(counted.items()))

    def events(self, number: int) -> dict[str, int]:
        """How many of each contract event carried round `number`, as far as mined now."""
        for event in self._cursor.poll():
            if "round" in event.args:
                self._by_round[int(event.args["round"])][event.name] += 1
        return dict(sorted(self._by_round[number].items()))
