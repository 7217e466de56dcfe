"""A user's own data set in the simulator: `task` and `test_set` in a scenario (or --task and
--test-set), in process and with --processes; bad specs refused in one line before anything
starts.

The tiny task below is what a user writes: three classes of points in the plane, and each
node holds only two of the three classes, so a node trained alone never learns the third
(about 2/3 of the test set right), while the swarm, which sees all three, should do far
better.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from swarmnode.exceptions import ConfigError
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import own_tasks
from swarmnode.training import Task, accuracy
from tests.test_simulate_processes import alive, leaves_nothing, ours

HERE = __name__  # "tests.test_simulate_task": what the specs name
ROOT = Path(__file__).resolve().parent.parent
CENTERS = np.array([[-2.0, -2.0], [2.0, -2.0], [0.0, 2.5]], dtype=np.float32)
CALLS: list[tuple[int, int, int]] = []  # (node, nodes, seed) of every tiny_task call here


def _points(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` points, the same number of each class, in a seeded order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(rows) % len(CENTERS))
    points = CENTERS[labels] + rng.normal(0.0, 0.7, (rows, 2)).astype(np.float32)
    return torch.from_numpy(points.astype(np.float32)), torch.from_numpy(labels)


def _task(train: TensorDataset, model: type[nn.Module] | None = None) -> Task:
    def make_model() -> nn.Module:
        return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, len(CENTERS)))

    def make_optimizer(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.1)

    return Task(
        model_factory=make_model if model is None else model,
        train_data=train,
        val_data=train,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer_factory=make_optimizer,
        batch_size=16,
        metrics={"accuracy": accuracy},
        name="tiny",
    )


def tiny_task(node: int, nodes: int, seed: int) -> Task:
    """Node `node` of `nodes` holds every nodes-th row, of two of the three classes only."""
    CALLS.append((node, nodes, seed))
    points, labels = _points(900, seed)
    mine = [node % 3, (node + 1) % 3]
    keep = [
        r
        for r in range(len(labels))
        if r % nodes == node and int(labels[r]) in mine  # disjoint between nodes
    ]
    return _task(TensorDataset(points[keep], labels[keep]))


def tiny_test_set(seed: int) -> TensorDataset:
    """Held-out points from a draw no node's rows come from."""
    points, labels = _points(150, seed + 10_000)
    return TensorDataset(points, labels)


# --- what users get wrong
not_a_dataset = [1, 2, 3]


def returns_a_number(node: int, nodes: int, seed: int) -> int:
    return node


def no_node_argument(seed: int) -> Task:
    return tiny_task(0, 1, seed)


def without_accuracy(node: int, nodes: int, seed: int) -> Task:
    task = tiny_task(node, nodes, seed)
    task.metrics = {}
    return task


class _Wider(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, len(CENTERS) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def node_one_differs(node: int, nodes: int, seed: int) -> Task:
    task = tiny_task(node, nodes, seed)
    return _task(task.train_data, _Wider) if node == 1 else task  # type: ignore[arg-type]


def scenario(**fields: Any) -> Scenario:
    base: dict[str, Any] = {
        "name": "own",
        "task": f"{HERE}:tiny_task",
        "test_set": f"{HERE}:tiny_test_set",
        "nodes": 3,
        "rounds": 3,
        "local_batches": 5,
        "seed": 3,
    }
    return Scenario.load(None, base | fields)


@pytest.mark.chain
@pytest.mark.slow
def test_a_users_own_task_trains_in_process_and_beats_each_node_alone(tmp_path: Path) -> None:
    from swarmnode.simulation.run import simulate

    CALLS.clear()
    with open(os.devnull, "w") as quiet:
        outcome = simulate(scenario(), tmp_path / "run", Console(file=quiet))
    report = outcome.report
    # called once per node for the swarm (the baselines reuse those tasks), seed passed on
    assert sorted(CALLS) == [(0, 3, 3), (1, 3, 3), (2, 3, 3)]
    assert report["scenario"]["task"] == f"{HERE}:tiny_task"
    assert [r["participants"] for r in report["rounds"]] == [3, 3, 3]
    assert all(r["digest_agreed"] for r in report["rounds"])
    # scored on the 150 held-out points: every accuracy is a whole number of them
    for value in [report["swarm"]["accuracy"], *report["local"]["accuracy"]]:
        assert abs(value * 150 - round(value * 150)) < 1e-6
    # a node alone never sees one class (a third of the test set); the swarm sees all three
    assert report["swarm"]["accuracy"] > 0.9
    assert report["swarm"]["accuracy"] > report["local"]["best_accuracy"] + 0.15
    assert report["centralized"]["accuracy"] > 0.9


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "tiny_task"}, "task 'tiny_task': write module:attribute"),
        ({"test_set": None}, "task and test_set go together"),
        ({"task": None}, "task and test_set go together"),
        ({"processes": True, "byzantine": 1, "attack": "noise"}, "run no Byzantine nodes"),
    ],
)
def test_bad_scenario_fields_are_one_line(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        scenario(**fields)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("task", "test_set", "message"),
    [
        ("no_such_module_here:f", "tiny_test_set", "cannot import no_such_module_here"),
        (f"{HERE}:missing", "tiny_test_set", f"{HERE} has no missing"),
        (f"{HERE}:returns_a_number", "tiny_test_set", "is a int, not a swarmnode Task"),
        (f"{HERE}:no_node_argument", "tiny_test_set", "unexpected keyword argument 'node'"),
        (f"{HERE}:without_accuracy", "tiny_test_set", "node 0's Task has no 'accuracy' metric"),
        (f"{HERE}:node_one_differs", "tiny_test_set", "node 1 builds a different initial model"),
        (f"{HERE}:tiny_task", "not_a_dataset", "is a list, not a torch Dataset"),
        (f"{HERE}:tiny_task", "missing", f"test_set {HERE}:missing: {HERE} has no missing"),
    ],
)
def test_bad_task_specs_are_refused_in_one_line(task: str, test_set: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        own_tasks(task, f"{HERE}:{test_set}", 3, 0)
    assert "\n" not in str(caught.value)


def test_the_cli_refuses_a_bad_task_before_anything_starts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarmnode",
            "simulate",
            "--task",
            f"{HERE}:returns_a_number",
            "--test-set",
            f"{HERE}:tiny_test_set",
            "--processes",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "COLUMNS": "200"},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a int, not a swarmnode Task" in lines[0], result.stderr
    assert not out.exists()  # no chain, no identities, no node was started


@pytest.mark.chain
@pytest.mark.slow
def test_a_users_own_task_runs_in_swarmnode_run_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with leaves_nothing(out):  # even if the run goes wrong, no daemon or anvil outlives it
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "swarmnode",
                "simulate",
                "--processes",
                "--task",
                f"{HERE}:tiny_task",
                "--test-set",
                f"{HERE}:tiny_test_set",
                "--nodes",
                "2",
                "--rounds",
                "2",
                "--seed",
                "5",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env={"PATH": os.environ["PATH"], "COLUMNS": "200"},
        )
        assert result.returncode == 0, result.stderr
        assert not [pid for pid, marker in ours(out) if alive(pid, marker)]
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"]["processes"] and report["scenario"]["task"] == f"{HERE}:tiny_task"
    assert [(r["participants"], r["digest_agreed"]) for r in report["rounds"]] == [(2, True)] * 2
    for i in range(2):
        config = (out / "nodes" / f"node-{i:02d}" / "node.toml").read_text()
        assert f'task = "{HERE}:tiny_task"' in config
        assert f"node = {i}\nnodes = 2\nseed = 5\n" in config
