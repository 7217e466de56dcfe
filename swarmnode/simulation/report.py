"""What a simulation leaves in its output folder: report.json, metrics.jsonl and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from swarmnode.simulation.baselines import Curve
from swarmnode.simulation.engine import SwarmRun
from swarmnode.simulation.scenario import Scenario


def build_report(
    scenario: Scenario,
    swarm: SwarmRun,
    local: list[Curve],
    centralized: Curve,
    wall_seconds: float,
) -> dict[str, Any]:
    local_final = [c.final for c in local]
    return {
        "scenario": scenario.model_dump(),
        "swarm": {"accuracy": swarm.accuracy, "loss": swarm.loss},
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
                "model_bytes": r.model_bytes,
                "digest_agreed": r.digest_agreed,
                "transactions": r.transactions,
                "gas_used": r.gas_used,
                "accuracy": r.accuracy,
                "calls": r.calls,  # mined transactions per contract function, from receipts
                "events": r.events,  # the contract's events of this round, by name
                "faults": r.faults,  # who crashed, was down, sat out, came back, was dropped
            }
            for r in swarm.rounds
        ],
        "chain": {"transactions": swarm.transactions, "gas_used": swarm.gas_used},
        "wall_seconds": wall_seconds,
    }


def write_outputs(
    out: Path, report: dict[str, Any], swarm: SwarmRun, local: list[Curve], centralized: Curve
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "metrics.jsonl", out / "accuracy.png"]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "metrics.jsonl", "w") as metrics:
        for record in swarm.rounds:
            for node in record.per_node:
                line = {"round": record.round, **node, "swarm_test_accuracy": record.accuracy}
                metrics.write(json.dumps(line) + "\n")
    plot(out / "accuracy.png", swarm, local, centralized, report["scenario"]["name"])
    return written


def plot(path: Path, swarm: SwarmRun, local: list[Curve], centralized: Curve, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in swarm.rounds]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, curve in enumerate(local):
        ax.plot(
            rounds, curve.accuracy, color="0.7", lw=1, label="each node alone" if i == 0 else None
        )
    ax.plot(rounds, centralized.accuracy, color="tab:green", lw=2, label="all data pooled")
    ax.plot(rounds, [r.accuracy for r in swarm.rounds], color="tab:blue", lw=2.5, label="swarm")
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
