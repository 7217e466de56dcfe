"""What a simulation leaves: report.json, metrics.jsonl, a plot, its summary on the terminal.

A report (docs/simulator.md#reports): it reads a SwarmRun and the baselines' curves
(results.py), whichever runner made them, and runs nothing itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from swarmnode.simulation.results import Curve, SwarmRun
from swarmnode.simulation.scenario import Scenario


def build_report(
    scenario: Scenario,
    swarm: SwarmRun,
    local: list[Curve],
    centralized: Curve,
    wall_seconds: float,
    flower: tuple[Curve, float] | None = None,
) -> dict[str, Any]:
    """report.json's content; `flower` is Flower's FedAvg curve on its own engine and its
    seconds, for `--compare flower` (docs/simulator.md#flower-side-by-side)."""
    local_final = [c.final for c in local]
    compared = {}
    if flower is not None:
        curve, seconds = flower
        compared = {
            "flower": {"accuracy": curve.final, "curve": curve.accuracy, "seconds": seconds}
        }
    return {
        "scenario": scenario.model_dump(),
        "swarm": {
            "accuracy": swarm.accuracy,
            "loss": swarm.loss,
            "curve": [r.accuracy for r in swarm.rounds],
        },
        **compared,
        "centralized": {"accuracy": centralized.final},
        "local": {
            "accuracy": local_final,
            "mean_accuracy": sum(local_final) / len(local_final),
            "best_accuracy": max(local_final),
        },
        "rounds": [
            {
                "round": r.round,
                "participants": r.participants,
                "seconds": r.seconds,
                "bytes_sent_per_node": r.bytes_sent_per_node,
                "bytes_split_per_node": r.bytes_split_per_node,  # the same node's, in parts
                "model_bytes": r.model_bytes,
                "digest_agreed": r.digest_agreed,
                "transactions": r.transactions,
                "gas_used": r.gas_used,
                "accuracy": r.accuracy,
                "calls": r.calls,  # mined transactions per contract function, from receipts
                "events": r.events,  # the contract's events of this round, by name
                "faults": r.faults,  # who crashed, was down, sat out, came back, was dropped
                "checked": r.checked,  # segments the honest nodes re-merged themselves
                "accused": r.accused,  # nodes an honest node saw fail it (evidence)
            }
            for r in swarm.rounds
        ],
        "chain": {"transactions": swarm.transactions, "gas_used": swarm.gas_used},
        "privacy": privacy_block(scenario, swarm),
        "wall_seconds": wall_seconds,
    }


def privacy_block(scenario: Scenario, swarm: SwarmRun) -> dict[str, Any]:
    """What privacy the run had (docs/privacy.md#in-the-simulator): whether the swarm summed
    its updates under masks, and with DP the noise, delta and the largest epsilon any node
    spent."""
    settings = scenario.privacy()
    mean = scenario.mean_privacy()  # distributed DP (docs/privacy.md#distributed-dp)
    spent = [node.epsilon for r in swarm.rounds for node in r.per_node if node.epsilon is not None]
    chosen = settings or mean
    block: dict[str, Any] = {
        "secure_aggregation": scenario.secure_aggregation,
        "noise_multiplier": None if chosen is None else chosen.noise_multiplier,
        "epsilon": max(spent) if spent else None,
        "delta": None if chosen is None else chosen.delta,
        # which DP: "local" (DP-SGD, epsilon per training row) or "distributed" (for the
        # mean, epsilon per node's whole update); None without DP
        "dp": "local" if settings is not None else "distributed" if mean is not None else None,
    }
    if mean is not None:
        m = scenario.swarm_params(scenario.nodes, b"\x01" * 32).min_live
        block.update(
            clip_norm=mean.clip_norm,
            assumed_colluders=mean.assumed_colluders,
            min_participants=m,
            node_noise_std=mean.noise_std(m),
        )
    return block


def write_outputs(
    out: Path,
    report: dict[str, Any],
    swarm: SwarmRun,
    local: list[Curve],
    centralized: Curve,
    flower: Curve | None = None,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "metrics.jsonl", out / "accuracy.png"]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "metrics.jsonl", "w") as metrics:
        for record in swarm.rounds:
            for node in record.per_node:
                # the swarm's round number, also for a node that was away from it
                line = {**node.to_json(), "round": record.round}
                line["swarm_test_accuracy"] = record.accuracy
                metrics.write(json.dumps(line) + "\n")
    plot(out / "accuracy.png", swarm, local, centralized, report["scenario"]["name"], flower)
    return written


