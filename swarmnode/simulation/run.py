"""`swarmnode simulate`: the scenario, the swarm, the baselines, the report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from swarmnode.simulation.baselines import centralized_baseline, local_baselines
from swarmnode.simulation.data import load_dataset
from swarmnode.simulation.engine import RoundRecord, run_swarm
from swarmnode.simulation.partition import partition
from swarmnode.simulation.report import build_report, write_outputs
from swarmnode.simulation.scenario import Scenario


@dataclass
class Outcome:
    report: dict[str, Any]
    files: list[Path]


def simulate(scenario: Scenario, out: Path, console: Console | None = None) -> Outcome:
    console = console or Console()
    started = time.perf_counter()
    data = load_dataset(scenario.dataset, test_fraction=scenario.test_fraction, seed=scenario.seed)
    parts = partition(
        data.y_train.numpy(),
        scenario.nodes,
        scenario.partition,
        seed=scenario.seed,
        alpha=scenario.alpha,
        shards_per_node=scenario.shards_per_node,
    )
    console.print(
        f"[bold]{scenario.name}[/]: {scenario.nodes} nodes on {scenario.dataset} "
        f"({len(data.y_train)} train / {len(data.y_test)} held-out test), {scenario.partition} "
        f"split (sizes {min(len(p) for p in parts)}-{max(len(p) for p in parts)}), "
        f"{scenario.rounds} rounds of {scenario.local_batches} batches, "
        f"rule {scenario.merge_rule}; embedded EVM chain, gRPC with mutual TLS over loopback"
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=not console.is_terminal,
    ) as progress:
        bar = progress.add_task("swarm rounds", total=scenario.rounds, status="")

        def on_round(record: RoundRecord) -> None:
            progress.update(
                bar,
                advance=1,
                status=f"accuracy {record.accuracy:.3f}, {record.seconds:.1f} s, "
                f"digests agree: {record.digest_agreed}",
            )

        swarm = run_swarm(scenario, data, parts, on_round)
        progress.update(bar, status="baselines: each node alone, all data pooled")
        local = local_baselines(scenario, data, parts)
        pooled = centralized_baseline(scenario, data, parts)
    wall = time.perf_counter() - started
    report = build_report(scenario, swarm, local, pooled, wall)
    files = write_outputs(out, report, swarm, local, pooled)
    _print_summary(console, report, files)
    return Outcome(report, files)


def _print_summary(console: Console, report: dict[str, Any], files: list[Path]) -> None:
    table = Table(title="test accuracy on the held-out set")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    table.add_row("swarm (every node holds it)", f"{report['swarm']['accuracy']:.3f}")
    table.add_row("all data pooled (centralized)", f"{report['centralized']['accuracy']:.3f}")
    table.add_row("each node alone: mean", f"{report['local']['mean_accuracy']:.3f}")
    table.add_row("each node alone: best", f"{report['local']['best_accuracy']:.3f}")
    console.print(table)
    rounds = report["rounds"]
    agreed = sum(r["digest_agreed"] for r in rounds)
    ratio = max(r["bytes_sent_per_node"] / r["model_bytes"] for r in rounds)
    console.print(
        f"{len(rounds)} rounds, digests agreed in {agreed}; at most {ratio:.2f} x the model "
        f"sent per node per round; {report['chain']['transactions']} transactions, "
        f"{report['chain']['gas_used']:,} gas; {report['wall_seconds']:.0f} s"
    )
    console.print("wrote " + ", ".join(str(f) for f in files))
