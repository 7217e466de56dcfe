"""The roster follows the chain when the chain takes back blocks (docs/trust.md#the-roster).

The attack: a chain that lost blocks (anvil's evm_revert here, as after a SIGKILLed anvil
that comes back from an older state, or a reorganization) no longer has a registration a
node had read, nor a deregistration; a roster built only from events kept trusting the
peer that was no longer registered and never learned of the one that was. anvil (1.7.1)
never flags a log `removed`, so that path is fed by a log source the test scripts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pytest

from swarmnode.exceptions import PeerError
from swarmnode.identity import TlsIdentity
from swarmnode.ledger.events import ChainRewound, EventCursor
from swarmnode.ledger.memory import InMemoryChain, InMemoryLedger
from swarmnode.ledger.types import LedgerEvent, NodeRecord
from swarmnode.membership import RosterFeed
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.rules import SwarmParams

if TYPE_CHECKING:
    from swarmnode.ledger.contract import ContractLedger
    from swarmnode.ledger.devchain import AnvilChain

PARAMS = SwarmParams(restricted=False)


@dataclass
class Member:
    ledger: ContractLedger
    identity: TlsIdentity

    @property
    def account(self) -> str:
        return self.ledger.account

    def register(self, endpoint: str = "127.0.0.1:1") -> None:
        self.ledger.register(endpoint, self.identity.cert_der)


class Anvil:
    """One swarm on a test's own anvil, with the node-side RPCs that take blocks back."""

    def __init__(self, chain: AnvilChain) -> None:
        self.chain = chain
        self.deployment, _ = chain.deploy(PARAMS)

    def member(self) -> Member:
        ledger = self.chain.ledger(self.deployment, self.chain.new_account())
        return Member(ledger, TlsIdentity.generate(ledger.account))

    def rpc(self, method: str, *params: object) -> object:
        reply = self.chain.rpc.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        return reply["result"]

    @property
    def head(self) -> int:
        return int(self.chain.rpc.w3.eth.block_number)


def accounts(roster: Roster) -> set[str]:
    return {record.account for record in roster.records()}


def on_chain(ledger: ContractLedger | InMemoryLedger) -> set[str]:
    return {node.account for node in ledger.active_nodes()}


@pytest.fixture
def observer() -> Iterator[tuple[TlsIdentity, Roster, PeerServer]]:
    """A node's mTLS server whose roster a feed fills: who it serves is the attack's test."""
    identity = TlsIdentity.generate("0x" + "0b" * 20)
    roster = Roster()
    server = PeerServer(
        "0x" + "0b" * 20, identity.key_pem, identity.cert_pem, roster, Inbox("0x" + "0b" * 20)
    ).start()
    try:
        yield identity, roster, server
    finally:
        server.stop(0)


def served(member: Member, observer: tuple[TlsIdentity, Roster, PeerServer]) -> bool:
    """Whether the observer answers `member` over mutual TLS, on a fresh connection."""
    identity, _, server = observer
    known = Roster([PeerRecord(server.account, server.endpoint, identity.cert_der)])
    client = GrpcTransport(member.account, member.identity.key_pem, member.identity.cert_pem, known)
    try:
        client.info(server.account, timeout=5)
        return True
    except PeerError:
        return False
    finally:
        client.close()


@pytest.mark.chain
def test_the_roster_follows_the_chain_through_lost_blocks(
    own_anvil: AnvilChain, observer: tuple[TlsIdentity, Roster, PeerServer]
) -> None:
    swarm = Anvil(own_anvil)
    a, b, c, d, e = (swarm.member() for _ in range(5))
    a.register()
    feed = RosterFeed(a.ledger, observer[1])
    assert accounts(feed.roster) == {a.account}

    # a branch the chain will lose: b joins, a leaves; the node reads it
    lost_from = swarm.rpc("evm_snapshot")
    b.register()
    a.ledger.deregister()
    feed.refresh()
    assert accounts(feed.roster) == {b.account} and served(b, observer)
    old_head = swarm.head

    # the chain comes back without those blocks and grows past the old head another way
    assert swarm.rpc("evm_revert", lost_from) is True
    c.register()
    while swarm.head <= old_head:
        swarm.rpc("evm_mine")
    feed.refresh()
    assert on_chain(a.ledger) == {a.account, c.account}
    assert accounts(feed.roster) == {a.account, c.account}
    assert feed.rebuilds == 1
    assert not served(b, observer), "a peer no longer registered is still served"
    assert served(c, observer)
    for node in a.ledger.active_nodes():  # the certificates are the registered ones
        record = feed.roster.get(node.account)
        assert record is not None and record.fingerprint == node.fingerprint

    # the head goes back below what was read, and stays there
    lost_from = swarm.rpc("evm_snapshot")
    d.register()
    feed.refresh()
    assert d.account in accounts(feed.roster)
    assert swarm.rpc("evm_revert", lost_from) is True
    feed.refresh()
    assert accounts(feed.roster) == {a.account, c.account} == on_chain(a.ledger)
    assert feed.rebuilds == 2

    # and after a rebuild, the feed follows new events as before
    e.register()
    assert feed.refresh() == 1
    assert accounts(feed.roster) == {a.account, c.account, e.account}
    assert feed.rebuilds == 2


