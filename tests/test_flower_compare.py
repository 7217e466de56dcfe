"""`swarmnode simulate --compare flower`: the same FedAvg through Flower's own simulation engine
(Ray) and the fast engine, side by side in one report (docs/simulator.md#flower-side-by-side).

Needs the `swarmnode[flower]` extra (flwr[simulation], Ray): without it these tests skip on a
developer's machine and fail under CI=true, where .ci/run installs it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from swarmnode.exceptions import ConfigError
from swarmnode.simulation.flower_baseline import batch_rows, has_flower_simulation
from swarmnode.simulation.run import simulate
from swarmnode.simulation.scenario import Scenario

PNG = b"\x89PNG\r\n\x1a\n"


def _need_flower() -> None:
    if has_flower_simulation():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("flwr[simulation] (Ray) is missing: .ci/run installs swarmnode[flower]")
    pytest.skip("needs Ray: pip install 'swarmnode[flower]'")


@pytest.mark.slow
def test_flower_and_the_fast_engine_end_close_and_both_curves_are_reported(
    tmp_path: Path,
) -> None:
    _need_flower()
    scenario = Scenario.load(None, {"engine": "fast", "nodes": 3, "rounds": 2})
    with open(os.devnull, "w") as quiet:
        outcome = simulate(scenario, tmp_path, console=Console(file=quiet), compare="flower")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(outcome.report))
    # the swarm trained as Flower's clients do: a fresh optimizer every round
    assert report["scenario"]["fresh_optimizer"] is True
    swarm, flower = report["swarm"], report["flower"]
    assert len(swarm["curve"]) == len(flower["curve"]) == 2
    assert swarm["curve"][-1] == swarm["accuracy"] and flower["curve"][-1] == flower["accuracy"]
    # same split, init, batches and weighted mean: only float summation order differs
    assert abs(swarm["accuracy"] - flower["accuracy"]) <= 0.01
    assert flower["accuracy"] > 1 / 10 + 0.1  # digits: it learned, above chance
    assert flower["seconds"] > 0
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == PNG


def test_a_comparison_flower_cannot_run_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    scenario = Scenario.load(None, {"engine": "fast", "nodes": 4, "merge_rule": "median"})
    with pytest.raises(ConfigError, match="drop merge rule median"):
        simulate(scenario, tmp_path, compare="flower")
    private = Scenario.load(None, {"nodes": 4, "dp_noise": 1.0})
    with pytest.raises(ConfigError, match="drop dp_noise"):
        simulate(private, tmp_path, compare="flower")
    noisy_mean = Scenario.load(
        None, {"nodes": 4, "secure_aggregation": True, "dp_mean_noise": 1.0, "dp_mean_clip": 1.0}
    )
    with pytest.raises(ConfigError, match="drop dp_mean_noise"):
        simulate(noisy_mean, tmp_path, compare="flower")
    with pytest.raises(ConfigError, match="--compare pysyft: unknown"):
        simulate(scenario, tmp_path, compare="pysyft")
    assert not (tmp_path / "report.json").exists()


def test_a_flower_client_takes_the_batches_local_trainer_takes() -> None:
    # 10 rows in batches of 4: epochs of 3 batches (the last short), each epoch reshuffled
    seen = [batch_rows(10, seed=7, batch_size=4, number=b) for b in range(6)]
    assert [len(b) for b in seen] == [4, 4, 2, 4, 4, 2]
    first, second = np.concatenate(seen[:3]), np.concatenate(seen[3:])
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)
    assert np.array_equal(batch_rows(10, 7, 4, 4), seen[4])  # a function of its number alone
