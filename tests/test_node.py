"""SwarmNodes train, sync by the swarm's policy, and leave every round with the same model."""

from __future__ import annotations

import pytest

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.node import NodeRound, SwarmNode
from swarmnode.round import RoundSettings
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import memory_swarm, run_in_threads
from swarmnode.training import LocalTrainer, example_task


def build(n: int, initial_digest: bytes | None = None, join_window: int = 30) -> list[SwarmNode]:
    tasks = [example_task(seed=10 + i, samples=256) for i in range(n)]
    digest = initial_digest or canonical.digest(LocalTrainer(tasks[0], "cpu", 0).snapshot())
    params = SwarmParams(
        min_peers=2,
        max_peers=n,
        join_window=join_window,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (8, 0, 0, 0)),
        initial_model_digest=digest,
    )
    swarm = memory_swarm(params, n)
    return [
        SwarmNode(
            ledger=peer.ledger,
            transport=peer.transport,
            inbox=peer.inbox,
            task=task,
            device="cpu",
            seed=i,
            settings=RoundSettings(poll=0.01),
        )
        for i, (peer, task) in enumerate(zip(swarm.peers, tasks, strict=True))
    ]


def step_all(nodes: list[SwarmNode]) -> list[NodeRound]:
    return run_in_threads([node.step for node in nodes], timeout=60)


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
    # no peer holds it either: asked for up to the join window (tests/test_initial_model.py)
    with pytest.raises(ConfigError, match="no peer served the initial model"):
        build(2, initial_digest=b"\x05" * 32, join_window=1)
