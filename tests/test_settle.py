"""The settle wait after registering (swarmnode.peer.settle), with real gRPC servers on
127.0.0.1 over mutual TLS and rosters fed by an embedded chain: it ends as soon as every other
registered node's server accepts the newcomer, waits out its bound when one never does, and
returns at once when there is nobody else."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from swarmnode.exceptions import PeerError
from swarmnode.identity import TlsIdentity
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.membership import RosterFeed
from swarmnode.p2p.faults import FaultyTransport
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import PeerInfo
from swarmnode.p2p.roster import Roster
from swarmnode.peer import SETTLE, settle
from swarmnode.rules import SwarmParams

pytestmark = pytest.mark.chain


class Watched(FaultyTransport):
    """The node's real transport, noting the Info calls a peer refused: the test's signal
    that the wait has met a peer that does not trust the newcomer yet."""

    def __init__(self, inner: GrpcTransport) -> None:
        super().__init__(inner)
        self.refused = threading.Event()
        self.refusals: list[str] = []

    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        try:
            return super().info(peer, timeout, round)
        except PeerError:
            self.refusals.append(peer)
            self.refused.set()
            raise


@dataclass
class Node:
    account: str
    feed: RosterFeed
    server: PeerServer
    transport: Watched


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Three nodes on one embedded chain, each with its own roster feed, mutual-TLS server
    and transport. The first two registered and read each other; then the third (the
    newcomer) registered and read them, and neither of them has read it yet."""
    chain = EmbeddedChain()
    deployment, _ = chain.deploy(SwarmParams(min_peers=2, max_peers=3))
    made: list[Node] = []
    try:
        for _ in range(3):
            ledger = chain.ledger(deployment, chain.new_account())
            identity = TlsIdentity.generate(ledger.account)
            feed = RosterFeed(ledger)
            inbox = Inbox(ledger.account)
            server = PeerServer(
                ledger.account, identity.key_pem, identity.cert_pem, feed.roster, inbox
            ).start()
            inner = GrpcTransport(
                ledger.account, identity.key_pem, identity.cert_pem, feed.roster, server.wire
            )
            made.append(Node(ledger.account, feed, server, Watched(inner)))
            ledger.register(server.endpoint, identity.cert_der)
            if len(made) == 2:
                for node in made:
                    node.feed.refresh()
        made[2].feed.refresh()
        yield made
    finally:
        for node in made:
            node.transport.close()
            node.server.stop(0)


def test_the_wait_ends_once_the_peers_rosters_hold_the_certificate(nodes: list[Node]) -> None:
    a, b, newcomer = nodes
    assert len(newcomer.feed.roster.records()) == 3
    assert len(a.feed.roster.records()) == 2  # a and b do not trust the newcomer yet
    read_at: list[float] = []

    def peers_read_the_registration() -> None:
        newcomer.transport.refused.wait(30)  # the wait has been refused by a peer first
        a.feed.refresh()
        b.feed.refresh()
        read_at.append(time.monotonic())

    reader = threading.Thread(target=peers_read_the_registration)
    reader.start()
    began = time.monotonic()
    waiting = settle(
        newcomer.transport, newcomer.feed.roster, newcomer.account, threading.Event(), bound=30
    )
    ended = time.monotonic()
    reader.join()
    assert waiting == ()
    assert newcomer.transport.refusals  # it did wait: a peer refused it before reading
    assert read_at and read_at[0] <= ended
    # ended once both accepted, far inside its bound: gRPC tries a channel whose handshake
    # was refused again after its reconnect backoff (about a second), not at every poll
    assert ended - read_at[0] < 5, (ended - began, ended - read_at[0])
    # both servers answer the newcomer now
    for peer in (a, b):
        assert newcomer.transport.info(peer.account, timeout=5).account == peer.account


def test_a_peer_that_never_trusts_it_costs_the_bound_and_no_more(nodes: list[Node]) -> None:
    a, b, newcomer = nodes
    b.feed.refresh()  # b reads the registration; a never does
    bound = 0.5
    began = time.monotonic()
    waiting = settle(
        newcomer.transport, newcomer.feed.roster, newcomer.account, threading.Event(), bound=bound
    )
    took = time.monotonic() - began
    assert waiting == (a.account,)
    assert bound <= took < bound + 1.0, took
    assert newcomer.transport.refusals.count(a.account) >= 2  # tried again, not once
    assert b.account not in newcomer.transport.refusals


def test_a_stop_request_ends_the_wait_at_once(nodes: list[Node]) -> None:
    _, _, newcomer = nodes
    stop = threading.Event()
    stop.set()
    began = time.monotonic()
    waiting = settle(newcomer.transport, newcomer.feed.roster, newcomer.account, stop, bound=30)
    assert time.monotonic() - began < 1.0
    assert len(waiting) == 2


def test_with_nobody_else_registered_it_returns_at_once(nodes: list[Node]) -> None:
    a, _, _ = nodes
    roster = Roster([r for r in a.feed.roster.records() if r.account == a.account])
    began = time.monotonic()
    assert settle(a.transport, roster, a.account, threading.Event(), bound=SETTLE) == ()
    assert time.monotonic() - began < 0.1
    assert a.transport.refusals == []
