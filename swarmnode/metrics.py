"""A node's Prometheus metrics: what an operator's scraper reads while `swarmnode run` works.

Operators watch nodes with the tools they already run (Prometheus, Grafana, alerting), not
by reading logs; this module turns what the daemon learns each round into the numbers those
tools expect: counters that only grow (rounds by outcome, bytes, gas, outages), histograms
(seconds per phase of a round) and gauges (live peers, the last final round, validation
scores). See docs/architecture.md#operators for the list and what each one means.

Each node has a `CollectorRegistry` of its own, never prometheus_client's global one, so
that several nodes in one process (a test, a notebook, the simulator) neither collide on a
name nor see each other's numbers. `MetricsServer` serves one registry with
prometheus_client's own HTTP server, on the address `metrics_listen` in node.toml names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)

from swarmnode.exceptions import ConfigError
from swarmnode.round import RoundOutcome
from swarmnode.version import __version__

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from swarmnode.node import NodeRound
    from swarmnode.p2p.roster import Roster

PHASES = ("chain", "transfer", "merge")
"""The parts of a round's time a RoundResult counts (swarmnode.round.Round.seconds)."""

# Seconds: a phase takes milliseconds on loopback and minutes when a peer is voted out
# after a transfer deadline or the chain is slow; Prometheus's default buckets stop at 10 s.
PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ROUND_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class NodeMetrics:
    """One node's metrics, in a registry of its own.

    The daemon calls `round_done` with every round's outcome, `round_failed` when a round
    failed here with an error it goes on from, and `chain_down` when the chain's endpoint
    stops or starts answering. `follow` names the node and its roster once the peer is open.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_*: memory, CPU seconds, open files, start time
        self._info = Info("swarmnode_node", "This node: its account and version.", registry=r)
        self._info.info({"version": __version__})
        self.rounds = Counter(
            "swarmnode_rounds",
            "Rounds this node took part in, by how they ended for it "
            "(docs/round-protocol.md#outcomes).",
            ["outcome"],
            registry=r,
        )
        for outcome in RoundOutcome:  # every outcome from 0: rate() needs the series to exist
            self.rounds.labels(outcome.value)
        self.round_errors = Counter(
            "swarmnode_round_errors",
            "Rounds that failed here with a chain, peer or merge error; the node went on.",
            registry=r,
        )
        self.phase_seconds = Histogram(
            "swarmnode_round_seconds",
            "Seconds of one round spent in each phase: sending transactions (chain), "
            "moving data to and from peers (transfer), merging (merge).",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        for phase in PHASES:
            self.phase_seconds.labels(phase)
        self.round_duration = Histogram(
            "swarmnode_round_duration_seconds",
            "Seconds from looking for a round to its end for this node, waiting included.",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.bytes_sent = Counter(
            "swarmnode_bytes_sent",
            "Bytes this node's transport sent in rounds, counted on the wire (messages and "
            "gRPC's 5-byte prefixes; HTTP/2 and TLS framing not included).",
            registry=r,
        )
        self.bytes_received = Counter(
            "swarmnode_bytes_received",
            "Bytes this node's transport received in rounds, counted as bytes_sent is.",
            registry=r,
        )
        self.gas = Counter(
            "swarmnode_gas",
            "Gas this node's mined round transactions used, from their receipts.",
            registry=r,
        )
        self.transactions = Counter(
            "swarmnode_transactions",
            "Transactions this node sent in rounds.",
            registry=r,
        )
        self.chain_outages = Counter(
            "swarmnode_chain_outages",
            "Times the chain's JSON-RPC endpoint stopped answering (the node trained on).",
            registry=r,
        )
        self.chain_down = Gauge(
            "swarmnode_chain_down",
            "1 while the chain's endpoint does not answer, else 0.",
            registry=r,
        )
        self.live_peers = Gauge(
            "swarmnode_live_peers",
            "Other nodes still live at the end of this node's last round.",
            registry=r,
        )
        self.roster_peers = Gauge(
            "swarmnode_roster_peers",
            "Other nodes registered and active on the contract's roster, as this node "
            "last read it.",
            registry=r,
        )
        self.last_final_round = Gauge(
            "swarmnode_last_final_round",
            "The last round that ended with this node holding the swarm's model "
            "(final or caught_up); 0 before the first.",
            registry=r,
        )
        self.validation_loss = Gauge(
            "swarmnode_validation_loss",
            "Loss of this node's own model on its validation data at its last sync.",
            registry=r,
        )
        self.validation_metric = Gauge(
            "swarmnode_validation_metric",
            "Each metric the Task reports for this node's own model on its validation data "
            "at its last sync.",
            ["name"],
            registry=r,
        )
        self._account = ""
        self._privacy: Gauge | None = None

    def follow(self, account: str, roster: Roster) -> None:
        """Names the node (its account) and counts the other nodes on `roster` whenever
        the metrics are read."""
        self._account = account.lower()
        self._info.info({"version": __version__, "account": account})
        self.roster_peers.set_function(
            lambda: sum(1 for p in roster.records() if p.account.lower() != self._account)
        )

    def round_done(self, outcome: NodeRound) -> None:
        """Counts one round, whatever its outcome."""
        result = outcome.result
        self.rounds.labels(str(result.status)).inc()
        for phase in PHASES:
            self.phase_seconds.labels(phase).observe(result.seconds.get(phase, 0.0))
        self.round_duration.observe(result.seconds.get("total", 0.0))
        self.bytes_sent.inc(result.traffic.sent)
        self.bytes_received.inc(result.traffic.received)
        self.gas.inc(result.gas)
        self.transactions.inc(result.transactions)
        self.live_peers.set(_others(result.participants, self._account))
        if result.merged is not None:  # the round ended with the swarm's model here
            self.last_final_round.set(result.round)
        self.validation_loss.set(outcome.val_loss)
        self._scores(outcome.val_metrics)

    def round_failed(self) -> None:
        self.round_errors.inc()

    def chain_answers(self, down: bool) -> None:
        """The chain's endpoint stopped (True) or started (False) answering."""
        if down:
            self.chain_outages.inc()
        self.chain_down.set(1 if down else 0)

    def track_privacy_budget(self, spent: Callable[[], float]) -> None:
        """The hook for differential privacy: a node that trains with DP calls this once,
        with what reads the privacy budget (epsilon) it has spent so far, and only then is
        `swarmnode_privacy_epsilon_spent` registered; without DP there is no such metric,
        rather than one that always reads 0. `swarmnode run` calls it for a node.toml with
        `[privacy]` (docs/privacy.md#the-accountant), with its accountant's epsilon."""
        if self._privacy is None:
            self._privacy = Gauge(
                "swarmnode_privacy_epsilon_spent",
                "Differential privacy budget (epsilon) this node has spent so far.",
                registry=self.registry,
            )
        self._privacy.set_function(spent)

    def _scores(self, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.validation_metric.labels(name).set(value)


def _others(participants: Iterable[str], me: str) -> int:
    return sum(1 for p in participants if p.lower() != me)


class MetricsServer:
    """prometheus_client's HTTP server for one registry, on one host and port (0: any free
    one; `port` says which), until `stop()`."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:  # taken, not an address of this machine, not allowed
            raise ConfigError(
                f"metrics_listen {_joined(host, port)}: cannot listen there ({exc.strerror or exc})"
            ) from None
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.host = host
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{_joined(self.host, self.port)}/metrics"

    def stop(self) -> None:
        """Stops answering and closes the socket; waits for the serving thread (it notices
        within half a second)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def _joined(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
