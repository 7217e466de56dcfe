"""`swarmnode run` refuses a node.toml that cannot run in its swarm before it registers: one
line naming the setting and the swarm, and nothing on chain (docs/privacy.md#distributed-dp).
Before, a daemon asking for distributed DP in a swarm deployed without secure aggregation
registered first and only then stopped, leaving a member that never trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarmnode.identity import NodeIdentity
from swarmnode.ledger.devchain import AnvilChain
from tests.test_daemon import two_nodes

pytestmark = [pytest.mark.chain, pytest.mark.slow]


def run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmnode", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "SWARMNODE_KEY_PASSPHRASE": "", "OMP_NUM_THREADS": "1"},
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_config_that_cannot_run_is_refused_before_it_registers(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    deployment, (a, b) = two_nodes(own_anvil, tmp_path, rounds=1)  # no secure aggregation
    reader = own_anvil.ledger(deployment, own_anvil.new_account())

    # distributed DP in a swarm without secure aggregation: refused from the deployment
    # file's params, before the chain sees the node
    a.write_text(a.read_text() + "\n[privacy]\nmean_noise_multiplier = 1.0\nmean_clip_norm = 1.0\n")
    line = one_line(run(a))
    assert "mean_noise_multiplier" in line and "secure aggregation" in line, line
    assert deployment.address in line and "deployment.json" in line, line
    assert reader.node(NodeIdentity.inspect(tmp_path / "a").address) is None

    # local DP-SGD and distributed DP both on: refused as node.toml is read
    b.write_text(
        b.read_text() + "\n[privacy]\nmean_noise_multiplier = 1.0\nmean_clip_norm = 1.0\n"
        "noise_multiplier = 1.0\nmax_grad_norm = 1.0\n"
    )
    line = one_line(run(b))
    assert "cannot both be on" in line and str(b) in line, line
    assert reader.node(NodeIdentity.inspect(tmp_path / "b").address) is None
    assert reader.active_nodes() == []
