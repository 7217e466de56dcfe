"""`swarmnode simulate --processes`: every virtual node a `swarmnode run` daemon of its own
against one anvil the simulator starts; the report is built from the daemons' logs, the
chain and their checkpoints; and no process outlives the run, whether it ends, fails or is
interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from swarmnode import canonical
from swarmnode.checkpoint import CheckpointStore
from swarmnode.exceptions import ConfigError
from swarmnode.records import round_records
from swarmnode.simulation.data import load_dataset
from swarmnode.simulation.partition import partition
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import dataset_task, dataset_task_args, make_task
from swarmnode.training import LocalTrainer

ENV = {"PATH": os.environ["PATH"], "COLUMNS": "200"}


def command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "swarmnode", "simulate", "--processes", "--out", str(out), *args]


def ours(out: Path) -> list[tuple[int, str]]:
    """(pid, a word its command line holds) of anvil and every node the run listed."""
    listed = json.loads((out / "processes.json").read_text())
    return [(listed["anvil"]["pid"], "anvil")] + [
        (node["pid"], node["config"]) for node in listed["nodes"]
    ]


def alive(pid: int, marker: str) -> bool:
    """Still running as the process we mean (a pid reused by another process is not it)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return False
    return marker in cmdline


@contextmanager
def leaves_nothing(out: Path) -> Iterator[None]:
    """Whatever the test asserts, a process the run left behind is killed by its pid here."""
    try:
        yield
    finally:
        if (out / "processes.json").exists():
            for pid, marker in ours(out):
                if alive(pid, marker):
                    os.kill(pid, signal.SIGKILL)


def node_logs(out: Path) -> list[list[dict[str, Any]]]:
    return [
        [json.loads(line) for line in (folder / "node.jsonl").read_text().splitlines() if line]
        for folder in sorted((out / "nodes").iterdir())
    ]


def test_a_daemon_builds_the_task_the_in_process_engine_builds_for_its_slice() -> None:
    scenario = Scenario.load(None, {"dataset": "breast_cancer", "nodes": 4, "seed": 2})
    data = load_dataset("breast_cancer", test_fraction=scenario.test_fraction, seed=2)
    part = partition(data.y_train.numpy(), 4, "shards", seed=2)[1]
    daemons = dataset_task(**dataset_task_args(scenario, part))
    engines = make_task(scenario, data, part)
    for mine, theirs in (
        (daemons.train_data, engines.train_data),
        (daemons.val_data, engines.val_data),
    ):  # the same rows, and validation on them: the held-out rows stay unseen
        ours_, engines_ = cast(TensorDataset, mine).tensors, cast(TensorDataset, theirs).tensors
        assert all(torch.equal(a, b) for a, b in zip(ours_, engines_, strict=True))
    assert canonical.digest(LocalTrainer(daemons, "cpu", 0, init_seed=2).snapshot()) == (
        canonical.digest(LocalTrainer(engines, "cpu", 0, init_seed=2).snapshot())
    )
    for bad, message in (([], "empty"), ([0, 0], "named twice"), ([10_000], "each must be in")):
        with pytest.raises(ConfigError, match=message):
            dataset_task("digits", indices=bad)
    with pytest.raises(ConfigError, match="without classes or parts"):
        dataset_task("digits", indices=[1, 2], classes=[1])


