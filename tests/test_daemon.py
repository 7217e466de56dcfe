"""`swarmnode run` as separate OS processes against own_anvil: nodes enrol themselves, take part
in rounds with mutual TLS over loopback, checkpoint every final round, and resume from the
checkpoint when started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmnode import canonical
from swarmnode.checkpoint import CheckpointStore
from swarmnode.identity import NodeIdentity
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.types import RoundStatus
from swarmnode.records import round_records
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.training import LocalTrainer, example_task

pytestmark = [pytest.mark.chain, pytest.mark.slow]


def start(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "swarmnode", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # one torch thread each: two daemons share two cores (with pytest -n 2, beside a worker)
        env={"PATH": os.environ["PATH"], "SWARMNODE_KEY_PASSPHRASE": "", "OMP_NUM_THREADS": "1"},
    )


def finish(processes: list[subprocess.Popen[str]]) -> list[str]:
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=180)  # start-up on two loaded cores included
            outputs.append(out)
            assert process.returncode == 0, out
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


def two_nodes(own_anvil: AnvilChain, folder: Path, rounds: int) -> tuple[Deployment, list[Path]]:
    """A swarm for the example task on own_anvil and two node folders with configs, funded."""
    initial = LocalTrainer(example_task(), "cpu", 0, init_seed=0).snapshot()
    params = SwarmParams(
        min_peers=2,
        max_peers=2,
        join_window=30,
        transfer_deadline=60,
        round_deadline=300,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (8, 0, 0, 0)),
        initial_model_digest=canonical.digest(initial),
    )
    deployment, _ = own_anvil.deploy(params)
    Deployment(
        deployment.chain_id, deployment.address, deployment.block, params, own_anvil.url
    ).save(folder / "deployment.json")
    configs = []
    for name in ("a", "b"):
        identity = NodeIdentity.create(folder / name, "", kdf="pbkdf2", iterations=2)
        own_anvil.rpc.fund(own_anvil.funder, identity.address, 10**18)
        config = folder / f"{name}.toml"
        config.write_text(
            "[node]\n"
            f'identity_dir = "{name}"\n'
            'deployment = "deployment.json"\n'
            'task = "swarmnode.training:example_task"\n'
            'device = "cpu"\n'
            f"rounds = {rounds}\n"
        )
        configs.append(config)
    return deployment, configs


def test_two_daemons_enrol_run_rounds_checkpoint_and_resume(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    deployment, configs = two_nodes(own_anvil, tmp_path, rounds=2)

    finish([start(c) for c in configs])
    reader = own_anvil.ledger(deployment, own_anvil.new_account())
    assert reader.current_round() == 3
    for number in (1, 2):
        assert reader.round(number).status == RoundStatus.FINAL
    assert len(reader.active_nodes()) == 2
    for name in ("a", "b"):
        latest = CheckpointStore(tmp_path / name / "checkpoints").latest()
        assert latest is not None and latest.round == 2
        assert latest.digest == reader.round(2).final_digest
        events = [
            json.loads(line) for line in (tmp_path / name / "node.jsonl").read_text().splitlines()
        ]
        assert [r.status for r in round_records(events)] == ["final", "final"]

    # started again, each resumes from its round-2 checkpoint and goes on to round 3
    for config in configs:
        config.write_text(config.read_text().replace("rounds = 2", "rounds = 1"))
    finish([start(c) for c in configs])
    assert reader.round(3).status == RoundStatus.FINAL
    for name in ("a", "b"):
        events = [
            json.loads(line) for line in (tmp_path / name / "node.jsonl").read_text().splitlines()
        ]
        resumed = [e for e in events if e.get("event") == "resumed"]
        assert resumed and resumed[-1]["round"] == 2
        latest = CheckpointStore(tmp_path / name / "checkpoints").latest()
        assert latest is not None and latest.round == 3


def test_a_wrong_config_field_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nidentity_dir = "x"\ndeployment = "d.json"\ntask = "nocolon"\n')
    result = subprocess.run(
        [sys.executable, "-m", "swarmnode", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "node.toml: field task" in lines[0], result.stderr


def test_the_readme_walk_through_init_deploy_run_status(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    env = {"PATH": os.environ["PATH"], "SWARMNODE_KEY_PASSPHRASE": "", "COLUMNS": "200"}

    def swarmnode(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "swarmnode", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return done

    addresses = []
    for name in ("hospital-a", "hospital-b"):
        swarmnode("init", "--dir", name, "--empty-passphrase")  # a dev chain's throwaway keys
        addresses.append(NodeIdentity.inspect(tmp_path / name).address)
        config = tmp_path / name / "node.toml"
        assert config.exists()
        config.write_text(config.read_text().replace("rounds = 0", "rounds = 1"))
    swarmnode(
        "deploy",
        "--rpc",
        own_anvil.url,
        "--out",
        "deployment.json",
        "--max-peers",
        "2",
        "--initial-task",
        "swarmnode.training:example_task",
        "--fund",
        addresses[0],
        "--fund",
        addresses[1],
        "--allow",
        addresses[0],
        "--allow",
        addresses[1],
    )
    finish([start(tmp_path / name / "node.toml") for name in ("hospital-a", "hospital-b")])
    status = json.loads(swarmnode("status", "--deployment", "deployment.json", "--json").stdout)
    assert status["current_round"] == 2
    assert status["rounds"][1]["status"] == "final"
    assert sorted(n["account"] for n in status["nodes"]) == sorted(addresses)


def test_a_strangers_run_is_refused_at_registration_in_one_line(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    """Before: a swarm was open unless deployed --restricted, and a stranger with gas
    registered and was on every roster. Now the stranger's daemon stops at registration and
    says who can admit it (docs/trust.md#the-roster)."""
    params = SwarmParams(min_peers=2, max_peers=2, restricted=True)
    deployment, _ = own_anvil.deploy(params)
    Deployment(
        deployment.chain_id, deployment.address, deployment.block, params, own_anvil.url
    ).save(tmp_path / "deployment.json")
    stranger = NodeIdentity.create(tmp_path / "stranger", "", kdf="pbkdf2", iterations=2)
    own_anvil.rpc.fund(own_anvil.funder, stranger.address, 10**18)
    config = tmp_path / "stranger.toml"
    config.write_text(
        '[node]\nidentity_dir = "stranger"\ndeployment = "deployment.json"\n'
        'task = "swarmnode.training:example_task"\ndevice = "cpu"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "swarmnode", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "SWARMNODE_KEY_PASSPHRASE": "", "OMP_NUM_THREADS": "1"},
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert stranger.address in lines[0]
    assert f"swarmnode admin allow {stranger.address}" in lines[0]
    reader = own_anvil.ledger(deployment, own_anvil.new_account())
    assert reader.active_nodes() == []


def test_sigterm_stops_both_daemons_cleanly_between_or_after_rounds(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    _, configs = two_nodes(own_anvil, tmp_path, rounds=0)
    processes = [start(c) for c in configs]
    logs = [tmp_path / name / "node.jsonl" for name in ("a", "b")]

    def rounds_done(log: Path) -> int:
        if not log.exists():
            return 0
        lines = [json.loads(line) for line in log.read_text().splitlines() if line]
        return sum(1 for r in round_records(lines) if r.status == "final")

    deadline = time.monotonic() + 180
    while min(rounds_done(log) for log in logs) < 2:  # the daemons' own log is the signal
        assert time.monotonic() < deadline, "the daemons did not finish two rounds"
        assert all(p.poll() is None for p in processes)
        time.sleep(0.1)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    finish(processes)  # both exit 0, within the timeout
    for log in logs:
        events = [json.loads(line) for line in log.read_text().splitlines() if line]
        assert events[-1]["event"] == "stopped"
