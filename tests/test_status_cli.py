"""`swarmnode status --node / --identity`: one node's rounds as the chain records them.

The history itself (which rounds, what was reported, who agreed) is checked on the in-memory
ledger, where withdrawals and stale reports are cheap to stage; the command is checked
against own_anvil after a real round of three SwarmNodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from swarmnode import canonical
from swarmnode.cli.status import logged_rounds, node_report
from swarmnode.identity import NodeIdentity
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.history import node_rounds
from swarmnode.ledger.memory import InMemoryChain
from swarmnode.ledger.types import RoundStatus
from swarmnode.node import SwarmNode
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.records import ROUND_EVENT, NodeRoundRecord
from swarmnode.round import RoundSettings
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import memory_swarm, run_in_threads
from swarmnode.training import LocalTrainer, example_task


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def test_history_names_each_nodes_part_report_and_agreement() -> None:
    chain = InMemoryChain()
    address = chain.deploy(SwarmParams(min_peers=2, max_peers=6), chain.new_account())
    a, b, c, d, e, f = ledgers = [chain.ledger(address, chain.new_account()) for _ in range(6)]
    for i, ledger in enumerate(ledgers):
        ledger.register(f"memory:{i}", f"certificate-{i}:{ledger.account.lower()}".encode())
    for ledger in ledgers:  # the sixth join closes round 1
        ledger.join(1, digest(ledger.account), 10, 1)
    f.report(1, 1, digest("other"))  # for attempt 1 only
    c.withdraw(1)  # attempt 2 among a, b, d, e, f: 3 agreeing reports finalize
    e.report(1, 2, digest("wrong"))
    for ledger in (a, b, d):
        ledger.report(1, 2, digest("merged"))
    assert a.round(1).status == RoundStatus.FINAL
    a.join(2, digest("a2"), 10, 1)
    a.leave(2)

    def by_round(account: str) -> dict[int, tuple[str, str, int, bytes | None, bool | None]]:
        return {
            p.round: (p.status, p.part, p.report_attempt, p.report, p.agreed)
            for p in node_rounds(a, account)
        }

    assert by_round(a.account) == {
        2: ("open", "left", 0, None, None),
        1: ("final", "reported", 2, digest("merged"), True),
    }
    assert by_round(d.account) == {1: ("final", "reported", 2, digest("merged"), True)}
    assert by_round(e.account) == {1: ("final", "reported", 2, digest("wrong"), False)}
    assert by_round(f.account) == {1: ("final", "reported", 1, digest("other"), None)}
    assert by_round(c.account) == {1: ("final", "withdrawn", 0, None, None)}
    assert node_rounds(a, chain.new_account()) == []
    assert [p.round for p in node_rounds(a, a.account, limit=1)] == [2]
    first = node_rounds(b, a.account)[1]
    assert first.final_digest == digest("merged") and first.attempt == 2


def swarmnode(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmnode", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "SWARMNODE_CACHE_DIR": str(cwd / "cache")},
    )


@pytest.mark.chain
@pytest.mark.slow
def test_status_of_a_node_after_a_real_round_on_anvil(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    task = example_task(samples=128)
    initial = LocalTrainer(task, "cpu", 0).snapshot()
    params = SwarmParams(
        min_peers=3,  # the quorum is then all three: every node's report lands
        max_peers=3,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (2, 0, 0, 0)),
        initial_model_digest=canonical.digest(initial),
    )
    deployment, _ = own_anvil.deploy(params)
    Deployment(
        deployment.chain_id, deployment.address, deployment.block, params, own_anvil.url
    ).save(tmp_path / "deployment.json")
    identity = NodeIdentity.create(tmp_path / "node-b", "", kdf="pbkdf2", iterations=2)
    own_anvil.rpc.fund(own_anvil.funder, identity.address, 10**18)
    accounts = [own_anvil.new_account(), identity.account, own_anvil.new_account()]
    roster = Roster()
    network = MemoryNetwork(roster)
    nodes = []
    for i, account in enumerate(accounts):
        ledger = own_anvil.ledger(deployment, account)
        certificate = f"certificate-{i}:{ledger.account.lower()}".encode()
        ledger.register(f"memory:{i}", certificate)
        roster.upsert(PeerRecord(ledger.account, f"memory:{i}", certificate))
        inbox = Inbox(ledger.account)
        network.attach(inbox)
        transport = MemoryTransport(network, ledger.account)
        nodes.append(
            SwarmNode(ledger=ledger, transport=transport, inbox=inbox, task=task, device="cpu")
        )
    results = [r.result for r in run_in_threads([n.step for n in nodes], timeout=120)]
    assert {r.status for r in results} == {"final"}
    merged = results[0].digest
    assert merged is not None
    a = nodes[0].ledger
    a.join(2, digest("a2"), 10, 1)
    a.leave(2)

    shown = swarmnode(tmp_path, "-d", "deployment.json", "--node", a.account, "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["node"] == {"account": a.account, "active": True, "endpoint": "memory:0"}
    assert [(r["round"], r["status"], r["part"], r["agreed"]) for r in report["rounds"]] == [
        (2, "open", "left", None),
        (1, "final", "reported", True),
    ]
    assert (
        report["rounds"][1]["report"]
        == report["rounds"][1]["final_digest"]
        == "0x" + (merged.hex())
    )

    table = swarmnode(tmp_path, "-d", "deployment.json", "--identity", "node-b")
    assert table.returncode == 0, table.stderr
    assert identity.address in table.stdout
    row = next(line for line in table.stdout.splitlines() if line.lstrip("│ ").startswith("1 "))
    assert "final" in row and "reported" in row and "yes" in row
    assert row.count("0x" + merged.hex()[:16]) == 2  # its report and the final digest

    for args, words in [
        (("--node", "0x1234"), "is not an account address"),
        (("--node", a.account, "--identity", "node-b"), "pass one of them"),
        (("--identity", "nowhere"), "nowhere"),
        (("--node", "0x" + "ab" * 20), "never registered"),
    ]:
        wrong = swarmnode(tmp_path, "-d", "deployment.json", *args)
        assert wrong.returncode == 1, wrong.stdout
        assert len(wrong.stderr.strip().splitlines()) == 1 and words in wrong.stderr, args


def test_a_report_that_lands_after_the_round_is_final_is_debug_and_counts_as_agreed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three nodes, a quorum of two: the third report reaches a round that is already final
    and the contract refuses it (WrongRound), leaving no event. Before: an INFO line
    "contract refused with WrongRound" that read as an error, and `status` showing the
    round without an agreeing report. Now: a DEBUG line, and `status --identity` reads the
    node's log to show its report as agreed (late), its digest being the final one."""
    task = example_task(samples=128)
    params = SwarmParams(
        min_peers=2,
        max_peers=3,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (2, 0, 0, 0)),
        initial_model_digest=canonical.digest(LocalTrainer(task, "cpu", 0).snapshot()),
    )
    swarm = memory_swarm(params, 3)
    nodes = [
        SwarmNode(
            ledger=p.ledger,
            transport=p.transport,
            inbox=p.inbox,
            task=task,
            device="cpu",
            settings=RoundSettings(poll=0.01),
        )
        for p in swarm.peers
    ]
    with caplog.at_level(logging.DEBUG, logger="swarmnode"):
        outcomes = run_in_threads([n.step for n in nodes], timeout=60)
    assert {o.result.status for o in outcomes} == {"final"}
    assert len({o.result.digest for o in outcomes}) == 1
    refused = [r for r in caplog.records if "WrongRound" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.DEBUG, refused

    reader = nodes[0].ledger
    chain_only = {
        n.ledger.account: node_report(reader, 1, n.ledger.account, 5)["rounds"][0] for n in nodes
    }
    late = [a for a, entry in chain_only.items() if entry["agreed"] is None]
    assert len(late) == 1  # the chain alone cannot tell
    assert chain_only[late[0]]["part"] == "joined"
    outcome = outcomes[[n.ledger.account for n in nodes].index(late[0])]

    folder = tmp_path / "node"
    folder.mkdir()
    record = NodeRoundRecord.from_round(outcome)
    (folder / "node.jsonl").write_text(
        '{"event": "started"}\n' + json.dumps({"event": ROUND_EVENT, **record.to_json()}) + "\n"
    )
    entry = node_report(reader, 1, late[0], 5, logged_rounds(folder))["rounds"][0]
    assert entry["agreed"] is True and entry["part"] == "reported late" and entry["late"]
    assert entry["report"] == entry["final_digest"] == "0x" + record.digest

    other = replace(record, digest="ab" * 32)  # a log whose model is not the final one
    entry = node_report(reader, 1, late[0], 5, {1: other})["rounds"][0]
    assert entry["agreed"] is None and entry["part"] == "joined"
    assert logged_rounds(tmp_path / "nowhere") == {}
