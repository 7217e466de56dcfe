"""Keeps a peer-transport Roster equal to the contract's active roster, from its events.

This is where the ledger and the transport meet (the layer of node.py): the contract stores
each node's certificate fingerprint, and its full DER certificate travels in the Registered
event, which is what TLS needs. A node that registers later is picked up on the next
refresh, so it can join without anyone restarting; a node that deregisters is removed, and
its next call is refused even on a connection that is still open.
"""

from __future__ import annotations

import logging

from swarmnode.ledger.base import Ledger
from swarmnode.ledger.events import EventCursor
from swarmnode.p2p.roster import PeerRecord, Roster

log = logging.getLogger(__name__)


class RosterFeed:
    """Replays the roster events once, then follows new ones on each refresh()."""

    def __init__(self, ledger: Ledger, roster: Roster | None = None) -> None:
        self.roster = roster if roster is not None else Roster()
        self._cursor = EventCursor(ledger)
        self.refresh()

    def refresh(self) -> int:
        """Applies the roster events since the last call; returns how many changed it."""
        changes = 0
        for event in self._cursor.poll():
            args = event.args
            if event.name == "Registered":
                self.roster.upsert(
                    PeerRecord(args["node"], args["endpoint"], bytes(args["certificate"]))
                )
            elif event.name == "EndpointUpdated":
                known = self.roster.get(args["node"])
                if known is None:
                    log.warning("endpoint update for %s, which is not on the roster", args["node"])
                    continue
                self.roster.upsert(PeerRecord(known.account, args["endpoint"], known.certificate))
            elif event.name == "Deregistered":
                self.roster.remove(args["node"])
            else:
                continue
            changes += 1
        return changes