class ScriptedFilter:
    """An in-memory chain seen through a log filter whose changes the test scripts, as a
    node's filter reports a log that a reorganization took back: flagged `removed`."""

    def __init__(self, ledger: InMemoryLedger) -> None:
        self.ledger = ledger
        self.changes: list[LedgerEvent] = []
        self.opened = 0

    def events(self, cursor: int) -> tuple[list[LedgerEvent], int]:
        return self.ledger.events(cursor)

    def start_cursor(self) -> int:
        return self.ledger.start_cursor()

    def active_nodes(self) -> list[NodeRecord]:
        return self.ledger.active_nodes()

    def open_filter(self, from_block: int) -> str:
        self.opened += 1
        return f"filter-{self.opened}"

    def filter_changes(self, filter_id: str) -> list[LedgerEvent]:
        changes, self.changes = self.changes, []
        return changes


def memory_swarm() -> tuple[InMemoryChain, str, list[InMemoryLedger]]:
    chain = InMemoryChain()
    address = chain.deploy(PARAMS, chain.new_account())
    return chain, address, [chain.ledger(address, chain.new_account()) for _ in range(2)]


def test_a_log_flagged_removed_rebuilds_the_roster() -> None:
    _, _, (a, b) = memory_swarm()
    for ledger in (a, b):
        ledger.register("127.0.0.1:1", TlsIdentity.generate(ledger.account).cert_der)
    source = ScriptedFilter(a)
    feed = RosterFeed(source, Roster())  # type: ignore[arg-type]  # reads only what it has
    assert accounts(feed.roster) == {a.account, b.account}

    # a reorganization takes b's registration back: the chain's state no longer has b, and
    # the filter hands b's Registered log again, flagged removed, in place of anything new
    registered_b = next(
        e for e in a.events(0)[0] if e.name == "Registered" and e.args["node"] == b.account
    )
    b.deregister()
    source.changes = [replace(registered_b, removed=True)]
    feed.refresh()
    assert on_chain(a) == {a.account}
    assert accounts(feed.roster) == {a.account}, "a log the chain took back was believed"
    assert feed.rebuilds == 1 and source.opened == 2


def test_the_cursor_starts_over_when_a_log_comes_flagged_removed() -> None:
    _, _, (a, _) = memory_swarm()
    source = ScriptedFilter(a)
    cursor = EventCursor(source)
    assert [e.name for e in cursor.poll()] == ["RoundOpened"]
    a.register("127.0.0.1:1", TlsIdentity.generate(a.account).cert_der)
    source.changes = a.events(cursor.position)[0]
    (registered,) = cursor.poll()
    source.changes = [replace(registered, removed=True)]
    with pytest.raises(ChainRewound, match="removed"):
        cursor.poll()
    assert cursor.rewinds == 1
    assert [e.name for e in cursor.poll()] == ["RoundOpened", "Registered"]  # the chain now
    assert cursor.poll() == []


class Blocks:
    """A chain of named blocks behind a scripted filter: the head moves when the test says."""

    def __init__(self) -> None:
        self.hashes = [b"genesis"]
        self.logs: list[LedgerEvent] = []
        self.changes: list[LedgerEvent] = []
        self.after_head: Callable[[], None] | None = None  # what happens once the head is read

    def mine(self, *names: str, label: bytes = b"") -> None:
        height = len(self.hashes)
        self.hashes.append(b"%d%s" % (height, label))
        for i, name in enumerate(names):
            self.logs.append(LedgerEvent(name, (height, i)))

    def events(self, cursor: int) -> tuple[list[LedgerEvent], int]:
        return [e for e in self.logs if e.position[0] >= cursor], len(self.hashes)

    def start_cursor(self) -> int:
        return 0

    def block_id(self, height: int | None = None) -> tuple[int, bytes] | None:
        if height is None:
            head = (len(self.hashes) - 1, self.hashes[-1])
            if self.after_head is not None:
                self.after_head()
                self.after_head = None
            return head
        return (height, self.hashes[height]) if height < len(self.hashes) else None

    def open_filter(self, from_block: int) -> str:
        return "filter"

    def filter_changes(self, filter_id: str) -> list[LedgerEvent]:
        changes, self.changes = self.changes, []
        return changes


def test_logs_beyond_the_head_read_wait_and_a_changed_hash_starts_over() -> None:
    chain = Blocks()
    chain.mine("RoundOpened")
    cursor = EventCursor(chain)
    assert [e.name for e in cursor.poll()] == ["RoundOpened"]

    # the filter hands a log from a block mined after the head was read: not yet
    chain.mine("Registered")

    def mine_joined() -> None:
        chain.mine("Joined")
        chain.changes = chain.logs[-2:]

    chain.after_head = mine_joined
    assert [e.name for e in cursor.poll()] == ["Registered"]
    assert [e.name for e in cursor.poll()] == ["Joined"]  # read again, by get_logs, once
    assert cursor.poll() == []

    # the newest block read is replaced by another at the same height
    chain.hashes[-1] = b"other"
    with pytest.raises(ChainRewound, match="not the one read"):
        cursor.poll()
    assert [e.name for e in cursor.poll()] == ["RoundOpened", "Registered", "Joined"]
