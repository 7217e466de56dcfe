"""`swarmnode simulate sweep` as a user runs it, and its full-fidelity re-run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from swarmnode.cli import main
from swarmnode.rules import SwarmParams
from swarmnode.simulation.local import memory_swarm, run_in_threads
from swarmnode.simulation.run import sweep
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.sweep import FULL_CHECK_TOLERANCE, Grid
from swarmnode.simulation.turns import JoinTurns, OrderedJoins

PNG = b"\x89PNG\r\n\x1a\n"


def swarmnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmnode", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": os.environ["PATH"], "COLUMNS": "200"},
    )


@pytest.mark.slow
def test_a_tiny_sweep_writes_every_cell_a_summary_and_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = swarmnode(
        "sweep",
        "--datasets",
        "breast_cancer",
        "--rules",
        "mean,median",
        "--attacks",
        "none,sign_flip",
        "--seeds",
        "0,1",
        "--nodes",
        "4",
        "--byzantine",
        "1",
        "--rounds",
        "2",
        "--local-batches",
        "3",
        "--full-check",
        "none",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "sweep.json").read_text())
    cells = {(c["dataset"], c["rule"], c["attack"], c["seed"]) for c in report["cells"]}
    assert cells == {
        ("breast_cancer", rule, attack, seed)
        for rule in ("mean", "median")
        for attack in ("none", "sign_flip")
        for seed in (0, 1)
    }
    for cell in report["cells"]:
        assert 0.0 <= cell["accuracy"] <= 1.0
        assert cell["rounds_agreed"] == 2 and len(cell["digest"]) == 64
    assert report["grid"]["byzantine"] == 1 and report["grid"]["nodes"] == 4
    summary = {(s["rule"], s["attack"]): s for s in report["summary"]}
    assert len(summary) == 4
    for (rule, attack), s in summary.items():
        seeds = [
            c["accuracy"] for c in report["cells"] if (c["rule"], c["attack"]) == (rule, attack)
        ]
        assert s["seeds"] == 2 and s["mean"] == pytest.approx(sum(seeds) / 2)
        assert s["min"] == min(seeds) and s["max"] == max(seeds)
    assert report["full_fidelity_check"] is None
    assert (out / "sweep.png").read_bytes()[:8] == PNG
    assert "median" in result.stdout and "sign_flip" in result.stdout  # the terminal table


@pytest.mark.chain
@pytest.mark.slow
def test_the_full_fidelity_rerun_ends_with_the_in_memory_digest(tmp_path: Path) -> None:
    # mean sums in participant order and the ALIE colluders wait for each other before
    # joining: the cell where join order would show first if the two backends differed
    base = Scenario.load(None, {"nodes": 4, "rounds": 2, "local_batches": 3})
    grid = Grid(
        datasets=("digits",),
        rules=("mean",),
        attacks=("alie",),
        seeds=(3,),
        byzantine=2,
        engine="full",
    )
    with open(os.devnull, "w") as quiet:
        report = sweep(base, grid, tmp_path, check="first", console=Console(file=quiet))
    check = report["full_fidelity_check"]
    assert check["cell"] == {"dataset": "digits", "rule": "mean", "attack": "alie", "seed": 3}
    assert check["engine"] == "full" and check["tolerance"] is None
    assert len(check["sweep_digest"]) == 64
    assert check["full_fidelity_digest"] == check["sweep_digest"]
    assert check["equal"] and check["agrees"] and check["full_fidelity_rounds_agreed"] == 2
    assert check["full_fidelity_accuracy"] == check["sweep_accuracy"]
    assert json.loads((tmp_path / "sweep.json").read_text())["full_fidelity_check"]["equal"]


@pytest.mark.chain
@pytest.mark.slow
def test_a_fast_engine_cell_agrees_with_full_fidelity_within_the_tolerance(
    tmp_path: Path,
) -> None:
    base = Scenario.load(None, {"nodes": 4, "rounds": 2, "local_batches": 3})
    grid = Grid(
        datasets=("digits",), rules=("median",), attacks=("sign_flip",), seeds=(1,), byzantine=1
    )
    assert grid.engine == "fast"  # the sweep's default
    out = io.StringIO()
    report = sweep(base, grid, tmp_path, check="first", console=Console(file=out, width=300))
    check = report["full_fidelity_check"]
    assert report["cells"][0]["engine"] == "fast" and check["engine"] == "fast"
    assert check["tolerance"] == FULL_CHECK_TOLERANCE
    assert check["difference"]["accuracy"] <= FULL_CHECK_TOLERANCE["accuracy"]
    assert check["difference"]["loss"] <= FULL_CHECK_TOLERANCE["loss"]
    assert check["agrees"] and check["full_fidelity_rounds_agreed"] == 2
    assert "within tolerance" in out.getvalue()


def test_protocol_attacks_run_real_nodes_and_the_rest_the_fast_engine(tmp_path: Path) -> None:
    base = Scenario.load(None, {"nodes": 4, "rounds": 1, "local_batches": 2})
    grid = Grid(
        datasets=("breast_cancer",),
        rules=("median",),
        attacks=("none", "sign_flip", "withhold_one"),
        seeds=(0,),
        byzantine=1,
    )
    out = io.StringIO()
    report = sweep(base, grid, tmp_path, check="none", console=Console(file=out, width=300))
    engines = {c["attack"]: c["engine"] for c in report["cells"]}
    # the clean cell runs real nodes too, as the baseline of the protocol attack's bytes
    assert engines == {"none": "full", "sign_flip": "fast", "withhold_one": "full"}
    assert report["grid"]["engine"] == "fast"
    assert "withhold_one lie in messages" in " ".join(out.getvalue().split())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--rules", "mean,mode"), "--rules: unknown 'mode'"),
        (("--attacks", "bribery"), "--attacks: unknown 'bribery'"),
        (("--datasets", "mnist"), "--datasets: unknown 'mnist'"),
        (("--seeds", "one"), "--seeds: 'one' is not"),
        (("--seeds", "-1"), "--seeds: give one or more integers >= 0"),
        (("--byzantine", "0"), "--byzantine: a sweep needs at least 1"),
        (("--attack", "alie"), "--attack sets a single run, not a sweep; a sweep takes --attacks"),
        (("--seed", "0"), "--seed sets a single run, not a sweep; a sweep takes --seeds"),
        (("--full-check", "digits/mean"), "--full-check: 'digits/mean' is not a cell"),
        # 4 of 8 Byzantine: more than the median (or any robust rule) can stand
        (("--byzantine", "4"), "sweep cell digits/median/sign_flip/0"),
    ],
)
def test_a_bad_sweep_flag_is_one_line_before_anything_runs(
    args: tuple[str, ...],
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "never"
    monkeypatch.setattr(sys, "argv", ["swarmnode", "simulate", "sweep", *args, "--out", str(out)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swarmnode: ") and needle in lines[0], lines
    assert not out.exists()


def test_grid_flags_without_sweep_are_refused_as_a_subprocess_sees_it() -> None:
    result = swarmnode("--rules", "mean")
    assert result.returncode == 1
    assert result.stderr.strip() == "swarmnode: --rules goes with `swarmnode simulate sweep`"


def test_the_old_sweep_flag_still_reaches_the_sweep_and_says_it_is_going(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "never"
    argv = ["swarmnode", "simulate", "--sweep", "--rules", "mean,mode", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    notice, error = capsys.readouterr().err.strip().splitlines()
    assert "`simulate --sweep` is now `simulate sweep`" in notice and "next" in notice
    assert error.startswith("swarmnode: --rules: unknown 'mode'")  # the sweep's own check
    assert not out.exists()


def test_nodes_join_in_node_order_whatever_order_their_threads_run() -> None:
    # The threads start last node first; the chain's participant list is still node order,
    # which is what makes the merged bits the same on every backend.
    swarm = memory_swarm(SwarmParams(max_peers=4), 4, clock=time.monotonic)
    turns = JoinTurns()
    ledgers = [OrderedJoins(peer.ledger, turns, i) for i, peer in enumerate(swarm.peers)]
    turns.expect(range(4))
    joins = [
        lambda led=led, i=i: led.join(1, bytes([i + 1]) * 32, 10, 0)
        for i, led in reversed(list(enumerate(ledgers)))
    ]
    run_in_threads(joins, timeout=30)
    assert ledgers[0].round(1).participants == tuple(led.account for led in ledgers)
    # a node that never joins holds the others up for `wait` seconds at most
    other = memory_swarm(SwarmParams(max_peers=4), 2, clock=time.monotonic)
    turns = JoinTurns(wait=0.05)
    turns.expect([0, 1])
    late = OrderedJoins(other.peers[1].ledger, turns, 1)
    late.join(1, b"\x07" * 32, 10, 0)
    assert late.round(1).participants == (late.account,)


def test_set_reaches_every_scenario_field_and_a_wrong_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarmnode.cli.simulate import _parse_settings

    settings = _parse_settings(
        ["dropout=0.25", "crash=[{node = 1, round = 2, rejoin = 3}]", "name=trial", "hidden=16"]
    )
    scenario = Scenario.load(None, settings)
    assert scenario.dropout == 0.25 and scenario.name == "trial" and scenario.hidden == 16
    assert [(c.node, c.round, c.rejoin) for c in scenario.crash] == [(1, 2, 3)]
    for bad, needle in (
        ("dropout=2", "field dropout"),
        ("colour=blue", "field colour"),
        ("dropout", "write FIELD=VALUE"),
    ):
        out = tmp_path / "never"
        monkeypatch.setattr(sys, "argv", ["swarmnode", "simulate", "--set", bad, "--out", str(out)])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines
        assert not out.exists()
