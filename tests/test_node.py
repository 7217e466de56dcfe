"""SwarmNodes train, sync by the swarm's policy, and leave every round with the same model."""

from __future__ import annotations

import threading

import pytest

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.ledger.memory import InMemoryChain
from swarmnode.node import NodeRound, SwarmNode
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.training import LocalTrainer, example_task


def build(n: int, initial_digest: bytes | None = None) -> list[SwarmNode]:
    tasks = [example_task(seed=10 + i, samples=256) for i in range(n)]
    digest = initial_digest or canonical.digest(LocalTrainer(tasks[0], "cpu", 0).snapshot())
    params = SwarmParams(
        min_peers=2,
        max_peers=n,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (8, 0, 0, 0)),
        initial_model_digest=digest,
    )
    chain = InMemoryChain()
    address = chain.deploy(params, chain.new_account())
    roster = Roster()
    network = MemoryNetwork(roster)
    nodes = []
    for i, task in enumerate(tasks):
        ledger = chain.ledger(address, chain.new_account())
        ledger.register(f"memory:{i}", f"cert-{i}".encode())
        roster.upsert(PeerRecord(ledger.account, f"memory:{i}", f"cert-{i}".encode()))
        inbox = Inbox(ledger.account)
        network.attach(inbox)
        nodes.append(
            SwarmNode(
                ledger=ledger,
                transport=MemoryTransport(network, ledger.account),
                inbox=inbox,
                task=task,
                device="cpu",
                seed=i,
                poll=0.01,
            )
        )
    return nodes


def step_all(nodes: list[SwarmNode]) -> list[NodeRound]:
    out: list[NodeRound | None] = [None] * len(nodes)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            out[i] = nodes[i].step()
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return [r for r in out if r is not None]


def test_nodes_train_sync_and_share_one_model_every_round() -> None:
    nodes = build(3)
    before = [node.trainer.evaluate()["loss"] for node in nodes]
    for number in (1, 2, 3):
        rounds = step_all(nodes)
        assert [r.batches for r in rounds] == [8, 8, 8]
        assert {r.result.status for r in rounds} == {"final"}
        assert {r.result.round for r in rounds} == {number}
        snapshots = {node.trainer.snapshot().tobytes() for node in nodes}
        assert len(snapshots) == 1  # everyone holds the merged model
        assert nodes[0].ledger.round(number).final_digest == rounds[0].result.digest
    after = [node.trainer.evaluate()["loss"] for node in nodes]
    assert max(after) < min(before)


def test_a_node_refuses_an_initial_model_other_than_the_one_on_chain() -> None:
    with pytest.raises(ConfigError, match="initial model's digest"):
        build(2, initial_digest=b"\x05" * 32)
