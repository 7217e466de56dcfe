"""A node's Prometheus metrics (swarmnode/metrics.py, docs/architecture.md#operators).

First the metrics on their own, in this process: two nodes' registries served side by side
over HTTP do not see each other's rounds; the privacy-budget gauge exists only once DP is
tracked; a taken port and a wrong `metrics_listen` are one line each. Then two real
`swarmnode run` daemons on anvil, one scraped over HTTP between rounds: every number it
serves agrees with the rounds the daemon logged, grows with them, and the endpoint is gone
once the daemon has stopped.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarmnode.allreduce import Traffic
from swarmnode.config import NodeConfig
from swarmnode.exceptions import ConfigError
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.metrics import PHASES, MetricsServer, NodeMetrics
from swarmnode.node import NodeRound
from swarmnode.p2p.roster import Roster
from swarmnode.records import NodeRoundRecord
from swarmnode.round import RoundOutcome, RoundResult
from tests.test_daemon import two_nodes
from tests.test_daemon_integration import Daemon, account_of, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample on the page, read with prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def rounds_counted(samples: Samples) -> dict[str, float]:
    """swarmnode_rounds_total by outcome, the outcomes never seen (0) left out."""
    return {
        dict(labels)["outcome"]: count
        for (name, labels), count in samples.items()
        if name == "swarmnode_rounds_total" and count
    }


def a_round(number: int, status: RoundOutcome, sent: int) -> NodeRound:
    """A round's outcome as the node hands it over (a model only when the round gave one)."""
    final = status in (RoundOutcome.FINAL, RoundOutcome.CAUGHT_UP)
    result = RoundResult(
        number,
        1,
        status,
        ("0xaa", "0xbb", "0xcc"),
        np.zeros(4, dtype=np.float32) if final else None,
        b"\x01" * 32 if final else None,
        {"chain": 0.2, "transfer": 0.03, "merge": 0.004, "total": 1.5},
        Traffic(sent=sent, received=2 * sent),
        transactions=2,
        gas=150_000,
    )
    return NodeRound(result, batches=8, val_loss=0.75, val_metrics={"accuracy": 0.5})


# ------------------------------------------------------------------ in this process


def test_two_nodes_in_one_process_serve_their_own_numbers() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    servers = [MetricsServer(m.registry, "127.0.0.1", 0) for m in (first, second)]
    try:
        roster = Roster()
        first.follow("0xAA", roster)
        first.round_done(a_round(1, RoundOutcome.FINAL, sent=1000))
        first.round_done(a_round(2, RoundOutcome.FAILED_TOO_FEW, sent=10))
        mine, theirs = (scrape(s.url) for s in servers)
    finally:
        for server in servers:
            server.stop()

    assert servers[0].port != servers[1].port and servers[0].port > 0
    assert rounds_counted(mine) == {"final": 1, "failed_too_few": 1}
    assert value(mine, "swarmnode_bytes_sent_total") == 1010
    assert value(mine, "swarmnode_bytes_received_total") == 2020
    assert value(mine, "swarmnode_gas_total") == 300_000
    for phase in PHASES:
        assert value(mine, "swarmnode_round_seconds_count", phase=phase) == 2
    assert value(mine, "swarmnode_round_seconds_sum", phase="chain") == pytest.approx(0.4)
    assert value(mine, "swarmnode_live_peers") == 2  # three live, this node (0xaa) one of them
    assert value(mine, "swarmnode_last_final_round") == 1  # round 2 failed: no model
    assert value(mine, "swarmnode_validation_metric", name="accuracy") == 0.5
    assert value(mine, "swarmnode_node_info", account="0xAA", version=_version()) == 1
    # the other node, same names, same process: untouched
    assert rounds_counted(theirs) == {}
    assert value(theirs, "swarmnode_bytes_sent_total") == 0
    assert value(theirs, "swarmnode_round_seconds_count", phase="merge") == 0
    # stopped: nothing answers there any more
    for server in servers:
        with pytest.raises(urllib.error.URLError):
            scrape(server.url)


def _version() -> str:
    from swarmnode.version import __version__

    return __version__


def test_the_privacy_budget_is_a_metric_only_once_dp_is_tracked() -> None:
    metrics = NodeMetrics()
    names = {m.name for m in metrics.registry.collect()}
    assert not any("privacy" in name for name in names)
    spent = [0.0]
    metrics.track_privacy_budget(lambda: spent[0])
    spent[0] = 1.25
    assert metrics.registry.get_sample_value("swarmnode_privacy_epsilon_spent") == 1.25


def test_a_taken_metrics_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^metrics_listen 127\.0\.0\.1:{port}: cannot"):
            MetricsServer(NodeMetrics().registry, "127.0.0.1", port)


@pytest.mark.parametrize(
    ("written", "address"),
    [
        (None, None),
        ('"9100"', ("127.0.0.1", 9100)),
        ("9100", ("127.0.0.1", 9100)),
        ('"0.0.0.0:0"', ("0.0.0.0", 0)),
        ('"[::1]:9100"', ("::1", 9100)),
    ],
)
def test_metrics_listen_is_off_unless_set_and_on_this_machine_unless_told(
    tmp_path: Path, written: str | None, address: tuple[str, int] | None
) -> None:
    config = tmp_path / "node.toml"
    line = "" if written is None else f"metrics_listen = {written}\n"
    config.write_text(f'[node]\nidentity_dir = "x"\ndeployment = "d.json"\n{line}')
    assert NodeConfig.load(config).metrics_address == address


