"""Several swarm peers in this process, wired the two ways the simulator and tests need.

`grpc_swarm`: full fidelity, each peer with an account on the embedded chain, a TLS
identity, a roster fed from the contract's events and a gRPC server with mutual TLS on
127.0.0.1. `anvil_swarm`: the same on a private anvil (scenario key `chain`,
docs/simulator.md#the-chain). `memory_swarm`: the in-memory ledger and transport, for fast
runs. Either way each peer is registered and sees the others; `close()` stops every server
and channel, and anvil by its pid. Each
peer's transport can be made to die on purpose (swarmnode.p2p.faults.FaultyTransport, idle
until armed), which is how the simulator's crashes happen (docs/simulator.md#faults). Each
peer's inbox comes from an `InboxFactory`, so a protocol attacker's server side can lie
(swarmnode.simulation.attacks.ProtocolAttackers, docs/simulator.md#attacks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

from eth_account.signers.local import LocalAccount

from swarmnode.identity import TlsIdentity
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.ledger.memory import InMemoryChain
from swarmnode.ledger.rpc import RpcLedger
from swarmnode.ledger.shared import SharedChain, SharedLedger
from swarmnode.membership import RosterFeed
from swarmnode.p2p.faults import FaultyTransport
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.rules import SwarmParams

T = TypeVar("T")

InboxFactory = Callable[[int, Sequence[str]], Inbox]
"""Peer i's inbox, given every peer's account (a Byzantine peer's may lie in its answers)."""


def honest_inbox(i: int, accounts: Sequence[str]) -> Inbox:
    return Inbox(accounts[i])


@dataclass
class LocalPeer:
    ledger: Ledger
    inbox: Inbox
    transport: FaultyTransport  # idle until armed: how the simulator crashes a peer
    server: PeerServer | None = None
    identity: TlsIdentity | None = None  # kept so a crashed peer can restart its server


@dataclass
class LocalSwarm:
    peers: list[LocalPeer]
    chain: EmbeddedChain | AnvilChain | InMemoryChain
    extra: dict[str, Any] = field(default_factory=dict)
    inboxes: InboxFactory = honest_inbox  # how a restarted peer's fresh inbox is made

    @property
    def accounts(self) -> list[str]:
        return [peer.ledger.account for peer in self.peers]

    def close(self) -> None:
        """Stops every server and channel, then the chain where it is a process of its own
        (anvil, by its pid), even when stopping a peer fails."""
        try:
            for peer in self.peers:
                peer.transport.close()
                if peer.server is not None:
                    peer.server.stop(0)
        finally:
            if isinstance(self.chain, AnvilChain):
                self.chain.stop()


def restricted(params: SwarmParams) -> SwarmParams:
    """`params` with admission restricted: a simulated swarm admits its own peers and nobody
    else, as `swarmnode deploy` does by default (docs/trust.md#the-roster)."""
    return replace(params, restricted=True)


def grpc_swarm(
    params: SwarmParams,
    n: int,
    *,
    server_workers: int = 8,
    inboxes: InboxFactory = honest_inbox,
) -> LocalSwarm:
    """n peers on a fresh embedded chain, talking gRPC with mutual TLS over loopback."""
    chain = EmbeddedChain()
    deployment, owner = chain.deploy(restricted(params))
    admin = chain.ledger(deployment, owner)
    swarm = LocalSwarm([], chain, {"deployment": deployment, "feeds": []}, inboxes)
    try:
        ledgers = [chain.ledger(deployment, chain.new_account()) for _ in range(n)]
        _wire_grpc_peers(swarm, admin, ledgers, server_workers)
    except BaseException:
        swarm.close()
        raise
    return swarm


def anvil_swarm(
    params: SwarmParams,
    n: int,
    *,
    server_workers: int = 8,
    inboxes: InboxFactory = honest_inbox,
) -> LocalSwarm:
    """n peers as grpc_swarm's, on a private anvil (127.0.0.1, a port the OS picks) instead
    of the embedded chain: the EVM runs in anvil's process, not in this one's interpreter
    (at n = 8 the chain's part of a round per node went from 0.25-0.34 s to 0.08-0.10 s:
    docs/simulator.md#the-chain). `close()` stops anvil by its pid, and so does a set-up
    that fails.

    The nodes' handles share one read of each round view per change of the chain and wake
    each other when they send a transaction (swarmnode.ledger.shared). That is only true
    because every transaction on this anvil comes from this process: it is started here,
    for this swarm alone, on a port nobody else is told of. Its blocks carry the wall
    clock's time (anvil stamps a block with its own clock, never ahead of it), so the nodes
    judge deadlines by the wall clock too, without asking anvil the time on every wake-up.
    """
    chain = AnvilChain()
    swarm = LocalSwarm([], chain, {"feeds": [], "anvil": chain.process}, inboxes)
    try:
        deployment, owner = chain.deploy(restricted(params))
        swarm.extra["deployment"] = deployment
        shared = SharedChain()

        def ledger(account: LocalAccount) -> AnvilSwarmLedger:
            return AnvilSwarmLedger(
                shared,
                chain.rpc.rpc,
                chain.rpc.w3,
                deployment.address,
                account,
                deploy_block=deployment.block,
                clock=time.time,
            )

        admin = ledger(owner)
        ledgers = [ledger(chain.new_account()) for _ in range(n)]
        _wire_grpc_peers(swarm, admin, ledgers, server_workers)
    except BaseException:
        swarm.close()
        raise
    return swarm


class AnvilSwarmLedger(SharedLedger, RpcLedger):
    """A node's handle on the simulator's anvil: plain JSON-RPC over one pooled client for
    every call (RpcLedger), and the round views read once per change for all the swarm's
    handles, each transaction waking the others (SharedLedger). Only right for an anvil
    nobody outside this process writes to (`anvil_swarm`)."""


def _wire_grpc_peers(
    swarm: LocalSwarm, admin: Ledger, ledgers: Sequence[Ledger], server_workers: int
) -> None:
    """Gives each ledger's account a TLS identity, a roster feed, an inbox and a gRPC server
    with mutual TLS on 127.0.0.1, admits and registers it; every feed then sees them all."""
    peers, feeds, inboxes = swarm.peers, swarm.extra["feeds"], swarm.inboxes
    accounts = [ledger.account for ledger in ledgers]
    for i, ledger in enumerate(ledgers):
        identity = TlsIdentity.generate(ledger.account)
        feed = RosterFeed(ledger)
        inbox = inboxes(i, accounts)
        server = PeerServer(
            ledger.account,
            identity.key_pem,
            identity.cert_pem,
            feed.roster,
            inbox,
            workers=server_workers,
        ).start()
        transport = GrpcTransport(
            ledger.account, identity.key_pem, identity.cert_pem, feed.roster, server.wire
        )
        peers.append(LocalPeer(ledger, inbox, FaultyTransport(transport), server, identity))
        feeds.append(feed)
        admin.allow(ledger.account)
        ledger.register(server.endpoint, identity.cert_der)
    for feed in feeds:
        feed.refresh()


def memory_swarm(
    params: SwarmParams,
    n: int,
    *,
    clock: Callable[[], float] | None = None,
    inboxes: InboxFactory = honest_inbox,
    salt: bytes | None = None,
) -> LocalSwarm:
    """n peers on the in-memory ledger and transport; `clock` defaults to a manual clock,
    `salt` (what round seeds are drawn from) to a random one."""
    chain = InMemoryChain(clock, salt)
    owner = chain.new_account()
    address = chain.deploy(restricted(params), owner)
    admin = chain.ledger(address, owner)
    roster = Roster()
    network = MemoryNetwork(roster)
    peers = []
    ledgers = [chain.ledger(address, chain.new_account()) for _ in range(n)]
    accounts = [ledger.account for ledger in ledgers]
    for i, ledger in enumerate(ledgers):
        certificate = f"memory-certificate-{i}:{ledger.account.lower()}".encode()
        admin.allow(ledger.account)
        ledger.register(f"memory:{i}", certificate)
        roster.upsert(PeerRecord(ledger.account, f"memory:{i}", certificate))
        inbox = inboxes(i, accounts)
        network.attach(inbox)
        transport = FaultyTransport(MemoryTransport(network, ledger.account))
        peers.append(LocalPeer(ledger, inbox, transport))
    return LocalSwarm(peers, chain, {"network": network, "roster": roster}, inboxes)


def run_in_threads(
    jobs: list[Callable[[], T]],
    timeout: float | None = None,
    *,
    stop: threading.Event | None = None,
) -> list[T]:
    """Runs each job in its own thread (as separate nodes would run) and returns the results
    in order.

    The first exception a job raises is raised here at once, not once every other job has
    ended: a node that failed at setup would otherwise leave the others waiting on a round
    it never joins, and the caller waiting on them. Before it is raised, `stop` is set: the
    signal the other jobs' rounds honour (RoundSettings.stop: leave an open round, finish or
    withdraw from a closed one), so that they end too rather than run on unwatched. Past
    `timeout` seconds in all, `stop` is set as well and TimeoutError raised. The threads are
    daemon threads: one that ignores `stop` cannot keep the interpreter from exiting.
    """
    results: list[T | None] = [None] * len(jobs)
    errors: list[BaseException] = []
    finished = 0
    changed = threading.Condition()

    def run(i: int) -> None:
        nonlocal finished
        try:
            value = jobs[i]()
        except BaseException as exc:  # handed to the caller's thread below
            if stop is not None:
                stop.set()
            with changed:
                errors.append(exc)
                changed.notify_all()
            return
        with changed:
            results[i] = value
            finished += 1
            changed.notify_all()

    for i in range(len(jobs)):
        threading.Thread(target=run, args=(i,), name=f"node-{i}", daemon=True).start()
    with changed:
        ended = changed.wait_for(lambda: bool(errors) or finished == len(jobs), timeout)
    if errors:
        raise errors[0]
    if not ended:
        if stop is not None:
            stop.set()
        raise TimeoutError(f"a node was still running after {timeout} s")
    return cast(list[T], results)
