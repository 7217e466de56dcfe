"""A node folder as a live peer (swarmnode.peer) through FlowerNode.from_node_dir, in threads
against anvil: the folders register, take part in a round over mutual TLS, checkpoint it,
and opened again resume from that checkpoint; a `swarmnode run` of a folder that names no
task is refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swarmnode import canonical
from swarmnode.checkpoint import CheckpointStore
from swarmnode.flower import FlowerNode
from swarmnode.identity import NodeIdentity
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.peer import LivePeer
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import run_in_threads

Arrays = list[np.ndarray[Any, Any]]


class Client:
    """A NumPyClient whose fit moves every weight by its own step: merges are checkable."""

    def __init__(self, step: float) -> None:
        self.step = step

    def get_parameters(self, config: dict[str, Any]) -> Arrays:
        return [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]

    def fit(self, parameters: Arrays, config: dict[str, Any]) -> tuple[Arrays, int, dict[str, Any]]:
        return [p + np.float32(self.step) for p in parameters], 10, {}

    def evaluate(
        self, parameters: Arrays, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        return float(np.abs(parameters[0]).mean()), 10, {}


def folders(chain: AnvilChain, base: Path) -> list[Path]:
    start = canonical.flatten_arrays(Client(0).get_parameters({}))
    params = SwarmParams(
        min_peers=2,
        max_peers=2,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (1, 0, 0, 0)),  # one fit, one merge
        initial_model_digest=canonical.digest(start),
    )
    deployed, _ = chain.deploy(params)
    Deployment(deployed.chain_id, deployed.address, deployed.block, params, chain.url).save(
        base / "deployment.json"
    )
    made = []
    for name in ("a", "b"):
        identity = NodeIdentity.create(base / name, "", kdf="pbkdf2", iterations=2)
        chain.rpc.fund(chain.funder, identity.address, 10**18)
        (base / name / "node.toml").write_text(
            '[node]\nidentity_dir = "."\ndeployment = "../deployment.json"\n'
        )
        made.append(base / name)
    return made


@pytest.mark.chain
def test_flower_nodes_from_folders_checkpoint_and_resume(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    nodes_dirs = folders(own_anvil, tmp_path)
    steps = (1.0, 3.0)
    nodes = [
        FlowerNode.from_node_dir(d, Client(s), passphrase="")
        for d, s in zip(nodes_dirs, steps, strict=True)
    ]
    try:
        rounds = run_in_threads([node.step for node in nodes], timeout=120)
    finally:
        for node in nodes:
            assert node.peer is not None
            node.peer.close()
    assert [r.result.status for r in rounds] == ["final", "final"]
    merged = rounds[0].result.merged
    assert merged is not None and rounds[0].result.digest == rounds[1].result.digest
    # equal weights: the mean of zeros+1 and zeros+3 is 2 (and of ones+1, ones+3: 3)
    np.testing.assert_array_equal(merged, np.array([2.0] * 6 + [3.0] * 4, np.float32))
    for folder in nodes_dirs:
        latest = CheckpointStore(folder / "checkpoints").latest()
        assert latest is not None and latest.round == rounds[0].result.round
        assert latest.digest == rounds[0].result.digest and "sync" in latest.state

    again = FlowerNode.from_node_dir(nodes_dirs[0], Client(1.0), passphrase="")
    try:
        assert again.resumed is not None and again.resumed.round == rounds[0].result.round
        np.testing.assert_array_equal(canonical.flatten_arrays(again.parameters), merged)
        assert again.syncer.reference is not None
        np.testing.assert_array_equal(again.syncer.reference, merged)
        assert again.peer is not None and again.peer.server.endpoint  # serving again
    finally:
        assert again.peer is not None
        again.peer.close()


@pytest.mark.chain
def test_a_live_peer_is_a_context_manager_that_registers(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    folder = folders(own_anvil, tmp_path)[0]
    with LivePeer.open(folder / "node.toml", passphrase="") as peer:
        record = peer.ledger.node(peer.ledger.account)
        assert record is not None and record.active
        assert record.endpoint == peer.server.endpoint
        assert peer.resume() is None  # no checkpoint yet
        assert peer.config.task is None


def test_run_refuses_a_folder_without_a_task_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nidentity_dir = "."\ndeployment = "deployment.json"\n')
    done = subprocess.run(
        [sys.executable, "-m", "swarmnode", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"]},
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "names no task" in lines[0] and "SwarmCallback.from_node_dir" in lines[0]
