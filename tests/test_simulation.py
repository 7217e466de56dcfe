"""`swarmnode simulate` as a user runs it: real data, real chain, real mTLS gRPC, baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarmnode.exceptions import ConfigError
from swarmnode.simulation.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.chain
@pytest.mark.slow
def test_a_small_simulation_writes_its_report_and_every_round_agrees(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarmnode",
            "simulate",
            "--nodes",
            "3",
            "--rounds",
            "2",
            "--local-batches",
            "5",
            "--partition",
            "iid",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": os.environ["PATH"], "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"]["nodes"] == 3
    assert len(report["rounds"]) == 2
    for r in report["rounds"]:
        assert r["participants"] == 3 and r["digest_agreed"]
        # 3 joins, the close in the third, at least a quorum (2) of reports
        assert r["transactions"] >= 3 + 2
        assert r["gas_used"] > 0 and r["bytes_sent_per_node"] > 0
        assert r["checked"] == 0 and r["accused"] == []  # honest owners agreed on every segment
    assert len(report["local"]["accuracy"]) == 3
    assert 0.0 <= report["swarm"]["accuracy"] <= 1.0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 2  # one per node per round
    assert {json.loads(line)["status"] for line in lines} == {"final"}
    assert {(json.loads(line)["checked"], len(json.loads(line)["accused"])) for line in lines} == {
        (0, 0)
    }
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_shipped_scenarios_load() -> None:
    for path in sorted((ROOT / "simulations").glob("*.toml")):
        assert Scenario.load(path).nodes >= 2


def test_a_wrong_scenario_field_is_named_with_its_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario]\nnodes = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: field nodes"):
        Scenario.load(bad)
    with pytest.raises(ConfigError, match="flags: field partition"):
        Scenario.load(None, {"partition": "sideways"})
    with pytest.raises(ConfigError, match="needs at least 5 nodes"):
        Scenario.load(None, {"nodes": 4, "merge_rule": "krum", "merge_params": (1, 0, 0, 0)})


@pytest.mark.chain
@pytest.mark.slow
def test_sign_flipping_nodes_break_the_mean_and_not_the_median(tmp_path: Path) -> None:
    from rich.console import Console

    from swarmnode.simulation.run import simulate

    accuracy = {}
    for rule in ("mean", "median"):
        scenario = Scenario.load(
            None,
            {
                "nodes": 5,
                "partition": "iid",
                "rounds": 5,
                "byzantine": 1,
                "attack": "sign_flip",
                "merge_rule": rule,
                "name": rule,
            },
        )
        with open(os.devnull, "w") as quiet:
            outcome = simulate(scenario, tmp_path / rule, Console(file=quiet))
        assert all(r["digest_agreed"] for r in outcome.report["rounds"])
        accuracy[rule] = outcome.report["swarm"]["accuracy"]
    assert accuracy["median"] > 0.8
    assert accuracy["median"] > accuracy["mean"] + 0.3


def test_attacks_poison_only_what_is_sent() -> None:
    import numpy as np

    from swarmnode.simulation.attacks import make_attack

    reference = np.zeros(4, dtype=np.float32)
    honest = np.array([1, -1, 2, 0], dtype=np.float32)
    flip = make_attack("sign_flip", seed=0, scale=2.0)
    assert flip is not None and flip(honest, reference).tolist() == [-2, 2, -4, 0]
    noise = make_attack("noise", seed=0)
    assert noise is not None and not np.array_equal(noise(honest, reference), honest)
    assert make_attack("none", seed=0) is None
    with pytest.raises(ConfigError, match="unknown attack"):
        make_attack("bribery", seed=0)
    with pytest.raises(ConfigError, match="need an attack"):
        Scenario.load(None, {"byzantine": 2})
    with pytest.raises(ConfigError, match="at least one honest"):
        Scenario.load(None, {"nodes": 3, "byzantine": 3, "attack": "noise"})