@pytest.mark.chain
@pytest.mark.slow
def test_three_daemons_run_the_scenario_and_the_report_is_theirs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--nodes", "3", "--rounds", "2", "--local-batches", "5", "--seed", "1"]
    with leaves_nothing(out):
        result = subprocess.run(
            command(out, *args, "--partition", "dirichlet", "--alpha", "0.5"),
            capture_output=True,
            text=True,
            timeout=400,
            env=ENV,
        )
        assert result.returncode == 0, result.stderr
        pids = ours(out)
        assert not [pid for pid, marker in pids if alive(pid, marker)]

    report = json.loads((out / "report.json").read_text())
    assert report["scenario"]["processes"] is True
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["participants"] == 3 and r["digest_agreed"]
        assert r["transactions"] >= 3 + 2  # three joins, at least a quorum of reports
        assert r["gas_used"] > 0
        # (3n-4)/n of the model as payload (docs/round-protocol.md#data-plane), each byte
        # with its chunk's share of a 32-byte hash, plus proofs and framing, which weigh on
        # a model this small (chunks of 16 elements); an early push waits for its receiver
        # instead of being sent again (docs/round-protocol.md#not-ready)
        ratio = r["bytes_sent_per_node"] / r["model_bytes"]
        assert payload_estimate(r) - 0.05 <= ratio <= payload_estimate(r) * hash_share(r) + 0.4
    assert report["chain"]["transactions"] == sum(r["transactions"] for r in rounds)
    assert len(report["local"]["accuracy"]) == 3

    # one metrics line per node per round, from three different processes
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted((m["round"], m["node"]) for m in metrics) == [
        (r, n) for r in (1, 2) for n in range(3)
    ]
    assert {m["status"] for m in metrics} == {"final"}
    assert {m["pid"] for m in metrics} == {pid for pid, _ in pids[1:]}

    # every daemon logged the same digest each round and checkpointed the last one
    logs = node_logs(out)
    for number in (1, 2):
        digests = {r.digest for log in logs for r in round_records(log) if r.round == number}
        assert len(digests) == 1 and "" not in digests
    checkpoints = [
        CheckpointStore(out / "nodes" / f"node-{i:02d}" / "checkpoints") for i in (0, 1, 2)
    ]
    latest = [store.latest() for store in checkpoints]
    assert {c.digest.hex() for c in latest if c is not None} == digests
    assert all(c is not None and c.round == 2 for c in latest)

    # each daemon trained the slice the scenario's partition gave it, and nothing else
    data = load_dataset("digits", seed=1)
    parts = partition(data.y_train.numpy(), 3, "dirichlet", seed=1, alpha=0.5)
    configs = [
        tomllib.loads((out / "nodes" / f"node-{i:02d}" / "node.toml").read_text())["node"]
        for i in range(3)
    ]
    for config, part in zip(configs, parts, strict=True):
        assert config["task"] == "swarmnode.simulation.tasks:dataset_task"
        assert np.array_equal(np.asarray(config["task_args"]["indices"]), part)

    # the reported swarm accuracy is the final checkpoint's, on the held-out rows
    assert latest[0] is not None
    trainer = LocalTrainer(dataset_task(**configs[0]["task_args"]), "cpu", 0, init_seed=1)
    trainer.load(torch.from_numpy(latest[0].vector))
    scored = trainer.evaluate(TensorDataset(data.x_test, data.y_test))
    assert report["swarm"]["accuracy"] == pytest.approx(scored["accuracy"], abs=1e-12)


@pytest.mark.chain
@pytest.mark.slow
@pytest.mark.parametrize("ending", ["ctrl_c", "a_node_dies"])
def test_no_process_outlives_an_interrupted_or_failed_run(tmp_path: Path, ending: str) -> None:
    out = tmp_path / "run"
    simulator = subprocess.Popen(
        command(out, "--nodes", "3", "--rounds", "1000", "--local-batches", "5"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    with leaves_nothing(out):
        try:
            deadline = time.monotonic() + 240
            while not (out / "nodes").exists() or not all(
                any(e.get("event") == "started" for e in log) for log in _logs_so_far(out)
            ):  # every daemon has registered and serves (its "started" line): the swarm is up
                assert simulator.poll() is None, simulator.communicate()[1]
                assert time.monotonic() < deadline, "the swarm did not get going"
                time.sleep(0.2)  # polls the daemons' logs
            pids = ours(out)
            assert len(pids) == 4 and all(alive(pid, marker) for pid, marker in pids)
            if ending == "ctrl_c":
                simulator.send_signal(signal.SIGINT)
            else:
                os.kill(pids[2][0], signal.SIGKILL)  # node 1
            _, stderr = simulator.communicate(timeout=120)
        finally:
            if simulator.poll() is None:
                simulator.kill()
                simulator.wait()
        lines = stderr.strip().splitlines()
        if ending == "ctrl_c":
            assert simulator.returncode == 130 and lines == ["swarmnode: interrupted"], stderr
        else:
            assert simulator.returncode == 1 and len(lines) == 1, stderr
            assert lines[0].startswith(f"swarmnode: node 1 (pid {pids[2][0]}) exited with code -9")
        assert not [pid for pid, marker in pids if alive(pid, marker)]


def _logs_so_far(out: Path) -> list[list[dict[str, Any]]]:
    """Each node's complete log lines so far ([] for one that has not written yet)."""
    logs = []
    for i in range(3):
        path = out / "nodes" / f"node-{i:02d}" / "node.jsonl"
        text = path.read_text() if path.exists() else ""
        complete = text[: text.rfind("\n") + 1]
        logs.append([json.loads(line) for line in complete.splitlines() if line])
    return logs


def payload_estimate(r: dict[str, Any]) -> float:
    """(3n-4)/n: the model's share each node sends as payload (docs/round-protocol.md#owners)."""
    n = int(r["participants"])
    return (3 * n - 4) / n


def hash_share(r: dict[str, Any]) -> float:
    """1 + a chunk hash's size over the chunk's: the hashes that travel with the payload."""
    chunk = canonical.chunk_elements(r["model_bytes"] // canonical.ELEMENT_BYTES)
    return 1 + canonical.HASH_BYTES / (chunk * canonical.ELEMENT_BYTES)
