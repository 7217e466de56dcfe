"""`swarmnode simulate --set secure_aggregation=true` as a user runs it, full fidelity (real
nodes on the embedded chain, mutual-TLS gRPC, the masked round of
docs/secure-aggregation.md#in-a-round): every round ends on one digest, the report says the
swarm summed under masks, and the swarm learns what the same scenario learns without it.
The CLI runs in process (typer's runner), so the test pays for no second interpreter; 3
nodes, 2 rounds (the second sets secure aggregation up afresh: new keys, seeds and masks).
The plain side runs the same nodes on the in-memory ledger and transport, which end with
the same bits as full fidelity (swarmnode.simulation.engine.run_tasks), without baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import swarmnode.cli
from swarmnode.simulation.engine import run_swarm
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import scenario_data

# a few batches at a high rate: the swarm learns visibly (accuracy 0.21 then 0.36) in little time
SCENARIO: dict[str, Any] = {
    "engine": "full",
    "nodes": 3,
    "rounds": 2,
    "local_batches": 2,
    "learning_rate": 0.3,
    "partition": "iid",
}


@pytest.mark.chain
def test_a_secure_simulation_agrees_every_round_and_learns_as_the_plain_one(
    tmp_path: Path,
) -> None:
    flags = [f"--set={key}={json.dumps(value)}" for key, value in SCENARIO.items()]
    result = CliRunner().invoke(
        swarmnode.cli.app,
        ["simulate", *flags, "--set", "secure_aggregation=true", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, (result.output[-3000:], result.exception)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["privacy"]["secure_aggregation"] is True
    assert report["scenario"]["engine"] == "full"
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        assert r["participants"] == 3 and r["digest_agreed"], r
        # masked rows are 8-byte words (B = 16, f = 20, w_max = 2^16: k = 51), where a plain
        # checked round sends (3n - 4) / n = 1.67 x the model in float32
        assert r["bytes_sent_per_node"] / r["model_bytes"] > 2.2, r

    scenario = Scenario.load(None, SCENARIO)
    plain = run_swarm(scenario, *scenario_data(scenario), backend="memory")
    assert all(r.digest_agreed for r in plain.rounds)
    assert max(r.bytes_sent_per_node / r.model_bytes for r in plain.rounds) < 2.0
    # the fixed-point mean is the float mean within 2^-(f+1) = 4.8e-7 a value and round
    # (docs/secure-aggregation.md#fixed-point): far below what moves the held-out loss, or
    # the prediction of more than a sample or two of the 360
    assert report["swarm"]["loss"] == pytest.approx(plain.loss, abs=1e-3)
    curve = [r.accuracy for r in plain.rounds]
    assert curve[-1] > curve[0] + 0.05, curve  # it learns, so the comparison means something
    for secure, unmasked in zip(report["swarm"]["curve"], curve, strict=True):
        assert abs(secure - unmasked) <= 2 / 360, (report["swarm"]["curve"], curve)
