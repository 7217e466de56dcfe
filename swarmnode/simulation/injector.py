"""Carries a FaultPlan out on live in-process nodes: kills, restarts, dropouts, catch-ups.

A crash is the node's own fault injection (its transport, a swarmnode.p2p.faults
FaultyTransport armed for the round, raises InjectedCrash at that point) followed by what a
dying process leaves behind: its server stops answering and its connections close. The
survivors see only that, and deal with it as they would in production: they wait out the
transfer deadline, vote the node out on chain and finish the round without it. A rejoin is
a fresh process: a new inbox and server for the same identity and account, the new endpoint
on chain, and a fresh SwarmNode (fresh model and optimizer) that fetches the last final
model from its peers, checked against the digest on chain, before it joins. A node back
from sitting rounds out catches up the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from swarmnode.exceptions import SwarmError
from swarmnode.ledger.types import RoundState
from swarmnode.membership import RosterFeed
from swarmnode.node import NodeRound, SwarmNode
from swarmnode.p2p.faults import Fault, FaultyTransport, InjectedCrash
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.shaping import ShapedTransport
from swarmnode.p2p.transport import Transport
from swarmnode.simulation.faults import FaultPlan, link, nodes_of
from swarmnode.simulation.local import LocalPeer, LocalSwarm
from swarmnode.simulation.scenario import Scenario

log = logging.getLogger(__name__)

NodeFactory = Callable[[int, LocalPeer], SwarmNode]
"""Builds virtual node i on a peer (its ledger, inbox, bare transport) as the engine does,
slow links included (`shaped`)."""


def shaped(scenario: Scenario, node: int, transport: Transport) -> Transport:
    """`transport` behind the scenario's slow links for `node`, or as it is without any."""
    slow = link(scenario, node)
    if not slow.shaped:
        return transport
    return ShapedTransport(
        transport, latency=slow.latency, bandwidth=slow.bandwidth, send_delay=slow.send_delay
    )


class FaultInjector:
    """The engine's side of the faults: call `start_round(k)`, run `job(k, i)` for every
    node in its own thread, then read `status(i)` for the nodes whose job returned None."""

    def __init__(
        self,
        scenario: Scenario,
        swarm: LocalSwarm,
        nodes: list[SwarmNode],
        make_node: NodeFactory,
        server_workers: int = 4,
    ) -> None:
        self.scenario = scenario
        self.plan = FaultPlan(scenario)
        self.nodes = nodes  # replaced in place when a node restarts
        self._swarm = swarm
        self._make_node = make_node
        self._workers = server_workers
        self._status: dict[int, str] = {}
        self.caught_up: list[int] = []

    def start_round(self, k: int) -> list[int]:
        """Brings back the nodes due in round k (restart, catch up); returns those that will
        join it, in node order."""
        plan = self.plan.round(k)
        self._status = {}
        for i in range(len(self.nodes)):
            why = plan.away(i)
            if why is not None:
                self._status[i] = why
        for i in sorted(plan.restarting):
            self._restart(i)
        self.caught_up = []
        for i in sorted(plan.restarting | plan.returning):
            if self.nodes[i].catch_up() is not None:
                self.caught_up.append(i)
        return [i for i in range(len(self.nodes)) if i not in self._status]

    def job(self, k: int, i: int) -> Callable[[], NodeRound | None]:
        """What virtual node i does in round k: nothing when away, its round otherwise, dying
        on the way where the plan says so."""
        plan = self.plan.round(k)
        if plan.away(i) is not None:
            return lambda: None
        node = self.nodes[i]
        at = plan.crashing.get(i)
        if at is None:
            return node.step

        transport = self._swarm.peers[i].transport

        def crashing() -> NodeRound | None:
            transport.arm(Fault.parse(at))
            try:
                node.step()  # a round that ends before the fault point still ends in a crash
            except InjectedCrash as crash:
                log.info("node %d: %s", i, crash)
            finally:
                transport.disarm()
            self._kill(i)
            self._status[i] = "crashed"
            return None

        return crashing

    def status(self, i: int) -> str | None:
        """Why node i has no round result this round (down, sat_out, crashed), if it has none."""
        return self._status.get(i)

    def summary(self, k: int, state: RoundState) -> dict[str, Any]:
        """What happened to whom in round k, for the report: the plan's doing, and who the
        chain shows voted out or withdrawn (`state`, the round as it ended)."""
        plan = self.plan.round(k)
        accounts = [peer.ledger.account for peer in self._swarm.peers]
        return {
            "crashed": sorted(plan.crashing),
            "down": sorted(plan.down),
            "sat_out": sorted(plan.sitting_out),
            "restarted": sorted(plan.restarting),
            "caught_up": list(self.caught_up),
            "dropped": nodes_of(accounts, [s.account for s in state.seats if not s.live]),
            "attempts": state.attempt,
        }

    def _kill(self, i: int) -> None:
        """What a dead process leaves: nobody answers at its endpoint, its channels close."""
        peer = self._swarm.peers[i]
        if peer.server is not None:
            peer.server.stop(0)
        network = self._swarm.extra.get("network")
        if isinstance(network, MemoryNetwork):
            network.detach(peer.ledger.account)
        peer.transport.close()

    def _restart(self, i: int) -> None:
        """Node i as a freshly started process with the same identity and account."""
        old = self._swarm.peers[i]
        account = old.ledger.account
        inbox = self._swarm.inboxes(i, self._swarm.accounts)  # an attacker's lies again
        server: PeerServer | None = None
        transport: Transport
        if old.server is not None:
            if old.identity is None:
                raise SwarmError(f"node {i} cannot restart: its TLS identity was not kept")
            feeds: list[RosterFeed] = self._swarm.extra["feeds"]
            roster = feeds[i].roster
            key, cert = old.identity.key_pem, old.identity.cert_pem
            server = PeerServer(account, key, cert, roster, inbox, workers=self._workers).start()
            transport = GrpcTransport(account, key, cert, roster, wire=server.wire)
            old.ledger.update_endpoint(server.endpoint)  # as a restarted daemon enrols
            for feed in feeds:
                feed.refresh()
        else:
            network = self._swarm.extra["network"]
            network.attach(inbox)
            transport = MemoryTransport(network, account)
        peer = LocalPeer(old.ledger, inbox, FaultyTransport(transport), server, old.identity)
        self._swarm.peers[i] = peer
        fresh = self._make_node(i, peer)
        fresh.contribution = self.nodes[i].contribution
        self.nodes[i] = fresh
        log.info("node %d restarted at %s", i, server.endpoint if server else "memory")
