"""The simulator's protocol attackers (docs/simulator.md#attacks): a node that lies in its
messages (swarmnode/p2p/byzantine.py's wrappers, wired in by the in-process engine), and
what the honest nodes' records show the protocol did about it.

Every run here has 4 nodes of which node 3 attacks, on a model of 5 chunks so that every
node owns a segment with data in it (with a model of one chunk, three of the four owners
would own nothing to lie about). An attacker contributes its honest update, so the merged
model of every round must be exactly the clean run's: anything else is the attack winning.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import pytest
import torch
from rich.console import Console

from swarmnode.exceptions import ConfigError
from swarmnode.merge import make_rule
from swarmnode.p2p.byzantine import Lies, LyingInbox, LyingRule, LyingTransport
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.roster import Roster
from swarmnode.simulation.attacks import PROTOCOL_ATTACKS, ProtocolAttackers, make_attack
from swarmnode.simulation.engine import run_swarm
from swarmnode.simulation.results import SwarmRun
from swarmnode.simulation.run import sweep
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.sweep import Grid
from swarmnode.simulation.tasks import scenario_data

NODES, ATTACKER = 4, 3
HONEST = range(NODES - 1)
DEADLINE = 3  # seconds of transfer: a silent owner is checked at half of it
# breast_cancer with 512 hidden units: 17 410 parameters, 1089 chunks of 16
SMALL = {
    "dataset": "breast_cancer",
    "nodes": NODES,
    "hidden": 512,
    "rounds": 2,
    "local_batches": 3,
    "partition": "iid",
    "transfer_deadline": DEADLINE,
}
ACCOUNTS = [f"0x{i:040x}" for i in range(1, NODES + 1)]


@functools.cache
def _run(attack: str) -> SwarmRun:
    fields = dict(SMALL, attack=attack, byzantine=0 if attack == "none" else 1)
    scenario = Scenario.load(None, fields)
    return run_swarm(scenario, *scenario_data(scenario), backend="memory")


def test_each_attacker_lies_with_its_own_wrappers_and_honest_nodes_get_none() -> None:
    rule = make_rule(Scenario.load(None, SMALL).rule())
    network = MemoryNetwork(Roster())
    for attack in PROTOCOL_ATTACKS:
        liars = ProtocolAttackers(attack, NODES, 1, None)
        inboxes = [liars.inbox(i, ACCOUNTS) for i in range(NODES)]
        for i in HONEST:
            assert type(inboxes[i]) is Inbox
            plain = MemoryTransport(network, ACCOUNTS[i])
            assert liars.transport(i, plain) is plain
            assert liars.rule(i, rule) is rule
        liar = inboxes[ATTACKER]
        assert isinstance(liar, LyingInbox)
        lies = liar.lies
        sent = liars.transport(ATTACKER, MemoryTransport(network, ACCOUNTS[ATTACKER]))
        merges = liars.rule(ATTACKER, rule)
        assert make_attack(attack, seed=0) is None  # it contributes its honest update
        if attack == "lying_owner":
            assert lies == Lies()
            assert isinstance(merges, LyingRule) and merges.shift == 1.0
            rows = torch.arange(8, dtype=torch.float32).reshape(4, 2)
            wrong = merges.merge_segment(rows, [1, 1, 1, 1])
            assert torch.equal(wrong, rule.merge_segment(rows, [1, 1, 1, 1]) + 1.0)
            continue
        assert merges is rule
        assert isinstance(sent, LyingTransport) and sent.lies is lies
        if attack == "forge_partials":
            assert lies.forge_updates and lies.shift == 1.0
            assert lies.tamper_merged_to == frozenset(ACCOUNTS[:ATTACKER])
        elif attack == "false_blame":
            assert lies.withhold_merged and lies.claims_waiting_for == (ACCOUNTS[0],)
            assert liar.waiting_for(1) == [ACCOUNTS[0]]  # whatever is true
        else:
            assert lies.withhold_updates_from == frozenset([ACCOUNTS[0]])
            assert not lies.withhold_merged and not lies.refuses_fetches


@pytest.mark.parametrize("attack", PROTOCOL_ATTACKS)
def test_honest_nodes_end_every_round_on_the_clean_runs_model(attack: str) -> None:
    clean, attacked = _run("none"), _run(attack)
    assert len(attacked.rounds) == SMALL["rounds"]
    for theirs, ours in zip(clean.rounds, attacked.rounds, strict=True):
        honest = [ours.per_node[i] for i in HONEST]
        # final, or caught up on the final model when a loaded machine made it late
        assert {n.status for n in honest} <= {"final", "caught_up"}, attack
        assert {n.digest for n in honest} == {theirs.digest}, attack  # one digest, the clean one
        assert ours.faults["dropped"] == []  # nobody voted out: honest reports finalized first
        assert set(ours.accused) <= {ATTACKER}  # no honest node accused by an honest one
    assert attacked.accuracy == clean.accuracy


@pytest.mark.parametrize("attack", ["forge_partials", "lying_owner", "false_blame"])
def test_the_lie_shows_in_the_records_as_checks_and_an_accusation(attack: str) -> None:
    for record in _run(attack).rounds:
        assert record.checked > 0, attack  # segments the honest nodes re-merged themselves
        assert record.accused == [ATTACKER], attack
        accusers = [n for n in record.per_node if n.node in HONEST and n.accused]
        assert accusers and all(n.checked > 0 for n in accusers)
    for record in _run("none").rounds:
        assert record.checked == 0 and record.accused == []


def test_rows_withheld_from_one_owner_are_fetched_from_its_co_owner_nobody_blamed() -> None:
    for record in _run("withhold_one").rounds:
        assert record.digest_agreed  # every round final, the attacker's included
        assert record.accused == []  # node 0's co-owner served the rows: nothing to accuse
        assert record.checked == 0
        # node 0 had to wait for the rows until it fetched them itself (at a quarter of
        # the attempt); the others got everything pushed
        victim = record.per_node[0]
        assert victim.seconds["transfer"] >= 0.2 * DEADLINE


def test_a_sweep_reports_what_the_protocol_did(tmp_path: Path) -> None:
    base = Scenario.load(None, {k: v for k, v in SMALL.items() if k != "dataset"})
    grid = Grid(
        datasets=("breast_cancer",),
        rules=("mean",),
        attacks=("none", "lying_owner"),
        seeds=(0,),
        byzantine=1,
    )
    text = io.StringIO()
    report = sweep(base, grid, tmp_path, check="none", console=Console(file=text, width=200))
    rows = {s["attack"]: s for s in report["summary"]}
    lying, clean = rows["lying_owner"], rows["none"]
    assert lying["rounds_final"] == 1.0 and clean["rounds_final"] == 1.0
    assert lying["checked_per_round"] > 0 and clean["checked_per_round"] == 0
    assert lying["attackers_accused"] == 1.0 and clean["attackers_accused"] == 0
    assert lying["honest_accused"] == 0
    assert lying["bytes_per_node"] > 0 and lying["bytes_vs_clean"] is not None
    assert lying["received_vs_clean"] > 1  # a check fetches the segment's rows
    cell = next(c for c in report["cells"] if c["attack"] == "lying_owner")
    assert cell["checked"] > 0 and cell["rounds"] == SMALL["rounds"]
    printed = text.getvalue()
    assert "what the protocol did against the liars" in printed and "KB received/node" in printed
    assert "lying_owner" in printed


@pytest.mark.parametrize("attack", PROTOCOL_ATTACKS)
def test_the_daemon_runner_refuses_a_protocol_attack_in_one_line(attack: str) -> None:
    with pytest.raises(ConfigError, match="daemons run no Byzantine nodes") as refused:
        Scenario.load(None, {"attack": attack, "byzantine": 1, "processes": True})
    assert "\n" not in str(refused.value)


def test_a_protocol_attack_needs_attackers_and_names_itself_in_the_refusal() -> None:
    with pytest.raises(ConfigError, match="lying_owner, false_blame, withhold_one"):
        Scenario.load(None, {"byzantine": 1})


def test_an_attacker_that_crashes_and_restarts_comes_back_lying() -> None:
    """A restart is a fresh process with the same code: the injector rebuilds the attacker's
    inbox, transport and rule the way the engine first built them."""
    fields = dict(
        SMALL,
        rounds=3,
        attack="lying_owner",
        byzantine=1,
        crash=[{"node": ATTACKER, "round": 1, "rejoin": 2}],
    )
    scenario = Scenario.load(None, fields)
    run = run_swarm(scenario, *scenario_data(scenario), backend="memory")
    first, *after = run.rounds
    assert first.faults["crashed"] == [ATTACKER] and first.accused == []
    assert after[0].faults["restarted"] == [ATTACKER]
    for record in after:
        assert record.digest_agreed
        assert record.accused == [ATTACKER] and record.checked > 0


def test_a_seeded_run_draws_the_same_segment_owners_again() -> None:
    """Two lying owners (of 6) can own a segment together, and then what the honest nodes
    take depends on who owns what; the in-memory chain's round seeds come from the
    scenario's seed, so such a run repeats bit for bit (docs/simulator.md#attacks)."""
    fields = dict(SMALL, attack="lying_owner", nodes=6, byzantine=2, rounds=4)
    runs = []
    for _ in range(2):
        scenario = Scenario.load(None, fields)
        runs.append(run_swarm(scenario, *scenario_data(scenario), backend="memory"))
    # the honest nodes' models (the liars' own ending, caught up or not, is timing)
    first, second = ([[n.digest for n in r.per_node[:4]] for r in run.rounds] for run in runs)
    assert all(d is not None for round in first for d in round)  # every round final
    assert first == second  # with a random salt per chain, 4 rounds differ almost always
    assert runs[0].accuracy == runs[1].accuracy
