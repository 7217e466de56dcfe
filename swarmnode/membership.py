"""Keeps a peer-transport Roster equal to the contract's active roster, from its events.

This is where the ledger and the transport meet (the layer of node.py): the contract stores
each node's certificate fingerprint, and its full DER certificate travels in the Registered
event, which is what TLS needs. A node that registers later is picked up on the next
refresh, so it can join without anyone restarting; a node that deregisters is removed, and
its next call is refused even on a connection that is still open.

Events alone are not enough when the chain takes back blocks (a reorganization, a dev chain
back from an older state): the roster is then built again from the contract's state, as it
is when the feed starts (docs/trust.md#the-roster).
"""

from __future__ import annotations

import hashlib
import logging

from swarmnode.identity import certificate_names
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.events import ChainRewound, EventCursor
from swarmnode.ledger.types import LedgerEvent
from swarmnode.p2p.roster import PeerRecord, Roster

log = logging.getLogger(__name__)


def accepts_certificate(roster: Roster, account: str, certificate: bytes) -> bool:
    """Whether a registered certificate may stand for `account`: it must name that account,
    or anyone could register another node's certificate and be taken for that node
    (docs/trust.md#the-roster). A refused one also takes the account off the roster."""
    if certificate_names(certificate, account):
        return True
    log.warning("%s registered a certificate that does not name it; not a peer", account)
    roster.remove(account)
    return False


class RosterFeed:
    """Builds the roster from the contract's state, then follows the roster events on each
    refresh(); builds it again whenever the chain takes back blocks it had read."""

    def __init__(self, ledger: Ledger, roster: Roster | None = None) -> None:
        self.roster = roster if roster is not None else Roster()
        self._ledger = ledger
        self._cursor = EventCursor(ledger)
        self._built = False  # the roster follows the chain the cursor reads
        self.rebuilds = 0  # after the chain took back blocks (docs/trust.md#the-roster)
        self.refresh()

    def refresh(self) -> int:
        """Applies the roster events since the last call; returns how many changed it."""
        if self._built:
            try:
                return self._apply(self._cursor.poll())
            except ChainRewound as exc:
                log.warning("rebuilding the roster from the contract: %s", exc)
                self._built = False
                self.rebuilds += 1
        return self._rebuild()

    def _rebuild(self) -> int:
        """The roster as the contract holds it: who is active, at which endpoint, from its
        state, and each one's certificate from the Registered event with the fingerprint it
        holds (the contract keeps only that). The events are read first, from the
        deployment: what is mined after them, a registration included, comes with the next
        refresh."""
        self._cursor.restart()
        certificates = registered_certificates(self._cursor.poll())
        records: dict[str, PeerRecord] = {}
        for node in self._ledger.active_nodes():
            certificate = certificates.get((node.account, node.fingerprint))
            if certificate is None:
                log.info("%s registered after the events read; next refresh", node.account)
            elif accepts_certificate(self.roster, node.account, certificate):
                records[node.account] = PeerRecord(node.account, node.endpoint, certificate)
        self._built = True
        return self._replace(records)

    def _replace(self, records: dict[str, PeerRecord]) -> int:
        """Makes the roster hold exactly `records`; returns how many entries changed."""
        changes = 0
        for known in self.roster.records():
            if known.account not in records:
                self.roster.remove(known.account)
                changes += 1
        for record in records.values():
            if self.roster.get(record.account) != record:
                self.roster.upsert(record)
                changes += 1
        return changes

    def _apply(self, events: list[LedgerEvent]) -> int:
        changes = 0
        for event in events:
            args = event.args
            if event.name == "Registered":
                if not accepts_certificate(self.roster, args["node"], bytes(args["certificate"])):
                    continue
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


def registered_certificates(events: list[LedgerEvent]) -> dict[tuple[str, bytes], bytes]:
    """Every certificate the Registered events carry, by (account, SHA-256 of the DER)."""
    found: dict[tuple[str, bytes], bytes] = {}
    for event in events:
        if event.name == "Registered":
            certificate = bytes(event.args["certificate"])
            found[(event.args["node"], hashlib.sha256(certificate).digest())] = certificate
    return found
