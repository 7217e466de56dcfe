"""Full fidelity on a private anvil (`--set chain=anvil`, docs/simulator.md#the-chain): real
SwarmNodes over mutual-TLS gRPC against the contract on an anvil this process starts, the
nodes' handles sharing their reads and wake-ups (swarmnode.ledger.shared).

What is checked: every round ends on one digest with the chain's transactions counted; the
same scenario on the embedded chain ends on the same bits although the round seeds (the
hashes of the blocks the rounds closed in) differ; a crashed node is voted out by the
deadline, which on anvil only the wall clock brings (no block comes to mark it); anvil's
process is gone after a run, a run that raises and a set-up that fails; and the fast engine
refuses the key in one line. The swarms are small (3-4 nodes, 1-3 rounds) to keep the file
near 30 s."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import swarmnode.cli
from swarmnode.cli import main
from swarmnode.exceptions import ConfigError
from swarmnode.p2p.inbox import Inbox
from swarmnode.simulation import engine
from swarmnode.simulation.engine import run_swarm
from swarmnode.simulation.local import LocalSwarm, anvil_swarm
from swarmnode.simulation.results import RoundRecord
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import scenario_data

SCENARIO: dict[str, Any] = {"nodes": 4, "rounds": 3, "local_batches": 5, "partition": "iid"}

pytestmark = pytest.mark.chain


def _gone(pid: int) -> bool:
    """Whether no process has this pid any more (anvil is waited for, so no zombie stays)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _anvil_children() -> set[int]:
    """This process's children that run anvil, read from /proc (Linux)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and command.endswith(b"anvil"):
            found.add(int(entry.name))
    return found


class _Kept:
    """What a swarm the engine built showed before it closed: its chain's pid and the seed
    of each of its rounds (read through the first node's ledger while the chain still ran)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.pid: int | None = None
        self.seeds: list[bytes] = []

    def around(self, make: Callable[..., LocalSwarm]) -> Callable[..., LocalSwarm]:
        def made(*args: Any, **kwargs: Any) -> LocalSwarm:
            swarm = make(*args, **kwargs)
            process = swarm.extra.get("anvil")
            self.pid = None if process is None else process.pid
            close = swarm.close

            def read_then_close() -> None:
                ledger = swarm.peers[0].ledger
                self.seeds = [ledger.round(k).seed for k in range(1, self.rounds + 1)]
                close()

            swarm.close = read_then_close  # type: ignore[method-assign]
            return swarm

        return made


@pytest.mark.slow
def test_a_swarm_on_anvil_agrees_every_round_and_ends_on_the_embedded_chains_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_anvil = _Kept(SCENARIO["rounds"])
    monkeypatch.setattr(engine, "anvil_swarm", on_anvil.around(engine.anvil_swarm))
    flags = [f"--set={key}={json.dumps(value)}" for key, value in SCENARIO.items()]
    result = CliRunner().invoke(
        swarmnode.cli.app, ["simulate", *flags, "--set", "chain=anvil", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, (result.output[-3000:], result.exception)
    assert "a private anvil chain, gRPC with mutual TLS" in " ".join(result.output.split())
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scenario"]["chain"] == "anvil"
    for r in report["rounds"]:
        assert r["participants"] == 4 and r["digest_agreed"], r
        # counted from the receipts anvil gave: four joins (the last closes the round), and
        # reports until the round is final (a quorum of three at least)
        assert r["calls"]["join"] == 4 and r["calls"]["report"] >= 3, r
        assert r["transactions"] == sum(r["calls"].values()) and r["gas_used"] > 0, r
    assert on_anvil.pid is not None and _gone(on_anvil.pid)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    digests = [{x["digest"] for x in lines if x["round"] == k} for k in (1, 2, 3)]
    assert all(len(d) == 1 for d in digests), digests

    on_embedded = _Kept(SCENARIO["rounds"])
    monkeypatch.setattr(engine, "grpc_swarm", on_embedded.around(engine.grpc_swarm))
    scenario = Scenario.load(None, SCENARIO)
    embedded = run_swarm(scenario, *scenario_data(scenario))
    # the same bits: the round's seed picks segment owners and checkers, not the order the
    # updates are summed in (participant order), so the chain leaves the model alone
    assert [{r.digest} for r in embedded.rounds] == digests
    assert report["swarm"]["curve"] == [r.accuracy for r in embedded.rounds]
    assert report["swarm"]["loss"] == embedded.loss
    # ... although every seed differs: each is the hash of a block of that chain
    assert all(on_anvil.seeds) and all(on_embedded.seeds)
    assert not set(on_anvil.seeds) & set(on_embedded.seeds)


@pytest.mark.slow
def test_a_crash_on_anvil_is_voted_out_by_the_wall_clocks_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # node 3 dies after one frame of round 2's reduce-scatter; nothing is mined while the
    # others wait for it, so only the clock (WAKE_RECHECK) brings the transfer deadline
    scenario = Scenario.load(
        None,
        {
            **SCENARIO,
            "rounds": 2,
            "chain": "anvil",
            "transfer_deadline": 2,
            "join_window": 4,
            "crash": [{"node": 3, "round": 2, "at": "reduce_scatter:after_frames=1"}],
        },
    )
    kept = _Kept(2)
    monkeypatch.setattr(engine, "anvil_swarm", kept.around(engine.anvil_swarm))
    run = run_swarm(scenario, *scenario_data(scenario))
    first, second = run.rounds
    assert first.participants == 4 and first.digest_agreed and first.faults["crashed"] == []
    assert second.faults["crashed"] == [3] and second.faults["dropped"] == [3]
    assert second.faults["attempts"] == 2  # the vote failed the first attempt
    assert second.digest_agreed and second.digest, second  # the three left agree
    assert second.participants == 3
    assert second.calls.get("drop", 0) >= 2  # votes from the survivors, by the deadline
    assert second.per_node[3].status == "crashed"
    assert kept.pid is not None and _gone(kept.pid)


def test_a_run_that_raises_still_stops_anvil(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario.load(None, {**SCENARIO, "nodes": 3, "rounds": 2, "chain": "anvil"})
    kept = _Kept(1)
    monkeypatch.setattr(engine, "anvil_swarm", kept.around(engine.anvil_swarm))

    def fail(record: RoundRecord) -> None:
        raise RuntimeError(f"the watcher broke after round {record.round}")

    with pytest.raises(RuntimeError, match="after round 1"):
        run_swarm(scenario, *scenario_data(scenario), on_round=fail)
    assert kept.pid is not None and _gone(kept.pid)


def test_a_set_up_that_fails_stops_anvil() -> None:
    scenario = Scenario.load(None, {**SCENARIO, "nodes": 3, "chain": "anvil"})
    before = _anvil_children()
    started: set[int] = set()

    def inboxes(i: int, accounts: Any) -> Inbox:
        if i == 1:  # the chain is up, one node wired: the set-up breaks half-way
            started.update(_anvil_children() - before)
            raise RuntimeError("no inbox for node 1")
        return Inbox(accounts[i])

    with pytest.raises(RuntimeError, match="no inbox for node 1"):
        anvil_swarm(scenario.swarm_params(3, b"\x01" * 32), 3, inboxes=inboxes)
    assert len(started) == 1
    assert all(_gone(pid) for pid in started)


def test_the_chain_key_is_refused_where_it_makes_no_sense_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match='chain = "anvil": the fast engine has no chain') as fast:
        Scenario.load(None, {"engine": "fast", "chain": "anvil"})
    assert "\n" not in str(fast.value)
    with pytest.raises(ConfigError, match='chain = "embedded" with processes') as daemons:
        Scenario.load(None, {"processes": True, "chain": "embedded"})
    assert "\n" not in str(daemons.value)
    assert Scenario.load(None, {"processes": True, "chain": "anvil"}).chain == "anvil"
    # the default is left alone: the daemons run on anvil whatever it says
    assert Scenario.load(None, {"processes": True}).chain == "embedded"
    with pytest.raises(ConfigError, match="field chain"):
        Scenario.load(None, {"chain": "geth"})
    # from the command line, through --set, before anything runs
    out = tmp_path / "never"
    argv = ["swarmnode", "simulate", "--engine", "fast", "--set", "chain=anvil", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and 'chain = "anvil"' in lines[0], lines
    assert not out.exists()