@pytest.mark.parametrize("written", ['"localhost"', '":9100"', '"h:70000"', "true"])
def test_a_wrong_metrics_listen_is_one_line(tmp_path: Path, written: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nidentity_dir = "x"\ndeployment = "d.json"\nmetrics_listen = {written}\n'
    )
    with pytest.raises(ConfigError) as error:
        NodeConfig.load(config)
    assert str(error.value).startswith(f"{config}: field metrics_listen: ")
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------ a running daemon


@dataclass
class Snapshot:
    records: list[NodeRoundRecord]  # every round the daemon had logged
    last: dict[str, Any]  # its last round's log line
    samples: Samples  # its metrics page, read while the log said the same before and after


def metrics_url(daemon: Daemon) -> str | None:
    found = [e["url"] for e in daemon.events() if e.get("event") == "metrics"]
    return found[0] if found else None


def settled(daemon: Daemon, url: str, at_least: int) -> Snapshot:
    """The daemon's metrics page once it has logged `at_least` rounds, read between two
    rounds: the log the same before and after the scrape, and the page counting as many
    rounds (the daemon counts a round just before it logs it)."""

    def read() -> Snapshot | None:
        before = daemon.rounds(status="")
        if len(before) < at_least:
            return None
        samples = scrape(url)
        after = daemon.rounds(status="")
        if len(after) != len(before) or sum(rounds_counted(samples).values()) != len(before):
            return None
        last = [e for e in daemon.events() if e.get("event") == "round"][len(before) - 1]
        return Snapshot(before, last, samples)

    return wait_for(f"{daemon.name}'s metrics after {at_least} rounds", read, [daemon], 180)


def check_against_the_log(snapshot: Snapshot, account: str) -> None:
    """Every number on the page is what the daemon's own log lines add up to."""
    records, samples = snapshot.records, snapshot.samples
    assert rounds_counted(samples) == Counter(r.status for r in records)
    for phase in PHASES:
        assert value(samples, "swarmnode_round_seconds_count", phase=phase) == len(records)
        assert value(samples, "swarmnode_round_seconds_sum", phase=phase) == pytest.approx(
            sum(r.seconds.get(phase, 0.0) for r in records)
        )
    assert value(samples, "swarmnode_bytes_sent_total") == sum(r.bytes_sent for r in records)
    assert value(samples, "swarmnode_bytes_received_total") == sum(
        r.bytes_received for r in records
    )
    assert value(samples, "swarmnode_gas_total") == sum(r.gas for r in records) > 0
    with_model = [r.round for r in records if r.status in ("final", "caught_up")]
    assert value(samples, "swarmnode_last_final_round") == max(with_model)
    assert value(samples, "swarmnode_validation_loss") == pytest.approx(records[-1].val_loss)
    for name, score in snapshot.last["metrics"].items():
        assert value(samples, "swarmnode_validation_metric", name=name) == pytest.approx(score)
    assert value(samples, "swarmnode_live_peers") == 1
    assert value(samples, "swarmnode_roster_peers") == 1
    assert value(samples, "swarmnode_chain_outages_total") == 0
    info = [labels for (name, labels) in samples if name == "swarmnode_node_info"]
    assert dict(info[0])["account"].lower() == account.lower()


@pytest.mark.chain
@pytest.mark.slow
def test_a_daemons_metrics_move_with_its_rounds_and_go_when_it_stops(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    _, configs = two_nodes(own_anvil, tmp_path, rounds=0)  # until stopped
    for config in configs:  # port 0: each daemon logs the one it got
        config.write_text(config.read_text() + 'metrics_listen = "127.0.0.1:0"\n')
    nodes = [Daemon(tmp_path, name) for name in ("a", "b")]
    try:
        for daemon in nodes:
            daemon.start()
        urls = [wait_for("the metrics URL", lambda d=d: metrics_url(d), nodes) for d in nodes]
        assert all(url.startswith("http://127.0.0.1:") for url in urls)
        assert urls[0] != urls[1]
        node = nodes[0]
        first = settled(node, urls[0], at_least=1)
        second = settled(node, urls[0], at_least=len(first.records) + 1)
        for snapshot in (first, second):
            check_against_the_log(snapshot, account_of(node))
        assert sum(rounds_counted(second.samples).values()) > sum(
            rounds_counted(first.samples).values()
        )
        sent = [value(s.samples, "swarmnode_bytes_sent_total") for s in (first, second)]
        assert 0 < sent[0] < sent[1]

        for daemon in nodes:
            daemon.signal(signal.SIGTERM)
        for daemon in nodes:
            assert daemon.wait(timeout=120) == 0, daemon.tail()
    finally:
        for daemon in nodes:
            daemon.stop_for_good()
    for url in urls:  # the server stopped with the daemon
        with pytest.raises(urllib.error.URLError):
            scrape(url)
    for daemon in nodes:  # a clean stop: INFO lines only, in the log and on the terminal
        loud = [json.dumps(e) for e in daemon.events() if e["level"] not in ("info", "debug")]
        assert loud == [], daemon.tail()
        assert daemon.events()[-1]["event"] == "stopped"
        shown = daemon.output.read_text().splitlines()
        assert [line for line in shown if not re.match(r"\d\d:\d\d:\d\d INFO ", line)] == []
