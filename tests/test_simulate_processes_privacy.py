"""`swarmnode simulate --processes` with differential privacy: each daemon gets `[privacy]`
in its node.toml from the scenario's dp_* keys (the in-process engine's defaults), and the
report's epsilon is what the daemons themselves logged (docs/simulator.md#privacy).

Each test is a real run of three `swarmnode run` daemons against anvil (the first also
runs its scenario in process to compare): about 50 s for the file on two busy cores."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from swarmnode.config import PrivacyConfig
from swarmnode.records import round_records
from swarmnode.simulation.scenario import Scenario
from tests.test_simulate_processes import ENV, alive, command, leaves_nothing, node_logs, ours

pytestmark = [pytest.mark.chain, pytest.mark.slow]

ARGS = ["--nodes", "3", "--local-batches", "5", "--seed", "1"]


def simulate(out: Path, *settings: str, processes: bool = True) -> dict[str, Any]:
    """Runs the simulator with `--set` for each of `settings` (with --processes, or in
    process); its report.json. No process of the run may be left running."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    argv = command(out, *ARGS, *sets)
    if not processes:
        argv.remove("--processes")
    with leaves_nothing(out):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=400, env=ENV)
        assert result.returncode == 0, result.stderr
        if processes:
            assert not [pid for pid, marker in ours(out) if alive(pid, marker)]
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def metrics(out: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """metrics.jsonl by (round, node)."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {(m["round"], m["node"]): m for m in lines}


def privacy_tables(out: Path) -> list[PrivacyConfig]:
    """Each daemon's `[privacy]`, as `swarmnode run` reads it."""
    return [
        PrivacyConfig(**tomllib.loads((folder / "node.toml").read_text())["privacy"])
        for folder in sorted((out / "nodes").iterdir())
    ]


def logged_epsilons(out: Path) -> dict[tuple[int, int], float]:
    """The epsilon each daemon logged by each round's end, by (round, node)."""
    spent = {}
    for node, log in enumerate(node_logs(out)):
        for record in round_records(log):
            assert record.epsilon is not None, f"node {node} logged round {record.round} bare"
            spent[record.round, node] = record.epsilon
    return spent


def test_local_dp_sgd_daemons_report_their_epsilon_and_stop_at_their_budget(
    tmp_path: Path,
) -> None:
    """DP-SGD on every daemon, with a budget that ends node 0 after round 1 and the others
    after round 2: node 0 holds the fewest rows of the three here (446 of digits' 1437 at
    seed 1), so each batch samples more of them and spends more, and its second round
    would pass 2.6 where theirs does not yet."""
    out = tmp_path / "run"
    settings = ("dp_noise=1.0", "dp_budget=2.6", "rounds=3")
    report = simulate(out, *settings)
    scenario = Scenario.load(None, {"processes": True, "dp_noise": 1.0, "dp_budget": 2.6})
    assert all(table.settings() == scenario.privacy() for table in privacy_tables(out))

    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]  # of 3: every budget was spent by then
    assert all(r["digest_agreed"] for r in rounds)
    assert [r["participants"] for r in rounds] == [3, 2]

    logged = logged_epsilons(out)
    assert sorted(logged) == [(1, 0), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(epsilon > 0 for epsilon in logged.values())
    assert logged[2, 1] > logged[1, 1]
    seen = metrics(out)
    for key, epsilon in logged.items():
        assert seen[key]["status"] == "final" and seen[key]["epsilon"] == epsilon
    # node 0 sat round 2 out as in process: budget_spent, with the epsilon its log says it
    # had spent when it stopped
    stopped = [e for e in node_logs(out)[0] if e.get("event") == "privacy_budget_spent"]
    assert len(stopped) == 1 and stopped[0]["epsilon"] == logged[1, 0]
    assert seen[2, 0]["status"] == "budget_spent" and seen[2, 0]["epsilon"] == logged[1, 0]
    assert seen[2, 0]["pid"] == seen[1, 0]["pid"]

    privacy = report["privacy"]
    assert privacy["dp"] == "local" and privacy["secure_aggregation"] is False
    assert privacy["noise_multiplier"] == 1.0 and privacy["delta"] == 1e-5
    assert privacy["epsilon"] == max(logged.values())

    # the same scenario in process spends the same, node by node and round by round: the
    # daemons got the engine's settings and seeds
    in_process = simulate(tmp_path / "in-process", *settings, processes=False)
    theirs = metrics(tmp_path / "in-process")
    assert {k: (m["status"], m["epsilon"]) for k, m in theirs.items()} == {
        k: (m["status"], m["epsilon"]) for k, m in seen.items()
    }
    assert in_process["privacy"] == privacy


def test_distributed_dp_daemons_report_their_epsilon(tmp_path: Path) -> None:
    """Distributed DP for the mean under secure aggregation: every daemon noises its update
    with its share (m = 3 of 3 here) and logs the same epsilon, round by round."""
    out = tmp_path / "run"
    keys = {"secure_aggregation": True, "dp_mean_noise": 1.0, "dp_mean_clip": 0.5}
    report = simulate(out, *(f"{k}={json.dumps(v)}" for k, v in keys.items()), "rounds=2")
    scenario = Scenario.load(None, {"processes": True, "nodes": 3, **keys})
    tables = privacy_tables(out)
    assert all(t.mean_settings() == scenario.mean_privacy() for t in tables)
    assert all(t.settings() is None for t in tables)

    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["digest_agreed"] and r["participants"] == 3 for r in rounds)

    logged = logged_epsilons(out)
    assert sorted(logged) == [(r, n) for r in (1, 2) for n in range(3)]
    for number in (1, 2):  # the same noise share and steps: the same epsilon on every node
        assert len({logged[number, n] for n in range(3)}) == 1
    assert 0 < logged[1, 0] < logged[2, 0]
    seen = metrics(out)
    assert all(seen[key]["epsilon"] == epsilon for key, epsilon in logged.items())

    privacy = report["privacy"]
    assert privacy["dp"] == "distributed" and privacy["secure_aggregation"] is True
    assert privacy["noise_multiplier"] == 1.0 and privacy["clip_norm"] == 0.5
    assert privacy["min_participants"] == 3
    assert privacy["epsilon"] == logged[2, 0]