def plot(
    path: Path,
    swarm: SwarmRun,
    local: list[Curve],
    centralized: Curve,
    title: str,
    flower: Curve | None = None,
) -> None:
    import matplotlib  # here: over half a second to import, for the plot alone

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in swarm.rounds]

    def along(curve: Curve) -> list[int]:  # a baseline runs every round the scenario has,
        return list(range(1, len(curve.accuracy) + 1))  # the swarm fewer if DP budgets end it

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, curve in enumerate(local):
        ax.plot(
            along(curve),
            curve.accuracy,
            color="0.7",
            lw=1,
            label="each node alone" if i == 0 else None,
        )
    ax.plot(
        along(centralized), centralized.accuracy, color="tab:green", lw=2, label="all data pooled"
    )
    ax.plot(rounds, [r.accuracy for r in swarm.rounds], color="tab:blue", lw=2.5, label="swarm")
    if flower is not None:
        ax.plot(
            along(flower),
            flower.accuracy,
            color="tab:orange",
            lw=1.5,
            ls="--",
            label="Flower FedAvg",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"swarmnode simulation: {title}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def progress_bar(console: Console) -> Progress:
    """The simulator's bar: what runs, how far, its last status; gone when not a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=not console.is_terminal,
    )


def print_summary(console: Console, report: dict[str, Any], files: list[Path]) -> None:
    """The accuracies side by side, the chain's and the network's figures, the faults."""
    table = Table(title="test accuracy on the held-out set")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    table.add_row("swarm (every node holds it)", f"{report['swarm']['accuracy']:.3f}")
    table.add_row("all data pooled (centralized)", f"{report['centralized']['accuracy']:.3f}")
    table.add_row("each node alone: mean", f"{report['local']['mean_accuracy']:.3f}")
    table.add_row("each node alone: best", f"{report['local']['best_accuracy']:.3f}")
    if "flower" in report:
        table.add_row(
            f"Flower FedAvg, its own engine ({report['flower']['seconds']:.0f} s)",
            f"{report['flower']['accuracy']:.3f}",
        )
    console.print(table)
    rounds = report["rounds"]
    agreed = sum(r["digest_agreed"] for r in rounds)
    ratio = max(r["bytes_sent_per_node"] / r["model_bytes"] for r in rounds)
    console.print(
        f"{len(rounds)} rounds, digests agreed in {agreed}; at most {ratio:.2f} x the model "
        f"sent per node per round; {report['chain']['transactions']} transactions, "
        f"{report['chain']['gas_used']:,} gas; {report['wall_seconds']:.0f} s"
    )
    privacy = report["privacy"]
    if privacy["noise_multiplier"] is not None:
        spent = "none" if privacy["epsilon"] is None else f"{privacy['epsilon']:.2f}"
        planned = report["scenario"]["rounds"]
        ended = (
            f"; every node's budget was spent after round {len(rounds)} of {planned}"
            if len(rounds) < planned
            else ""
        )
        kind = (
            "DP-SGD on every node"
            if privacy["dp"] == "local"
            else "distributed DP for the mean (epsilon per node)"
        )
        console.print(
            f"{kind}: noise multiplier {privacy['noise_multiplier']:g}, epsilon "
            f"{spent} at delta {privacy['delta']:g} (the most any node spent){ended}"
        )
    faults = _fault_table(rounds)
    if faults is not None:
        console.print(faults)
    console.print("wrote " + ", ".join(str(f) for f in files))


_FAULT_COLUMNS = {
    "crashed": "crashed",
    "down": "down",
    "sat_out": "sat out",
    "restarted": "restarted",
    "caught_up": "caught up first",
    "dropped": "voted out",
}


def _fault_table(rounds: list[dict[str, Any]]) -> Table | None:
    """The rounds in which a fault touched someone, by node number; None if none did."""
    touched = [r for r in rounds if any(r.get("faults", {}).get(key) for key in _FAULT_COLUMNS)]
    if not touched:
        return None
    table = Table(title="faults: who, round by round (nodes numbered from 0)")
    for title in ("round", "participants", "attempts", *_FAULT_COLUMNS.values()):
        table.add_column(title)
    for r in touched:
        f = r["faults"]
        cells = [", ".join(str(i) for i in f[key]) for key in _FAULT_COLUMNS]
        table.add_row(str(r["round"]), str(r["participants"]), str(f["attempts"]), *cells)
    return table
